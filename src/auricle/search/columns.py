"""The column file beside an index: what a search reads for every file, laid out to be read fast.

A search scores every indexed file. In the SQLite rows a file's 527 clip scores are
one blob, so a class query read ~1 kB a file to use 2-10 bytes of it (a million files:
1 GB and ~5 s). ``INDEX.columns`` holds the same numbers class-major and memory-mapped:
a query reads only its classes' columns (2 MB each at a million files) and the clip
embeddings as one contiguous (files, dim) float16 matrix of unit vectors (cosine is one
matrix-vector product). Beside them: the file ids, durations (the duration filters) and
each file's rank in path order (ties rank by path without reading the paths).

SQLite stays the record; the column file is derived and never the only copy of anything:

* it is written whole to a temporary and renamed over the old one (``replacing``), so a
  reader maps a complete file or none; a kill leaves the previous one;
* it names the index (``uid``, made with the index) and the last change it holds
  (``generation``). Every write to the index records the ids it touched in the
  ``changes`` table (one sequence number each), in the same transaction;
* a search takes the column file's rows less the ids changed since its generation, and
  reads those few changed rows from SQLite. So it is exact while an ``auricle index``
  runs, after a kill at any point, and before the column file is refreshed;
* without a usable column file (none yet, another index's, older than the index says)
  the search reads every row from SQLite: correct, only slow.

``refresh`` rewrites the file from the rows and then drops the changes it holds;
``auricle index`` calls it when a run has changed enough rows.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from auricle.search.store import Store

FORMAT = "auricle-columns"
VERSION = 1
#: The JSON header's room; the arrays follow, each aligned to ALIGN bytes.
HEADER_BYTES = 4096
ALIGN = 64
#: Rows read from SQLite at a time while the file is written (memory stays flat).
CHUNK_ROWS = 4096


def columns_path(index_path: str) -> str:
    return f"{index_path}.columns"


@dataclass(frozen=True)
class Columns:
    """A mapped column file: row ``i`` is file ``ids[i]`` (ascending)."""

    uid: str
    generation: int
    ids: np.ndarray  # int64 (rows,)
    durations: np.ndarray  # float64 (rows,), as SQLite's REAL
    path_ranks: np.ndarray  # int32 (rows,): position of the row's path in sorted order
    scores: np.ndarray  # float16 (classes, rows): the clip scores, class-major
    embeddings: np.ndarray  # float16 (rows, dim): clip embeddings, unit length
    #: Every score is >= 0 (and none -0.0): their float16 bits then order as unsigned integers do.
    nonnegative: bool = False

    def __len__(self) -> int:
        return len(self.ids)


def unit_f16(matrix: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, as float16 (how the column file stores embeddings; rows of SQLite
    read during a search go through the same rounding, so both give the same cosines)."""
    matrix = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=-1, keepdims=True)
    return (matrix / np.maximum(norms, 1e-12)).astype(np.float16)


def read_columns(index_path: str) -> Columns | None:
    """The column file of ``index_path`` mapped, or None if absent, incomplete or not one."""
    path = columns_path(index_path)
    try:
        with open(path, "rb") as handle:
            header = json.loads(handle.read(HEADER_BYTES).rstrip(b"\0 ").decode())
        if header.get("format") != FORMAT or header.get("version") != VERSION:
            return None
        raw = np.memmap(path, dtype=np.uint8, mode="r")
        if len(raw) != header["bytes"]:
            return None
        arrays = {}
        for name, (offset, dtype, shape) in header["arrays"].items():
            count = int(np.prod(shape))
            size = count * np.dtype(dtype).itemsize
            arrays[name] = raw[offset:offset + size].view(np.dtype(dtype)).reshape(shape)
        return Columns(header["uid"], int(header["generation"]), **arrays,
                       nonnegative=bool(header.get("nonnegative", False)))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def usable(columns: Columns | None, meta: dict[str, str]) -> bool:
    """Whether ``columns`` belongs to the index with ``meta`` and holds at least what the index says it does."""
    return (columns is not None and columns.uid == meta.get("uid")
            and columns.generation >= int(meta.get("columns_generation", "0")))


def pending_changes(store: Store) -> int:
    """Changes recorded since the column file the index knows of (what a search reads from SQLite)."""
    with store.errors():
        since = int(dict(store.connection.execute("SELECT key, value FROM meta")).get("columns_generation", "0"))
        return store.connection.execute("SELECT count(*) FROM changes WHERE seq > ?", (since,)).fetchone()[0]


def refresh(store: Store) -> Columns | None:
    """Write the column file from the index's rows, then drop the changes it holds; the new file mapped.

    The rows are read in one read transaction (one consistent state, tagged with the last
    change in it); writers may go on meanwhile: their changes stay recorded for searches.
    """
    from auricle.io.atomic import replacing

    connection = store.connection
    meta = store.meta
    with store.errors():
        connection.execute("BEGIN")
        try:
            generation = connection.execute("SELECT coalesce(max(seq), 0) FROM changes").fetchone()[0]
            generation = max(generation, _sequence(connection))
            rows = connection.execute("SELECT count(*) FROM files").fetchone()[0]
            first = connection.execute("SELECT w.clip_scores, w.clip_embedding FROM file_windows w LIMIT 1").fetchone()
            classes = len(first[0]) // 2 if first else len(json.loads(meta.get("labels", "[]")))
            dim = len(first[1]) // 2 if first else 0
            shapes = {"ids": ("<i8", [rows]), "durations": ("<f8", [rows]), "path_ranks": ("<i4", [rows]),
                      "scores": ("<f2", [classes, rows]), "embeddings": ("<f2", [rows, dim])}
            layout, offset = {}, HEADER_BYTES
            for name, (dtype, shape) in shapes.items():
                layout[name] = [offset, dtype, shape]
                offset += -(-int(np.prod(shape)) * np.dtype(dtype).itemsize // ALIGN) * ALIGN
            header = {"format": FORMAT, "version": VERSION, "uid": meta["uid"], "generation": generation,
                      "bytes": offset, "arrays": layout}
            with replacing(columns_path(store.path), durable=True) as temporary:
                with open(temporary, "wb") as handle:
                    handle.write(json.dumps(header).encode().ljust(HEADER_BYTES, b" "))
                    handle.truncate(offset)
                out = np.memmap(temporary, dtype=np.uint8, mode="r+")
                view = {name: out[o:o + int(np.prod(s)) * np.dtype(d).itemsize].view(np.dtype(d)).reshape(s)
                        for name, (o, d, s) in layout.items()}
                paths: list[str] = []
                done, lowest = 0, np.inf
                cursor = connection.execute(
                    "SELECT f.id, f.path, f.duration, w.clip_scores, w.clip_embedding FROM files f"
                    " JOIN file_windows w ON w.file_id = f.id ORDER BY f.id")
                while chunk := cursor.fetchmany(CHUNK_ROWS):
                    end = done + len(chunk)
                    view["ids"][done:end] = [row[0] for row in chunk]
                    view["durations"][done:end] = [row[2] for row in chunk]
                    paths += [row[1] for row in chunk]
                    # + 0 makes -0.0 into 0.0 (the same number; its bits would order above 1.0)
                    scores = np.frombuffer(b"".join(row[3] for row in chunk), dtype="<f2") + np.float16(0)
                    lowest = min(lowest, float(scores.min())) if len(scores) else lowest
                    view["scores"][:, done:end] = scores.reshape(len(chunk), classes).T
                    if dim:
                        embeddings = np.frombuffer(b"".join(row[4] for row in chunk), dtype="<f2")
                        view["embeddings"][done:end] = unit_f16(embeddings.reshape(len(chunk), dim))
                    done = end
                if lowest >= 0:  # (NaN is not) the header is rewritten: it is written before the rows
                    header["nonnegative"] = True
                    out[:HEADER_BYTES] = np.frombuffer(json.dumps(header).encode().ljust(HEADER_BYTES, b" "),
                                                       dtype=np.uint8)
                order = sorted(range(len(paths)), key=paths.__getitem__)
                view["path_ranks"][np.asarray(order, dtype=np.int64)] = np.arange(len(paths), dtype=np.int32)
                out.flush()
                del out, view
        finally:
            connection.execute("COMMIT")
    # The new file is in place: the changes it holds are no longer needed by any search.
    with store.transaction() as connection:
        connection.execute("DELETE FROM changes WHERE seq <= ?", (generation,))
        connection.execute("INSERT OR REPLACE INTO meta VALUES ('columns_generation', ?)", (str(generation),))
    store.meta["columns_generation"] = str(generation)
    return read_columns(store.path)


def _sequence(connection) -> int:
    """The last change number ever given (AUTOINCREMENT keeps it after the changes are dropped)."""
    found = connection.execute("SELECT seq FROM sqlite_sequence WHERE name = 'changes'").fetchone()
    return int(found[0]) if found else 0


#: Changes a finished run leaves for searches to read from SQLite rather than rewrite the column file
#: (a few thousand rows cost a search milliseconds; the rewrite costs ~20 s a million files).
REFRESH_CHANGES = 4096
#: While a run goes on, the column file is rewritten when this share of the files has changed (and at
#: least REFRESH_RUNNING changes wait): the rewrites of a run that builds an index stay linear in its size.
REFRESH_SHARE = 0.25
REFRESH_RUNNING = 65536


def refresh_if_due(store: Store, finished: bool) -> bool:
    """Rewrite the column file if enough changes wait (``finished``: the run's end); whether it did."""
    with store.errors():
        meta = dict(store.connection.execute("SELECT key, value FROM meta"))
    pending = pending_changes(store)
    if finished:
        due = pending >= REFRESH_CHANGES or (pending > 0 or store.count() > 0) and not usable(
            read_columns(store.path), meta)
    else:
        due = pending >= max(REFRESH_RUNNING, REFRESH_SHARE * store.count())
    if due:
        refresh(store)
    return due
