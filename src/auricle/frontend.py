"""Log-mel frontend, computing exactly what the official CED frontend computes.

The official models use torchaudio's ``MelSpectrogram`` followed by
``AmplitudeToDB(top_db=120)``. This module reproduces both in plain torch so no
torchaudio is needed. One deliberate difference: the 120 dB floor is taken per
clip. torchaudio takes one maximum over the whole batch, so a clip's output
depended on its batch mates (quirk 1 in the reference README).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

SAMPLE_RATE = 16000
N_FFT = 512
WIN_LENGTH = 512
HOP_LENGTH = 160
N_MELS = 64
F_MIN = 0.0
F_MAX = 8000.0
TOP_DB = 120.0
AMIN = 1e-10


def num_frames(num_samples: int) -> int:
    """Frames the frontend makes of ``num_samples`` samples (centre padding)."""
    return 1 + num_samples // HOP_LENGTH


def _hz_to_mel(freq: float) -> float:
    return 2595.0 * math.log10(1.0 + freq / 700.0)


def mel_filterbank(
    n_freqs: int = N_FFT // 2 + 1,
    f_min: float = F_MIN,
    f_max: float = F_MAX,
    n_mels: int = N_MELS,
    sample_rate: int = SAMPLE_RATE,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Triangular HTK-scale filters without area normalisation, shape (n_freqs, n_mels)."""
    # Computed in the target dtype step by step as torchaudio does, which makes
    # the float32 bank bit-identical to the buffer in the official checkpoints.
    all_freqs = torch.linspace(0, sample_rate // 2, n_freqs, dtype=dtype)
    mel_points = torch.linspace(_hz_to_mel(f_min), _hz_to_mel(f_max), n_mels + 2, dtype=dtype)
    hz_points = 700.0 * (10.0 ** (mel_points / 2595.0) - 1.0)
    spacing = hz_points[1:] - hz_points[:-1]
    slopes = hz_points.unsqueeze(0) - all_freqs.unsqueeze(1)  # (n_freqs, n_mels + 2)
    down = (-1.0 * slopes[:, :-2]) / spacing[:-1]
    up = slopes[:, 2:] / spacing[1:]
    return torch.clamp(torch.minimum(down, up), min=0.0)


def _filter_groups(basis: torch.Tensor, groups: int = 4) -> tuple[tuple[int, int, int, int], ...]:
    """(first bin, end bin, first band, end band) of ``groups`` runs of adjacent mel bands.

    Each triangular filter spans a few bins, so each run of bands multiplies only the
    bins under it instead of all of them: the same sums less the zero terms (rounding
    within float32's last bits), in under half the time of the whole product for 64
    bands in 4 runs (2026-12-05, Zen 4 VM, ad hoc; 8 runs were slower again; the whole
    log-mel: ``benchmarks/frontend.py``).
    """
    used = basis != 0
    spans = []
    for bands in torch.arange(basis.shape[1]).chunk(groups):
        rows = used[:, bands].any(dim=1).nonzero().flatten()
        first, end = (int(rows[0]), int(rows[-1]) + 1) if len(rows) else (0, 0)
        spans.append((first, end, int(bands[0]), int(bands[-1]) + 1))
    return tuple(spans)


def _reflect_pad(signal: torch.Tensor, padding: int) -> torch.Tensor:
    """``signal`` (..., samples) with ``padding`` samples mirrored onto each end, as ``F.pad(mode="reflect")``.

    By copies: bit for bit what F.pad gives, where its reflection kernel took six times as
    long (0.13 against 0.02 ms per 10 s clip, Zen 4 VM, ad hoc). A signal too short to
    mirror goes to F.pad, which says so.
    """
    if signal.shape[-1] <= padding:
        return F.pad(signal.unsqueeze(-2), (padding, padding), mode="reflect").squeeze(-2)
    head = signal[..., 1 : padding + 1].flip(-1)
    tail = signal[..., -padding - 1 : -1].flip(-1)
    return torch.cat([head, signal, tail], dim=-1)


@dataclass(frozen=True)
class FrontendConfig:
    """Parameters of the log-mel frontend; the defaults are the official CED ones."""

    sample_rate: int = SAMPLE_RATE
    n_fft: int = N_FFT
    win_length: int = WIN_LENGTH
    hop_length: int = HOP_LENGTH
    n_mels: int = N_MELS
    f_min: float = F_MIN
    f_max: float = F_MAX
    top_db: float = TOP_DB


class LogMel(nn.Module):
    """Waveforms (batch, samples) at 16 kHz -> log-mel in dB (batch, n_mels, frames)."""

    def __init__(self, config: FrontendConfig = FrontendConfig()) -> None:
        super().__init__()
        self.config = config
        self.register_buffer(
            "window", torch.hann_window(config.win_length, periodic=True), persistent=False
        )
        self.register_buffer(
            "mel_basis",
            mel_filterbank(
                config.n_fft // 2 + 1, config.f_min, config.f_max, config.n_mels, config.sample_rate
            ),
            persistent=False,
        )
        self._filter_groups = _filter_groups(self.mel_basis)

    def power_mel(self, waveforms: torch.Tensor) -> torch.Tensor:
        """Mel power spectrogram before the dB conversion, (batch, n_mels, frames)."""
        # torch.stft(center=True) pads exactly so before framing.
        return self.framed_power_mel(_reflect_pad(waveforms, self.config.n_fft // 2))

    def framed_power_mel(self, padded: torch.Tensor) -> torch.Tensor:
        """Mel power of the frames of an already padded signal (frame ``j`` starts at sample ``j * hop``)."""
        cfg = self.config
        spectrum = torch.stft(
            padded,
            n_fft=cfg.n_fft,
            hop_length=cfg.hop_length,
            win_length=cfg.win_length,
            window=self.window.to(padded.dtype),
            center=False,
            normalized=False,
            onesided=True,
            return_complex=True,
        )
        power = spectrum.real.square() + spectrum.imag.square()
        bins_last = power.transpose(-1, -2)
        basis = self.mel_basis.to(power.dtype)
        mel = [torch.matmul(bins_last[..., first_bin:end_bin], basis[first_bin:end_bin, first_band:end_band])
               for first_bin, end_bin, first_band, end_band in self._filter_groups]
        return torch.cat(mel, dim=-1).transpose(-1, -2)

    @staticmethod
    def decibels(power: torch.Tensor) -> torch.Tensor:
        """Mel power -> dB, before the floor."""
        return 10.0 * torch.log10(torch.clamp(power, min=AMIN))

    def floor(self, mel_db: torch.Tensor, maximum: torch.Tensor | float) -> torch.Tensor:
        """``mel_db`` with nothing below ``maximum - top_db``."""
        return torch.maximum(mel_db, torch.as_tensor(maximum, dtype=mel_db.dtype) - self.config.top_db)

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        if waveforms.dim() == 1:
            waveforms = waveforms.unsqueeze(0)
        mel_db = self.decibels(self.power_mel(waveforms))
        # Per-clip floor: each row's own maximum, never the batch's.
        return self.floor(mel_db, mel_db.amax(dim=(-2, -1), keepdim=True))


class LogMelStream:
    """The log-mel in dB (before the floor) of a signal that arrives in blocks, handed out in chunks.

    Each chunk is ``chunk_frames`` frames (the last may be shorter), and the chunks
    concatenate to ``frontend.decibels(frontend.power_mel(signal))`` of the whole
    signal, reflect padding at both ends included: a recording of any length is
    analysed as one signal without ever being held whole. Only the floor waits
    for the end, since it hangs on the recording's loudest bin (:meth:`LogMel.floor`).

    ``min_samples``: a shorter signal is zero-padded to this length first (as
    :meth:`auricle.models.ced.CED.spectrogram` pads clips under one patch).
    """

    def __init__(self, frontend: LogMel, chunk_frames: int, min_samples: int = 0) -> None:
        if chunk_frames < 1:
            raise ValueError(f"chunk_frames must be at least 1, got {chunk_frames}")
        config = frontend.config
        self._frontend = frontend
        self._hop = config.hop_length
        self._pad = config.n_fft // 2
        self._n_fft = config.n_fft
        self._chunk = chunk_frames
        # Framing starts once the left reflect padding and the zero-padding rule are settled.
        self._hold = max(min_samples, self._pad + 1)
        self._min_samples = min_samples
        self._buffer = frontend.window.new_zeros(0)
        self._started = False
        self.samples = 0

    def push(self, block) -> list[torch.Tensor]:
        """Add the next samples (1-D, 16 kHz); the chunks this completes, each (n_mels, chunk_frames)."""
        block = torch.as_tensor(block, dtype=self._buffer.dtype).to(self._buffer.device).reshape(-1)
        self.samples += len(block)
        self._buffer = torch.cat([self._buffer, block])
        if not self._started:
            if len(self._buffer) < self._hold:
                return []
            self._buffer = torch.cat([self._buffer[1 : self._pad + 1].flip(0), self._buffer])
            self._started = True
        return self._drain()

    def finish(self) -> list[torch.Tensor]:
        """The remaining chunks once the signal has ended (raises ValueError if it had no samples)."""
        if not self._started:
            if self.samples == 0:
                raise ValueError("no samples")
            signal = F.pad(self._buffer, (0, max(0, self._min_samples - len(self._buffer))))
            whole = self._frontend.decibels(self._frontend.power_mel(signal))
            self._buffer = self._buffer[:0]
            return list(whole.split(self._chunk, dim=-1))
        self._buffer = torch.cat([self._buffer, self._buffer[-self._pad - 1 : -1].flip(0)])
        chunks = self._drain()
        if len(self._buffer) >= self._n_fft:
            chunks.append(self._decibels(self._buffer))
        self._buffer = self._buffer[:0]
        return chunks

    def _drain(self) -> list[torch.Tensor]:
        needed = (self._chunk - 1) * self._hop + self._n_fft
        chunks = []
        while len(self._buffer) >= needed:
            chunks.append(self._decibels(self._buffer[:needed]))
            self._buffer = self._buffer[self._chunk * self._hop :]
        return chunks

    def _decibels(self, padded: torch.Tensor) -> torch.Tensor:
        return self._frontend.decibels(self._frontend.framed_power_mel(padded))
