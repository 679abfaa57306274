"""MelSpectrogram and AmplitudeToDB with torchaudio's arguments, state-dict keys and results
(power 2, periodic Hann, centre reflect padding, HTK mel without normalisation; dB with a
``top_db`` floor under one maximum per packed batch, as torchaudio takes it). Written for the
benchmark from torchaudio's documented behaviour; only the arguments the official Dasheng passes.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _hz_to_mel(freq: float) -> float:
    return 2595.0 * math.log10(1.0 + freq / 700.0)


def _mel_filters(n_freqs: int, f_min: float, f_max: float, n_mels: int, sample_rate: int) -> torch.Tensor:
    """HTK triangular filters, no normalisation: (n_freqs, n_mels)."""
    freqs = torch.linspace(0, sample_rate // 2, n_freqs)
    mels = torch.linspace(_hz_to_mel(f_min), _hz_to_mel(f_max), n_mels + 2)
    hz = 700.0 * (10.0 ** (mels / 2595.0) - 1.0)
    width = hz[1:] - hz[:-1]
    slopes = hz.unsqueeze(0) - freqs.unsqueeze(1)
    rising = (-1.0 * slopes[:, :-2]) / width[:-1]
    falling = slopes[:, 2:] / width[1:]
    return torch.clamp(torch.minimum(rising, falling), min=0.0)


class Spectrogram(nn.Module):
    def __init__(self, n_fft: int, win_length: int, hop_length: int, center: bool) -> None:
        super().__init__()
        self.n_fft, self.win_length, self.hop_length, self.center = n_fft, win_length, hop_length, center
        self.register_buffer("window", torch.hann_window(win_length))

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        shape = waveform.shape
        spec = torch.stft(waveform.reshape(-1, shape[-1]), n_fft=self.n_fft, hop_length=self.hop_length,
                          win_length=self.win_length, window=self.window, center=self.center,
                          pad_mode="reflect", normalized=False, onesided=True, return_complex=True)
        return spec.abs().pow(2.0).reshape(shape[:-1] + spec.shape[-2:])


class MelScale(nn.Module):
    def __init__(self, n_mels: int, sample_rate: int, f_min: float, f_max: float, n_stft: int) -> None:
        super().__init__()
        self.register_buffer("fb", _mel_filters(n_stft, f_min, f_max, n_mels, sample_rate))

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        return torch.matmul(spec.transpose(-1, -2), self.fb).transpose(-1, -2)


class MelSpectrogram(nn.Module):
    def __init__(self, sample_rate: int = 16000, n_fft: int = 400, win_length: int | None = None,
                 hop_length: int | None = None, f_min: float = 0.0, f_max: float | None = None,
                 n_mels: int = 128, center: bool = True) -> None:
        super().__init__()
        win_length = win_length or n_fft
        self.spectrogram = Spectrogram(n_fft, win_length, hop_length or win_length // 2, center)
        self.mel_scale = MelScale(n_mels, sample_rate, f_min, f_max or sample_rate / 2, n_fft // 2 + 1)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.mel_scale(self.spectrogram(waveform))


class AmplitudeToDB(nn.Module):
    """Power -> dB (multiplier 10, amin 1e-10, ref 1), floored ``top_db`` under the maximum of each
    packed batch: for (batch, freq, time) input that is one maximum over the whole batch."""

    def __init__(self, stype: str = "power", top_db: float | None = None) -> None:
        super().__init__()
        if stype != "power":
            raise NotImplementedError("the shim knows stype='power' only (what Dasheng uses)")
        self.top_db = top_db

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        db = 10.0 * torch.log10(torch.clamp(x, min=1e-10))
        if self.top_db is None:
            return db
        shape = db.shape
        channels = shape[-3] if db.dim() > 2 else 1
        packed = db.reshape(-1, channels, shape[-2], shape[-1])
        packed = torch.max(packed, packed.amax(dim=(-3, -2, -1)).view(-1, 1, 1, 1) - self.top_db)
        return packed.reshape(shape)
