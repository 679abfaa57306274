"""Window planning: the official chunking at hop == window, real end times, streaming equals planning."""

from __future__ import annotations

import numpy as np
import pytest

from auricle.inference.windows import WindowConfig, iter_windows, window_bounds


def blocks_of(signal: np.ndarray, size: int):
    for start in range(0, len(signal), size):
        yield signal[start : start + size]


def test_official_chunking_at_default_hop():
    assert window_bounds(404800, WindowConfig()) == [(0, 160000), (160000, 320000), (320000, 404800)]
    assert window_bounds(320000, WindowConfig()) == [(0, 160000), (160000, 320000)]
    assert window_bounds(1600, WindowConfig()) == [(0, 1600)]


def test_overlapping_hop_ends_at_the_real_end():
    bounds = window_bounds(int(25.3 * 16000), WindowConfig(10, 5))
    assert [(s / 16000, e / 16000) for s, e in bounds] == [
        (0, 10), (5, 15), (10, 20), (15, 25), (20, 25.3)
    ]


@pytest.mark.integration
@pytest.mark.parametrize("length", [1, 2399, 160000, 160001, 320000, 404800, 500000])
@pytest.mark.parametrize("window,hop", [(10, None), (10, 5), (10, 3.3), (2, 1)])
@pytest.mark.parametrize("block", [1000, 16000, 160000, 333333])
def test_streaming_yields_the_planned_windows(length, window, hop, block):
    signal = np.arange(length, dtype=np.float32)
    config = WindowConfig(window, hop)
    streamed = list(iter_windows(blocks_of(signal, block), config))
    planned = window_bounds(length, config)
    assert [(start, start + len(samples)) for start, samples in streamed] == planned
    for start, samples in streamed:
        np.testing.assert_array_equal(samples, signal[start : start + len(samples)])


def test_empty_stream_yields_nothing():
    assert list(iter_windows(iter([]), WindowConfig())) == []


@pytest.mark.parametrize("window,hop", [(0, None), (10, 0), (10, 11), (-1, None), (float("inf"), None),
                                        (float("inf"), 1), (float("nan"), None), (10, float("nan"))])
def test_bad_window_config(window, hop):
    with pytest.raises(ValueError):
        WindowConfig(window, hop)
