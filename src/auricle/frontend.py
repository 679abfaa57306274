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

    def power_mel(self, waveforms: torch.Tensor) -> torch.Tensor:
        """Mel power spectrogram before the dB conversion, (batch, n_mels, frames)."""
        cfg = self.config
        spectrum = torch.stft(
            waveforms,
            n_fft=cfg.n_fft,
            hop_length=cfg.hop_length,
            win_length=cfg.win_length,
            window=self.window.to(waveforms.dtype),
            center=True,
            pad_mode="reflect",
            normalized=False,
            onesided=True,
            return_complex=True,
        )
        power = spectrum.real.square() + spectrum.imag.square()
        return torch.matmul(power.transpose(-1, -2), self.mel_basis.to(power.dtype)).transpose(-1, -2)

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        if waveforms.dim() == 1:
            waveforms = waveforms.unsqueeze(0)
        mel_db = 10.0 * torch.log10(torch.clamp(self.power_mel(waveforms), min=AMIN))
        # Per-clip floor: each row's own maximum, never the batch's.
        floor = mel_db.amax(dim=(-2, -1), keepdim=True) - self.config.top_db
        return torch.maximum(mel_db, floor)
