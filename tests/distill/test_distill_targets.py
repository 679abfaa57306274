"""Top-k expansion, the learning-rate schedule and the training scores."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from auricle.distill.evaluation import mean_average_precision, top1_agreement, topk_overlap
from auricle.distill.schedule import Schedule
from auricle.distill.targets import FILL_MODES, expand_topk

INDICES = torch.tensor([[3, 0, 7], [1, 2, 9]])
VALUES = torch.tensor([[0.9, 0.5, 0.2], [0.6, 0.4, 0.1]])


def test_zero_fill_places_values_and_leaves_the_rest_zero():
    targets = expand_topk(INDICES, VALUES, 10)
    assert targets.shape == (2, 10) and targets.dtype == torch.float32
    assert targets[0, 3] == pytest.approx(0.9) and targets[0, 7] == pytest.approx(0.2)
    assert targets[1, 9] == pytest.approx(0.1)
    mask = torch.zeros(2, 10, dtype=torch.bool).scatter_(1, INDICES, True)
    assert torch.all(targets[~mask] == 0)


@pytest.mark.parametrize(
    "fill, expected_row0, expected_row1",
    [
        ("last_mean", 0.2 / 7, 0.1 / 7),
        ("last_half", 0.1, 0.05),
        ("uniform", 0.1, 0.1),
    ],
)
def test_constant_fills_follow_the_paper(fill, expected_row0, expected_row1):
    targets = expand_topk(INDICES, VALUES, 10, fill=fill)
    mask = torch.zeros(2, 10, dtype=torch.bool).scatter_(1, INDICES, True)
    assert torch.allclose(targets[0][~mask[0]], torch.full((7,), expected_row0))
    assert torch.allclose(targets[1][~mask[1]], torch.full((7,), expected_row1))
    assert torch.equal(targets.gather(1, INDICES), VALUES)


def test_random_fill_is_below_the_smallest_kept_value_and_replays_with_the_generator():
    first = expand_topk(INDICES, VALUES, 10, "last_random", torch.Generator().manual_seed(5))
    again = expand_topk(INDICES, VALUES, 10, "last_random", torch.Generator().manual_seed(5))
    other = expand_topk(INDICES, VALUES, 10, "last_random", torch.Generator().manual_seed(6))
    assert torch.equal(first, again) and not torch.equal(first, other)
    mask = torch.zeros(2, 10, dtype=torch.bool).scatter_(1, INDICES, True)
    assert torch.all(first[0][~mask[0]] < 0.2) and torch.all(first[1][~mask[1]] < 0.1)
    assert torch.all(first >= 0)


def test_single_row_and_numpy_input():
    targets = expand_topk(np.array([4, 1], dtype=np.uint16), np.array([0.7, 0.3], dtype=np.float16), 5)
    assert targets.shape == (1, 5)
    assert targets[0].tolist() == pytest.approx([0, 0.3, 0, 0, 0.7], abs=1e-3)


@pytest.mark.parametrize(
    "indices, values, classes, fill, message",
    [
        ([[0, 5]], [[0.5, 0.1]], 5, "zero", "out of range"),
        ([[0, 1]], [[0.5]], 5, "zero", "differ in shape"),
        ([[0, 1]], [[0.5, 0.1]], 5, "mean", "unknown fill"),
        ([[0, 1, 2]], [[0.5, 0.1, 0.1]], 2, "zero", "does not fit"),
    ],
)
def test_bad_input_is_refused(indices, values, classes, fill, message):
    with pytest.raises(ValueError, match=message):
        expand_topk(torch.tensor(indices), torch.tensor(values), classes, fill)


def test_all_fill_modes_are_accepted():
    for fill in FILL_MODES:
        assert expand_topk(INDICES, VALUES, 10, fill, torch.Generator().manual_seed(0)).shape == (2, 10)


def test_schedule_warms_up_linearly_then_decays_by_cosine_to_the_floor():
    schedule = Schedule(peak_lr=1e-3, total_steps=110, warmup_steps=10, final_fraction=0.1)
    assert schedule.lr(0) == pytest.approx(1e-4)
    assert schedule.lr(9) == pytest.approx(1e-3)
    assert schedule.lr(10) == pytest.approx(1e-3)
    assert schedule.lr(60) == pytest.approx(1e-4 + 0.9e-3 * 0.5)  # half-way through the cosine
    assert schedule.lr(110) == pytest.approx(1e-4)
    assert schedule.lr(500) == pytest.approx(1e-4)
    rates = [schedule.lr(step) for step in range(10, 111)]
    assert all(a >= b for a, b in zip(rates, rates[1:]))
    assert Schedule(1.0, 5).lr(0) == pytest.approx(1.0)  # no warm-up: starts at the peak
    with pytest.raises(ValueError, match="total steps"):
        Schedule(1.0, 0)


@pytest.mark.integration
def test_mean_average_precision_matches_scikit_learn_and_skips_empty_classes():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 2, (40, 5))
    targets[:, 4] = 0  # no positive: left out
    scores = np.round(rng.random((40, 5)), 1)  # many ties
    expected = np.mean([metrics.average_precision_score(targets[:, c], scores[:, c]) for c in range(4)])
    assert mean_average_precision(scores, targets) == pytest.approx(expected)
    assert math.isnan(mean_average_precision(scores, np.zeros_like(targets)))


def test_agreement_scores():
    student = np.array([[0.1, 0.7, 0.2], [0.5, 0.1, 0.4]])
    teacher = np.array([[1, 2], [2, 0]])
    assert top1_agreement(student, teacher) == pytest.approx(0.5)
    assert topk_overlap(student, teacher) == pytest.approx(1.0)
