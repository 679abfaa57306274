"""What a fine-tuning run reads and how it draws it: clips decoded once into memory, each epoch's
seeded order dealt out by rank (:class:`EpochSampler`), crops gathered into batches, and whole-clip
scoring as ``auricle tag`` does it (:func:`predict`).

Apart from :mod:`auricle.downstream.finetune` (the run), which re-exports these names under their old path.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from auricle.audio import load_audio
from auricle.errors import AuricleError, DatasetError
from auricle.io.datasets import LabelledDataset
from auricle.models.ced import CED, MIN_SAMPLES
from auricle.models.dasheng import Dasheng

class EpochSampler:
    """The clips of each epoch: a seeded permutation, or a class-balanced draw, dealt out by rank.

    Depends only on (seed, epoch), so a resumed run sees the same order, and
    every rank gets an equal share (the list is padded by wrapping around).
    """

    def __init__(self, targets: np.ndarray, balanced: bool, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.count = len(targets)
        self.balanced = balanced
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        frequency = targets.sum(axis=0)
        inverse = np.where(frequency > 0, 1.0 / np.maximum(frequency, 1), 0.0)
        weights = (targets * inverse).max(axis=1)
        weights = np.where(weights > 0, weights, inverse[inverse > 0].min() if (inverse > 0).any() else 1.0)
        self.weights = torch.as_tensor(weights, dtype=torch.float64)

    def indices(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        if self.balanced:
            order = torch.multinomial(self.weights, self.count, replacement=True, generator=generator)
        else:
            order = torch.randperm(self.count, generator=generator)
        order = order.tolist()
        per_rank = math.ceil(len(order) / self.world_size)
        order += order[: per_rank * self.world_size - len(order)]
        return order[self.rank::self.world_size]


def load_waveforms(dataset: LabelledDataset, progress: bool = False) -> list[np.ndarray]:
    """Decode every clip; one error listing every file that cannot be read."""
    from tqdm import tqdm

    waveforms: list[np.ndarray] = []
    failures: list[str] = []
    for item in tqdm(dataset.items, desc="decoding", unit="file", disable=not progress):
        try:
            waveforms.append(load_audio(item.file))
        except AuricleError as error:
            failures.append(str(error))
            waveforms.append(np.zeros(0, dtype=np.float32))
    if failures:
        shown = "; ".join(failures[:3]) + (f"; ... ({len(failures) - 3} more)" if len(failures) > 3 else "")
        raise DatasetError(f"{dataset.source}: {len(failures)} files cannot be decoded: {shown}")
    return waveforms


def readable(dataset: LabelledDataset, failed: list[str], log: Callable[[str], None],
             progress: bool = False) -> tuple[LabelledDataset, list[np.ndarray]]:
    """Decode every clip; one that cannot be read is reported through ``log``, added to ``failed`` and left out."""
    from tqdm import tqdm

    waveforms: list[np.ndarray] = []
    kept: list[int] = []
    for index, item in enumerate(tqdm(dataset.items, desc="decoding", unit="file", disable=not progress)):
        try:
            waveforms.append(load_audio(item.file))
            kept.append(index)
        except AuricleError as error:
            failed.append(str(error))
            log(f"error: {error} (left out)")
    return (dataset if len(kept) == len(dataset) else dataset.subset(kept)), waveforms


def collate(clips: Sequence[np.ndarray], max_samples: int, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad clips to the longest (after a random crop of longer ones) -> (waveforms, lengths)."""
    cut = []
    for clip in clips:
        if len(clip) > max_samples:
            start = int(torch.randint(0, len(clip) - max_samples + 1, (1,), generator=generator)) if generator else 0
            clip = clip[start:start + max_samples]
        cut.append(clip)
    lengths = torch.tensor([len(c) for c in cut])
    batch = torch.zeros(len(cut), max(int(lengths.max()), MIN_SAMPLES))
    for row, clip in enumerate(cut):
        batch[row, : len(clip)] = torch.from_numpy(clip)
    return batch, lengths


def predict(network: CED | Dasheng, waveforms: Sequence[np.ndarray], batch_size: int = 16, device: str = "cpu") -> np.ndarray:
    """Scores (N, C) of whole clips, each analysed alone, by the code path of ``auricle tag``.

    (For clips up to 10 s that is exactly what ``auricle tag`` reports.)
    """
    from auricle.labels import LabelSet
    from auricle.model import AudioModel

    labels = LabelSet.from_names([f"class {i}" for i in range(network.config.num_classes)])
    if isinstance(network, Dasheng):
        from auricle.dasheng_model import DashengModel

        return np.stack(DashengModel(network, "finetune", labels, device).score_windows(list(waveforms), batch_size))
    return np.stack(AudioModel(network, "finetune", labels, device).score_windows(list(waveforms), batch_size))
