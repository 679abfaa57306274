"""The decoder: transformers' ``Qwen2ForCausalLM`` built from a :class:`DecoderConfig`, never from remote code.

MiDashengLM's decoder is the Qwen2.5-Omni thinker's text model; with sequential positions
(:data:`auricle.language.choices.POSITIONS`) it equals ``Qwen2ForCausalLM`` with the same weights.
transformers is imported here, when a decoder is built, and nowhere at ``import auricle``.

The model is built on the meta device and the checkpoint's tensors are assigned into it, so a bf16
file stays bf16 and no float32 copy of the weights is ever made; only the rotary frequencies
(computed, not stored) are built for real afterwards.
"""

from __future__ import annotations

import torch

from auricle.errors import AuricleError, CheckpointError
from auricle.language.config import EXTRA_MISSING, DecoderConfig
from auricle.models.checkpoints import load_state_dict_strict

def require_transformers():
    """The transformers module, or a one-line error saying how to install it."""
    try:
        import transformers
    except ImportError:
        raise AuricleError(EXTRA_MISSING) from None
    return transformers


def qwen2_config(config: DecoderConfig, attn_implementation: str = "sdpa"):
    """A transformers ``Qwen2Config`` with these sizes (no sliding window, no mRoPE)."""
    transformers = require_transformers()
    qwen = transformers.Qwen2Config(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        intermediate_size=config.intermediate_size,
        rope_theta=config.rope_theta,
        max_position_embeddings=config.max_position_embeddings,
        rms_norm_eps=config.rms_norm_eps,
        hidden_act=config.hidden_act,
        tie_word_embeddings=config.tie_word_embeddings,
        use_sliding_window=False,
    )
    qwen._attn_implementation = attn_implementation
    return qwen


def _build_computed_buffers(model: torch.nn.Module, qwen_config) -> None:
    """Give the modules whose non-persistent buffers are still on meta (rotary frequencies) real ones."""
    for module in model.modules():
        if any(buffer.is_meta for buffer in module.buffers(recurse=False)):
            fresh = type(module)(config=qwen_config)
            for name, buffer in fresh.named_buffers(recurse=False):
                module._buffers[name] = buffer
            if hasattr(fresh, "attention_scaling"):
                module.attention_scaling = fresh.attention_scaling


def build_decoder(config: DecoderConfig, state_dict: dict[str, torch.Tensor], source: str,
                  attn_implementation: str = "sdpa", int8: bool = False) -> torch.nn.Module:
    """A ``Qwen2ForCausalLM`` in eval mode holding exactly ``state_dict`` (keys without ``decoder.``);
    ``int8``: its linear layers are :class:`~auricle.language.precision.Int8Linear` and the state holds
    their int8 weights and scales (:func:`~auricle.language.precision.converter`)."""
    transformers = require_transformers()
    qwen_config = qwen2_config(config, attn_implementation)
    with torch.device("meta"):
        model = transformers.Qwen2ForCausalLM(qwen_config)
    if int8:
        from auricle.language.precision import use_int8_layers

        use_int8_layers(model)
    load_state_dict_strict(model, state_dict, source, assign=True)
    _build_computed_buffers(model, qwen_config)
    still_meta = [name for name, tensor in model.state_dict(keep_vars=True).items() if tensor.is_meta]
    still_meta += [name for name, buffer in model.named_buffers() if buffer.is_meta]
    if still_meta:
        raise CheckpointError(f"{source}: the decoder has no value for {', '.join(sorted(set(still_meta)))}")
    return model.eval()
