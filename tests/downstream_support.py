"""Tiny encoders and synthetic labelled datasets for the probe and fine-tuning tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile
import torch

from auricle.models.ced import CED, CEDConfig
from auricle.models.checkpoints import save_checkpoint

TONES = {"low": 300.0, "mid": 1200.0, "high": 4000.0}
TINY = CEDConfig(embed_dim=64, num_heads=1, depth=2, num_classes=4)


def tiny_encoder(path: Path, seed: int = 0) -> Path:
    """A random 64-wide, 2-block CED saved in auricle's format (its 4 AudioSet-free classes are placeholders)."""
    torch.manual_seed(seed)
    return save_checkpoint(CED(TINY), path, labels=["a", "b", "c", "d"], name="tiny")


def tone_clips(folder: Path, per_class: int = 8, seed: int = 0) -> list[tuple[str, str]]:
    """Noisy tones of three pitches and random lengths (0.3-0.8 s): (relative file, class) pairs."""
    generator = np.random.default_rng(seed)
    rows = []
    for name, frequency in TONES.items():
        for take in range(per_class):
            seconds = generator.uniform(0.3, 0.8)
            time = np.arange(int(16000 * seconds)) / 16000
            wave = 0.3 * np.sin(2 * np.pi * frequency * time) + 0.02 * generator.standard_normal(len(time))
            relative = f"{name}/{name}_{take}.wav"
            (folder / name).mkdir(parents=True, exist_ok=True)
            soundfile.write(folder / relative, wave.astype(np.float32), 16000)
            rows.append((relative, name))
    return rows


def tone_manifest(folder: Path, per_class: int = 8, test_every: int = 4) -> Path:
    """tones.csv with a train/test split (every ``test_every``-th take is test)."""
    rows = tone_clips(folder, per_class)
    lines = ["file,labels,split"]
    for number, (relative, label) in enumerate(rows):
        lines.append(f"{relative},{label},{'test' if number % test_every == 0 else 'train'}")
    path = folder / "tones.csv"
    path.write_text("\n".join(lines) + "\n")
    return path
