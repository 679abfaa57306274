"""Read MiDashengLM weights: one ``.safetensors`` file or a folder, sharded or not; strict and dtype-true.

Layout (research notes §2.4; the tiny reference checkpoint follows it): ``audio_encoder.*`` (Dasheng,
handed over untouched to the encoder's builder), ``audio_projector.net.{0,2}.*`` and ``decoder.*``
(``decoder.model.*`` as transformers' ``Qwen2Model``, ``decoder.lm_head.weight``). Any other key is
refused. A folder holds ``config.json`` and either ``model.safetensors`` or the shards named by
``model.safetensors.index.json``. Files are opened with ``safetensors.safe_open`` (memory-mapped,
no pickles) and tensors keep their stored dtype: bf16 weights are never widened to float32.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from auricle.errors import CheckpointError
from auricle.language.config import LanguageConfig, read_config
from auricle.language.projector import AudioProjector
from auricle.models.checkpoints import load_state_dict_strict

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
ENCODER, PROJECTOR, DECODER = "audio_encoder.", "audio_projector.", "decoder."


@dataclass(frozen=True)
class LanguageCheckpoint:
    """A MiDashengLM checkpoint split by part; every tensor as stored (dtype, memory-mapped storage)."""

    config: LanguageConfig
    #: ``audio_encoder.*`` tensors with that prefix removed, otherwise untouched, for the Dasheng encoder.
    encoder_state: dict[str, torch.Tensor]
    #: ``audio_projector.*`` with the prefix removed (``net.0.weight``, ...).
    projector_state: dict[str, torch.Tensor]
    #: ``decoder.*`` with the prefix removed (``model.embed_tokens.weight``, ..., ``lm_head.weight``).
    decoder_state: dict[str, torch.Tensor]
    source: str


#: What a tensor becomes as it is read: (key, tensor) -> {key: tensor} (auricle.language.precision.converter).
Convert = Callable[[str, torch.Tensor], dict[str, torch.Tensor]]


def _read_safetensors(path: Path, keys: list[str] | None = None, convert: Convert | None = None) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            available = set(handle.keys())
            wanted = sorted(available) if keys is None else keys
            absent = [key for key in wanted if key not in available]
            if absent:
                raise CheckpointError(f"{path}: lacks {', '.join(absent[:5])} that the index places in it")
            unlisted = sorted(available - set(wanted))
            if unlisted:  # strict: nothing in the files is silently left out
                raise CheckpointError(f"{path}: holds {', '.join(unlisted[:5])} that the index does not list")
            if convert is None:
                return {key: handle.get_tensor(key) for key in wanted}
            tensors: dict[str, torch.Tensor] = {}
            for key in wanted:  # one tensor at a time: a converted model never sits beside the stored one
                tensors.update(convert(key, handle.get_tensor(key)))
            return tensors
    except CheckpointError:
        raise
    except FileNotFoundError:
        raise CheckpointError(f"{path}: weights file not found") from None
    except Exception as error:  # safetensors raises several types on bad files
        raise CheckpointError(f"{path}: unreadable safetensors file ({error})") from None


def _read_sharded(index: Path, convert: Convert | None = None) -> dict[str, torch.Tensor]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise CheckpointError(f"{index}: not a safetensors index ({type(error).__name__}: {error})") from None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f"{index}: weight_map is not an object of file names")
    by_shard: dict[str, list[str]] = {}
    for key, shard in weight_map.items():
        by_shard.setdefault(shard, []).append(key)
    tensors: dict[str, torch.Tensor] = {}
    for shard, keys in sorted(by_shard.items()):
        path = index.parent / shard
        if Path(shard).name != shard or not path.is_file():
            raise CheckpointError(f"{index}: shard {shard} is not a file in {index.parent}")
        tensors.update(_read_safetensors(path, keys, convert))
    return tensors


def _locate(path: Path, config: str | os.PathLike | None) -> tuple[Path, Path]:
    """The weights (file or index) and the config.json for ``path``."""
    if path.is_dir():
        weights = path / INDEX if (path / INDEX).is_file() else path / SINGLE
        if not weights.is_file():
            raise CheckpointError(f"{path}: no {SINGLE} or {INDEX}")
        folder = path
    elif path.is_file():
        weights, folder = path, path.parent
    else:
        raise CheckpointError(f"{path}: checkpoint not found")
    config_path = Path(config) if config is not None else folder / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{path}: no config.json beside the weights (give the config's path)")
    return weights, config_path


def split_state(tensors: dict[str, torch.Tensor], source: str) -> tuple[dict, dict, dict]:
    """(encoder, projector, decoder) tensors with their prefixes removed; any other key is an error."""
    parts: tuple[dict, dict, dict] = ({}, {}, {})
    foreign = []
    for key, tensor in tensors.items():
        for part, prefix in zip(parts, (ENCODER, PROJECTOR, DECODER)):
            if key.startswith(prefix):
                part[key[len(prefix):]] = tensor
                break
        else:
            foreign.append(key)
    if foreign:
        raise CheckpointError(f"{source}: not MiDashengLM weights (unexpected: {', '.join(sorted(foreign)[:5])}"
                              f"{', ...' if len(foreign) > 5 else ''})")
    return parts


def read_language_checkpoint(path: str | os.PathLike, config: str | os.PathLike | None = None,
                             convert: Convert | None = None) -> LanguageCheckpoint:
    """Read a MiDashengLM checkpoint (file or folder) and its config; tensors are not copied or converted
    unless ``convert`` is given, which then sees each tensor as it is read."""
    path = Path(path)
    weights, config_path = _locate(path, config)
    language_config = read_config(config_path)
    tensors = _read_sharded(weights, convert) if weights.name == INDEX else _read_safetensors(weights, None, convert)
    encoder, projector, decoder = split_state(tensors, str(weights))
    return LanguageCheckpoint(language_config, encoder, projector, decoder, str(weights))


def build_projector(checkpoint: LanguageCheckpoint) -> AudioProjector:
    """The projector holding the checkpoint's ``audio_projector.*`` tensors exactly (strict)."""
    config = checkpoint.config
    with torch.device("meta"):
        projector = AudioProjector(config.encoder_dim, config.decoder.hidden_size, config.subsample_factor)
    load_state_dict_strict(projector, checkpoint.projector_state, f"{checkpoint.source} (audio_projector.*)",
                           assign=True)
    return projector.eval()
