"""Shared fixtures: the ../shared reference data and small checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
REFERENCE = SHARED / "reference"
DATA = SHARED / "data"


def require(path: Path) -> Path:
    """Skip the test (with the reason) when a piece of ../shared is absent."""
    if not path.exists():
        pytest.skip(f"{path} is absent (../shared is not beside this checkout)")
    return path


@pytest.fixture(scope="session", autouse=True)
def auricle_cache(tmp_path_factory):
    """What the tests export (ONNX encoders, prepared graphs) goes to a temporary cache, not the user's;
    and weights are looked up in an empty Hugging Face cache, so tests never depend on what the user downloaded."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AURICLE_CACHE", str(tmp_path_factory.mktemp("auricle-cache")))
        patch.setenv("HF_HUB_CACHE", str(tmp_path_factory.mktemp("hf-hub-cache")))
        yield


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    return require(REFERENCE)


@pytest.fixture(scope="session")
def tiny_checkpoint() -> Path:
    return require(REFERENCE / "ced_tiny_perturbed.pt")


@pytest.fixture(scope="session")
def mini_checkpoint() -> Path:
    return require(REFERENCE / "ced_mini_perturbed.pt")


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoint):
    import auricle

    return auricle.load_model(checkpoint=tiny_checkpoint)


@pytest.fixture(scope="session")
def mini_model(mini_checkpoint):
    import auricle

    return auricle.load_model(checkpoint=mini_checkpoint)


@pytest.fixture
def restore_torch_threads():
    """Loading a model or running a command sets torch's process-wide thread count; put it back."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
