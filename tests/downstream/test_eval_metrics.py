"""Tagging and event metrics (auricle.downstream.eval_metrics) on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from auricle.downstream.eval_metrics import (
    LabelledEvent,
    average_precision,
    d_prime,
    event_counts,
    micro_and_macro_f1,
    roc_auc,
    segment_counts,
)


def test_average_precision_auc_and_d_prime_by_hand():
    targets = np.array([1, 0, 1, 0])
    scores = np.array([0.9, 0.8, 0.3, 0.1])
    # Ranked: + - + -. Precision at the positives: 1/1 and 2/3.
    assert average_precision(targets, scores) == pytest.approx((1 + 2 / 3) / 2)
    # Positive-negative pairs ordered right: (0.9, 0.8), (0.9, 0.1), (0.3, 0.1) of 4.
    assert roc_auc(targets, scores) == pytest.approx(0.75)
    assert d_prime(0.75) == pytest.approx(math.sqrt(2) * 0.6744897501960817)
    assert d_prime(0.5) == 0.0 and d_prime(1.0) == math.inf and math.isnan(d_prime(math.nan))


def test_ties_and_undefined_cases():
    assert roc_auc(np.array([1, 0]), np.array([0.5, 0.5])) == 0.5
    assert average_precision(np.array([1, 0]), np.array([0.5, 0.5])) == 0.5  # both ranked together
    assert math.isnan(average_precision(np.array([0, 0]), np.array([0.1, 0.2])))
    assert math.isnan(roc_auc(np.array([1, 1]), np.array([0.1, 0.2])))


def test_agrees_with_scikit_learn_on_random_scores_with_ties():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for _ in range(20):
        targets = rng.integers(0, 2, 40)
        targets[:2] = [0, 1]
        scores = rng.integers(0, 8, 40) / 8  # many ties
        assert average_precision(targets, scores) == pytest.approx(metrics.average_precision_score(targets, scores))
        assert roc_auc(targets, scores) == pytest.approx(metrics.roc_auc_score(targets, scores))


def events(rows):
    return [LabelledEvent(file, onset, offset, label) for file, onset, offset, label in rows]


# The hand-computed case also used by the CLI test (tests/downstream/test_evaluate.py).
REFERENCE = events([("a", 1.0, 3.0, "Dog"), ("a", 5.0, 6.0, "Dog"), ("a", 2.5, 4.5, "Cat")])
PREDICTED = events([
    ("a", 1.1, 3.3, "Dog"),  # onset +0.1, offset +0.3 <= max(0.2, 20% of 2 s): match
    ("a", 5.3, 6.0, "Dog"),  # onset +0.3 > 0.2: no match
    ("a", 2.5, 4.0, "Cat"),  # offset -0.5 > max(0.2, 0.4): no match
    ("a", 7.0, 8.0, "Cat"),  # nothing there
    ("a", 0.0, 9.0, "Bird"),  # not an evaluated class: ignored
])


def test_event_based_counts_by_hand():
    counts = event_counts(REFERENCE, PREDICTED, ["Cat", "Dog"])
    assert (counts["Dog"].tp, counts["Dog"].fp, counts["Dog"].fn) == (1, 1, 1)
    assert (counts["Cat"].tp, counts["Cat"].fp, counts["Cat"].fn) == (0, 2, 1)
    micro, macro = micro_and_macro_f1(counts)
    assert micro == pytest.approx(2 / 7)  # tp 1, fp 3, fn 2
    assert macro == pytest.approx((0.5 + 0.0) / 2)


def test_segment_based_counts_by_hand():
    counts = segment_counts(REFERENCE, PREDICTED, ["Cat", "Dog"], segment=1.0)
    # Dog: true segments {1, 2, 5}, predicted {1, 2, 3, 5}. Cat: true {2, 3, 4}, predicted {2, 3, 7}.
    assert (counts["Dog"].tp, counts["Dog"].fp, counts["Dog"].fn) == (3, 1, 0)
    assert (counts["Cat"].tp, counts["Cat"].fp, counts["Cat"].fn) == (2, 1, 1)
    micro, macro = micro_and_macro_f1(counts)
    assert micro == pytest.approx(10 / 13)
    assert macro == pytest.approx((6 / 7 + 4 / 6) / 2)


def test_event_matching_is_maximal_whatever_the_order():
    # X fits both references, Y only B: a greedy A-first or B-first pass could match just one.
    reference = events([("f", 0.15, 1.15, "c"), ("f", 0.0, 1.0, "c")])
    predicted = events([("f", 0.1, 1.1, "c"), ("f", 0.3, 1.3, "c")])
    for ref_order in (reference, reference[::-1]):
        for pred_order in (predicted, predicted[::-1]):
            assert event_counts(ref_order, pred_order, ["c"])["c"].tp == 2


def test_events_only_match_within_their_file():
    counts = event_counts(events([("a", 0, 1, "c")]), events([("b", 0, 1, "c")]), ["c"])
    assert (counts["c"].tp, counts["c"].fp, counts["c"].fn) == (0, 1, 1)


def test_agrees_with_sed_eval_on_random_events():
    sed_eval = pytest.importorskip("sed_eval")
    dcase_util = pytest.importorskip("dcase_util")
    rng = np.random.default_rng(1)
    classes = ["a", "b"]

    def random_events(count):
        rows = []
        for _ in range(count):
            onset = float(np.round(rng.uniform(0, 18), 3))
            rows.append(("f.wav", onset, float(np.round(onset + rng.uniform(0.2, 2.5), 3)), str(rng.choice(classes))))
        return events(rows)

    reference, predicted = random_events(12), random_events(14)
    predicted += [LabelledEvent(e.file, e.onset + 0.1, e.offset - 0.1, e.label) for e in reference[:6]]

    def container(items):
        return dcase_util.containers.MetaDataContainer([
            {"filename": e.file, "onset": e.onset, "offset": e.offset, "event_label": e.label} for e in items
        ])

    theirs = sed_eval.sound_event.EventBasedMetrics(classes, t_collar=0.2, percentage_of_length=0.2)
    theirs.evaluate(container(reference), container(predicted))
    ours, _ = micro_and_macro_f1(event_counts(reference, predicted, classes))
    assert ours == pytest.approx(theirs.results_overall_metrics()["f_measure"]["f_measure"])

    theirs = sed_eval.sound_event.SegmentBasedMetrics(classes, time_resolution=1.0)
    theirs.evaluate(container(reference), container(predicted))
    ours, _ = micro_and_macro_f1(segment_counts(reference, predicted, classes, 1.0))
    assert ours == pytest.approx(theirs.results_overall_metrics()["f_measure"]["f_measure"])
