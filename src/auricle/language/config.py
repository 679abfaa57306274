"""MiDashengLM's dimensions and token ids, read from a ``config.json``; torch- and transformers-free.

Two schemas are understood:

* the official one (``architectures: ["MiDashengLMModel"]``, ``model_type: "midashenglm"``), as vLLM's
  ``MiDashengLMConfig`` reads it: ``audio_encoder_config`` (Dasheng's sizes), ``subsample_factor``,
  ``text_config`` (a Qwen2.5-Omni thinker text config; absent fields take its 7B defaults) and
  ``audio_token_id``. The schema is inferred (research notes §2.4, §3.4), not read from a real file.
* the tiny reference model's (``shared/reference/midashenglm/tiny_config.json``): ``audio_encoder``,
  ``subsample_factor``, ``text`` and the three audio token ids.

A config of any other model is refused in one line naming the file.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from auricle.errors import CheckpointError
from auricle.language import choices

#: The one-line error when the ``language`` extra is not installed.
EXTRA_MISSING = "MiDashengLM needs transformers and tokenizers: pip install 'auricle[language]'"
#: Precisions MiDashengLM runs at besides its stored one (auricle.language.precision; here for --help, torch-free).
LANGUAGE_PRECISIONS = ("bf16", "int8")
ARCHITECTURE = "MiDashengLMModel"
MODEL_TYPE = "midashenglm"

#: Qwen2.5-Omni-7B thinker text defaults (transformers' Qwen2_5OmniTextConfig), for absent fields.
OMNI_7B_TEXT = {
    "vocab_size": 152_064,
    "hidden_size": 3584,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "intermediate_size": 18_944,
    "rope_theta": 1_000_000.0,
    "max_position_embeddings": 32_768,
    "rms_norm_eps": 1e-6,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
}


@dataclass(frozen=True)
class DecoderConfig:
    """The Qwen2 decoder's sizes; becomes a transformers ``Qwen2Config`` in :mod:`.decoder`."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    rope_theta: float = 1_000_000.0
    max_position_embeddings: int = 32_768
    rms_norm_eps: float = 1e-6
    hidden_act: str = "silu"
    tie_word_embeddings: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class LanguageConfig:
    """Everything a native MiDashengLM needs besides the weights."""

    decoder: DecoderConfig
    #: Dasheng's sizes, handed as they are to the encoder's builder (embed_dim, depth, num_heads, ...).
    encoder: dict = field(default_factory=dict)
    subsample_factor: int = choices.SUBSAMPLE_FACTOR
    audio_token_id: int = choices.DEFAULT_AUDIO_TOKEN_ID
    audio_bos_token_id: int = choices.DEFAULT_AUDIO_BOS_TOKEN_ID
    audio_eos_token_id: int = choices.DEFAULT_AUDIO_EOS_TOKEN_ID
    #: Which schema it was read from: "official" or "tiny".
    schema: str = "official"

    @property
    def encoder_dim(self) -> int:
        """The encoder's token width (the projector's input is ``subsample_factor`` times it)."""
        return int(self.encoder.get("embed_dim", 1280))


_REQUIRED = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
             "num_key_value_heads", "intermediate_size")


def _text_values(text: dict, defaults: dict, source: str) -> DecoderConfig:
    if not isinstance(text, dict):
        raise CheckpointError(f"{source}: the text config is not a JSON object")
    values = dict(defaults)
    values.update({key: text[key] for key in DecoderConfig.__dataclass_fields__ if key in text})
    rope = text.get("rope_parameters")
    if "rope_theta" not in text and isinstance(rope, dict) and "rope_theta" in rope:
        values["rope_theta"] = rope["rope_theta"]  # transformers 5 writes it there
    missing = [name for name in _REQUIRED if name not in values]
    if missing:
        raise CheckpointError(f"{source}: the text config lacks {', '.join(missing)}")
    config = DecoderConfig(**values)
    if config.hidden_size % config.num_attention_heads or config.num_attention_heads % config.num_key_value_heads:
        raise CheckpointError(f"{source}: hidden_size {config.hidden_size}, {config.num_attention_heads} heads and "
                              f"{config.num_key_value_heads} key/value heads do not divide evenly")
    return config


def _ids(values: dict) -> dict:
    names = {"audio_token_id": choices.DEFAULT_AUDIO_TOKEN_ID,
             "audio_bos_token_id": choices.DEFAULT_AUDIO_BOS_TOKEN_ID,
             "audio_eos_token_id": choices.DEFAULT_AUDIO_EOS_TOKEN_ID}
    return {name: int(values[name]) if values.get(name) is not None else default for name, default in names.items()}


def parse_config(values: dict, source: str) -> LanguageConfig:
    """A :class:`LanguageConfig` from a parsed config.json of either schema; other models are refused."""
    if not isinstance(values, dict):
        raise CheckpointError(f"{source}: not a JSON object")
    architectures = values.get("architectures") or []
    if values.get("model_type") == MODEL_TYPE or ARCHITECTURE in architectures:
        return LanguageConfig(
            decoder=_text_values(values.get("text_config") or {}, OMNI_7B_TEXT, source),
            encoder=dict(values.get("audio_encoder_config") or {}),
            subsample_factor=int(values.get("subsample_factor", choices.SUBSAMPLE_FACTOR)),
            schema="official",
            **_ids(values),
        )
    if isinstance(values.get("text"), dict) and "audio_token_id" in values and not architectures:
        return LanguageConfig(
            decoder=_text_values(values["text"], {}, source),
            encoder=dict(values.get("audio_encoder") or {}),
            subsample_factor=int(values.get("subsample_factor", choices.SUBSAMPLE_FACTOR)),
            schema="tiny",
            **_ids(values),
        )
    what = ", ".join(architectures) or values.get("model_type") or "an unknown model"
    raise CheckpointError(f"{source}: a config for {what}, not MiDashengLM ({ARCHITECTURE})")


def read_config(path: str | Path) -> LanguageConfig:
    """Read and parse a MiDashengLM ``config.json``."""
    path = Path(path)
    try:
        values = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: config not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path}: cannot read ({error})") from None
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path}: invalid JSON ({error})") from None
    return parse_config(values, str(path))
