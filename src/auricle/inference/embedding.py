"""Embeddings of a recording of any length, as the official HEAR submission computes them.

The submission takes one log-mel of the whole recording (floored 120 dB under
its loudest bin), cuts it into 1012-frame pieces (10.12 s, the last zero-padded
after the input BatchNorm) and averages encoder tokens: over everything for the
clip embedding, per piece for the timestamped ones. Decoding the whole file and
taking its spectrogram in one go cost ~2.3 GB per hour of audio.

Here the audio arrives in blocks (:class:`~auricle.frontend.LogMelStream`) and
each piece goes through the encoder as soon as a batch is full, floored under
the loudest bin heard so far. The floor only ever rises, and it changes a
piece only where the piece has bins below it: a piece whose quietest bin lies
above the final floor came out exactly as from the whole recording. The few
others (digital silence, near-silent bands heard before the loudest moment)
are computed again in a second pass over the audio. Memory stays flat: a
batch of log-mels, and one mean token per piece.
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
    blocks: Callable[[], Iterable[np.ndarray]],
    batch_size: int,
) -> TokenMeans:
    """Mean tokens of the 16 kHz mono signal that ``blocks()`` concatenates to, ``batch_size`` pieces per call.

    ``blocks`` gives the signal afresh on each call (a second pass may need it).
    ``forward_features`` is :meth:`CED.forward_features` or an engine's. Equals running
    the network on the whole signal at once (within float rounding of the FFT).
    Raises ValueError for a signal without samples.
    """
    pieces = _Pieces(network, forward_features, batch_size)
    stream = LogMelStream(network.frontend, network.config.target_frames, min_samples=MIN_SAMPLES)
    for block in blocks():
        for mel in stream.push(_tensor(block)):  # whole pieces, run as batches fill
            pieces.add(mel)
    for mel in stream.finish():  # the rest, run once the loudest bin is known
        pieces.add(mel, hold=True)
    pieces.finish()
    stale = pieces.stale()
    if stale:  # only pieces that ran before the end can be stale: those came from push
        again = LogMelStream(network.frontend, network.config.target_frames, min_samples=MIN_SAMPLES)
        index = 0
        for block in blocks():
            for mel in again.push(_tensor(block)):
                if index in stale:
                    pieces.add(mel, index=index)
                    stale.discard(index)
                index += 1
            if not stale:
                break
        pieces.finish()
    return TokenMeans(clip=pieces.clip(), pieces=pieces.means(), samples=stream.samples)


def _tensor(block: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(block, dtype=np.float32))


class _Pieces:
    """Pieces through the encoder in batches, floored under the loudest bin heard when each batch ran."""

    def __init__(self, network: CED, forward_features, batch_size: int) -> None:
        self._network = network
        self._forward = forward_features
        self._batch_size = batch_size
        self._target = network.config.target_frames
        self._loudest = torch.tensor(float("-inf"))
        self._waiting: list[tuple[int, torch.Tensor]] = []
        self._count = 0
        self._quietest: list[float] = []  # per piece, before the floor
        self._floors: list[float] = []  # per piece, the loudest value it was floored under
        # One row per piece, in arrays that double when full: a small tensor per piece,
        # kept while the encoder's buffers come and go, grew the heap by ~150 KB per piece.
        self._means = np.zeros((64, network.config.embed_dim), dtype=np.float32)
        self._sums = np.zeros((64, network.config.embed_dim), dtype=np.float64)
        self._tokens = 0  # tokens per piece (all pieces have as many)

    def add(self, mel: torch.Tensor, hold: bool = False, index: int | None = None) -> None:
        """The next piece's log-mel, or piece ``index``'s again (second pass).

        ``hold``: keep it for :meth:`finish` (a last piece may be short, and whether it is
        padded depends on whether it is the only one).
        """
        if index is None:
            self._loudest = torch.maximum(self._loudest.to(mel.device), mel.amax())
            self._quietest.append(float(mel.amin()))
            self._floors.append(float("nan"))
            index = self._count
            self._count += 1
        self._waiting.append((index, mel))
        if not hold and len(self._waiting) == self._batch_size:
            self._run(self._waiting)
            self._waiting = []

    def finish(self) -> None:
        """Run what is waiting, ``batch_size`` pieces at a time."""
        for first in range(0, len(self._waiting), self._batch_size):
            self._run(self._waiting[first : first + self._batch_size])
        self._waiting = []

    def stale(self) -> set[int]:
        """The pieces floored lower than the final floor, where they have bins below it."""
        final = float(self._loudest)
        floor = final - self._network.frontend.config.top_db
        return {index for index in range(self._count)
                if self._floors[index] != final and self._quietest[index] < floor}

    def _run(self, batch: list[tuple[int, torch.Tensor]]) -> None:
        # One piece alone is taken at its own length; pieces of a longer signal are padded to the model's.
        frames = 0 if self._count == 1 else self._target
        network = self._network
        inputs = []
        for _, mel in batch:
            normalized = network.normalize(network.frontend.floor(mel, self._loudest).unsqueeze(0))
            inputs.append(F.pad(normalized, (0, max(0, frames - normalized.shape[-1]))))
        tokens = self._forward(torch.cat(inputs)).cpu()
        self._tokens = tokens.shape[1]
        rows = [index for index, _ in batch]
        if max(rows) >= len(self._means):
            grown = 2 * max(rows) + 2
            self._means = np.resize(self._means, (grown, self._means.shape[1]))
            self._sums = np.resize(self._sums, (grown, self._sums.shape[1]))
        self._means[rows] = tokens.mean(dim=1).numpy()
        self._sums[rows] = tokens.double().sum(dim=1).numpy()
        for index in rows:
            self._floors[index] = float(self._loudest)

    def means(self) -> np.ndarray:
        return self._means[: self._count].copy()

    def clip(self) -> np.ndarray:
        return (self._sums[: self._count].sum(axis=0) / (self._count * self._tokens)).astype(np.float32)
