"""Sound events from window scores: threshold, smooth, merge gaps, drop short ones.

Overlapping windows are first resolved onto a timeline of segments cut at every
window boundary; a segment's score is the mean of the windows covering it. With
hop == window the segments are the windows themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from auricle.errors import OptionError


#: Longest median filter, in segments (hops): longer ones smooth away all but hour-long events and cost
#: time and memory in proportion, which a service must not let one request spend.
MAX_MEDIAN_FILTER = 101
_MEDIAN_BLOCK = 1 << 22


@dataclass(frozen=True)
class EventOptions:
    """How events are formed from window scores.

    ``median_filter``: length of the median filter over segments (1 = none).
    ``min_duration``: events shorter than this (seconds) are dropped.
    ``min_gap``: events of one class closer than this (seconds) are merged.
    """

    median_filter: int = 1
    min_duration: float = 0.0
    min_gap: float = 0.0

    def __post_init__(self) -> None:
        if not 1 <= self.median_filter <= MAX_MEDIAN_FILTER or self.median_filter % 2 == 0:
            raise OptionError(f"median filter length must be odd, 1 to {MAX_MEDIAN_FILTER}, got {self.median_filter}")
        if self.min_duration < 0 or self.min_gap < 0:
            raise OptionError("min_duration and min_gap must be >= 0")


@dataclass(frozen=True)
class Segment:
    """One class's contiguous run above threshold, before labels are attached."""

    column: int
    onset: float
    offset: float
    max_score: float
    mean_score: float


def timeline(bounds: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Resolve (windows, 2) bounds in seconds and (windows, classes) scores onto segments.

    Returns (segments, 2) edges and (segments, classes) scores; each segment's
    score is the mean over the windows that cover it.
    """
    edges = np.unique(bounds.reshape(-1))
    starts, ends = edges[:-1], edges[1:]
    if len(starts) == 0:  # a single zero-length window
        return bounds[:1].astype(float), scores[:1].astype(float)
    centres = (starts + ends) / 2
    covers = (bounds[None, :, 0] <= centres[:, None]) & (centres[:, None] < bounds[None, :, 1])
    weights = covers / np.maximum(covers.sum(axis=1, keepdims=True), 1)
    return np.stack([starts, ends], axis=1), weights @ scores


def median_smooth(scores: np.ndarray, length: int) -> np.ndarray:
    """Median filter along segments (axis 0), edges padded by repetition."""
    if length == 1 or len(scores) == 1:
        return scores
    half = length // 2
    padded = np.concatenate([np.repeat(scores[:1], half, 0), scores, np.repeat(scores[-1:], half, 0)])
    stacked = np.lib.stride_tricks.sliding_window_view(padded, length, axis=0)
    # np.median copies what it is given: in blocks of rows, an hour of 1 s segments stays at tens of MB.
    rows = max(1, _MEDIAN_BLOCK // (length * max(1, scores.shape[1])))
    return np.concatenate([np.median(stacked[i:i + rows], axis=-1) for i in range(0, len(scores), rows)])


def detect_segments(
    bounds: np.ndarray, scores: np.ndarray, thresholds: np.ndarray, options: EventOptions
) -> list[Segment]:
    """Per class (column), the runs where the smoothed score is at or above its threshold."""
    edges, segment_scores = timeline(bounds, scores)
    smoothed = median_smooth(segment_scores, options.median_filter)
    lengths = edges[:, 1] - edges[:, 0]
    found: list[Segment] = []
    for column in range(scores.shape[1]):
        active = smoothed[:, column] >= thresholds[column]
        runs: list[list[int]] = []
        for i in np.flatnonzero(active):
            if runs and (i == runs[-1][1] + 1 or edges[i, 0] - edges[runs[-1][1], 1] < options.min_gap):
                runs[-1][1] = i
            else:
                runs.append([i, i])
        for first, last in runs:
            onset, offset = float(edges[first, 0]), float(edges[last, 1])
            if offset - onset < options.min_duration:
                continue
            # Statistics over the segments that were above threshold, weighted by length.
            inside = np.arange(first, last + 1)
            inside = inside[active[inside]]
            values = segment_scores[inside, column]
            found.append(
                Segment(
                    column,
                    onset,
                    offset,
                    float(values.max()),
                    float(np.average(values, weights=np.maximum(lengths[inside], 1e-9))),
                )
            )
    found.sort(key=lambda s: (s.onset, s.column))
    return found
