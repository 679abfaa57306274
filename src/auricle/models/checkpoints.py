"""Read and write CED checkpoints in every layout; the one conversion table.

Layouts:

* ``official``: the Zenodo ``.pt`` files, a flat state dict including the
  frontend buffers ``front_end.*`` and ``init_bn.1.*``.
* ``huggingface``: ``mispeech/ced-*`` (``model.safetensors`` + ``config.json``),
  keys under ``encoder.`` except ``outputlayer.*``, and ``init_bn`` without ``.1``.
* ``auricle``: our own, ``*.safetensors`` whose metadata carries a JSON config
  (dimensions, labels, name). Files written before it did carry it beside them
  (``<stem>.json``, or ``config.json`` in a folder), which is still read.

Pickles are never executed: ``.pt``/``.bin`` files load with ``weights_only=True``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from auricle.errors import CheckpointError
from auricle.frontend import mel_filterbank
from auricle.io import atomic
from auricle.models.ced import CED, CEDConfig
from auricle.models.dasheng_config import DashengConfig, is_dasheng_state
from auricle.models.files import EMBEDDED_KEY, find_config, safetensors_metadata, weights_in_folder
from auricle.models.registry import config_for_width

FORMAT_NAME = "auricle"
FORMAT_VERSION = 1

# Foreign key prefix -> our key prefix; the only renames there are.
_OFFICIAL_RENAMES = (("init_bn.1.", "init_bn."),)
_HF_RENAMES = (("encoder.", ""),)


@dataclass(frozen=True)
class Checkpoint:
    """Weights in auricle's naming, with what is known about the model (of either family)."""

    state_dict: dict[str, torch.Tensor]
    config: CEDConfig | DashengConfig
    layout: str
    source: str
    labels: tuple[str, ...] | None = None
    name: str | None = None


def _rename(state_dict: dict[str, torch.Tensor], renames) -> dict[str, torch.Tensor]:
    renamed = {}
    for key, tensor in state_dict.items():
        for old, new in renames:
            if key.startswith(old):
                key = new + key[len(old):]
                break
        renamed[key] = tensor
    return renamed


def _check_official_frontend(state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Refuse a checkpoint trained with another frontend than the one we compute."""
    expected = {
        "front_end.0.spectrogram.window": torch.hann_window(512, periodic=True),
        "front_end.0.mel_scale.fb": mel_filterbank(),
    }
    for key, reference in expected.items():
        tensor = state_dict.get(key)
        if tensor is None:
            continue
        # Meta tensors (shapes without weights, to check a release's layout) have only a shape to compare.
        if tensor.shape != reference.shape or (
                not tensor.is_meta and not torch.allclose(tensor.float(), reference, atol=1e-5)):
            raise CheckpointError(
                f"{source}: {key} differs from the CED frontend (shape {tuple(tensor.shape)}); "
                "this checkpoint was trained with other audio features"
            )


def detect_layout(state_dict: dict[str, torch.Tensor]) -> str:
    """Which layout a flat state dict is in, from its key names."""
    keys = state_dict.keys()
    if any(key.startswith("encoder.") for key in keys):
        return "huggingface"
    if any(key.startswith(("front_end.", "init_bn.1.")) for key in keys):
        return "official"
    return "auricle"


def to_auricle_keys(state_dict: dict[str, torch.Tensor], source: str) -> tuple[dict[str, torch.Tensor], str]:
    """Convert any supported layout to auricle's key names."""
    layout = detect_layout(state_dict)
    if layout == "official":
        _check_official_frontend(state_dict, source)
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith("front_end.")}
        state_dict = _rename(state_dict, _OFFICIAL_RENAMES)
    elif layout == "huggingface":
        state_dict = _rename(state_dict, _HF_RENAMES)
    return state_dict, layout


def infer_config(state_dict: dict[str, torch.Tensor], source: str) -> CEDConfig:
    """Model dimensions from tensor shapes, for checkpoints that carry no config."""
    try:
        embed_dim = state_dict["patch_embed.proj.weight"].shape[0]
        num_classes = state_dict["outputlayer.1.weight"].shape[0]
        time_patches = state_dict["time_pos_embed"].shape[-1]
        fc1 = state_dict["blocks.0.mlp.fc1.weight"].shape[0]
    except KeyError as missing:
        raise CheckpointError(f"{source}: not a CED checkpoint (no tensor {missing})") from None
    depth = len({key.split(".")[1] for key in state_dict if key.startswith("blocks.")})
    return config_for_width(
        embed_dim,
        depth=depth,
        num_classes=num_classes,
        mlp_ratio=fc1 / embed_dim,
        target_frames=time_patches * 16 + TARGET_REMAINDER,
    )


# 1012 frames make 63 patches with 4 frames left over; keep that for other lengths.
TARGET_REMAINDER = 4


#: First bytes of files people pass as weights by mistake, and what they are.
_OTHER_FILES = {b"RIFF": "a WAV recording", b"fLaC": "a FLAC recording", b"OggS": "an Ogg recording",
                b"ID3": "an MP3 recording", b"\x89HDF": "an HDF5 file"}


def _refuse_what_is_not_a_torch_file(path: Path) -> None:
    """torch.save writes a zip archive (a pickle before PyTorch 1.6); name anything else in words.

    torch.load's own reasons for other files are internals ("101", "pop from empty list").
    """
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
    except OSError as error:
        raise CheckpointError(f"{path}: cannot read ({error.strerror or error})") from None
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return
    kind = next((name for magic, name in _OTHER_FILES.items() if head.startswith(magic)), None)
    what = f"is {kind}" if kind else "is not a PyTorch checkpoint"
    raise CheckpointError(f"{path}: {what}; give a .pt checkpoint, a .safetensors file or a Hugging Face model folder")


def read_tensors_and_config(path: Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    """The flat state dict of a weights file, and the ``config`` a training checkpoint stores beside it.

    Dasheng's Zenodo files are ``{"model": state_dict, "config": kwargs}``; other files give None.
    """
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path)), None
        except Exception as error:  # safetensors raises several types on bad files
            raise CheckpointError(f"{path}: unreadable safetensors file ({error})") from None
    _refuse_what_is_not_a_torch_file(path)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        cause = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if cause.startswith("Weights only load failed"):  # torch's advice (weights_only=False) runs foreign code
            cause = "it is not a PyTorch file of tensors alone, and auricle never unpickles anything else"
        raise CheckpointError(f"{path}: not a loadable weights-only checkpoint ({cause})") from None
    config = None
    if isinstance(loaded, dict) and "model" in loaded and isinstance(loaded["model"], dict):
        config = loaded.get("config") if isinstance(loaded.get("config"), dict) else None
        loaded = loaded["model"]  # training checkpoints wrap the state dict
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise CheckpointError(f"{path}: does not hold a flat state dict of tensors")
    return loaded, config


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read weights of any supported layout from a file or a Hugging Face style folder."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    if path.is_dir():
        path = weights_in_folder(path)
    tensors, _ = read_tensors_and_config(path)
    return checkpoint_from_tensors(path, tensors, find_config(path))


def checkpoint_from_tensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict | None) -> Checkpoint:
    """:func:`read_checkpoint` of tensors already read, with the JSON config found beside them."""
    if is_dasheng_state(tensors) or (meta is not None and meta.get("family", "ced") != "ced"):
        raise CheckpointError(f"{path}: holds a Dasheng encoder, not CED; this needs a CED checkpoint")
    if meta is None and path.suffix == ".safetensors" and safetensors_metadata(path).get("format") == FORMAT_NAME:
        # Written by an auricle that kept the config (and class names) beside the weights only.
        raise CheckpointError(f"{path}: its config and class names are in {path.with_suffix('.json')}, which is "
                              "missing (older auricle versions kept them there): put it back beside the weights")
    state_dict, layout = to_auricle_keys(tensors, str(path))
    labels = None
    name = None
    if meta is not None and meta.get("format") == FORMAT_NAME:
        config = CEDConfig.from_dict(meta["config"])
        labels = tuple(meta["labels"]) if meta.get("labels") else None
        name = meta.get("name")
    else:
        config = infer_config(state_dict, str(path))
        if meta is not None:
            name = meta.get("name")
    return Checkpoint(state_dict, config, layout, str(path), labels, name)


def checkpoint_from_family_read(path: Path, tensors: dict[str, torch.Tensor], stored: dict | None,
                                meta: dict | None) -> Checkpoint:
    """:func:`checkpoint_from_tensors` as the family interface calls it (CED stores no config in the file)."""
    return checkpoint_from_tensors(path, tensors, meta)


def load_state_dict_strict(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str,
                           assign: bool = False) -> None:
    """Load every tensor or fail with the list of missing, unexpected and misshapen keys.

    ``assign`` puts the given tensors themselves into the model (its dtype and storage, e.g. a
    memory-mapped bf16 file) instead of copying them into the parameters it was built with.
    """
    check_shapes(model.state_dict(), state_dict, source)
    model.load_state_dict(state_dict, strict=True, assign=assign)


def check_shapes(own: dict[str, torch.Tensor], state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Fail with the list of missing, unexpected and misshapen keys of ``state_dict`` against ``own``
    (either may be meta tensors: shapes are all that is compared)."""
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    misshapen = sorted(
        f"{key} {tuple(state_dict[key].shape)} != {tuple(own[key].shape)}"
        for key in set(own) & set(state_dict)
        if state_dict[key].shape != own[key].shape
    )
    problems = []
    for title, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshapen)):
        if keys:
            problems.append(f"{title}: {', '.join(keys)}")
    if problems:
        raise CheckpointError(f"{source}: does not match the model ({'; '.join(problems)})")


def build_model(checkpoint: Checkpoint) -> CED:
    """A CED model in eval mode with the checkpoint's weights."""
    model = CED(checkpoint.config)
    load_state_dict_strict(model, checkpoint.state_dict, checkpoint.source)
    return model.eval()


def save_checkpoint(
    model: torch.nn.Module,
    path: str | os.PathLike,
    labels: list[str] | tuple[str, ...] | None = None,
    name: str | None = None,
) -> Path:
    """Write ``path`` (``.safetensors``), its config and labels in the file's metadata, atomically.

    One file: nothing beside it is needed (a ``<stem>.json`` left there by an older write is ignored).
    """
    from safetensors.torch import save

    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_suffix(".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "name": name,
        # Only other families name themselves, so CED files stay as they were.
        **({"family": model.family} if hasattr(model, "family") else {}),
        "config": model.config.to_dict(),
        "labels": list(labels) if labels is not None else None,
    }
    tensors = {key: value.detach().contiguous().cpu() for key, value in model.state_dict().items()}
    # Serialised here and written as any file is (safetensors' own save_file makes it owner-only, 0600).
    atomic.write_bytes(path, save(tensors, metadata={"format": FORMAT_NAME, EMBEDDED_KEY: json.dumps(meta)}))
    return path
