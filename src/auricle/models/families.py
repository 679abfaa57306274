"""Model families: the interface auricle needs of each, and which one a checkpoint holds.

A family is one record here (:class:`Family`: name, capabilities, where its code lives) plus its
registry entries (:attr:`auricle.models.registry.ModelInfo.family` names it). The loading path
(:mod:`auricle.loading`) looks families up in a :class:`~auricle.models.registry.Registry` and
never names one. A family's code is named by ``"module:function"`` (as a package entry point
is) and imported on first use, so this module, and with it the registry, stays torch-free:
``auricle models``, ``--help`` and an unknown ``--model`` never import a network.

What a family's code provides (:class:`FamilyCode`): for a family read from one weights file,
``holds`` (does a state dict, with the config beside it, belong to it), ``read`` (the strict
conversion of each checkpoint layout it knows), ``build`` (checkpoint -> network) and ``model``
(checkpoint -> the user-facing model); ``scratch`` builds an untrained network from a config
(fine-tuning ``--from-scratch``). A whole-folder family (an audio-language model: config, weight
shards, tokenizer) gives ``is_folder`` (a torch-free look at a folder), ``check_runs`` and
``load_folder`` instead.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any, Protocol

from auricle.errors import CheckpointError
from auricle.models.files import find_config, weights_in_folder


class FamilyCode(Protocol):
    """The functions a family's ``"module:function"`` references resolve to (see the module docstring)."""

    def holds(self, tensors: dict, meta: dict | None) -> bool: ...
    def read(self, path: Path, tensors: dict, stored: dict | None, meta: dict | None) -> Any: ...
    def build(self, checkpoint: Any) -> Any: ...
    def model(self, checkpoint: Any, info: Any, device: Any, engine: Any) -> Any: ...
    def scratch(self, config: Any) -> Any: ...


def code(reference: str | Callable | None) -> Callable | None:
    """The function ``reference`` names (``"package.module:function"``), imported now; a callable as it is."""
    if reference is None or callable(reference):
        return reference
    module, _, name = reference.partition(":")
    return getattr(import_module(module), name)


@dataclass(frozen=True)
class Family:
    """A model family as the loading path sees it: data, and references to its code."""

    name: str
    #: How messages name the family ("CED", "Dasheng").
    title: str
    #: What its models can do: "tags", "embeds", "trains", "exports", "listens", "indexes", "describes",
    #: "engines" (runs on auricle's encoder engines: onnx, fused, bf16 and int8).
    #: A caller says what it needs (:class:`auricle.loading.Accepts`); a family without it is refused.
    capabilities: frozenset[str]
    #: (tensors, JSON beside them) -> whether this family's; asked in the registry's order.
    holds: str | Callable | None = None
    #: (path, tensors, config stored with them, JSON beside them) -> the family's checkpoint (strictly checked).
    read: str | Callable | None = None
    #: The family's checkpoint -> its network in eval mode with those weights.
    build: str | Callable | None = None
    #: (checkpoint, ModelInfo or None, torch device, EngineConfig) -> the user-facing model.
    model: str | Callable | None = None
    #: A config -> an untrained network (drawn from torch's current seed).
    scratch: str | Callable | None = None
    #: Whole-folder families: (path) -> whether it is one of this family's folders (torch-free).
    is_folder: str | Callable | None = None
    #: Whole-folder families: (engine, precision, device) -> raises when the family cannot run so.
    check_runs: str | Callable | None = None
    #: Whole-folder families: (folder or None, ModelInfo or None, cache_dir) -> the user-facing model.
    load_folder: str | Callable | None = None
    #: The refusal where a caller needs what the family lacks: {subject} (the model), {caller}
    #: (``auricle tag``), {takes} (the families that would do, by title).
    refusal: str = "{subject}: {caller} takes {takes} models"

    @property
    def whole_folder(self) -> bool:
        return self.load_folder is not None

    def can(self, needs: frozenset[str] | set[str]) -> bool:
        return set(needs) <= self.capabilities

    def call(self, part: str, *args: Any) -> Any:
        """Call the family's ``part`` (``"read"``, ``"build"``, ...), importing its module now."""
        function = code(getattr(self, part))
        if function is None:
            raise CheckpointError(f"the {self.title} family has no {part}")
        return function(*args)


CED = Family(
    "ced", "CED", frozenset({"tags", "embeds", "trains", "exports", "listens", "indexes", "engines"}),
    holds=lambda tensors, meta: True,  # the fallback: its reader names what it cannot read
    read="auricle.models.checkpoints:checkpoint_from_family_read",
    build="auricle.models.checkpoints:build_model",
    model="auricle.model:ced_model",
    scratch="auricle.models.ced:CED",
)
DASHENG = Family(
    "dasheng", "Dasheng", frozenset({"tags", "embeds", "trains"}),
    holds="auricle.models.dasheng_config:holds_dasheng",
    read="auricle.models.dasheng_checkpoints:checkpoint_from_tensors",
    build="auricle.models.dasheng_checkpoints:build_dasheng",
    model="auricle.dasheng_model:load_dasheng",
    scratch="auricle.models.dasheng:Dasheng",
    refusal="{subject}: {caller} takes {takes} models; a Dasheng encoder works with tag, embed, probe, finetune, "
            "serve and evaluate (and in Python)",
)
MIDASHENGLM = Family(
    "midashenglm", "MiDashengLM", frozenset({"describes"}),
    is_folder="auricle.language_model:is_language_checkpoint",
    check_runs="auricle.language_model:check_runs",
    load_folder="auricle.language_model:load_folder",
    refusal="{subject}: an audio-language model (MiDashengLM); it works with `auricle describe` and "
            "`auricle ask`, not `{caller}`",
)
#: Asked in order for a weights file; CED, the original family and the fallback, last.
FAMILIES = (DASHENG, CED, MIDASHENGLM)


def read_any_checkpoint(path: str | os.PathLike, families: tuple[Family, ...] = FAMILIES) -> tuple[Family, Any]:
    """The family and checkpoint of a file or Hugging Face style folder, in any layout of any of ``families``."""
    from auricle.models.checkpoints import read_tensors_and_config  # torch: only once weights are read

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    if path.is_dir():
        path = weights_in_folder(path)
    tensors, stored = read_tensors_and_config(path)
    meta = find_config(path)
    family = next(family for family in families if family.holds is not None and family.call("holds", tensors, meta))
    return family, family.call("read", path, tensors, stored, meta)
