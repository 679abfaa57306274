"""From a query to ranked files and time segments.

A query becomes weights over the model's classes. Exact class names, MIDs and
ontology nodes (``Dog``, ``/m/0bt9lr``, ``Animal``; ``;`` joins several) select
their classes with weight 1, as ``tag --classes`` does. Anything else is a
description: :mod:`auricle.search.matching` weighs the classes by the sentence
encoder's cosine between it and each class's texts (name, aliases, ontology
description). A file's score is the largest weighted class score over its clip,
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
from auricle.search.columns import unit_f16
from auricle.search.ranking import class_matrix_score, class_score, cosine_score, ranked
from auricle.search.store import Store

#: Classes named in a hit's "matched" list, at most.
MAX_CLASSES = 5
#: Segments reported per file, and how close to the file's best window a window must come to be one.
MAX_SEGMENTS = 3
SEGMENT_FRACTION = 0.5
#: The sentence encoder was trained on English: other languages rarely pass its cutoff (search/matching.py), so say so.
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
    from auricle.search.matching import describe

    chosen, closest, best = describe(text, encoder)
    if not chosen:
        if not refuse:
            return []
        raise OptionError(f"{text!r}: matches no sound class (the closest, {labels[closest].name!r}, only {best:.2f}); "
                          f"describe a sound{ENGLISH_HINT}, or name a class (`auricle labels`)")
    return [QueryClass(c.index, labels[c.index].mid, labels[c.index].name, c.weight, c.similarity) for c in chosen]


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
