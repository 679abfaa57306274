"""Segment captions in the index, and queries matched to them text to text (docs/search.md).

``auricle index --describe`` asks MiDashengLM for a caption of each segment of every
indexed file that has none yet, embeds each caption with the sentence encoder
(:mod:`~auricle.search.text`) and stores texts and vectors in ``file_captions``, one
transaction per file: an interrupted run keeps every file finished, and the next run
captions only what is left. A file changed or dropped by ``auricle index`` loses its
captions with its rows (:meth:`~auricle.search.store.Store.delete`).

A query in words is then matched twice: to the sound classes (their stored scores,
:mod:`~auricle.search.query`) and to the captions (cosine between the query's and each
caption's vector). A caption counts from :data:`CAPTION_FLOOR` up, scaled to [0, 1];
a file's caption score is its best segment's. The two scores combine as a noisy-OR,
``1 - (1 - class) (1 - caption)``: either kind of evidence alone ranks a file, both
together rank it higher, and a file without captions keeps its class score (so an
index without captions ranks exactly as before).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from auricle.errors import AuricleError, OptionError, SearchIndexError
from auricle.search.query import (
    ENGLISH_HINT, MAX_SEGMENTS, MISSING_SPARE, CaptionMatch, Filters, QueryClass, SearchHit, class_evidence,
    class_matrix_score, class_score, present, ranked,
)
from auricle.search.store import Store, from_blob, to_blob

#: The preset every caption is asked with (language/prompts.py): one sentence about the sounds.
CAPTION_PROMPT = "caption"
#: Below this cosine a caption says nothing about the query (unrelated sentences reach 0.1-0.3 with
#: all-MiniLM-L6-v2; a caption of the sound asked for 0.4-0.75): the same floor as for class names.
CAPTION_FLOOR = 0.35
#: The meta rows that decide the stored captions; another describer's would not compare.
CAPTION_SETTINGS = ("caption_model", "caption_prompt", "caption_segment", "caption_encoder")


@dataclass
class CaptionReport:
    """What a captioning pass did; ``failures`` are (file, one-line reason)."""

    added: int = 0
    unchanged: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)


def describer_meta(describer, segment: float, encoder_key: str) -> dict[str, str]:
    """What decides the stored captions: the describer's name, the prompt, the segment length, the text encoder."""
    return {"caption_model": describer.name, "caption_prompt": CAPTION_PROMPT, "caption_segment": repr(float(segment)),
            "caption_encoder": encoder_key}


def check_describer(store: Store, expected: dict[str, str]) -> None:
    """Refuse to mix another describer's (or other segments') captions into an index."""
    if "caption_model" not in store.meta:
        return
    differences = [f"{key.removeprefix('caption_')} {store.meta.get(key)} here, {value} now"
                   for key, value in expected.items() if store.meta.get(key) != value]
    if differences:
        raise SearchIndexError(f"{store.path}: captioned with another model or settings ({'; '.join(differences)}); "
                               "caption with the same --describe and --describe-segment, or index into a new file")


def uncaptioned(store: Store, files: Iterable[str]) -> tuple[list[str], int]:
    """Which of ``files`` are indexed without captions (in the order given), and how many indexed ones have them."""
    with store.errors():
        missing = {path for (path,) in store.connection.execute(
            "SELECT path FROM files LEFT JOIN file_captions ON file_captions.file_id = files.id"
            " WHERE file_captions.file_id IS NULL")}
        indexed = {path for (path,) in store.connection.execute("SELECT path FROM files")}
    files = [file for file in files if file in indexed]
    todo = [file for file in files if file in missing]
    return todo, len(files) - len(todo)


def caption(store: Store, describer, files: list[str], encoder, *, segment: float, max_new_tokens: int = 128,
            on_result: Callable[[str, str | None], None] | None = None) -> CaptionReport:
    """Caption the indexed ``files`` (absolute paths) that have no captions yet; see the module docstring.

    ``describer`` is an :class:`~auricle.language_model.AudioLanguageModel` (or anything with its
    ``name`` and ``describe``); ``encoder`` a :class:`~auricle.search.text.TextEncoder`.
    ``on_result(file, error)`` is called once per file captioned (error None on success).
    """
    from auricle.search.index import stamp

    meta = describer_meta(describer, segment, encoder.key)
    check_describer(store, meta)
    todo, done = uncaptioned(store, files)
    report = CaptionReport(unchanged=done)
    if todo and "caption_model" not in store.meta:
        store.set_meta(meta)
    for file in todo:
        try:
            before = stamp(file)
            description = describer.describe(file, CAPTION_PROMPT, segment_seconds=segment,
                                             max_new_tokens=max_new_tokens)
            said = [s for s in description.segments if s.skipped is None and s.text.strip()]
            vectors = encoder.encode([s.text.strip() for s in said]) if said else np.zeros((0, 0), np.float32)
            _store_captions(store, file, before, said, vectors)
        except SearchIndexError:
            raise  # the index file's (locked, damaged): every file would fail alike, so the pass stops in one line
        except (AuricleError, OSError) as error:
            reason = str(error) if isinstance(error, AuricleError) else f"{file}: {error.strerror or error}"
            report.failures.append((file, reason))
            if on_result is not None:
                on_result(file, reason)
            continue
        report.added += 1
        if on_result is not None:
            on_result(file, None)
    return report


def _store_captions(store: Store, file: str, before: tuple[int, int], said, vectors: np.ndarray) -> None:
    """One file's captions in one transaction, if the index still holds the very file that was described."""
    bounds = np.array([[s.start, s.end] for s in said], dtype=np.float32).reshape(-1, 2)
    with store.transaction() as connection:
        found = connection.execute("SELECT id, size, mtime_ns FROM files WHERE path = ?", (file,)).fetchone()
        # The index's row, the file before and after describing: all one, or the captions would describe other audio.
        if found is None or tuple(found[1:]) != before or _stamp_or_none(file) != before:
            raise AuricleError(f"{file}: changed since it was indexed; run `auricle index` again")
        connection.execute("INSERT OR REPLACE INTO file_captions (file_id, bounds, texts, embeddings) "
                           "VALUES (?, ?, ?, ?)", (found[0], to_blob(bounds, "f4"),
                                                   json.dumps([s.text.strip() for s in said]),
                                                   to_blob(vectors, "f2")))


def _stamp_or_none(file: str) -> tuple[int, int] | None:
    from auricle.search.index import stamp

    try:
        return stamp(file)
    except OSError:
        return None


def captioned_files(store: Store) -> int:
    """How many indexed files have captions."""
    with store.errors():
        return store.connection.execute("SELECT count(*) FROM file_captions").fetchone()[0]


def caption_scores(store: Store, vector: np.ndarray, chunk: int = 4096) -> dict[int, tuple[float, list[CaptionMatch]]]:
    """file id -> (caption score, its matching segments best first), for files with a caption over the floor."""
    found: dict[int, tuple[float, list[CaptionMatch]]] = {}
    with store.errors():
        cursor = store.connection.execute("SELECT file_id, bounds, texts, embeddings FROM file_captions")
        while rows := cursor.fetchmany(chunk):
            rows = [row for row in rows if row[3]]
            if not rows:
                continue
            # One product per chunk, not per file: the vectors are float16 as stored.
            counts = [len(row[3]) // (2 * len(vector)) for row in rows]
            matrix = np.frombuffer(b"".join(row[3] for row in rows), dtype="<f2").reshape(-1, len(vector))
            cosines = matrix.astype(np.float32) @ vector
            first = 0
            for row, count in zip(rows, counts):
                mine, first = cosines[first:first + count], first + count
                if float(mine.max()) < CAPTION_FLOOR:
                    continue
                bounds, texts = from_blob(row[1], "f4", 2), json.loads(row[2])
                matches = sorted((CaptionMatch(float(bounds[i][0]), float(bounds[i][1]), texts[i], scaled(mine[i]))
                                  for i in np.flatnonzero(mine >= CAPTION_FLOOR)), key=lambda m: -m.score)
                found[row[0]] = (matches[0].score, matches[:MAX_SEGMENTS])
    return found


def scaled(cosine: float) -> float:
    """A caption's cosine as a score in [0, 1]: 0 at the floor, 1 for the same sentence."""
    return max(0.0, (float(cosine) - CAPTION_FLOOR) / (1.0 - CAPTION_FLOOR))


def check_encoder(store: Store, encoder) -> None:
    stored = store.meta.get("caption_encoder")
    if stored is not None and stored != encoder.key:
        raise SearchIndexError(f"{store.path}: its captions were embedded by another sentence encoder (key {stored}, "
                               f"this one {encoder.key}); index the captions again into a new file")


def hybrid_hits(store: Store, query: str, classes: list[QueryClass], filters: Filters, top: int,
                warn: Callable[[str], None], encoder) -> list[SearchHit]:
    """Files ranked by the noisy-OR of their class score (``classes``) and caption score for ``query``.

    Only the files with a caption over the floor need both scores (read from SQLite); every
    other file's score is its class score alone, ranked from the column file as a class query's.
    """
    check_encoder(store, encoder)
    captions = caption_scores(store, encoder.encode([query.strip()])[0])
    if not classes and not captions:
        raise OptionError(f"{query.strip()!r}: matches no sound class and no caption in {store.path}; describe a "
                          f"sound{ENGLISH_HINT}, or name a class (`auricle labels`)")
    indices = np.array([c.index for c in classes], dtype=int)
    weights = np.array([c.weight for c in classes], dtype=np.float32)
    keep = top + MISSING_SPARE
    said = _captioned(store, captions, indices, weights, filters)
    best = [(score, path, duration) for score, path, duration, _ in said if score > 0]
    if classes:
        # The best by class alone, as many more as there are captioned files (which may be among them).
        captioned = {path for _, path, _, _ in said}
        best += [item for item in ranked(store, "clip_scores", class_matrix_score(indices, weights),
                                         class_score(indices, weights), filters, keep + len(said))
                 if item[1] not in captioned and item[0] > 0]
    ids = {path: file_id for _, path, _, file_id in said}
    hits = []
    for score, path, duration in present(sorted(best, key=lambda item: (-item[0], item[1]))[:keep], warn, top):
        matched, segments = class_evidence(store.row(path), classes) if classes else ((), ())
        found = tuple(captions[ids[path]][1]) if path in ids else ()
        hits.append(SearchHit(len(hits) + 1, path, score, duration, matched, segments, found))
    return hits


def _captioned(store: Store, captions: dict[int, tuple[float, list[CaptionMatch]]], indices: np.ndarray,
               weights: np.ndarray, filters: Filters) -> list[tuple[float, str, float, int]]:
    """(noisy-OR score, path, duration, file id) of the files in ``captions`` that ``filters`` keeps."""
    where, parameters = filters.sql()
    ids = sorted(captions)
    found = []
    for first in range(0, len(ids), 900):  # SQLite's bound on parameters
        part = ids[first:first + 900]
        clause = f"files.id IN ({','.join('?' * len(part))})"
        for chunk in store.rows("path, duration, clip_scores, files.id", f"{where} AND {clause}" if where
                                else f"WHERE {clause}", (*parameters, *part)):
            for path, duration, scores, file_id in chunk:
                if not filters.keeps(path):
                    continue
                by_class = (float((from_blob(scores, "f2")[indices].astype(np.float32) * weights).max())
                            if len(indices) else 0.0)
                score = 1.0 - (1.0 - by_class) * (1.0 - captions[file_id][0])
                found.append((score, path, float(duration), file_id))
    return found
