"""Rows of pieces: a long recording cut into calls that compute exactly what one call computes.

A numpy stand-in for the exported graph (log-mel with its floor, cut into pieces)
makes the arithmetic of rows checkable for many lengths at once; the real graph
is checked in tests/onnx/test_exported.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from auricle.frontend import LogMel
from auricle.onnx.rows import Framing, InexactRows, Loudest, MelPeaks, _mel_bank, loudest_frame, rows

FRAMING = Framing(sample_rate=16000, n_fft=512, hop_length=160, n_mels=64, f_min=0.0, f_max=8000.0, piece_frames=12)
PIECE = FRAMING.piece_samples  # 1920 samples


def graph(signal: np.ndarray, framing: Framing = FRAMING) -> np.ndarray:
    """What an exported graph computes per piece, minus the encoder: the floored log-mel of each piece."""
    half = framing.half
    padded = np.pad(signal.astype(np.float64), half, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, framing.n_fft)[:: framing.hop_length]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(framing.n_fft) / framing.n_fft)
    mel = (np.abs(np.fft.rfft(frames * window, axis=-1)) ** 2) @ _mel_bank(framing)
    decibels = 10 * np.log10(np.maximum(mel, 1e-10))
    decibels = np.maximum(decibels, decibels.max() - 120.0)
    count = -(-len(decibels) // framing.piece_frames)
    if count == 1:
        return decibels[np.newaxis]
    padded_frames = np.pad(decibels, ((0, count * framing.piece_frames - len(decibels)), (0, 0)))
    return padded_frames.reshape(count, framing.piece_frames, -1)


def recording(samples: int, seed: int) -> np.ndarray:
    """Digital silence, a faint hiss and loud bursts: floors bind, and the loudest frame sits anywhere."""
    rng = np.random.default_rng(seed)
    signal = np.zeros(samples, dtype=np.float32)
    hiss = rng.integers(0, samples // 2 + 1)
    signal[hiss:] = 1e-5 * rng.standard_normal(samples - hiss)
    for _ in range(3):
        start = int(rng.integers(0, samples))
        signal[start : start + 700] += rng.uniform(0.1, 0.9) * rng.standard_normal(len(signal[start : start + 700]))
    return signal


def blocks(signal: np.ndarray, size: int) -> list[np.ndarray]:
    return [signal[start : start + size] for start in range(0, len(signal), size)]


@pytest.mark.parametrize("per_row", [1, 3])
@pytest.mark.parametrize("samples", [600, 3 * PIECE + 95, 3 * PIECE + 96, 3 * PIECE + 97, 6 * PIECE + 96,
                                     6 * PIECE + 97, 7 * PIECE, 7 * PIECE - 1, 20 * PIECE + 1234])
def test_rows_compute_the_pieces_of_one_call(samples, per_row):
    signal = recording(samples, seed=samples)
    peaks = MelPeaks(FRAMING)
    loudest = loudest_frame(blocks(signal, 1000), peaks)
    assert loudest.samples == samples
    expected = graph(signal)
    found = []
    for row in rows(blocks(signal, 777), peaks, loudest, per_row):
        pieces = graph(row.samples)[row.skip :]
        found.append(pieces if row.keep is None else pieces[: row.keep])
    found = np.concatenate(found)
    assert found.shape == expected.shape
    # float64 throughout, so only the FFT's rounding of a frame at another offset differs
    np.testing.assert_allclose(found, expected, atol=1e-9, rtol=0)


def test_loudest_frame_is_the_frontends():
    signal = recording(9 * PIECE + 5, seed=3)
    loudest = loudest_frame(blocks(signal, 4000), MelPeaks(FRAMING))
    power = LogMel().power_mel(torch.from_numpy(signal).double()).numpy()  # (mels, frames)
    frame = int(power.max(axis=0).argmax())
    assert loudest.power == pytest.approx(float(power.max()), rel=1e-5)  # the frontend's filters are float32
    padded = np.pad(signal, FRAMING.half, mode="reflect")
    np.testing.assert_array_equal(loudest.window, padded[frame * 160 : frame * 160 + 512])


def test_a_row_whose_own_frames_would_be_louder_is_refused():
    signal = (0.3 * np.random.default_rng(5).standard_normal(8 * PIECE)).astype(np.float32)
    peaks = MelPeaks(FRAMING)
    real = loudest_frame(blocks(signal, 1000), peaks)
    too_quiet = Loudest(real.power / 100, real.window * 0.1, real.samples)
    with pytest.raises(InexactRows):
        list(rows(blocks(signal, 1000), peaks, too_quiet, 2))


def test_a_signal_shorter_than_one_fft_has_no_loudest_frame():
    with pytest.raises(InexactRows):
        loudest_frame([np.zeros(200, dtype=np.float32)], MelPeaks(FRAMING))
