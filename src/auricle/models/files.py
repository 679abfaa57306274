"""Which files a checkpoint consists of; torch-free, so a cached ONNX graph can be found without torch."""

from __future__ import annotations

import json
from pathlib import Path

from auricle.errors import CheckpointError


def weights_in_folder(folder: Path) -> Path:
    """The weights file of a Hugging Face style folder (or a folder holding a single weights file)."""
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return folder / name
    weights = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.pt"))
    if len(weights) == 1:
        return weights[0]
    raise CheckpointError(f"{folder}: no model.safetensors, pytorch_model.bin or single weights file")


def config_candidates(weights: Path) -> list[Path]:
    """Where a JSON config for ``weights`` may lie, in the order they are tried."""
    return [weights.with_suffix(".json"), weights.parent / "config.json"]


def find_config(weights: Path) -> dict | None:
    """The first JSON config beside ``weights``, parsed; None if there is none."""
    for candidate in config_candidates(weights):
        if candidate.is_file():
            try:
                return json.loads(candidate.read_text())
            except json.JSONDecodeError as error:
                raise CheckpointError(f"{candidate}: invalid JSON ({error})") from None
    return None
