"""Scores used while training a student: mAP, accuracy and agreement with the teacher."""

from __future__ import annotations

import numpy as np


def average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
    """Area under the precision-recall curve of one class, tied scores taken as one threshold.

    Equals scikit-learn's ``average_precision_score``; NaN when there is no positive.
    """
    scores = np.asarray(scores, dtype=np.float64)
    positives = np.asarray(positives) > 0
    total = int(positives.sum())
    if total == 0:
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    scores, positives = scores[order], positives[order]
    true_positives = np.cumsum(positives)
    # The last index of each run of equal scores is where that threshold's counts are read.
    last_of_run = np.r_[np.nonzero(np.diff(scores))[0], len(scores) - 1]
    hits = true_positives[last_of_run]
    precision = hits / (last_of_run + 1)
    recall_gain = np.diff(np.r_[0, hits]) / total
    return float(np.sum(recall_gain * precision))


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """mAP over the classes (columns) that have at least one positive; NaN if none has."""
    scores, targets = np.asarray(scores), np.asarray(targets)
    values = [average_precision(scores[:, c], targets[:, c]) for c in range(targets.shape[1]) if targets[:, c].any()]
    return float(np.mean(values)) if values else float("nan")


def top1_agreement(student: np.ndarray, teacher_indices: np.ndarray) -> float:
    """Fraction of views whose most probable student class is the teacher's top class."""
    student = np.asarray(student)
    if len(student) == 0:
        return float("nan")
    return float(np.mean(student.argmax(axis=1) == np.asarray(teacher_indices)[:, 0]))


def topk_overlap(student: np.ndarray, teacher_indices: np.ndarray) -> float:
    """Mean fraction of the teacher's k stored classes that are also among the student's top k."""
    student, teacher_indices = np.asarray(student), np.asarray(teacher_indices)
    if len(student) == 0:
        return float("nan")
    k = teacher_indices.shape[1]
    ours = np.argsort(-student, axis=1, kind="mergesort")[:, :k]
    shared = [len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(ours, teacher_indices)]
    return float(np.mean(shared))
