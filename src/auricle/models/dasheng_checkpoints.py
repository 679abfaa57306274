"""Read Dasheng checkpoints in every released layout, strictly.

Layouts:

* ``official``: the Zenodo ``.pt`` files (record 11511780), ``{"model": state_dict, "config": kwargs}``,
  keys without prefix, the frontend buffers ``front_end.0.*`` and the BatchNorm as ``init_bn.1.*``.
* ``huggingface``: ``mispeech/dasheng-*`` (``model.safetensors`` + ``config.json`` with
  ``encoder_kwargs``), keys under ``encoder.``, no frontend buffers.
* ``auricle``: our own ``.safetensors`` with a JSON config beside it (``"family": "dasheng"``),
  written by :func:`auricle.models.checkpoints.save_checkpoint`.

The size is read from the tensor shapes and must be a known one (:data:`SIZES`); a config stored
with the weights must agree with it. Stored frontend buffers are compared with the computed ones.
Pickles are never executed (``weights_only=True``).
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import torch

from auricle.errors import CheckpointError
from auricle.models.checkpoints import (
    _HF_RENAMES, _OFFICIAL_RENAMES, FORMAT_NAME, Checkpoint, _check_official_frontend, _rename, check_shapes,
    load_state_dict_strict, read_tensors_and_config,
)
from auricle.models.dasheng import Dasheng
from auricle.models.dasheng_config import SIZES, DashengConfig, is_dasheng_state
from auricle.models.files import find_config, weights_in_folder

#: What a stored config must agree on with the shapes.
_CHECKED = ("embed_dim", "depth", "num_heads")
#: Dasheng weights in auricle's naming: the record CED's are read into.
DashengCheckpoint = Checkpoint


def to_auricle_keys(state_dict: dict[str, torch.Tensor], source: str) -> tuple[dict[str, torch.Tensor], str]:
    """Any released layout -> auricle's key names (frontend buffers checked, then dropped)."""
    layout = "auricle"
    if any(key.startswith("encoder.") for key in state_dict):
        layout = "huggingface"
        state_dict = _rename(state_dict, _HF_RENAMES)
    if any(key.startswith(("front_end.", "init_bn.1.")) for key in state_dict):
        layout = "official" if layout == "auricle" else layout
        _check_official_frontend(state_dict, source)
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith("front_end.")}
        state_dict = _rename(state_dict, _OFFICIAL_RENAMES)
    return state_dict, layout


def config_from_shapes(state_dict: dict, source: str) -> DashengConfig:
    """The known size whose tensors have these shapes (auricle keys; tensors or meta tensors)."""
    weight = state_dict.get("patch_embed.proj.weight")
    if weight is None:
        raise CheckpointError(f"{source}: not a Dasheng checkpoint (no tensor patch_embed.proj.weight)")
    if tuple(weight.shape[-2:]) == (16, 16):
        raise CheckpointError(f"{source}: holds a CED encoder (16x16 patches), not Dasheng")
    if not is_dasheng_state(state_dict):
        raise CheckpointError(f"{source}: not a Dasheng checkpoint (patches {tuple(weight.shape[-2:])}, not 64x4)")
    embed_dim = weight.shape[0]
    depth = len({key.split(".")[1] for key in state_dict if key.startswith("blocks.")})
    size = next((config for config in SIZES.values() if (config.embed_dim, config.depth) == (embed_dim, depth)), None)
    if size is None:
        known = ", ".join(f"{name} {c.embed_dim}/{c.depth}" for name, c in SIZES.items())
        raise CheckpointError(
            f"{source}: a {embed_dim}-wide, {depth}-deep encoder matches no known Dasheng size "
            f"(width/depth: {known})")
    head = state_dict.get("outputlayer.1.weight")
    config = replace(size, num_classes=head.shape[0] if head is not None else 0)
    check_shapes(Dasheng.meta_state_dict(config), state_dict, source)
    return config


def _agree(config: DashengConfig, stored: dict | None, source: str, where: str) -> None:
    """Refuse a stored config that names other dimensions than the tensors have."""
    if not stored:
        return
    for key in _CHECKED:
        if key in stored and stored[key] != getattr(config, key):
            raise CheckpointError(
                f"{source}: {where} says {key} {stored[key]} but the tensors are those of {getattr(config, key)}")


def read_dasheng_checkpoint(path: str | os.PathLike) -> DashengCheckpoint:
    """Read Dasheng weights of any supported layout from a file or a Hugging Face style folder."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    if path.is_dir():
        path = weights_in_folder(path)
    tensors, stored = read_tensors_and_config(path)
    return checkpoint_from_tensors(path, tensors, stored, find_config(path))


def checkpoint_from_tensors(path: Path, tensors: dict[str, torch.Tensor], stored: dict | None,
                            meta: dict | None) -> DashengCheckpoint:
    """:func:`read_dasheng_checkpoint` of tensors already read: ``stored`` is the config saved with
    them (Zenodo), ``meta`` the JSON beside them."""
    source = str(path)
    state_dict, layout = to_auricle_keys(tensors, source)
    config = config_from_shapes(state_dict, source)
    labels = name = None
    _agree(config, stored, source, "its stored config")
    if meta is not None and meta.get("format") == FORMAT_NAME:
        if meta.get("family") != "dasheng":
            raise CheckpointError(f"{source}: its config names a {meta.get('family', 'ced')} model, not Dasheng")
        own = DashengConfig.from_dict(meta["config"])
        _agree(config, own.to_dict(), source, "its JSON config")
        config = replace(config, head_activation=own.head_activation)
        labels = tuple(meta["labels"]) if meta.get("labels") else None
        name = meta.get("name")
    elif meta is not None:
        _agree(config, meta.get("encoder_kwargs"), source, "its config.json")
        name = meta.get("name")
    return DashengCheckpoint(state_dict, config, layout, source, labels, name)


def build_dasheng(checkpoint: DashengCheckpoint) -> Dasheng:
    """A Dasheng model in eval mode with the checkpoint's weights.

    The model takes the checkpoint's tensors as its own (float32, contiguous; others are
    converted), built on the meta device first: no random initialisation to overwrite and
    no second copy of the weights. Building dasheng-base the other way held both copies at
    once (a 960 MB peak for 344 MB of weights, ``benchmarks/dasheng_memory.py``). So two
    models built from one record share their weights: read the file again for a second one
    that will be trained.
    """
    with torch.device("meta"):
        model = Dasheng(checkpoint.config)
    tensors = {key: _owned_float32(tensor) for key, tensor in checkpoint.state_dict.items()}
    load_state_dict_strict(model, tensors, checkpoint.source, assign=True)
    return model.eval()


def _owned_float32(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` itself when it can serve as a float32 weight, else a float32 contiguous copy."""
    if tensor.is_floating_point() and tensor.dtype != torch.float32:
        tensor = tensor.float()
    return tensor.contiguous()
