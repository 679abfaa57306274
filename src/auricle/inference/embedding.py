"""Embeddings of a recording of any length, as the official HEAR submission computes them.

The submission takes one log-mel of the whole recording (floored 120 dB under
its loudest bin), cuts it into 1012-frame pieces (10.12 s, the last zero-padded
after the input BatchNorm) and averages encoder tokens: over everything for the
clip embedding, per piece for the timestamped ones. Decoding the whole file and
taking its spectrogram in one go costs ~2.3 GB per hour of audio. Here the
audio arrives in blocks (:class:`~auricle.frontend.LogMelStream`) and only the
log-mel is kept until the floor is known (64 x 100 values per second, ~92 MB
per hour); then the pieces go through the encoder a batch at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from auricle.frontend import LogMelStream
from auricle.models.ced import CED, MIN_SAMPLES


@dataclass(frozen=True)
class TokenMeans:
    """What a recording's tokens reduce to: their mean, the mean per piece, and the samples seen."""

    clip: np.ndarray
    pieces: np.ndarray
    samples: int


@torch.inference_mode()
def token_means(
    network: CED,
    forward_features: Callable[[torch.Tensor], torch.Tensor],
    blocks: Iterable[np.ndarray],
    batch_size: int,
) -> TokenMeans:
    """Mean tokens of the 16 kHz mono signal that ``blocks`` concatenate to, ``batch_size`` pieces per call.

    ``forward_features`` is :meth:`CED.forward_features` or an engine's. Equals running
    the network on the whole signal at once (within float rounding of the FFT).
    Raises ValueError for a signal without samples.
    """
    target = network.config.target_frames
    stream = LogMelStream(network.frontend, target, min_samples=MIN_SAMPLES)
    mels = _MelStore()
    for block in blocks:
        for mel in stream.push(torch.from_numpy(np.ascontiguousarray(block, dtype=np.float32))):
            mels.append(mel)
    for mel in stream.finish():
        mels.append(mel)
    loudest = mels.loudest
    # One piece is taken at its own length; several are all padded to the model's.
    padded = len(mels) > 1
    piece_means = []
    sums = torch.zeros(network.config.embed_dim, dtype=torch.float64)
    count = 0
    for first in range(0, len(mels), batch_size):
        pieces = [_piece(network, mels[index], loudest, target if padded else 0)
                  for index in range(first, min(first + batch_size, len(mels)))]
        tokens = forward_features(torch.cat(pieces)).cpu()
        piece_means.append(tokens.mean(dim=1))
        sums += tokens.double().sum(dim=(0, 1))
        count += tokens.shape[0] * tokens.shape[1]
    return TokenMeans(clip=(sums / count).float().numpy(), pieces=torch.cat(piece_means).numpy(),
                      samples=stream.samples)


def _piece(network: CED, mel: torch.Tensor, loudest: torch.Tensor, frames: int) -> torch.Tensor:
    """One piece's encoder input (1, 1, n_mels, frames or its own length)."""
    normalized = network.normalize(network.frontend.floor(mel, loudest).unsqueeze(0))
    return F.pad(normalized, (0, max(0, frames - normalized.shape[-1])))


class _MelStore:
    """The pieces' log-mels, kept in slabs of many pieces.

    One small tensor per piece, held while the stream's transient buffers come
    and go, fragmented the heap: an hour took ~2.4x its 92 MB (measured). Slabs
    (doubling up to 64 pieces, ~17 MB) are allocated apart from that churn.
    """

    LARGEST_SLAB = 64

    def __init__(self) -> None:
        self._slabs: list[torch.Tensor] = []
        self._filled = 0  # pieces in the last slab
        self._last: torch.Tensor | None = None  # a shorter final piece
        self._count = 0
        self.loudest = torch.tensor(float("-inf"))

    def append(self, mel: torch.Tensor) -> None:
        self.loudest = torch.maximum(self.loudest.to(mel.device), mel.amax())
        self._count += 1
        if self._slabs and mel.shape != self._slabs[-1].shape[1:]:
            self._last = mel
            return
        if not self._slabs or self._filled == len(self._slabs[-1]):
            size = min(self.LARGEST_SLAB, 4 * 2 ** len(self._slabs))
            self._slabs.append(mel.new_empty((size, *mel.shape)))
            self._filled = 0
        self._slabs[-1][self._filled].copy_(mel)
        self._filled += 1

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index: int) -> torch.Tensor:
        if not 0 <= index < self._count:
            raise IndexError(index)
        if self._last is not None and index == self._count - 1:
            return self._last
        for slab in self._slabs:
            if index < len(slab):
                return slab[index]
            index -= len(slab)
        raise IndexError(index)
