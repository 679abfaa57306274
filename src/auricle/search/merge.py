"""Joining the parts of a sharded index (``auricle index --shard K/N``) into one index.

The parts must hold the same model's numbers with the same windows (their meta rows
agree); a part still empty (a shard without files) is taken as agreeing. A file in
several parts (an overlap, or an older full index merged with a newer part) keeps the
row of the newest modification time, on a tie the row of the later part: the row that
describes the file as it is now. Rows are copied inside SQLite as stored (nothing is
decoded, so a merged index holds the very bytes one run would have written), into a
temporary beside the output that replaces it only when complete.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from auricle.errors import SearchIndexError
from auricle.search.columns import refresh
from auricle.search.store import Store

#: The meta rows that decide the stored numbers; parts that differ in any would not compare.
SETTINGS = ("model", "weights", "labels", "window", "hop", "embeddings")


@dataclass
class MergeReport:
    parts: int
    files: int
    duplicates: int  # files found in more than one part (each keeps its newest row)


def check_parts(stores: Sequence[Store]) -> dict[str, str]:
    """The meta every non-empty part shares; one :class:`SearchIndexError` line naming the first that differs."""
    first = next((store for store in stores if "model" in store.meta), None)
    if first is None:
        return {}
    for store in stores:
        if "model" not in store.meta:
            continue
        differences = [f"{key} {store.meta.get(key)} there, {first.meta.get(key)} in {first.path}"
                       if key != "labels" else "other classes" for key in SETTINGS
                       if store.meta.get(key) != first.meta.get(key)]
        if differences:
            raise SearchIndexError(f"{store.path}: made with another model or settings than {first.path} "
                                   f"({'; '.join(differences)}); merge only parts of one run")
    settings = {key: first.meta[key] for key in SETTINGS if key in first.meta}
    return {**settings, **_caption_settings(stores)}


def _caption_settings(stores: Sequence[Store]) -> dict[str, str]:
    """The captions' meta the parts with captions share (parts without any agree with all)."""
    from auricle.search.captions import CAPTION_SETTINGS

    first = next((store for store in stores if "caption_model" in store.meta), None)
    if first is None:
        return {}
    for store in stores:
        differences = [f"{key} {store.meta.get(key)} there, {first.meta.get(key)} in {first.path}"
                       for key in CAPTION_SETTINGS if "caption_model" in store.meta
                       and store.meta.get(key) != first.meta.get(key)]
        if differences:
            raise SearchIndexError(f"{store.path}: captioned with another model or settings than {first.path} "
                                   f"({'; '.join(differences)}); merge only parts of one run")
    return {key: first.meta[key] for key in CAPTION_SETTINGS if key in first.meta}


def merge(parts: Sequence[str | os.PathLike], output: str | os.PathLike) -> MergeReport:
    """Write the union of ``parts`` (index files) to ``output``, replacing it whole (see the module docstring)."""
    from auricle.io.atomic import replacing

    parts = [os.fspath(part) for part in parts]
    if not parts:
        raise SearchIndexError("give the index parts to merge")
    stores = [Store(part, readonly=True) for part in parts]  # each checked: an index, of this schema version
    try:
        settings = check_parts(stores)
    finally:
        for store in stores:
            store.close()
    duplicates = 0
    output = os.fspath(output)
    with replacing(output) as temporary:
        merged = Store(temporary, create=True)
        try:
            if settings:
                merged.set_meta(settings)
            for part in parts:
                duplicates += _copy(merged, part)
            files = merged.count()
            with merged.errors():  # one file to rename: the write-ahead log folded in and gone
                merged.connection.execute("PRAGMA journal_mode=DELETE")
        finally:
            merged.close()
    for suffix in ("-wal", "-shm"):  # an old output's log would be replayed into the new file
        try:
            os.unlink(output + suffix)
        except OSError:
            pass
    # The merged rows were copied without change records: the column file is made whole now (until
    # then, and if this is killed, a search finds no column file of this index's and reads the rows).
    finished = Store(output)
    try:
        with finished.errors():
            finished.connection.execute("PRAGMA journal_mode=WAL")
        refresh(finished)
    finally:
        finished.close()
    return MergeReport(parts=len(parts), files=files, duplicates=duplicates)


def _copy(merged: Store, part: str) -> int:
    """Copy ``part``'s rows into ``merged``, newer rows winning; how many of its files ``merged`` held already."""
    connection = merged.connection
    with merged.errors():
        connection.execute("ATTACH DATABASE ? AS part", (part,))
    try:
        with merged.transaction():
            connection.execute("CREATE TEMP TABLE chosen AS SELECT p.path, m.id IS NOT NULL AS known"
                               " FROM part.files p LEFT JOIN main.files m ON m.path = p.path"
                               " WHERE m.id IS NULL OR p.mtime_ns >= m.mtime_ns")
            duplicates = connection.execute("SELECT count(*) FROM part.files p JOIN main.files m ON m.path = p.path"
                                            ).fetchone()[0]
            connection.execute("DELETE FROM main.file_windows WHERE file_id IN (SELECT id FROM main.files"
                               " WHERE path IN (SELECT path FROM temp.chosen WHERE known))")
            connection.execute("DELETE FROM main.file_captions WHERE file_id IN (SELECT id FROM main.files"
                               " WHERE path IN (SELECT path FROM temp.chosen WHERE known))")
            connection.execute("DELETE FROM main.files WHERE path IN (SELECT path FROM temp.chosen WHERE known)")
            connection.execute("INSERT INTO main.files (path, size, mtime_ns, duration)"
                               " SELECT path, size, mtime_ns, duration FROM part.files"
                               " WHERE path IN (SELECT path FROM temp.chosen) ORDER BY path")
            connection.execute("INSERT INTO main.file_windows (file_id, clip_scores, clip_embedding, window_bounds,"
                               " window_scores, piece_bounds, piece_embeddings) SELECT m.id, w.clip_scores,"
                               " w.clip_embedding, w.window_bounds, w.window_scores, w.piece_bounds,"
                               " w.piece_embeddings FROM part.files p JOIN part.file_windows w ON w.file_id = p.id"
                               " JOIN main.files m ON m.path = p.path WHERE p.path IN (SELECT path FROM temp.chosen)")
            connection.execute("INSERT INTO main.file_captions (file_id, bounds, texts, embeddings)"
                               " SELECT m.id, c.bounds, c.texts, c.embeddings FROM part.files p"
                               " JOIN part.file_captions c ON c.file_id = p.id JOIN main.files m ON m.path = p.path"
                               " WHERE p.path IN (SELECT path FROM temp.chosen)")
            connection.execute("DROP TABLE temp.chosen")
    finally:
        with merged.errors():
            connection.execute("DETACH DATABASE part")
    return duplicates

