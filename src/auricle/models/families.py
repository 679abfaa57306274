"""Which model family a checkpoint holds, read once and handed to that family's reader.

A family is one module (its network and checkpoint reader) plus its registry entries
(:class:`auricle.models.registry.ModelInfo` ``family``); this is the one place that tells them apart.
"""

from __future__ import annotations

import os
from pathlib import Path

from auricle.errors import CheckpointError
from auricle.models import checkpoints, dasheng_checkpoints
from auricle.models.dasheng_config import is_dasheng_state
from auricle.models.files import find_config, weights_in_folder


def read_any_checkpoint(path: str | os.PathLike) -> checkpoints.Checkpoint | dasheng_checkpoints.DashengCheckpoint:
    """A CED or a Dasheng checkpoint, from a file or a Hugging Face style folder, in any layout."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    if path.is_dir():
        path = weights_in_folder(path)
    tensors, stored = checkpoints.read_tensors_and_config(path)
    meta = find_config(path)
    if is_dasheng_state(tensors) or (meta is not None and meta.get("family") == "dasheng"):
        return dasheng_checkpoints.checkpoint_from_tensors(path, tensors, stored, meta)
    return checkpoints.checkpoint_from_tensors(path, tensors, meta)


def family_of(checkpoint) -> str:
    """The family name of a checkpoint :func:`read_any_checkpoint` gave."""
    return "dasheng" if isinstance(checkpoint, dasheng_checkpoints.DashengCheckpoint) else "ced"
