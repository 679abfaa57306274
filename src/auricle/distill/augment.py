"""Augmentation that replays: every random choice is a pure function of (seed, epoch, key).

The teacher pass stores no random state. Each view's parameters are drawn from a
counter-based generator (Philox) whose key is a hash of (run seed, epoch, chunk
key, operation), so the student regenerates the very view the teacher scored,
on any machine, in any order, with any batch composition.

Operations, in the order they are applied:

1. waveform **roll** by a whole number of samples (with probability ``shift_prob``),
2. waveform **gain** in dB,
3. **mixup** with a partner chunk of the same shard chosen by key, weight
   ``lam ~ Beta(alpha, alpha)`` (with probability ``mixup_prob``),
4. on the log-mel: **time** and **frequency masks** set to ``mask_value``.

Uniforms come from raw 64-bit Philox words (stable across numpy versions, unlike
``Generator`` methods); gain and mixup weights are rounded to a fine grid so that
last-bit differences between maths libraries cannot change a view.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from auricle.distill import DistillError
from auricle.frontend import LogMel, num_frames
from auricle.models.ced import MIN_SAMPLES

STREAM_VERSION = "auricle-view-v1"
_GAIN_GRID = 2.0**-20
_LAM_GRID = 2.0**-16


@dataclass(frozen=True)
class AugmentConfig:
    """What the views are; the defaults are the official CED teacher-pass augmentations."""

    #: Largest roll as a fraction of the chunk length (official: +-0.5, p = 0.5).
    shift: float = 0.5
    shift_prob: float = 0.5
    #: Largest gain change in dB (uniform in [-gain_db, +gain_db]); 0 disables.
    gain_db: float = 0.0
    #: Largest mask widths in frames / mel bands and masks per view (official: 192 and 24, one each).
    time_mask: int = 192
    time_masks: int = 1
    freq_mask: int = 24
    freq_masks: int = 1
    #: Value written into masked log-mel cells (dB; the official code uses 0).
    mask_value: float = 0.0
    #: Probability of mixing with a partner chunk of the same shard; 0 disables.
    mixup_prob: float = 0.0
    mixup_alpha: float = 1.0

    def __post_init__(self) -> None:
        checks = [
            (0 <= self.shift <= 1, f"shift must be in [0, 1], got {self.shift}"),
            (0 <= self.shift_prob <= 1, f"shift probability must be in [0, 1], got {self.shift_prob}"),
            (0 <= self.gain_db <= 60, f"gain must be in [0, 60] dB, got {self.gain_db}"),
            (self.time_mask >= 0 and self.time_masks >= 0, "time masks must be non-negative"),
            (self.freq_mask >= 0 and self.freq_masks >= 0, "frequency masks must be non-negative"),
            (math.isfinite(self.mask_value), "mask value must be finite"),
            (0 <= self.mixup_prob <= 1, f"mixup probability must be in [0, 1], got {self.mixup_prob}"),
            (self.mixup_alpha > 0, f"mixup alpha must be positive, got {self.mixup_alpha}"),
        ]
        for ok, message in checks:
            if not ok:
                raise DistillError(message)

    @property
    def masks_mel(self) -> bool:
        """True when views are masked on the log-mel (teachers must then take a log-mel)."""
        return (self.time_mask > 0 and self.time_masks > 0) or (self.freq_mask > 0 and self.freq_masks > 0)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "AugmentConfig":
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise DistillError(f"unknown augmentation options: {', '.join(sorted(unknown))}")
        return cls(**values)


@dataclass(frozen=True)
class ViewParams:
    """Everything that defines one view of one chunk, resolved for its length."""

    key: str
    epoch: int
    num_samples: int
    shift: int
    gain: float
    partner: str | None
    lam: float
    #: (first frame, width) per time mask and (first band, width) per frequency mask.
    time_masks: tuple[tuple[int, int], ...]
    freq_masks: tuple[tuple[int, int], ...]

    def to_dict(self) -> dict:
        return asdict(self)


class _Stream:
    """Uniforms in (0, 1) from a Philox stream keyed by a hash of the view's identity."""

    def __init__(self, seed: int, epoch: int, key: str, operation: str) -> None:
        text = f"{STREAM_VERSION}|{seed}|{epoch}|{key}|{operation}"
        digest = hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()
        self._bits = np.random.Philox(key=int.from_bytes(digest, "little"))

    def uniform(self) -> float:
        word = int(self._bits.random_raw())
        return ((word >> 11) + 0.5) * 2.0**-53

    def below(self, n: int) -> int:
        """An integer in [0, n)."""
        return min(int(self.uniform() * n), n - 1)

    def normal(self) -> float:
        """A standard normal (Box-Muller, cosine branch)."""
        return math.sqrt(-2.0 * math.log(self.uniform())) * math.cos(2.0 * math.pi * self.uniform())

    def log_gamma_variate(self, shape: float) -> float:
        """log of a Gamma(shape, 1) draw (Marsaglia-Tsang; boosted by u^(1/shape) below shape 1)."""
        boost = 0.0
        if shape < 1.0:
            boost = math.log(self.uniform()) / shape
            shape += 1.0
        d = shape - 1.0 / 3.0
        c = 1.0 / math.sqrt(9.0 * d)
        while True:
            x = self.normal()
            v = (1.0 + c * x) ** 3
            if v > 0 and math.log(self.uniform()) < 0.5 * x * x + d - d * v + d * math.log(v):
                return math.log(d * v) + boost

    def beta(self, alpha: float) -> float:
        """Beta(alpha, alpha) = G1 / (G1 + G2), in log space so tiny alphas cannot underflow."""
        log_first, log_second = self.log_gamma_variate(alpha), self.log_gamma_variate(alpha)
        return 1.0 / (1.0 + math.exp(min(log_second - log_first, 700.0)))


def _grid(value: float, step: float) -> float:
    return round(value / step) * step


def _masks(stream: _Stream, count: int, max_width: int, size: int) -> tuple[tuple[int, int], ...]:
    masks = []
    for _ in range(count if max_width > 0 else 0):
        width = min(stream.below(max_width + 1), size)
        start = stream.below(size - width + 1)
        masks.append((start, width))
    return tuple(masks)


def mixup_partner(key: str, epoch: int, seed: int, config: AugmentConfig, partner_keys: Sequence[str],
                  index: int | None = None) -> tuple[str | None, "_Stream | None"]:
    """The chunk view (seed, epoch, key) mixes with (None: none), and the stream its weight comes from next.

    ``index``: the position of ``key`` in ``partner_keys`` when the caller knows it (then no search; the
    trainer asks this for every chunk of a shard).
    """
    if config.mixup_prob <= 0:
        return None, None
    if index is None:
        index = next((number for number, other in enumerate(partner_keys) if other == key), None)
    count = len(partner_keys) - (index is not None)  # the chunk itself is never its own partner
    stream = _Stream(seed, epoch, key, "mixup")
    if not count or stream.uniform() >= config.mixup_prob:
        return None, stream
    chosen = stream.below(count)
    return partner_keys[chosen + (index is not None and chosen >= index)], stream


def draw_params(
    key: str,
    epoch: int,
    seed: int,
    config: AugmentConfig,
    num_samples: int,
    partner_keys: Sequence[str] = (),
    n_mels: int = 64,
) -> ViewParams:
    """The parameters of view (seed, epoch, key) for a chunk of ``num_samples`` samples.

    ``partner_keys`` are the keys mixup may pick from (the chunk's shard); the
    chunk itself is never its own partner.
    """
    shift_stream = _Stream(seed, epoch, key, "shift")
    shift = 0
    max_shift = int(config.shift * num_samples)
    if max_shift > 0 and shift_stream.uniform() < config.shift_prob:
        shift = shift_stream.below(2 * max_shift + 1) - max_shift

    gain = 1.0
    if config.gain_db > 0:
        decibels = (2.0 * _Stream(seed, epoch, key, "gain").uniform() - 1.0) * config.gain_db
        gain = _grid(10.0 ** (decibels / 20.0), _GAIN_GRID)

    lam = 1.0
    partner, stream = mixup_partner(key, epoch, seed, config, partner_keys)
    if partner is not None:
        lam = _grid(stream.beta(config.mixup_alpha), _LAM_GRID)

    frames = num_frames(max(num_samples, MIN_SAMPLES))
    time_masks = _masks(_Stream(seed, epoch, key, "time_mask"), config.time_masks, config.time_mask, frames)
    freq_masks = _masks(_Stream(seed, epoch, key, "freq_mask"), config.freq_masks, config.freq_mask, n_mels)
    return ViewParams(key, epoch, num_samples, shift, gain, partner, lam, time_masks, freq_masks)


def view_waveform(audio: np.ndarray, params: ViewParams, partner_audio: np.ndarray | None = None) -> np.ndarray:
    """Apply the waveform-domain operations (roll, gain, mixup) of ``params`` to a chunk."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.shape != (params.num_samples,):
        raise DistillError(f"{params.key}: chunk has {audio.shape} samples, the view expects {params.num_samples}")
    wave = np.roll(audio, params.shift) if params.shift else audio.copy()
    if params.gain != 1.0:
        wave = wave * np.float32(params.gain)
    if params.partner is not None:
        if partner_audio is None:
            raise DistillError(f"{params.key}: view mixes with {params.partner} but no partner audio was given")
        other = np.zeros_like(wave)
        piece = np.asarray(partner_audio, dtype=np.float32)[: len(wave)]
        other[: len(piece)] = piece
        wave = np.float32(params.lam) * wave + np.float32(1.0 - params.lam) * other
    return wave.astype(np.float32, copy=False)


def mask_mel(mel: torch.Tensor, params: Sequence[ViewParams], mask_value: float = 0.0) -> torch.Tensor:
    """Apply each view's time and frequency masks to its row of a (batch, n_mels, frames) log-mel."""
    if mel.dim() != 3 or mel.shape[0] != len(params):
        raise DistillError(f"log-mel of shape {tuple(mel.shape)} does not match {len(params)} views")
    mel = mel.clone()
    for row, view in enumerate(params):
        for start, width in view.time_masks:
            mel[row, :, start : start + width] = mask_value
        for start, width in view.freq_masks:
            mel[row, start : start + width, :] = mask_value
    return mel


class ViewRenderer:
    """Turns chunks and their view parameters into the exact input a CED model sees.

    The log-mel is computed clip by clip, so a view's input never depends on
    which other views share its batch (the teacher's and the student's batches differ).
    """

    def __init__(self, config: AugmentConfig, seed: int) -> None:
        self.config = config
        self.seed = seed
        self.frontend = LogMel()

    def params(self, key: str, epoch: int, num_samples: int, partner_keys: Sequence[str] = ()) -> ViewParams:
        return draw_params(key, epoch, self.seed, self.config, num_samples, partner_keys)

    def waveform(self, audio: np.ndarray, params: ViewParams, partner: Callable[[str], np.ndarray]) -> np.ndarray:
        partner_audio = partner(params.partner) if params.partner is not None else None
        return view_waveform(audio, params, partner_audio)

    @torch.inference_mode()
    def mel(self, waveforms: Sequence[np.ndarray] | torch.Tensor, params: Sequence[ViewParams]) -> torch.Tensor:
        """Masked log-mel (batch, n_mels, frames) of equal-length view waveforms.

        Clips shorter than one patch are zero-padded first, as ``CED.spectrogram`` does.
        """
        rows = []
        for wave in waveforms:
            wave = torch.as_tensor(np.asarray(wave, dtype=np.float32))
            if wave.shape[-1] < MIN_SAMPLES:
                wave = torch.nn.functional.pad(wave, (0, MIN_SAMPLES - wave.shape[-1]))
            rows.append(self.frontend(wave.unsqueeze(0)))
        mel = torch.cat(rows)
        return mask_mel(mel, params, self.config.mask_value) if self.config.masks_mel else mel


@dataclass(frozen=True)
class View:
    key: str
    params: ViewParams
    waveform: np.ndarray


def iter_views(reader, epoch: int, renderer: ViewRenderer, keys: Sequence[str] | None = None) -> Iterator[View]:
    """The views of a shard's chunks (all, or ``keys``) for one epoch, in order.

    ``reader`` is a :class:`~auricle.distill.shards.ShardReader`; mixup partners
    are drawn from all of its keys.
    """
    all_keys = reader.keys
    for key in keys if keys is not None else all_keys:
        audio = reader.audio(key)
        params = renderer.params(key, epoch, len(audio), all_keys)
        yield View(key, params, renderer.waveform(audio, params, reader.audio))
