"""Dasheng's frame tokens (one per 40 ms) of a recording of any length, in flat memory.

Dasheng takes one log-mel of the whole recording (floored 120 dB under its loudest bin),
then runs 252-token chunks (1008 frames) through its blocks one by one. So a recording
can arrive in blocks (:class:`~auricle.frontend.LogMelStream`, 1008-frame chunks) and go
through the encoder ``batch_size`` chunks at a time, as long as every chunk is floored
under the whole recording's loudest bin.

Unlike CED's pieces (:mod:`auricle.inference.embedding`) every token is kept, so a chunk
run under a lower floor cannot be patched up in a cheap mean; the loudest bin is instead
found in a first pass over the audio (decoding and the log-mel only: a few per cent of the
encoder's time). Memory stays flat apart from the tokens themselves, which are the result.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from auricle.frontend import LogMelStream
from auricle.models.dasheng import MIN_SAMPLES, Dasheng, PieceFeatures
from auricle.models.dasheng_config import PATCH_FRAMES


@dataclass(frozen=True)
class FrameTokens:
    """A recording's tokens (tokens, dim) and the samples it had."""

    tokens: np.ndarray
    samples: int


def _chunks(network: Dasheng, blocks: Iterable[np.ndarray]) -> tuple[LogMelStream, Iterable[torch.Tensor]]:
    stream = LogMelStream(network.frontend, network.config.chunk_tokens * PATCH_FRAMES, min_samples=MIN_SAMPLES)

    def chunks():
        for block in blocks:
            yield from stream.push(torch.from_numpy(np.ascontiguousarray(block, dtype=np.float32)))
        yield from stream.finish()

    return stream, chunks()


@torch.inference_mode()
def frame_tokens(network: Dasheng, blocks: Callable[[], Iterable[np.ndarray]], batch_size: int,
                 piece_features: PieceFeatures | None = None) -> FrameTokens:
    """Tokens of the 16 kHz mono signal that ``blocks()`` concatenates to, ``batch_size`` chunks per call.

    ``blocks`` gives the signal afresh on each call (it is read twice). Equals
    ``network.encode`` of the whole signal (within float rounding of the FFT).
    ``piece_features``: what runs the chunks (an engine's; default the network's own).
    Raises ValueError for a signal without samples.
    """
    loudest = torch.tensor(float("-inf"))
    count = 0
    for mel in _chunks(network, blocks())[1]:
        loudest = torch.maximum(loudest.to(mel.device), mel.amax())
        count += mel.shape[-1] // PATCH_FRAMES  # a chunk under one patch adds no token
    tokens = np.empty((count, network.config.embed_dim), dtype=np.float32)
    stream, chunks = _chunks(network, blocks())
    done = 0
    waiting: list[torch.Tensor] = []

    def run(batch: list[torch.Tensor]) -> None:
        nonlocal done
        normalized = network.normalize(torch.stack([network.frontend.floor(mel, loudest) for mel in batch]))
        out = network.forward_features(normalized, None, piece_features).reshape(-1, tokens.shape[1]).cpu().numpy()
        tokens[done : done + len(out)] = out
        done += len(out)

    full = network.config.chunk_tokens * PATCH_FRAMES
    for mel in chunks:
        if mel.shape[-1] == full:
            waiting.append(mel)
            if len(waiting) == batch_size:
                run(waiting)
                waiting = []
            continue
        if waiting:  # the short last chunk runs alone, after the full ones before it
            run(waiting)
            waiting = []
        if mel.shape[-1] >= PATCH_FRAMES:
            run([mel])
    if waiting:
        run(waiting)
    return FrameTokens(tokens=tokens[:done], samples=stream.samples)
