"""Small synthetic corpora, a tiny CED teacher and a callable teacher for the distillation tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch

# (name, seconds) of the synthetic sources: several chunks, tails, one too short to keep.
SOURCES = (("a", 4.5), ("b", 2.0), ("c", 5.3), ("d", 0.1), ("e", 3.2), ("f", 6.0))
CHUNK_SECONDS = 2.0


def make_audio(folder: Path, bad: bool = True) -> Path:
    """Noise and tones as 16 kHz and 8 kHz WAVs, plus (if ``bad``) a corrupt file."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    for number, (name, seconds) in enumerate(SOURCES):
        rate = 16000 if number % 2 == 0 else 8000
        t = np.arange(int(seconds * rate)) / rate
        wave = 0.3 * np.sin(2 * np.pi * (200 + 150 * number) * t) + 0.05 * rng.standard_normal(len(t))
        sf.write(folder / f"{name}.wav", wave.astype(np.float32), rate, subtype="PCM_16")
    if bad:
        (folder / "broken.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunkjunk")
    return folder


def make_teacher(path: Path, seed: int = 0) -> Path:
    """A tiny random CED (64 wide, 2 blocks) with an AudioSet head, saved in auricle's format."""
    from auricle.models.ced import CED, CEDConfig
    from auricle.models.checkpoints import save_checkpoint

    torch.manual_seed(seed)
    network = CED(CEDConfig(embed_dim=64, num_heads=1, depth=2))
    with torch.no_grad():  # a wider logit spread so that top-k classes differ between views
        network.outputlayer[1].weight.mul_(1.5)
    return save_checkpoint(network, path)


def _subset_mids() -> list[str]:
    from auricle.labels import audioset_labels

    mids = list(audioset_labels().mids)
    # 100 AudioSet classes in another order, plus two MIDs AudioSet does not have.
    return mids[::-5][:100] + ["/m/not_audioset_1", "/m/not_audioset_2"]


def waveform_teacher(waveforms: torch.Tensor) -> torch.Tensor:
    """A 'foreign' teacher on 102 classes: probabilities from simple waveform statistics."""
    count = len(waveform_teacher.mids)
    rms = waveforms.square().mean(dim=1, keepdim=True).sqrt()
    crossings = (waveforms[:, 1:] * waveforms[:, :-1] < 0).float().mean(dim=1, keepdim=True)
    phase = torch.arange(count, dtype=torch.float32)
    return torch.sigmoid(8 * rms * torch.cos(phase) + 20 * crossings * torch.sin(0.7 * phase))


waveform_teacher.mids = _subset_mids()
waveform_teacher.identity = {"note": "test teacher"}


def misshapen_teacher(waveforms: torch.Tensor) -> torch.Tensor:
    """A teacher with a bug: one column where it promised 102."""
    return torch.zeros(len(waveforms), 1)


misshapen_teacher.mids = _subset_mids()


def rank0_broken_teacher(waveforms: torch.Tensor) -> torch.Tensor:
    """Fails on torchrun's rank 0 only: the job's other units succeed."""
    import os

    if os.environ.get("RANK") == "0":
        raise RuntimeError("broken on rank 0")
    return waveform_teacher(waveforms)


rank0_broken_teacher.mids = _subset_mids()
