"""A long recording through an exported graph a few pieces per call, with the results of one call.

An exported file's graph embeds its input as one recording: one log-mel,
floored 120 dB under its loudest bin, cut into 1012-frame pieces. An hour in
one call took 3.8 GB and 55 s (ced-mini, docs/benchmarks.md). Here the
recording goes through in *rows* of ``per_row`` pieces, each built so that the
graph computes exactly the pieces the whole recording would give:

* a row starts one piece early (a *lead*, discarded), so its first kept frame
  sees the real samples before it; the first row's lead ends with the
  reflection that the whole recording's padding puts there;
* a row ends ``n_fft / 2 - hop`` samples late, so its last kept frame sees the
  real samples after it (the partial piece this adds is discarded);
* the lead carries a copy of the recording's loudest frame, so every row's
  floor is the recording's.

A first pass with a numpy log-mel finds that frame (:func:`loudest_frame`).
Frames that exist only in a row (around the copy, and at its padded ends)
are checked against it: should one be louder than the recording's loudest,
the row's floor would be off, and :func:`rows` raises :class:`InexactRows`
so that the caller takes the recording in one call. No torch.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np


class InexactRows(Exception):
    """A row would not reproduce the whole recording's pieces; embed it in one call instead."""


@dataclass(frozen=True)
class Framing:
    """What rows need of the frontend: its STFT and mel parameters and the piece length."""

    sample_rate: int
    n_fft: int
    hop_length: int
    n_mels: int
    f_min: float
    f_max: float
    piece_frames: int

    @classmethod
    def from_metadata(cls, metadata: dict[str, str]) -> Framing:
        frontend = json.loads(metadata["frontend"])
        if frontend.get("win_length", frontend["n_fft"]) != frontend["n_fft"]:
            raise InexactRows("the frontend's window is shorter than its FFT")
        return cls(int(frontend["sample_rate"]), int(frontend["n_fft"]), int(frontend["hop_length"]),
                   int(frontend["n_mels"]), float(frontend["f_min"]), float(frontend["f_max"]),
                   int(metadata["piece_frames"]))

    @property
    def half(self) -> int:
        return self.n_fft // 2

    @property
    def piece_samples(self) -> int:
        return self.piece_frames * self.hop_length


class MelPeaks:
    """Each frame's largest mel-band power (numpy, float64): enough to compare frames' loudness.

    The graph takes its floor from the same quantity in float32; they agree to
    rounding, which moves a floor by ~1e-6 dB.
    """

    def __init__(self, framing: Framing) -> None:
        self.framing = framing
        size = framing.n_fft
        self._window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(size) / size)  # periodic Hann
        self._bank = _mel_bank(framing)

    def of(self, padded: np.ndarray) -> np.ndarray:
        """Peak mel power of every whole frame of an already padded signal (frame j starts at j * hop)."""
        framing = self.framing
        if len(padded) < framing.n_fft:
            return np.zeros(0)
        frames = np.lib.stride_tricks.sliding_window_view(padded, framing.n_fft)[:: framing.hop_length]
        power = np.abs(np.fft.rfft(frames * self._window, axis=-1)) ** 2
        return (power @ self._bank).max(axis=-1)


def _mel_bank(framing: Framing) -> np.ndarray:
    """Triangular HTK-scale filters without area normalisation, (n_fft/2 + 1, n_mels).

    :func:`auricle.frontend.mel_filterbank` in float64 numpy: this path runs without torch.
    """
    def to_mel(hz):
        return 2595.0 * np.log10(1.0 + np.asarray(hz) / 700.0)

    freqs = np.linspace(0, framing.sample_rate // 2, framing.n_fft // 2 + 1)
    hz = 700.0 * (10.0 ** (np.linspace(to_mel(framing.f_min), to_mel(framing.f_max), framing.n_mels + 2) / 2595.0) - 1)
    slopes = hz[np.newaxis, :] - freqs[:, np.newaxis]
    spacing = np.diff(hz)
    return np.clip(np.minimum(-slopes[:, :-2] / spacing[:-1], slopes[:, 2:] / spacing[1:]), 0.0, None)


@dataclass(frozen=True)
class Loudest:
    """The recording's loudest frame: its peak mel power and its ``n_fft`` samples (padding included)."""

    power: float
    window: np.ndarray
    samples: int  # the recording's length


def loudest_frame(blocks: Iterable[np.ndarray], peaks: MelPeaks) -> Loudest:
    """One pass over the recording, ``blocks`` of 16 kHz samples, padded as the frontend pads it."""
    framing = peaks.framing
    half, hop = framing.half, framing.hop_length
    pending = np.zeros(0, dtype=np.float32)
    best = Loudest(-1.0, np.zeros(framing.n_fft, dtype=np.float32), 0)
    total, started = 0, False

    def scan(padded: np.ndarray) -> int:
        nonlocal best
        values = peaks.of(padded)
        if len(values) and values.max() > best.power:
            index = int(values.argmax())
            best = Loudest(float(values[index]), padded[index * hop : index * hop + framing.n_fft].copy(), 0)
        return len(values)

    for block in blocks:
        total += len(block)
        pending = np.concatenate([pending, np.asarray(block, dtype=np.float32)])
        if not started:
            if len(pending) <= half:
                continue
            pending = np.concatenate([pending[half:0:-1], pending])
            started = True
        pending = pending[scan(pending) * hop :]
    if not started:
        raise InexactRows("shorter than one FFT")
    scan(np.concatenate([pending, pending[-2 : -half - 2 : -1]]))
    return Loudest(best.power, best.window, total)


@dataclass(frozen=True)
class Row:
    """One call's waveform; its pieces ``skip:skip + keep`` (``keep=None``: all after ``skip``) are the recording's."""

    samples: np.ndarray
    skip: int
    keep: int | None


def rows(blocks: Iterable[np.ndarray], peaks: MelPeaks, loudest: Loudest, per_row: int) -> Iterator[Row]:
    """The recording (``blocks`` again, as for :func:`loudest_frame`) as rows of ``per_row`` kept pieces."""
    framing = peaks.framing
    piece, half = framing.piece_samples, framing.half
    kept = per_row * piece
    tail = max(0, half - framing.hop_length)  # what the last kept frame sees past its piece
    buffer = np.zeros(0, dtype=np.float32)
    offset = 0  # the recording's sample at buffer[0]
    row = 0
    for block in blocks:
        buffer = np.concatenate([buffer, np.asarray(block, dtype=np.float32)])
        while offset + len(buffer) >= (row + 1) * kept + tail:
            start = row * kept - offset
            before = buffer[framing.half : 0 : -1] if row == 0 else buffer[start - framing.half : start]
            silence = np.zeros(framing.half, dtype=np.float32)  # what the graph reflects at the row's end
            samples = np.concatenate([_lead(before, framing, loudest), buffer[start : start + kept + tail], silence])
            _check(samples, peaks, loudest, per_row)
            yield Row(samples, skip=1, keep=per_row)
            row += 1
            drop = row * kept - framing.half - offset
            buffer, offset = buffer[drop:], offset + drop
    start = row * kept - offset
    if row == 0:
        yield Row(buffer, skip=0, keep=None)
        return
    samples = np.concatenate([_lead(buffer[start - framing.half : start], framing, loudest), buffer[start:]])
    _check(samples, peaks, loudest, None)
    yield Row(samples, skip=1, keep=None)


def _lead(before: np.ndarray, framing: Framing, loudest: Loudest) -> np.ndarray:
    """A discarded first piece: silence, the loudest frame's samples where its middle frame reads
    them, and at its end ``before``, what the first kept frame sees before the piece it starts
    (the real samples, or at the recording's start the reflection the frontend pads with).

    Silence around both keeps the frames that straddle them from adding up louder than the loudest.
    """
    lead = np.zeros(framing.piece_samples, dtype=np.float32)
    centre = framing.piece_frames // 2 * framing.hop_length
    lead[centre - framing.half : centre + framing.half] = loudest.window
    lead[-framing.half :] = before
    return lead


def _check(samples: np.ndarray, peaks: MelPeaks, loudest: Loudest, per_row: int | None) -> None:
    """Raise InexactRows unless the row's own frames (lead, and tail past the kept pieces) stay under the loudest."""
    framing = peaks.framing
    half, piece = framing.half, framing.piece_samples
    regions = [np.pad(samples[: piece + half], (half, 0), mode="reflect")]
    if per_row is not None:
        end = (1 + per_row) * piece
        regions.append(np.pad(samples[end - half :], (0, half), mode="reflect"))
    peak = max(float(peaks.of(region).max(initial=0.0)) for region in regions)
    if peak > loudest.power * (1 + 1e-6):
        raise InexactRows("a frame made up for a row is louder than the recording's loudest")
