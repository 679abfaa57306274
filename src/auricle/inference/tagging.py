"""From window probabilities to clip tags, window tags and events.

The "output space" is what the user asked to see: all model classes, a
selection (``--classes``), or the events of a profile (each the max over its
classes, with its own threshold and display name).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from auricle.errors import LabelError, OptionError
from auricle.inference.events import EventOptions, detect_segments
from auricle.inference.windows import WindowConfig
from auricle.inference.results import ClipTags, Event, Tag, WindowScores
from auricle.labels import LabelSet, resolve_classes
from auricle.profiles import Profile

POOLS = ("max", "mean")
DEFAULT_TOP_K = 5
DEFAULT_EVENT_THRESHOLD = 0.5


@dataclass(frozen=True)
class ClassSpace:
    """Output columns: label, MID, model index (-1 for grouped profile events) and threshold."""

    labels: tuple[str, ...]
    mids: tuple[str, ...]
    indices: tuple[int, ...]
    thresholds: tuple[float | None, ...]
    #: For each column, the model output indices whose max forms its score.
    members: tuple[tuple[int, ...], ...]

    def project(self, probabilities: np.ndarray) -> np.ndarray:
        """(..., model classes) -> (..., columns)."""
        if all(len(group) == 1 for group in self.members):
            return probabilities[..., [group[0] for group in self.members]]
        return np.stack([probabilities[..., list(group)].max(axis=-1) for group in self.members], axis=-1)

    @classmethod
    def build(
        cls, labels: LabelSet, classes: Sequence[str] | None = None, profile: Profile | None = None
    ) -> "ClassSpace":
        if profile is not None:
            if len(labels) != 527:
                raise OptionError("profiles name AudioSet classes; this model has its own classes")
            chosen = set(resolve_classes(classes, labels)) if classes else None
            events = [e for e in profile.events if chosen is None or chosen & set(e.class_indices)]
            if not events:  # else every result would be empty, with nothing to say why
                raise LabelError(f"no event of profile {profile.name!r} covers the classes {'; '.join(classes)}; "
                                 f"see `auricle labels --profile {profile.name}`")
            return cls(
                labels=tuple(e.label for e in events),
                mids=tuple(labels[e.class_indices[0]].mid if len(e.class_indices) == 1 else "" for e in events),
                indices=tuple(e.class_indices[0] if len(e.class_indices) == 1 else -1 for e in events),
                thresholds=tuple(e.threshold for e in events),
                members=tuple(tuple(e.class_indices) for e in events),
            )
        indices = resolve_classes(classes, labels) if classes else list(range(len(labels)))
        return cls(
            labels=tuple(labels[i].name for i in indices),
            mids=tuple(labels[i].mid for i in indices),
            indices=tuple(indices),
            thresholds=(None,) * len(indices),
            members=tuple((i,) for i in indices),
        )


@dataclass(frozen=True)
class TagOptions:
    """What ``tag`` reports.

    ``top_k``/``threshold``: which tags to list (both may apply; with neither,
    the top 5). A profile sets each event's threshold, so ``threshold`` and
    ``profile`` are refused together rather than one silently ignored.
    ``pool``: how window scores become clip scores, ``max`` or ``mean``.
    ``events``: form time-stamped events (threshold defaults to 0.5).
    ``window``: how recordings longer than one window are cut.
    """

    top_k: int | None = None
    threshold: float | None = None
    classes: tuple[str, ...] = ()
    profile: Profile | None = None
    pool: str = "max"
    events: EventOptions | None = None
    window: WindowConfig = WindowConfig()

    def __post_init__(self) -> None:
        if self.pool not in POOLS:
            raise OptionError(f"pool must be one of {POOLS}, got {self.pool!r}")
        # Checked by type too: 2.5 or "3" failed deep inside (slice indices), True passed for 1.
        if self.top_k is not None and (not isinstance(self.top_k, (int, np.integer)) or isinstance(self.top_k, bool)
                                       or self.top_k < 1):
            raise OptionError(f"top_k must be a whole number >= 1, got {self.top_k!r}")
        if self.threshold is not None and (not isinstance(self.threshold, (int, float, np.number))
                                           or isinstance(self.threshold, bool) or not 0.0 <= self.threshold <= 1.0):
            raise OptionError(f"threshold must be a number in [0, 1], got {self.threshold!r}")
        if self.events is not None and not isinstance(self.events, EventOptions):
            raise OptionError(f"events must be True, False or an EventOptions, got {self.events!r}")
        if self.threshold is not None and self.profile is not None:
            raise OptionError(
                f"threshold and profile do not combine: profile {self.profile.name!r} sets each event's threshold "
                "(edit a copy of the profile to change them)"
            )

    def column_thresholds(self, space: ClassSpace, default: float | None) -> np.ndarray:
        base = self.threshold if self.threshold is not None else default
        return np.array(
            [t if t is not None else (base if base is not None else np.nan) for t in space.thresholds],
            dtype=float,
        )


def select_tags(
    scores: np.ndarray, space: ClassSpace, options: TagOptions
) -> tuple[Tag, ...]:
    """Top-k and/or threshold selection over one row of column scores, best first."""
    order = np.argsort(-scores, kind="stable")
    thresholds = options.column_thresholds(space, None)
    uses_threshold = not np.all(np.isnan(thresholds))
    if uses_threshold:
        order = [c for c in order if not np.isnan(thresholds[c]) and scores[c] >= thresholds[c]]
    top_k = options.top_k if options.top_k is not None else (None if uses_threshold else DEFAULT_TOP_K)
    if top_k is not None:
        order = order[:top_k]
    return tuple(Tag(space.indices[c], space.mids[c], space.labels[c], float(scores[c])) for c in order)


def summarize(
    file: str,
    duration: float,
    model: str,
    bounds: np.ndarray,
    probabilities: np.ndarray,
    space: ClassSpace,
    options: TagOptions,
) -> ClipTags:
    """Build the result of one recording from its window bounds (seconds) and probabilities."""
    scores = space.project(probabilities)
    pooled = scores.max(axis=0) if options.pool == "max" else scores.mean(axis=0)
    windows = tuple(
        WindowScores(float(start), float(end), select_tags(row, space, options))
        for (start, end), row in zip(bounds, scores)
    )
    events = None
    if options.events is not None:
        thresholds = options.column_thresholds(space, DEFAULT_EVENT_THRESHOLD)
        events = tuple(
            Event(
                label=space.labels[s.column],
                mid=space.mids[s.column],
                index=space.indices[s.column],
                onset=s.onset,
                offset=s.offset,
                max_score=s.max_score,
                mean_score=s.mean_score,
            )
            # Chronological, as people read a timeline and DCASE tools expect.
            for s in sorted(detect_segments(bounds, scores, thresholds, options.events),
                            key=lambda s: (s.onset, s.offset, s.column))
        )
    return ClipTags(
        file=file,
        duration=duration,
        model=model,
        pool=options.pool,
        tags=select_tags(pooled, space, options),
        windows=windows,
        events=events,
        window_bounds=bounds,
        scores=scores,
        class_labels=space.labels,
    )
