"""Summary scores of a classifier on labelled clips: accuracy, macro F1, mAP, mean AUC and d'.

``targets`` (N, C) in {0, 1} and ``scores`` (N, C). Single-label sets are
decided by arg-max, multi-label sets by ``scores >= threshold``. Classes with
no positive (or no negative) example have no AP or AUC; they are left out of
the means and counted in ``skipped_classes``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from auricle.downstream.eval_metrics import average_precision, d_prime, finite_or_none, roc_auc


@dataclass(frozen=True)
class Scores:
    """Summary metrics of one evaluation (d' of the mean AUC, as AudioSet papers report it)."""

    accuracy: float
    macro_f1: float
    mean_average_precision: float
    mean_auc: float
    d_prime: float
    examples: int
    skipped_classes: int = 0

    def to_dict(self) -> dict:
        # JSON has no NaN or infinity (d' is infinite at AUC 1): those become null.
        return {key: finite_or_none(value) if isinstance(value, float) else value
                for key, value in asdict(self).items()}

    def line(self) -> str:
        return (f"accuracy {self.accuracy:.4f}, macro-F1 {self.macro_f1:.4f}, "
                f"mAP {self.mean_average_precision:.4f}, AUC {self.mean_auc:.4f}, d' {self.d_prime:.3f} "
                f"({self.examples} clips)")


def decisions(scores: np.ndarray, multi_label: bool, threshold: float = 0.5) -> np.ndarray:
    """0/1 decisions (N, C): arg-max for single-label, threshold for multi-label."""
    if multi_label:
        return (scores >= threshold).astype(np.float32)
    decided = np.zeros(scores.shape, dtype=np.float32)
    decided[np.arange(len(scores)), scores.argmax(axis=1)] = 1.0
    return decided


def macro_f1(targets: np.ndarray, decided: np.ndarray) -> float:
    """Unweighted mean of per-class F1; a class neither present nor predicted counts as 1 (nothing wrong)."""
    true_positive = (targets * decided).sum(axis=0)
    false_positive = ((1 - targets) * decided).sum(axis=0)
    false_negative = (targets * (1 - decided)).sum(axis=0)
    denominator = 2 * true_positive + false_positive + false_negative
    f1 = np.where(denominator > 0, 2 * true_positive / np.maximum(denominator, 1), 1.0)
    return float(f1.mean())


def score_classification(targets: np.ndarray, scores: np.ndarray, multi_label: bool,
                         threshold: float = 0.5) -> Scores:
    """Every summary metric of ``scores`` against ``targets``.

    Accuracy is the fraction of clips decided exactly right: the arg-max class
    (single-label) or the whole label set (multi-label).
    """
    targets = np.asarray(targets, dtype=np.float32)
    scores = np.asarray(scores, dtype=np.float64)
    if targets.shape != scores.shape or targets.ndim != 2:
        raise ValueError(f"targets {targets.shape} and scores {scores.shape} must both be (clips, classes)")
    decided = decisions(scores, multi_label, threshold)
    classes = range(targets.shape[1])
    aps = np.array([average_precision(targets[:, c], scores[:, c]) for c in classes])
    aucs = np.array([roc_auc(targets[:, c], scores[:, c]) for c in classes])
    valid = ~np.isnan(aucs)
    mean_auc = float(aucs[valid].mean()) if valid.any() else math.nan
    return Scores(
        accuracy=float(np.all(decided == targets, axis=1).mean()) if len(targets) else math.nan,
        macro_f1=macro_f1(targets, decided),
        mean_average_precision=float(np.nanmean(aps)) if (~np.isnan(aps)).any() else math.nan,
        mean_auc=mean_auc,
        d_prime=d_prime(mean_auc),
        examples=len(targets),
        skipped_classes=int((~valid).sum()),
    )


__all__ = ["Scores", "score_classification", "decisions", "macro_f1"]
