"""Fixtures of the Dasheng reference checkpoint: the encoder (``zenodo``) and a tagger with an AudioSet head."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import REFERENCE, require
from test_dasheng_checkpoints import write_audioset_checkpoint


@pytest.fixture(scope="module")
def zenodo() -> Path:
    return require(REFERENCE / "dasheng" / "dasheng_small_perturbed.pt")


@pytest.fixture(scope="module")
def tagger(zenodo, tmp_path_factory) -> Path:
    return write_audioset_checkpoint(zenodo, tmp_path_factory.mktemp("dasheng") / "audioset.pt")
