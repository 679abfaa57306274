"""Fixtures of the Dasheng reference checkpoint: the encoder (``zenodo``) and a tagger with an AudioSet head."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import REFERENCE, require


@pytest.fixture(scope="module")
def zenodo() -> Path:
    return require(REFERENCE / "dasheng" / "dasheng_small_perturbed.pt")


@pytest.fixture(scope="module")
def tagger(zenodo, tmp_path_factory) -> Path:
    return write_audioset_checkpoint(zenodo, tmp_path_factory.mktemp("dasheng") / "audioset.pt")


def zenodo_dump(zenodo: Path) -> dict:
    return torch.load(zenodo, weights_only=True)


def write_audioset_checkpoint(zenodo: Path, path: Path) -> Path:
    """The layout of dasheng_audioset_mAP497.pt as the official README loads it: a flat state dict, the
    encoder's keys and a 527-class head ``outputlayer`` (LayerNorm + Linear) over the mean token."""
    state = zenodo_dump(zenodo)
    generator = torch.Generator().manual_seed(0)
    state["model"].update({
        "outputlayer.0.weight": torch.ones(192), "outputlayer.0.bias": torch.zeros(192),
        "outputlayer.1.weight": torch.randn(527, 192, generator=generator) * 0.1,
        "outputlayer.1.bias": torch.zeros(527)})
    torch.save(state["model"], path)
    return path
