"""Scores used while training a student: mAP, accuracy and agreement with the teacher."""

from __future__ import annotations

import numpy as np

from auricle.downstream.eval_metrics import average_precision


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """mAP over the classes (columns) that have at least one positive; NaN if none has."""
    scores, targets = np.asarray(scores), np.asarray(targets)
    values = [average_precision(targets[:, c], scores[:, c]) for c in range(targets.shape[1]) if targets[:, c].any()]
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
