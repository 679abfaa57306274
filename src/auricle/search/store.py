"""The search index on disk: one SQLite file (schema in docs/search.md), and its column file.

Why SQLite: one file a user can copy, no server; rows are found by path through a
B-tree, so an update of a million-file index touches only the changed rows; WAL mode
lets searches read while an update writes; and every batch of files is one
transaction, so a process killed at any point leaves the index as of its last
committed batch. ``files`` holds only what an update compares (path, size, time,
duration: ~100 bytes a file, read whole by every update); the arrays live in
``file_windows``, read for the best files of a search and to build the column file
(:mod:`auricle.search.columns`), which is what a search scans. Every write records the
file ids it touched in ``changes``, so a search knows which rows the column file no
longer describes. Arrays are stored as raw little-endian blobs (float16 scores and
embeddings, float32 bounds): never pickled.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from auricle.errors import SearchIndexError

#: Bump on any change of the tables below; an index of another version is refused, not misread.
#: 1: clip arrays in ``files``, no column file, no captions (read by auricle up to 2026-12-07; not
#: migrated: the column file and the compact ``files`` table are a rebuild's work anyway).
SCHEMA_VERSION = 2
#: Seconds a writer waits for another process's lock before giving up with an error.
BUSY_TIMEOUT_S = 10.0

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE files (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    duration REAL NOT NULL
);
CREATE INDEX files_duration ON files (duration);
CREATE TABLE file_windows (
    file_id INTEGER PRIMARY KEY,
    clip_scores BLOB NOT NULL,
    clip_embedding BLOB NOT NULL,
    window_bounds BLOB NOT NULL,
    window_scores BLOB NOT NULL,
    piece_bounds BLOB NOT NULL,
    piece_embeddings BLOB NOT NULL
);
CREATE TABLE changes (seq INTEGER PRIMARY KEY AUTOINCREMENT, file_id INTEGER NOT NULL);
CREATE TABLE file_captions (
    file_id INTEGER PRIMARY KEY,
    bounds BLOB NOT NULL,
    texts TEXT NOT NULL,
    embeddings BLOB NOT NULL
);
"""
# file_captions: the segment captions of `auricle index --describe` (search/captions.py), one row per
# file captioned (an empty list: captioned, nothing said). Captions are not in the column file: a
# caption search reads them from SQLite (docs/search.md).
TABLES = {"meta", "files", "file_windows", "changes", "file_captions"}


@dataclass(frozen=True)
class FileRow:
    """One indexed recording, its arrays decoded."""

    path: str
    size: int
    mtime_ns: int
    duration: float
    clip_scores: np.ndarray  # (classes,)
    window_bounds: np.ndarray  # (windows, 2) seconds
    window_scores: np.ndarray  # (windows, classes)
    clip_embedding: np.ndarray  # (dim,)
    piece_bounds: np.ndarray  # (pieces, 2) seconds
    piece_embeddings: np.ndarray  # (pieces, dim)


def to_blob(array: np.ndarray, dtype: str) -> bytes:
    return np.ascontiguousarray(array, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()


def from_blob(blob: bytes, dtype: str, columns: int | None = None) -> np.ndarray:
    array = np.frombuffer(blob, dtype=np.dtype(dtype).newbyteorder("<")).astype(np.float32)
    return array.reshape(-1, columns) if columns else array


class Store:
    """An open index file; every sqlite3 error comes out as one :class:`SearchIndexError` line naming it."""

    def __init__(self, path: str | os.PathLike, *, create: bool = False, readonly: bool = False) -> None:
        self.path = str(path)
        if not create and not os.path.isfile(self.path):
            raise SearchIndexError(f"{self.path}: no such index; make one with `auricle index PATHS -o {self.path}`")
        if create and os.path.isdir(self.path):
            raise SearchIndexError(f"{self.path}: is a folder; give the index file's name")
        if create and not readonly:
            try:  # as the other commands' outputs: `-o indexes/new/sounds.db` makes its folders
                os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            except OSError as error:
                raise SearchIndexError(f"{self.path}: cannot make its folder ({error.strerror or error})") from None
        with self.errors():
            if readonly:  # a search never writes, so a damaged or foreign file stays as it was
                self.connection = sqlite3.connect(f"file:{_uri(self.path)}?mode=ro", uri=True,
                                                  timeout=BUSY_TIMEOUT_S, isolation_level=None)
            else:
                self.connection = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            tables = {row[0] for row in self.connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if not tables and create and not readonly:
                self.connection.execute("PRAGMA journal_mode=WAL")
                with self.transaction():
                    for statement in SCHEMA.split(";"):
                        if statement.strip():
                            self.connection.execute(statement)
                    self.connection.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                    # Names this index to its column file: another index's (a merge's output replaced
                    # this one) is never taken for its own.
                    self.connection.execute("INSERT INTO meta VALUES ('uid', ?)", (os.urandom(8).hex(),))
                    self.connection.execute("INSERT INTO meta VALUES ('columns_generation', '0')")
                tables = set(TABLES)
            if "meta" not in tables:
                self.close()
                raise SearchIndexError(f"{self.path}: not an auricle search index (an SQLite file with other tables)")
            self.meta = dict(self.connection.execute("SELECT key, value FROM meta"))
        version = self.meta.get("schema_version")
        if version is None:
            self.close()
            raise SearchIndexError(f"{self.path}: not an auricle search index (an SQLite file with other tables)")
        if version != str(SCHEMA_VERSION):
            self.close()  # checked first: another version may have other tables
            hint = ("made by an earlier auricle (its search read every row); " if version == "1" else "")
            raise SearchIndexError(f"{self.path}: index schema version {version}, this auricle reads version "
                                   f"{SCHEMA_VERSION}; {hint}rebuild it with `auricle index` into a new file")
        if not TABLES <= tables:
            self.close()
            raise SearchIndexError(f"{self.path}: not an auricle search index (an SQLite file with other tables)")

    @contextmanager
    def errors(self) -> Iterator[None]:
        """sqlite3's exceptions as one line naming the index: locked, damaged or not a database."""
        try:
            yield
        except sqlite3.OperationalError as error:
            text = str(error)
            if "locked" in text or "busy" in text:
                raise SearchIndexError(f"{self.path}: the index is locked by another process (an `auricle index` "
                                       "still running?); try again when it has finished") from None
            raise SearchIndexError(f"{self.path}: cannot use the index ({text})") from None
        except sqlite3.DatabaseError as error:
            raise SearchIndexError(f"{self.path}: not a readable auricle index ({error}); rebuild it with "
                                   "`auricle index`") from None

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: all of it lands, or none (an exception or a kill rolls it back)."""
        with self.errors():
            self.connection.execute("BEGIN IMMEDIATE")
            try:
                yield self.connection
            except BaseException:
                self.connection.execute("ROLLBACK")
                raise
            self.connection.execute("COMMIT")

    def set_meta(self, values: dict[str, str]) -> None:
        with self.transaction() as connection:
            connection.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", list(values.items()))
        self.meta.update(values)

    def stamps(self) -> dict[str, tuple[int, int]]:
        """path -> (size, mtime_ns) of every indexed file."""
        with self.errors():
            return {path: (size, mtime) for path, size, mtime in
                    self.connection.execute("SELECT path, size, mtime_ns FROM files")}

    def count(self) -> int:
        with self.errors():
            return self.connection.execute("SELECT count(*) FROM files").fetchone()[0]

    @staticmethod
    def put(connection: sqlite3.Connection, row: FileRow) -> None:
        """Insert or replace one file's rows (inside :meth:`transaction`)."""
        Store.delete(connection, [row.path])
        file_id = connection.execute(
            "INSERT INTO files (path, size, mtime_ns, duration) VALUES (?, ?, ?, ?)",
            (row.path, row.size, row.mtime_ns, row.duration)).lastrowid
        connection.execute(
            "INSERT INTO file_windows (file_id, clip_scores, clip_embedding, window_bounds, window_scores,"
            " piece_bounds, piece_embeddings) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (file_id, to_blob(row.clip_scores, "f2"), to_blob(row.clip_embedding, "f2"),
             to_blob(row.window_bounds, "f4"), to_blob(row.window_scores, "f2"),
             to_blob(row.piece_bounds, "f4"), to_blob(row.piece_embeddings, "f2")))
        connection.execute("INSERT INTO changes (file_id) VALUES (?)", (file_id,))

    @staticmethod
    def delete(connection: sqlite3.Connection, paths: list[str]) -> None:
        """Drop files' rows (inside :meth:`transaction`)."""
        for path in paths:
            found = connection.execute("SELECT id FROM files WHERE path = ?", (path,)).fetchone()
            if found is None:
                continue
            connection.execute("DELETE FROM file_windows WHERE file_id = ?", found)
            # Captions describe the audio as it was: a changed or dropped file loses them.
            connection.execute("DELETE FROM file_captions WHERE file_id = ?", found)
            connection.execute("DELETE FROM files WHERE id = ?", found)
            connection.execute("INSERT INTO changes (file_id) VALUES (?)", found)

    def rows(self, columns: str, where: str = "", parameters: tuple = (), chunk: int = 4096) -> Iterator[list[tuple]]:
        """``SELECT columns FROM files JOIN file_windows WHERE ...`` in chunks (a million rows are never all
        in memory)."""
        with self.errors():
            cursor = self.connection.execute(
                f"SELECT {columns} FROM files JOIN file_windows ON file_windows.file_id = files.id {where}", parameters)
            while batch := cursor.fetchmany(chunk):
                yield batch

    def row(self, path: str) -> FileRow:
        with self.errors():
            found = self.connection.execute(
                "SELECT path, size, mtime_ns, duration, clip_scores, window_bounds, window_scores, clip_embedding,"
                " piece_bounds, piece_embeddings FROM files JOIN file_windows ON file_windows.file_id = files.id"
                " WHERE path = ?", (path,)).fetchone()
        if found is None:
            raise SearchIndexError(f"{self.path}: holds no file {path}")
        classes = len(from_blob(found[4], "f2"))
        dim = len(from_blob(found[7], "f2"))
        return FileRow(found[0], found[1], found[2], found[3], from_blob(found[4], "f2"), from_blob(found[5], "f4", 2),
                       from_blob(found[6], "f2", classes), from_blob(found[7], "f2"), from_blob(found[8], "f4", 2),
                       from_blob(found[9], "f2", dim))

    def close(self) -> None:
        connection = getattr(self, "connection", None)
        if connection is not None:
            connection.close()
            self.connection = None


def _uri(path: str) -> str:
    from urllib.parse import quote

    return quote(os.path.abspath(path))
