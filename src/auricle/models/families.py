"""Model families: what auricle needs of each, and which one a checkpoint holds.

A family is one module (its network and checkpoint reader) plus its registry entries
(:attr:`auricle.models.registry.ModelInfo.family` names it); :data:`FAMILIES` is the one place
that tells them apart. A checkpoint is read once and handed to the first family that holds it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from auricle.errors import CheckpointError
from auricle.models import checkpoints, dasheng_checkpoints
from auricle.models.dasheng_config import is_dasheng_state
from auricle.models.files import find_config, weights_in_folder


@dataclass(frozen=True)
class Family:
    """A model family as the loading path sees it."""

    name: str
    #: Whether a state dict (any layout), with the JSON config found beside it, is this family's.
    holds: Callable[[dict[str, torch.Tensor], dict | None], bool]
    #: (path, tensors, config stored with them, JSON beside them) -> the family's checkpoint (strictly checked).
    read: Callable[[Path, dict[str, torch.Tensor], dict | None, dict | None], Any]
    #: The family's checkpoint -> its network in eval mode with those weights.
    build: Callable[[Any], torch.nn.Module]


DASHENG = Family(
    "dasheng",
    lambda tensors, meta: is_dasheng_state(tensors) or (meta is not None and meta.get("family") == "dasheng"),
    dasheng_checkpoints.checkpoint_from_tensors,
    dasheng_checkpoints.build_dasheng,
)
CED = Family(
    "ced",
    lambda tensors, meta: True,  # the fallback: its reader names what it cannot read
    lambda path, tensors, stored, meta: checkpoints.checkpoint_from_tensors(path, tensors, meta),
    checkpoints.build_model,
)
#: Asked in order; CED, the original family, last.
FAMILIES = (DASHENG, CED)


def read_any_checkpoint(path: str | os.PathLike) -> tuple[Family, Any]:
    """The family and checkpoint of a file or Hugging Face style folder, in any layout of any family."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    if path.is_dir():
        path = weights_in_folder(path)
    tensors, stored = checkpoints.read_tensors_and_config(path)
    meta = find_config(path)
    family = next(family for family in FAMILIES if family.holds(tensors, meta))
    return family, family.read(path, tensors, stored, meta)
