"""Cutting a signal into analysis windows.

Windows start at 0, hop, 2*hop, ... and stop with the first window that reaches
the end of the signal; that last window keeps its true (possibly shorter)
length. With hop == window this is exactly the official ``inference.py``
chunking, except that each window reports its real end time.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from auricle.audio import SAMPLE_RATE
from auricle.errors import OptionError


@dataclass(frozen=True)
class WindowConfig:
    """How recordings are cut: window and hop length in seconds (hop defaults to the window)."""

    window_seconds: float = 10.0
    hop_seconds: float | None = None

    def __post_init__(self) -> None:
        if not 0 < self.window_seconds < math.inf:
            raise OptionError(f"window must be a positive number of seconds, got {self.window_seconds}")
        if self.hop_seconds is not None and not 0 < self.hop_seconds <= self.window_seconds:
            raise OptionError(
                f"hop must be positive and at most the window ({self.window_seconds} s), got {self.hop_seconds}"
            )

    @property
    def window_samples(self) -> int:
        return int(round(self.window_seconds * SAMPLE_RATE))

    @property
    def hop_samples(self) -> int:
        hop = self.window_seconds if self.hop_seconds is None else self.hop_seconds
        return int(round(hop * SAMPLE_RATE))


def window_bounds(num_samples: int, config: WindowConfig) -> list[tuple[int, int]]:
    """(start, end) sample indices of every window of a signal of known length."""
    window, hop = config.window_samples, config.hop_samples
    bounds = []
    start = 0
    while True:
        end = min(start + window, num_samples)
        bounds.append((start, end))
        if start + window >= num_samples:
            return bounds
        start += hop


def iter_windows(blocks: Iterable[np.ndarray], config: WindowConfig) -> Iterator[tuple[int, np.ndarray]]:
    """Stream (start_sample, samples) windows from blocks of a signal of unknown length.

    Yields the same windows as :func:`window_bounds` would for the concatenated
    signal, holding at most one window plus one block in memory.
    """
    window, hop = config.window_samples, config.hop_samples
    buffer = np.zeros(0, dtype=np.float32)
    buffer_start = 0  # sample index of buffer[0]
    next_start = 0
    total = 0
    emitted_any = False
    for block in blocks:
        buffer = np.concatenate([buffer, block])
        total += len(block)
        # A full window is final only once we know the signal goes on past it.
        while total > next_start + window:
            offset = next_start - buffer_start
            yield next_start, buffer[offset : offset + window]
            emitted_any = True
            next_start += hop
            drop = next_start - buffer_start
            buffer = buffer[drop:]
            buffer_start = next_start
    if total == 0:
        return
    if not emitted_any or next_start < total:
        offset = next_start - buffer_start
        yield next_start, buffer[offset:]
