"""Tagging and sound-event metrics on plain arrays and event lists.

Tagging: average precision (area under the precision-recall staircase, as
scikit-learn's ``average_precision_score``), ROC AUC (ties count one half) and
d' = sqrt(2) * Phi^-1(AUC), the AudioSet convention.

Events (DCASE conventions, as ``sed_eval``):

* segment-based: time cut into fixed segments (1 s); a class is active in a
  segment when one of its events overlaps it; true/false positives and misses
  are counted per segment and class;
* event-based: a predicted event matches a reference event of the same file
  and class when their onsets differ by at most the onset collar (200 ms) and
  their offsets by at most max(offset collar, ratio * reference length)
  (max(200 ms, 20 %)); each event matches at most once, and the matching is a
  maximum one (so the count does not depend on event order).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np


# --------------------------------------------------------------------------- tagging
def average_precision(targets: np.ndarray, scores: np.ndarray) -> float:
    """AP of one class: mean precision at each positive, tied scores ranked together; NaN without positives."""
    targets = np.asarray(targets, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    positives = int(targets.sum())
    if positives == 0:
        return math.nan
    order = np.argsort(-scores, kind="stable")
    ranked_scores, ranked_targets = scores[order], targets[order]
    # Evaluate only at the last item of each run of equal scores (one threshold per distinct score).
    last_of_tie = np.r_[ranked_scores[1:] != ranked_scores[:-1], True]
    true_positives = np.cumsum(ranked_targets)[last_of_tie]
    predicted = (np.arange(len(scores)) + 1)[last_of_tie]
    precision = true_positives / predicted
    recall_gain = np.diff(np.r_[0, true_positives]) / positives
    return float(np.sum(precision * recall_gain))


def roc_auc(targets: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC of one class (Mann-Whitney, ties count 1/2); NaN if only one kind of example."""
    targets = np.asarray(targets, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    positives, negatives = int(targets.sum()), int((~targets).sum())
    if positives == 0 or negatives == 0:
        return math.nan
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # Average rank within ties.
    starts = np.r_[0, np.flatnonzero(sorted_scores[1:] != sorted_scores[:-1]) + 1]
    ends = np.r_[starts[1:], len(scores)]
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + end + 1) / 2
    rank_sum = ranks[targets].sum()
    return float((rank_sum - positives * (positives + 1) / 2) / (positives * negatives))


def d_prime(auc: float) -> float:
    """sqrt(2) * Phi^-1(AUC); +-inf at AUC 1 or 0, NaN for NaN."""
    if math.isnan(auc):
        return math.nan
    if auc >= 1.0:
        return math.inf
    if auc <= 0.0:
        return -math.inf
    return math.sqrt(2.0) * NormalDist().inv_cdf(auc)


# --------------------------------------------------------------------------- events
@dataclass(frozen=True)
class LabelledEvent:
    """One event of one file: times in seconds."""

    file: str
    onset: float
    offset: float
    label: str

    def to_dict(self) -> dict:
        return {"file": self.file, "onset": self.onset, "offset": self.offset, "label": self.label}


@dataclass(frozen=True)
class Counts:
    """True positives, false positives and false negatives, with the derived scores."""

    tp: int = 0
    fp: int = 0
    fn: int = 0

    def __add__(self, other: "Counts") -> "Counts":
        return Counts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else math.nan

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else math.nan

    @property
    def f1(self) -> float:
        denominator = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / denominator if denominator else math.nan

    def to_dict(self) -> dict:
        return {
            "tp": self.tp, "fp": self.fp, "fn": self.fn,
            "precision": finite_or_none(self.precision),
            "recall": finite_or_none(self.recall),
            "f1": finite_or_none(self.f1),
        }


def finite_or_none(value: float) -> float | None:
    """JSON has no NaN or infinity: such values are written as null."""
    return round(float(value), 6) if value is not None and math.isfinite(value) else None


def _by_file_and_class(events: Iterable[LabelledEvent]) -> dict[tuple[str, str], list[LabelledEvent]]:
    grouped: dict[tuple[str, str], list[LabelledEvent]] = {}
    for event in events:
        grouped.setdefault((event.file, event.label), []).append(event)
    return grouped


def _active_segments(events: Sequence[LabelledEvent], segment: float) -> set[int]:
    active: set[int] = set()
    for event in events:
        if event.offset > event.onset:
            active.update(range(int(math.floor(event.onset / segment)), int(math.ceil(event.offset / segment))))
    return active


def segment_counts(
    reference: Sequence[LabelledEvent],
    predicted: Sequence[LabelledEvent],
    classes: Sequence[str],
    segment: float = 1.0,
) -> dict[str, Counts]:
    """Per class, segment-based counts over all files (predicted events of other classes are ignored)."""
    if segment <= 0:
        raise ValueError(f"segment length must be positive, got {segment}")
    references, predictions = _by_file_and_class(reference), _by_file_and_class(predicted)
    counts = {label: Counts() for label in classes}
    for key in set(references) | set(predictions):
        if key[1] not in counts:
            continue
        truth = _active_segments(references.get(key, ()), segment)
        found = _active_segments(predictions.get(key, ()), segment)
        counts[key[1]] += Counts(len(truth & found), len(found - truth), len(truth - found))
    return counts


def _matches(reference: LabelledEvent, predicted: LabelledEvent, onset_collar: float,
             offset_collar: float, offset_ratio: float) -> bool:
    # A hair of slack so that times rounded to milliseconds match at exactly the collar.
    slack = 1e-9
    offset_limit = max(offset_collar, offset_ratio * (reference.offset - reference.onset))
    return (abs(predicted.onset - reference.onset) <= onset_collar + slack
            and abs(predicted.offset - reference.offset) <= offset_limit + slack)


def _maximum_matching(candidates: list[list[int]], right_count: int) -> int:
    """Size of a maximum bipartite matching (Kuhn's augmenting paths; event lists are short)."""
    owner = [-1] * right_count

    def augment(left: int, seen: list[bool]) -> bool:
        for right in candidates[left]:
            if not seen[right]:
                seen[right] = True
                if owner[right] < 0 or augment(owner[right], seen):
                    owner[right] = left
                    return True
        return False

    return sum(augment(left, [False] * right_count) for left in range(len(candidates)))


def event_counts(
    reference: Sequence[LabelledEvent],
    predicted: Sequence[LabelledEvent],
    classes: Sequence[str],
    onset_collar: float = 0.2,
    offset_collar: float = 0.2,
    offset_ratio: float = 0.2,
) -> dict[str, Counts]:
    """Per class, event-based counts with collars over all files."""
    references, predictions = _by_file_and_class(reference), _by_file_and_class(predicted)
    counts = {label: Counts() for label in classes}
    for key in set(references) | set(predictions):
        if key[1] not in counts:
            continue
        truth, found = references.get(key, []), predictions.get(key, [])
        candidates = [
            [j for j, guess in enumerate(found) if _matches(event, guess, onset_collar, offset_collar, offset_ratio)]
            for event in truth
        ]
        matched = _maximum_matching(candidates, len(found))
        counts[key[1]] += Counts(matched, len(found) - matched, len(truth) - matched)
    return counts


def micro_and_macro_f1(counts: dict[str, Counts]) -> tuple[float, float]:
    """F1 of the summed counts, and the mean of the per-class F1 (classes with an undefined F1 left out)."""
    total = sum(counts.values(), Counts())
    per_class = [c.f1 for c in counts.values() if not math.isnan(c.f1)]
    return total.f1, (float(np.mean(per_class)) if per_class else math.nan)


__all__ = [
    "average_precision", "roc_auc", "d_prime", "LabelledEvent", "Counts", "segment_counts",
    "event_counts", "micro_and_macro_f1", "finite_or_none",
]
