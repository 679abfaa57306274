"""Which files a checkpoint consists of; torch-free, so a cached ONNX graph can be found without torch."""

from __future__ import annotations

import json
import struct
import os
from pathlib import Path

from auricle.errors import CheckpointError


#: The suffix that marks an ``auricle export`` file: a path is an exported model by its name alone.
EXPORTED_SUFFIX = ".onnx"


def is_exported_file(checkpoint: str | os.PathLike | None) -> bool:
    """Whether ``checkpoint`` names an ONNX file (by its suffix) rather than weights.

    Only :mod:`auricle.loading` asks this of an input; ``auricle export`` asks it of the name it writes.
    """
    return checkpoint is not None and Path(checkpoint).suffix.lower() == EXPORTED_SUFFIX


def not_weights(path: str | os.PathLike, command: str = "this command") -> str:
    """The one-line refusal of an exported file where weights are needed (to train, export or teach)."""
    return (f"{path}: an exported ONNX file can tag and embed (auricle tag, evaluate, serve, listen, embed), not "
            f"train; give {command} the model's weights (.pt, .safetensors or a Hugging Face folder)")


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


#: The key of a ``.safetensors`` file's metadata that holds auricle's config (dimensions, labels, name).
EMBEDDED_KEY = "auricle"


def safetensors_metadata(weights: Path) -> dict[str, str]:
    """The ``__metadata__`` of a ``.safetensors`` file (string to string), read from its header alone.

    The header is 8 bytes of little-endian length and that much JSON; nothing else is read (and no torch).
    An unreadable header gives {}: reading the tensors then names the problem.
    """
    try:
        with open(weights, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > 100_000_000:  # not a header: a corrupt or foreign file
                return {}
            header = json.loads(handle.read(length))
    except (OSError, struct.error, ValueError):
        return {}
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    return metadata if isinstance(metadata, dict) else {}


def find_config(weights: Path) -> dict | None:
    """``weights``' config: embedded in a ``.safetensors`` file, else the first JSON config beside it; None if none.

    auricle's own ``.safetensors`` files carry it in their metadata (one file); files written before that
    carried it in ``<stem>.json`` beside them, which is still read.
    """
    if weights.suffix == ".safetensors":
        embedded = safetensors_metadata(weights).get(EMBEDDED_KEY)
        if embedded is not None:
            try:
                return json.loads(embedded)
            except json.JSONDecodeError as error:
                raise CheckpointError(f"{weights}: invalid auricle metadata ({error})") from None
    for candidate in config_candidates(weights):
        if candidate.is_file():
            try:
                return json.loads(candidate.read_text())
            except json.JSONDecodeError as error:
                raise CheckpointError(f"{candidate}: invalid JSON ({error})") from None
    return None
