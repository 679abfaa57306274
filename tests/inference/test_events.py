"""Event detection from window scores, checked against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from auricle.inference.events import EventOptions, detect_segments, median_smooth, timeline


def bounds(*pairs):
    return np.array(pairs, dtype=float)


def test_non_overlapping_windows_are_the_segments():
    edges, scores = timeline(bounds((0, 10), (10, 20), (20, 25.3)), np.array([[0.1], [0.9], [0.7]]))
    np.testing.assert_allclose(edges, [[0, 10], [10, 20], [20, 25.3]])
    np.testing.assert_allclose(scores[:, 0], [0.1, 0.9, 0.7])


def test_overlapping_windows_average_where_they_overlap():
    edges, scores = timeline(bounds((0, 10), (5, 15), (10, 17)), np.array([[0.2], [0.6], [1.0]]))
    np.testing.assert_allclose(edges, [[0, 5], [5, 10], [10, 15], [15, 17]])
    np.testing.assert_allclose(scores[:, 0], [0.2, 0.4, 0.8, 1.0])


def test_segments_threshold_merge_and_statistics():
    window_bounds = bounds((0, 2), (2, 4), (4, 6), (6, 8), (8, 10), (10, 11))
    scores = np.array([[0.9, 0.0], [0.8, 0.6], [0.1, 0.7], [0.7, 0.1], [0.2, 0.2], [0.6, 0.9]])
    found = detect_segments(window_bounds, scores, np.array([0.5, 0.5]), EventOptions())
    as_tuples = [(s.column, s.onset, s.offset, round(s.max_score, 6), round(s.mean_score, 6)) for s in found]
    assert as_tuples == [
        (0, 0.0, 4.0, 0.9, 0.85),
        (1, 2.0, 6.0, 0.7, 0.65),
        (0, 6.0, 8.0, 0.7, 0.7),
        (0, 10.0, 11.0, 0.6, 0.6),
        (1, 10.0, 11.0, 0.9, 0.9),
    ]
    # Merging gaps under 2.5 s joins class 0's events (gaps of 2 s) but not class 1's (gap of 4 s);
    # statistics cover only the parts above threshold, weighted by duration.
    merged = detect_segments(window_bounds, scores, np.array([0.5, 0.5]), EventOptions(min_gap=2.5))
    assert [(s.column, s.onset, s.offset, round(s.mean_score, 6)) for s in merged] == [
        (0, 0.0, 11.0, round((0.9 * 2 + 0.8 * 2 + 0.7 * 2 + 0.6 * 1) / 7, 6)),
        (1, 2.0, 6.0, 0.65),
        (1, 10.0, 11.0, 0.9),
    ]
    # Dropping events under 1.5 s removes the 1 s ones.
    long_only = detect_segments(window_bounds, scores, np.array([0.5, 0.5]), EventOptions(min_duration=1.5))
    assert all(s.offset - s.onset >= 1.5 for s in long_only) and len(long_only) == 3


def test_per_class_thresholds():
    found = detect_segments(bounds((0, 1), (1, 2)), np.array([[0.3, 0.3], [0.3, 0.3]]), np.array([0.2, 0.4]), EventOptions())
    assert [(s.column, s.onset, s.offset) for s in found] == [(0, 0.0, 2.0)]


def test_median_filter_removes_single_spikes():
    scores = np.array([[0.0], [0.9], [0.0], [0.9], [0.9], [0.9], [0.0]])
    np.testing.assert_allclose(median_smooth(scores, 3)[:, 0], [0, 0, 0.9, 0.9, 0.9, 0.9, 0])
    window_bounds = bounds(*[(i, i + 1) for i in range(7)])
    found = detect_segments(window_bounds, scores, np.array([0.5]), EventOptions(median_filter=3))
    assert [(s.onset, s.offset) for s in found] == [(2.0, 6.0)]


def test_bad_event_options():
    with pytest.raises(ValueError):
        EventOptions(median_filter=2)
    with pytest.raises(ValueError):
        EventOptions(min_gap=-1)
