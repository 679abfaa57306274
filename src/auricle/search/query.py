"""From a query to ranked files and time segments.

A query becomes weights over the model's classes. Exact class names, MIDs and
ontology nodes (``Dog``, ``/m/0bt9lr``, ``Animal``; ``;`` joins several) select
their classes with weight 1, as ``tag --classes`` does. Anything else is a
description: the sentence encoder's cosine between it and each class (name and
ontology description) picks the closest classes, weighted by similarity relative
to the best. A file's score is the largest weighted class score over its clip,
``max_c w_c * s_c``, in [0, 1]; its segments are the windows where that score is
highest, adjacent windows joined. ``like`` ranks instead by the cosine between clip
embeddings, segments by the pieces' embeddings.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from auricle.errors import OptionError
from auricle.labels import LabelError, LabelSet, resolve_classes
from auricle.search.columns import Columns, read_columns, unit_f16, usable
from auricle.search.store import Store

#: Below this cosine a description is taken to name no sound class at all (unrelated
#: words and gibberish reach 0.2-0.3 with all-MiniLM-L6-v2; sound descriptions 0.45+).
MIN_SIMILARITY = 0.35
#: Classes within this much of the best one's similarity count, at most MAX_CLASSES of them.
SIMILARITY_MARGIN = 0.1
MAX_CLASSES = 5
#: Segments reported per file, and how close to the file's best window a window must come to be one.
MAX_SEGMENTS = 3
SEGMENT_FRACTION = 0.5
#: The sentence encoder was trained on English: other languages rarely reach MIN_SIMILARITY, so say so.
ENGLISH_HINT = " in English (the sentence encoder reads English)"


@dataclass(frozen=True)
class QueryClass:
    """A class the query selects, with its weight (1 for an exact name) and, for text, the similarity."""

    index: int
    mid: str
    label: str
    weight: float
    similarity: float | None = None


@dataclass(frozen=True)
class Match:
    """Why a file matched: a class, its weighted score in the file."""

    index: int
    mid: str
    label: str
    score: float

    def to_dict(self) -> dict:
        return {"index": self.index, "mid": self.mid, "label": self.label, "score": round(self.score, 6)}


@dataclass(frozen=True)
class Segment:
    """A time span (seconds) where the query scores highest, and the class that scored."""

    start: float
    end: float
    score: float
    labels: tuple[str, ...]

    def to_dict(self) -> dict:
        return {"start": round(self.start, 3), "end": round(self.end, 3), "score": round(self.score, 6),
                "labels": list(self.labels)}


@dataclass(frozen=True)
class CaptionMatch:
    """Why a file matched through its captions: a captioned segment (seconds), its text and its score."""

    start: float
    end: float
    text: str
    score: float

    def to_dict(self) -> dict:
        return {"start": round(self.start, 3), "end": round(self.end, 3), "text": self.text,
                "score": round(self.score, 6)}


@dataclass(frozen=True)
class SearchHit:
    """One ranked file: why it matched, the classes (``matched``, ``segments``) and/or the captions."""

    rank: int
    file: str
    score: float
    duration: float
    matched: tuple[Match, ...]
    segments: tuple[Segment, ...]
    captions: tuple[CaptionMatch, ...] = ()

    def to_dict(self) -> dict:
        return {"rank": self.rank, "file": self.file, "score": round(self.score, 6),
                "duration": round(self.duration, 3), "matched": [m.to_dict() for m in self.matched],
                "segments": [s.to_dict() for s in self.segments], "captions": [c.to_dict() for c in self.captions]}


def understand(query: str, labels: LabelSet, encoder: Callable | None = None, *,
               refuse: bool = True) -> list[QueryClass]:
    """The classes ``query`` selects, with weights; an OptionError if it is empty or names no sound
    (``refuse=False``: no classes, for a search that also has captions to match)."""
    text = query.strip()
    if not text:
        raise OptionError("empty query; describe a sound ('a dog barking'), or name a class (`auricle labels`)")
    try:
        exact = resolve_classes(text, labels)
    except LabelError:
        exact = None
    if exact is not None:
        return [QueryClass(i, labels[i].mid, labels[i].name, 1.0) for i in exact]
    if not labels.has_mids:  # a head of its own: words are matched to AudioSet's classes only
        raise OptionError(f"{text!r}: not one of the index's {len(labels)} classes; with a model of its own "
                          "classes, name them exactly")
    from auricle.search.text import class_embeddings, text_encoder

    model = (encoder or text_encoder)()
    vectors = class_embeddings(model)
    similarity = vectors @ model.encode([text])[0]
    order = np.argsort(-similarity)[:MAX_CLASSES]
    best = float(similarity[order[0]])
    if best < MIN_SIMILARITY:
        if not refuse:
            return []
        closest = labels[int(order[0])].name
        raise OptionError(f"{text!r}: matches no sound class (the closest, {closest!r}, only {best:.2f}); describe "
                          f"a sound{ENGLISH_HINT}, or name a class (`auricle labels`)")
    floor = max(MIN_SIMILARITY, best - SIMILARITY_MARGIN)
    return [QueryClass(int(i), labels[int(i)].mid, labels[int(i)].name, float(similarity[i]) / best,
                       float(similarity[i])) for i in order if similarity[i] >= floor]


@dataclass(frozen=True)
class Filters:
    """Which indexed files take part: a glob on the path (on the name when it has no ``/``), a duration range."""

    path: str | None = None
    min_duration: float | None = None
    max_duration: float | None = None
    #: Modification time (when most recorders wrote the file) from ``since_ns`` up to before ``until_ns``.
    since_ns: int | None = None
    until_ns: int | None = None

    def time_sql(self) -> tuple[list[str], list]:
        """The since/until clauses on ``files.mtime_ns`` and their parameters (none without those bounds)."""
        clauses, parameters = [], []
        if self.since_ns is not None:
            clauses.append("mtime_ns >= ?")
            parameters.append(self.since_ns)
        if self.until_ns is not None:
            clauses.append("mtime_ns < ?")
            parameters.append(self.until_ns)
        return clauses, parameters

    def sql(self) -> tuple[str, tuple]:
        clauses, parameters = self.time_sql()
        if self.min_duration is not None:
            clauses.append("duration >= ?")
            parameters.append(self.min_duration)
        if self.max_duration is not None:
            clauses.append("duration <= ?")
            parameters.append(self.max_duration)
        return ("WHERE " + " AND ".join(clauses) if clauses else ""), tuple(parameters)

    def keeps(self, path: str) -> bool:
        if self.path is None:
            return True
        if os.sep in self.path or "/" in self.path:
            return fnmatch.fnmatchcase(path, self._full_pattern())
        return fnmatch.fnmatchcase(os.path.basename(path), self.path)

    def _full_pattern(self) -> str:
        assert self.path is not None
        return os.path.normpath(self.path if os.path.isabs(self.path) else os.path.join(os.getcwd(), self.path))

    def sql_glob(self) -> str:
        """An SQLite GLOB on the full path that every path :meth:`keeps` matches (and maybe a few more:
        a name pattern may match a folder's name too), to narrow a million paths in C first."""
        assert self.path is not None
        pattern = self._full_pattern() if os.sep in self.path or "/" in self.path else f"*{os.sep}{self.path}"
        return pattern.replace("[!", "[^")  # fnmatch's negated set in GLOB's spelling


def time_bound(value, *, end: bool = False) -> int | None:
    """A ``since``/``until`` bound in nanoseconds since the epoch (None stays None).

    ``value``: a datetime or date, seconds since the epoch, or ISO 8601 text (``2026-12-07``,
    ``2026-12-07T22:30``), local time unless it names a zone. A date alone as the ``end`` bound
    means the end of that day: ``until="2026-12-07"`` keeps the files of the 7th.
    """
    import datetime as dt

    if value is None:
        return None
    day_only = isinstance(value, dt.date) and not isinstance(value, dt.datetime)
    if isinstance(value, str):
        text = value.strip()
        try:
            parsed = dt.datetime.fromisoformat(text)
        except ValueError:
            raise OptionError(f"{value!r}: not a date or time; give e.g. 2026-12-07 or 2026-12-07T22:30") from None
        day_only = len(text) <= 10
        value = parsed
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _int64(value * 1e9)
    if day_only:
        value = dt.datetime.combine(value, dt.time()) + (dt.timedelta(days=1) if end else dt.timedelta())
    if not isinstance(value, dt.datetime):
        raise OptionError(f"{value!r}: not a date or time")
    return _int64(value.timestamp() * 1e9)


def _int64(nanoseconds: float) -> int:
    """Within SQLite's integers: a year past 2262 is 'after every file', not an overflow."""
    if nanoseconds != nanoseconds:
        raise OptionError("not a date or time (NaN)")
    return int(min(max(nanoseconds, -(2 ** 63)), 2 ** 63 - 1))


def top_rows(store: Store, column: str, score: Callable[[np.ndarray], np.ndarray], filters: Filters,
             keep: int, since: int | None = None) -> list[tuple[float, str, float]]:
    """The ``keep`` best (score, path, duration) by ``score`` of the ``column`` blobs (a float16 matrix), best
    first, reading the SQLite rows (``since``: only the files changed after that change number)."""
    where, parameters = filters.sql()
    if since is not None:
        where = (where + " AND " if where else "WHERE ") + "files.id IN (SELECT file_id FROM changes WHERE seq > ?)"
        parameters = (*parameters, since)
    best: list[tuple[float, str, float]] = []
    for chunk in store.rows(f"path, duration, {column}", where, parameters):
        if filters.path is not None:
            chunk = [row for row in chunk if filters.keeps(row[0])]
            if not chunk:
                continue
        # float16 as stored: a query's few columns are converted, not the whole (rows, 527) matrix.
        matrix = np.frombuffer(b"".join(row[2] for row in chunk), dtype="<f2").reshape(len(chunk), -1)
        scores = score(matrix)
        # Ties go by path, not by where a row is stored: a merged index ranks as one run's does.
        chosen = (np.flatnonzero(scores >= -np.partition(-scores, keep - 1)[keep - 1]) if len(scores) > keep
                  else range(len(scores)))
        best = sorted(best + [(float(scores[i]), chunk[i][0], float(chunk[i][1])) for i in chosen],
                      key=lambda item: (-item[0], item[1]))[:keep]
    return best


@dataclass(frozen=True)
class ColumnScore:
    """How a query scores the column file: ``approximate`` scores of every row, each within ``tolerance``
    of ``exact(rows)`` (0: they are exact)."""

    approximate: Callable[[Columns], np.ndarray]
    exact: Callable[[Columns, np.ndarray], np.ndarray]
    tolerance: float = 0.0


def ranked(store: Store, column: str, score: Callable[[np.ndarray], np.ndarray], by_columns: ColumnScore,
           filters: Filters, keep: int) -> list[tuple[float, str, float]]:
    """The ``keep`` best (score, path, duration), best first and ties by path: the column file's rows
    (:mod:`auricle.search.columns`) less the files changed since it was written, and those read from SQLite.
    Without a usable column file every row is read from SQLite (the same ranking, slower)."""
    with store.errors():
        store.connection.execute("BEGIN")  # one snapshot: the changes read agree with the meta read
        try:
            meta = dict(store.connection.execute("SELECT key, value FROM meta"))
            columns = read_columns(store.path)
            if not usable(columns, meta):
                return top_rows(store, column, score, filters, keep)
            changed = np.fromiter((row[0] for row in store.connection.execute(
                "SELECT DISTINCT file_id FROM changes WHERE seq > ?", (columns.generation,))), dtype=np.int64)
            best = _best_columns(store, columns, by_columns, changed, filters, keep)
            if len(changed):
                best += top_rows(store, column, score, filters, keep, since=columns.generation)
            return sorted(best, key=lambda item: (-item[0], item[1]))[:keep]
        finally:
            store.connection.execute("COMMIT")


def _best_columns(store: Store, columns: Columns, by_columns: ColumnScore, changed: np.ndarray, filters: Filters,
                  keep: int) -> list[tuple[float, str, float]]:
    valid = np.ones(len(columns), dtype=bool)
    if len(changed):  # their rows here are out of date (or deleted): SQLite has the current ones
        valid &= ~np.isin(columns.ids, changed)
    if filters.min_duration is not None:
        valid &= columns.durations >= filters.min_duration
    if filters.max_duration is not None:
        valid &= columns.durations <= filters.max_duration
    if filters.since_ns is not None or filters.until_ns is not None:
        # Times are not in the column file (only since/until read them): the files in range from SQLite.
        valid &= np.isin(columns.ids, _time_ids(store, filters))
    count = int(valid.sum())
    if not count:
        return []
    approximate = np.where(valid, by_columns.approximate(columns), -np.inf)
    tolerance = by_columns.tolerance
    paths = _Paths(store, columns)
    wanted = keep if filters.path is None else max(256, 8 * keep)
    by_path = filters.path is not None  # each candidate's path checked in Python, a few at a time
    while True:
        if by_path and wanted > LAZY_PATHS:
            # A selective glob: match every path once in SQLite, then rank only the rows it keeps.
            valid &= np.isin(columns.ids, _glob_ids(store, filters))
            count = int(valid.sum())
            if not count:
                return []
            approximate = np.where(valid, approximate, -np.inf)
            by_path, wanted = False, keep
        if wanted >= count:
            rows, bound = np.flatnonzero(valid), -np.inf
        else:
            kth = float(-np.partition(-approximate, wanted - 1)[wanted - 1])
            # Rows below this cannot be among the `wanted` best, however their approximation erred.
            rows, bound = np.flatnonzero(approximate >= kth - 2 * tolerance), kth - tolerance
        exact = by_columns.exact(columns, rows)
        trusted = exact >= bound
        rows, exact = rows[trusted], exact[trusted]
        order = np.lexsort((columns.path_ranks[rows], -exact))  # ties by path, as the SQLite scan ranks them
        rows, exact = rows[order], exact[order]
        if by_path:
            kept = np.fromiter((filters.keeps(path) for path in paths.of(rows)), dtype=bool, count=len(rows))
            rows, exact = rows[kept], exact[kept]
        if len(rows) >= keep or bound == -np.inf:
            rows, exact = rows[:keep], exact[:keep]
            return [(float(score), path, float(columns.durations[row]))
                    for score, path, row in zip(exact, paths.of(rows), rows)]
        wanted *= 8


#: Candidates whose paths a glob is checked on one by one before all paths are matched in SQLite.
LAZY_PATHS = 2048


def _time_ids(store: Store, filters: Filters) -> np.ndarray:
    """The ids of the files modified within ``filters``' since/until."""
    clauses, parameters = filters.time_sql()
    found = store.connection.execute(f"SELECT id FROM files WHERE {' AND '.join(clauses)}", parameters)
    return np.sort(np.fromiter((file_id for (file_id,) in found), dtype=np.int64))


def _glob_ids(store: Store, filters: Filters) -> np.ndarray:
    """The ids of the files whose paths ``filters`` keeps."""
    found = store.connection.execute("SELECT id, path FROM files WHERE path GLOB ?", (filters.sql_glob(),))
    return np.sort(np.fromiter((file_id for file_id, path in found if filters.keeps(path)), dtype=np.int64))


class _Paths:
    """The paths of column-file rows: looked up by id for a few, read whole once for many (a path filter)."""

    MANY = 20000

    def __init__(self, store: Store, columns: Columns) -> None:
        self.store, self.columns = store, columns
        self.every: dict[int, str] | None = None

    def of(self, rows: np.ndarray) -> list[str]:
        ids = self.columns.ids[rows].tolist()
        if self.every is None and len(ids) > self.MANY:
            self.every = dict(self.store.connection.execute("SELECT id, path FROM files"))
        if self.every is not None:
            return [self.every[i] for i in ids]
        found: dict[int, str] = {}
        for first in range(0, len(ids), 900):  # SQLite's bound on parameters
            part = ids[first:first + 900]
            found.update(self.store.connection.execute(
                f"SELECT id, path FROM files WHERE id IN ({','.join('?' * len(part))})", part))
        return [found[i] for i in ids]


def class_matrix_score(indices: np.ndarray, weights: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """``max_c w_c * s_c`` of each row of a (files, classes) float16 matrix of SQLite's clip scores."""
    return lambda matrix: (matrix[:, indices].astype(np.float32) * weights).max(axis=1)


def class_score(indices: np.ndarray, weights: np.ndarray) -> ColumnScore:
    """``max_c w_c * s_c`` from the class-major columns: only the query's classes are read."""
    groups: dict[float, list[int]] = {}  # an ontology node's classes all weigh 1
    for index, weight in zip(indices.tolist(), weights.tolist()):
        groups.setdefault(weight, []).append(index)

    def every(columns: Columns) -> np.ndarray:
        best = np.full(len(columns), -np.inf, dtype=np.float32)
        for weight, members in groups.items():
            # max_c (w s_c) = w max_c s_c for w > 0 (rounding is monotone), so a group is one product.
            np.maximum(best, _column_max(columns, members).astype(np.float32) * np.float32(weight), out=best)
        return best

    def exact(columns: Columns, rows: np.ndarray) -> np.ndarray:
        return (columns.scores[np.ix_(indices, rows)].astype(np.float32) * weights[:, None]).max(axis=0)

    return ColumnScore(every, exact)


def _column_max(columns: Columns, members: list[int]) -> np.ndarray:
    """The largest float16 score per row over the classes ``members``."""
    if not columns.nonnegative:
        return np.max(columns.scores[members], axis=0)
    # Non-negative float16 values order as their bits do: integer maxima run at memory speed.
    best = columns.scores[members[0]].view(np.uint16).copy()
    for member in members[1:]:
        np.maximum(best, columns.scores[member].view(np.uint16), out=best)
    return best.view(np.float16)


#: How far a float16 matrix-vector product's cosines may lie from float32's over the same float16
#: vectors (rounding of the result to float16: at most 2^-12 for |cosine| <= 1; measured 1.4e-4).
F16_PRODUCT_ERROR = 2.5e-4


def cosine_score(query: np.ndarray) -> ColumnScore:
    """Cosines with the column file's unit embeddings. With torch loaded (a ``like=`` search has the
    model) all rows go through one float16 product (~0.06-0.2 s a million 256-dim rows on this CPU) and
    the few near the top are computed again in float32; without it, float32 in chunks."""
    import sys

    query = np.asarray(query, dtype=np.float32)

    def exact(columns: Columns, rows: np.ndarray) -> np.ndarray:
        return columns.embeddings[rows].astype(np.float32) @ query

    torch = sys.modules.get("torch")
    if torch is None:
        def chunked(columns: Columns) -> np.ndarray:
            out = np.empty(len(columns), dtype=np.float32)
            for first in range(0, len(columns), 65536):
                out[first:first + 65536] = columns.embeddings[first:first + 65536].astype(np.float32) @ query
            return out

        return ColumnScore(chunked, exact)

    def product(columns: Columns) -> np.ndarray:
        import warnings

        with warnings.catch_warnings():  # a read-only mapping: torch warns that it could be written; it is not
            warnings.simplefilter("ignore")
            matrix = torch.from_numpy(columns.embeddings)
        return torch.mv(matrix, torch.from_numpy(query).half()).float().numpy()

    return ColumnScore(product, exact, F16_PRODUCT_ERROR)


def class_hits(store: Store, classes: list[QueryClass], filters: Filters, top: int,
               warn: Callable[[str], None]) -> list[SearchHit]:
    indices = np.array([c.index for c in classes])
    weights = np.array([c.weight for c in classes], dtype=np.float32)
    hits = []
    ranking = ranked(store, "clip_scores", class_matrix_score(indices, weights), class_score(indices, weights),
                     filters, top + MISSING_SPARE)
    for score, path, duration in present(ranking, warn, top):
        matched, segments = class_evidence(store.row(path), classes)
        hits.append(SearchHit(len(hits) + 1, path, score, duration, matched, segments))
    return hits


def class_evidence(row, classes: list[QueryClass]) -> tuple[tuple[Match, ...], tuple[Segment, ...]]:
    """Why ``row`` (a :class:`~auricle.search.store.FileRow`) matches ``classes``: the classes that scored, the windows."""
    indices = np.array([c.index for c in classes])
    weights = np.array([c.weight for c in classes], dtype=np.float32)
    weighted = row.clip_scores[indices] * weights
    matched = tuple(Match(c.index, c.mid, c.label, float(w)) for c, w in
                    sorted(zip(classes, weighted), key=lambda item: -item[1]) if w > 0)[:MAX_CLASSES]
    window_scores = row.window_scores[:, indices] * weights
    segments = _segments(row.window_bounds, window_scores.max(axis=1),
                         [classes[i].label for i in window_scores.argmax(axis=1)])
    return matched, segments


def like_hits(store: Store, clip: np.ndarray, filters: Filters, top: int, warn: Callable[[str], None],
              name: str) -> list[SearchHit]:
    query = unit_f16(clip).astype(np.float32)
    query /= max(float(np.linalg.norm(query)), 1e-12)

    def cosine(matrix: np.ndarray) -> np.ndarray:  # rounded as the column file stores them: the same cosines
        return unit_f16(matrix).astype(np.float32) @ query

    hits = []
    ranking = ranked(store, "clip_embedding", cosine, cosine_score(query), filters, top + MISSING_SPARE)
    for score, path, duration in present(ranking, warn, top):
        row = store.row(path)
        pieces = cosine(row.piece_embeddings) if len(row.piece_embeddings) else np.zeros(0)
        segments = _segments(row.piece_bounds, pieces, [f"like {name}"] * len(pieces))
        hits.append(SearchHit(len(hits) + 1, path, score, duration, (), segments))
    return hits


#: Extra candidates ranked so that files deleted since indexing (skipped with a warning) leave no gap.
MISSING_SPARE = 16


def present(ranked: list[tuple[float, str, float]], warn: Callable[[str], None], top: int) -> Iterator:
    """The first ``top`` of ``ranked`` whose file still exists; each missing one is named in one warning line."""
    given = 0
    for item in ranked:
        if given == top:
            return
        if not os.path.exists(item[1]):
            warn(f"{item[1]}: indexed but no longer exists; `auricle index` again to drop it")
            continue
        given += 1
        yield item


def _segments(bounds: np.ndarray, scores: np.ndarray, labels: list[str]) -> tuple[Segment, ...]:
    """Windows scoring at least SEGMENT_FRACTION of the best, overlapping or adjacent ones joined; best first."""
    if not len(scores) or float(scores.max()) <= 0:
        return ()
    floor = SEGMENT_FRACTION * float(scores.max())
    spans: list[list] = []  # start, end, score, labels
    for (start, end), score, label in zip(bounds, scores, labels):
        if score < floor:
            continue
        if spans and start <= spans[-1][1] + 1e-6:
            span = spans[-1]
            span[1] = max(span[1], float(end))
            if label not in span[3]:
                span[3].append(label)
            span[2] = max(span[2], float(score))
            continue
        spans.append([float(start), float(end), float(score), [label]])
    spans.sort(key=lambda span: -span[2])
    return tuple(Segment(s, e, score, tuple(names)) for s, e, score, names in spans[:MAX_SEGMENTS])
