"""Typed results of tagging and embedding, with their stable JSON form.

``to_dict()`` output is the documented JSON schema (docs/output-format.md);
bump :data:`SCHEMA_VERSION` on any incompatible change.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SCHEMA_VERSION = 1

#: One 16-frame patch of log-mel at 16 kHz (0.15 s), CED's shortest clip: a shorter recording is
#: zero-padded to it, so its scores say little about the sound (``too_short`` in results).
PATCH_SAMPLES = 2400
PATCH_SECONDS = PATCH_SAMPLES / 16000


def _too_short(duration: float) -> bool:
    return round(duration * 16000) < PATCH_SAMPLES


def _round(value: float, digits: int = 6) -> float:
    return round(float(value), digits)


@dataclass(frozen=True)
class Tag:
    """One class with its score. ``index`` is the model's output index (-1 for a profile event)."""

    index: int
    mid: str
    label: str
    score: float

    def to_dict(self) -> dict:
        return {"index": self.index, "mid": self.mid, "label": self.label, "score": _round(self.score)}


@dataclass(frozen=True)
class WindowScores:
    """Scores of one analysis window; ``start``/``end`` in seconds (``end`` is the real end)."""

    start: float
    end: float
    tags: tuple[Tag, ...]

    def to_dict(self) -> dict:
        return {
            "start": _round(self.start, 3),
            "end": _round(self.end, 3),
            "tags": [tag.to_dict() for tag in self.tags],
        }


@dataclass(frozen=True)
class Event:
    """A time span in which one class stays above its threshold."""

    label: str
    mid: str
    index: int
    onset: float
    offset: float
    max_score: float
    mean_score: float

    @property
    def duration(self) -> float:
        return self.offset - self.onset

    def to_dict(self) -> dict:
        return {
            "label": self.label,
            "mid": self.mid,
            "index": self.index,
            "onset": _round(self.onset, 3),
            "offset": _round(self.offset, 3),
            "max_score": _round(self.max_score),
            "mean_score": _round(self.mean_score),
        }


@dataclass(frozen=True)
class ClipTags:
    """Everything ``tag`` found in one recording.

    ``scores`` holds the raw window-by-class matrix over the reported classes
    (``class_labels``), for programs that want more than the top tags.
    ``truncated``: the file holds less audio than its header declares
    (``declared_duration`` seconds); what it holds was tagged.
    ``too_short``: shorter than one patch (:data:`PATCH_SECONDS`), scored zero-padded.
    """

    file: str
    duration: float
    model: str
    pool: str
    tags: tuple[Tag, ...]
    windows: tuple[WindowScores, ...]
    events: tuple[Event, ...] | None = None
    window_bounds: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)), repr=False, compare=False)
    scores: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)), repr=False, compare=False)
    class_labels: tuple[str, ...] = field(default=(), repr=False, compare=False)
    truncated: bool = False
    declared_duration: float | None = None

    @property
    def too_short(self) -> bool:
        return _too_short(self.duration)

    def to_dict(self) -> dict:
        result = {
            "schema_version": SCHEMA_VERSION,
            "file": self.file,
            "duration": _round(self.duration, 3),
            "model": self.model,
            "pool": self.pool,
            "truncated": self.truncated,
            "too_short": self.too_short,
            "tags": [tag.to_dict() for tag in self.tags],
            "windows": [window.to_dict() for window in self.windows],
        }
        if self.truncated and self.declared_duration is not None:
            result["declared_duration"] = _round(self.declared_duration, 3)
        if self.events is not None:
            result["events"] = [event.to_dict() for event in self.events]
        return result


@dataclass(frozen=True)
class Embeddings:
    """Embeddings of one recording.

    ``clip`` is the mean of all tokens (the official HEAR scene embedding);
    ``windows`` holds one mean-token embedding per analysis window with its
    ``starts``/``ends`` in seconds. ``truncated``: the file holds less audio
    than its header declares (``declared_duration`` seconds); what it holds was
    embedded. ``too_short``: shorter than one patch, embedded zero-padded.
    """

    file: str
    duration: float
    model: str
    clip: np.ndarray
    windows: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    truncated: bool = False
    declared_duration: float | None = None

    @property
    def too_short(self) -> bool:
        return _too_short(self.duration)

    def to_dict(self) -> dict:
        declared = {"declared_duration": _round(self.declared_duration, 3)} if self.truncated and \
            self.declared_duration is not None else {}
        return {
            "schema_version": SCHEMA_VERSION,
            "file": self.file,
            "duration": _round(self.duration, 3),
            "model": self.model,
            "truncated": self.truncated,
            "too_short": self.too_short,
            **declared,
            "dim": int(self.clip.shape[-1]),
            "clip": [float(x) for x in self.clip],
            "windows": [
                {"start": _round(s, 3), "end": _round(e, 3), "embedding": [float(x) for x in w]}
                for s, e, w in zip(self.starts, self.ends, self.windows)
            ],
        }


@dataclass(frozen=True)
class Failure:
    """A file that could not be processed, with the one-line reason."""

    file: str
    error: str
