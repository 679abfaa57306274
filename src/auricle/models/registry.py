"""The registry as data: each published model's name, family, config, weight sources and scores.

:class:`Registry` binds the models to their families (:mod:`auricle.models.families`);
:data:`REGISTRY` is auricle's own, immutable. The loading path takes a registry as an argument,
so a test (or a plugin) can load through another one without touching this one.
Torch-free: ``auricle models`` and an unknown ``--model`` are answered without it.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, replace

from auricle.errors import CheckpointError
from auricle.models.config import CEDConfig
from auricle.models.dasheng_config import SIZES, DashengConfig
from auricle.models.families import FAMILIES, Family


@dataclass(frozen=True)
class ModelInfo:
    """A published CED model: what it is, where its weights live, how well it tags."""

    name: str
    config: CEDConfig | DashengConfig
    parameters_millions: float
    #: mAP on the AudioSet evaluation set, full (2M) training set, from the paper (None: no AudioSet head).
    audioset_map: float | None
    hf_repo: str
    zenodo_url: str
    #: The model family: which module builds it ("ced", "dasheng").
    family: str = "ced"

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "parameters_millions": self.parameters_millions,
            "audioset_map": self.audioset_map,
            "embed_dim": self.config.embed_dim,
            "family": self.family,
            "hf_repo": self.hf_repo,
            "zenodo_url": self.zenodo_url,
        }


_ZENODO = "https://zenodo.org/record/{record}/files/audiotransformer_{size}_mAP_{score}.pt?download=1"

_MODELS = (
    ModelInfo("ced-tiny", CEDConfig(embed_dim=192, num_heads=3), 5.5, 48.1, "mispeech/ced-tiny",
              _ZENODO.format(record=8275347, size="tiny", score=4814)),
    ModelInfo("ced-mini", CEDConfig(embed_dim=256, num_heads=4), 9.6, 49.0, "mispeech/ced-mini",
              _ZENODO.format(record=8275347, size="mini", score=4896)),
    ModelInfo("ced-small", CEDConfig(embed_dim=384, num_heads=6), 22.0, 49.6, "mispeech/ced-small",
              _ZENODO.format(record=8275319, size="small", score=4958)),
    ModelInfo("ced-base", CEDConfig(embed_dim=768, num_heads=12), 86.0, 50.0, "mispeech/ced-base",
              _ZENODO.format(record=8275347, size="base", score=4999)),
)

_DASHENG_ZENODO = "https://zenodo.org/records/{record}/files/{file}?download=1"

#: The Dasheng encoders (loaded by name or checkpoint; ``auricle models`` lists them after CED's).
_DASHENG_MODELS = (
    ModelInfo("dasheng-base", SIZES["base"], 85.45, None, "mispeech/dasheng-base",
              _DASHENG_ZENODO.format(record=11511780, file="dasheng_base.pt"), "dasheng"),
    ModelInfo("dasheng-0.6b", SIZES["0.6b"], 630.33, None, "mispeech/dasheng-0.6B",
              _DASHENG_ZENODO.format(record=11511780, file="dasheng_06b.pt"), "dasheng"),
    ModelInfo("dasheng-1.2b", SIZES["1.2b"], 1134.05, None, "mispeech/dasheng-1.2B",
              _DASHENG_ZENODO.format(record=11511780, file="dasheng_12b.pt"), "dasheng"),
    # Published on Zenodo only (no Hub repository): loaded with checkpoint=PATH.
    ModelInfo("dasheng-base-audioset", replace(SIZES["base"], num_classes=527), 85.85, 49.7, "",
              _DASHENG_ZENODO.format(record=13315686, file="dasheng_audioset_mAP497.pt"), "dasheng"),
)

#: Audio-language models (``auricle describe``): a whole Hugging Face folder each (sharded weights, tokenizer).
#: The config names the encoder (Dasheng 0.6B's width and depth); ``parameters_millions`` is the total.
_LANGUAGE_MODELS = (
    # The "1021" release in bf16, the precision the maintainers recommend (research notes §2.5).
    ModelInfo("midashenglm-7b", SIZES["0.6b"], 8280.0, None, "mispeech/midashenglm-7b-1021-bf16", "",
              "midashenglm"),
)

DEFAULT_MODEL = "ced-mini"


@dataclass(frozen=True)
class Registry:
    """Models and the families that load them; immutable (a new family means a new registry, not a mutation)."""

    models: tuple[ModelInfo, ...]
    families: tuple[Family, ...]
    #: The family a bare size ("mini") belongs to.
    default_family: str = "ced"

    def family(self, name: str) -> Family:
        for family in self.families:
            if family.name == name:
                return family
        raise CheckpointError(f"{name}: no such model family (known: {', '.join(f.name for f in self.families)})")

    def available(self, family: str | None = "ced") -> list[ModelInfo]:
        """The published encoders of ``family`` (None: of every family), in the order listed; whole-folder
        models (an audio-language model) are loaded by name but not listed."""
        return [info for info in self.models if not self.family(info.family).whole_folder
                and (family is None or info.family == family)]

    def info(self, name: str) -> ModelInfo:
        """Look a model up by name; ``ced_mini``, ``CED-Mini`` and ``mini`` all work."""
        key = name.strip().lower().replace("_", "-")
        if not key.startswith(tuple(f"{family.name}-" for family in self.families)):
            key = f"{self.default_family}-{key}"
        for info in self.models:
            if info.name == key:
                return info
        names = [info.name for info in self.models]
        near = difflib.get_close_matches(key, names, n=2)
        hint = f"did you mean {' or '.join(repr(n) for n in near)}? " if near else ""
        raise CheckpointError(f"{name}: unknown model ({hint}available: {', '.join(names)})")


#: auricle's registry: CED, then Dasheng, then the audio-language models.
REGISTRY = Registry(_MODELS + _DASHENG_MODELS + _LANGUAGE_MODELS, FAMILIES)


def available_models(family: str | None = "ced") -> list[ModelInfo]:
    """The published models of ``family`` ("ced", "dasheng"; None: all encoders, CED first), smallest first."""
    return REGISTRY.available(family)


def model_info(name: str) -> ModelInfo:
    """Look a model up by name; ``ced_mini``, ``CED-Mini`` and ``mini`` all work."""
    return REGISTRY.info(name)


def same_size(config: CEDConfig, info: ModelInfo) -> bool:
    """Whether an encoder of ``config`` has the size of the published model ``info`` (width, depth, heads)."""
    return (config.embed_dim, config.depth, config.num_heads) == (
        info.config.embed_dim, info.config.depth, info.config.num_heads)


def size_name(config: CEDConfig, registry: Registry = REGISTRY) -> str:
    """The published model an encoder of ``config`` has the size of, else its width and depth in words."""
    match = next((info.name for info in registry.available(None) if same_size(config, info)), None)
    return match or f"a {config.embed_dim}-wide, {config.depth}-block encoder"


def config_for_width(embed_dim: int, **overrides) -> CEDConfig:
    """The config of a CED encoder of this width (every CED model uses 64-dim heads)."""
    if embed_dim % 64:
        raise CheckpointError(f"embedding width {embed_dim} is not a CED width (multiple of 64)")
    return CEDConfig(embed_dim=embed_dim, num_heads=embed_dim // 64, **overrides)
