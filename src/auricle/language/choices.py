"""Every detail of MiDashengLM that the public sources leave open, as one named constant each.

The research notes (shared/research/audio-language.md §3.4) list what could not be read from official
code: the Hugging Face remote code and real weights were out of reach when this was written. Each
choice below says what was chosen, why, and how a user with the real files can confirm or correct it.
tests/language/test_language_choices.py pins each value, so changing one is a deliberate, visible edit.
"""

from __future__ import annotations

# --- §3.4.1 Frontend: top_db scope and bf16 rounding of the filterbank ------------------------------
# Belongs to the encoder (auricle.models.dasheng), not here; recorded so the list is complete.
# Confirm with the real files: compare ``audio_encoder.front_end.0.mel_scale.fb`` and ``...window``
# from the checkpoint with the encoder's computed buffers in float32 and rounded to bfloat16.
FRONTEND_OWNER = "auricle.models.dasheng"

# --- §3.4.2 Attention mask of an all-padding encoder chunk -------------------------------------------
# Also the encoder's; this package runs one clip per prompt (audio_lengths are not batched through the
# encoder here), which sidesteps it.
ENCODER_BATCH_OF_ONE = True

# --- §3.4.3 Decoder positions -------------------------------------------------------------------------
#: Positions are sequential 1-D (0, 1, 2, ... over text and audio tokens alike), as vLLM runs the model
#: (``text_config.rope_parameters = None  # uses_mrope is false``). With them the Qwen2.5-Omni thinker
#: text model equals transformers' Qwen2ForCausalLM exactly (verified on the tiny reference). The
#: alternative, Qwen2.5-Omni's audio-time mRoPE positions, is not implemented. Confirm: run one real clip
#: through the official remote code and compare prefill logits with ``MiDashengLM.prefill_logits``.
POSITIONS = "sequential"

# --- §3.4.4 Token ids, generation settings, chat template ---------------------------------------------
#: Qwen2.5-Omni vocabulary ids, from memory [R]; used only when a config.json does not name them.
#: Confirm in the real ``config.json`` (``audio_token_id``) and ``tokenizer.json`` (added tokens).
DEFAULT_AUDIO_TOKEN_ID = 151646
DEFAULT_AUDIO_BOS_TOKEN_ID = 151647
DEFAULT_AUDIO_EOS_TOKEN_ID = 151648
#: The special tokens' text, as the official processor writes them (processing_midashenglm.py).
AUDIO_TOKEN = "<|AUDIO|>"
AUDIO_BOS_TOKEN = "<|audio_bos|>"
AUDIO_EOS_TOKEN = "<|audio_eos|>"
#: Generation stops at either ChatML end marker; confirm against ``generation_config.json`` (eos ids).
STOP_TOKENS = ("<|im_end|>", "<|endoftext|>")
#: Default number of generated tokens when a caller gives none; the official default is unknown.
DEFAULT_MAX_NEW_TOKENS = 128
#: Greedy decoding only: deterministic and batch-independent. The official sampling settings
#: (``generation_config.json``) are unknown.
DECODING = "greedy"
#: No system turn: the README dropped "You are a helpful language and speech assistant." on 2025-11-04.
#: Confirm in the chat template of ``tokenizer_config.json`` / ``chat_template.json``.
DEFAULT_SYSTEM_PROMPT: str | None = None
#: Order of the user turn's parts. The README's example message lists the text, then the audio; the
#: Qwen2.5-Omni template joins parts with nothing between them. Confirm from the chat template.
AUDIO_AFTER_TEXT = True
PART_SEPARATOR = ""

# --- §3.4.5 Left padding in batched generation ----------------------------------------------------------
#: Prompts of different lengths are padded on the left; the attention mask hides the padding (that is what
#: makes a batch give the same tokens as each prompt alone, tested), and each row's positions count only
#: its own tokens (0 at its first real token), so its rotary angles are exactly those it gets alone.
#: Rotary attention depends only on position differences, so a constant offset (the Omni thinker taking
#: positions from cache_position) would change results by rounding only; still unconfirmed for batch > 1.
PADDING_SIDE = "left"
POSITIONS_FROM_MASK = True

# --- Audio token count ----------------------------------------------------------------------------------
#: The processor's ``calculate_mel_frames_dasheng``: 10 ms hop (160 samples at 16 kHz), 4 frames per
#: encoder token, 5 encoder tokens per projected token.
SAMPLE_RATE = 16_000
HOP_SAMPLES = 160
FRAMES_PER_ENCODER_TOKEN = 4
SUBSAMPLE_FACTOR = 5
#: vLLM pads audio shorter than this many samples (0.2 s) with zeros before the encoder.
MIN_SAMPLES = 3200


def audio_token_count(samples: int, subsample_factor: int = SUBSAMPLE_FACTOR) -> int:
    """How many ``<|AUDIO|>`` tokens a clip of ``samples`` samples at 16 kHz becomes."""
    return int(1 + samples / HOP_SAMPLES) // FRAMES_PER_ENCODER_TOKEN // subsample_factor
