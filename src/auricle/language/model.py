"""MiDashengLM after the encoder: projector, audio-embedding placement, prefill and greedy decoding.

Takes encoder tokens (B, T, D) from the Dasheng encoder (:mod:`auricle.language.encoder`, built from the
checkpoint's ``audio_encoder.*`` when asked for) and prompts whose ``<|AUDIO|>`` tokens (``audio_token_id``) are already expanded to the clip's count
(:func:`auricle.language.choices.audio_token_count`). The projected audio embeddings replace the input
embeddings at those positions, in order.

Decoding is greedy with a KV cache and explicit positions: prompts of different lengths are padded on
the left, each row's positions count only its own tokens, so a batch yields what each prompt yields
alone (:data:`auricle.language.choices.POSITIONS_FROM_MASK`).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from auricle.errors import AuricleError
from auricle.language import choices
from auricle.language.checkpoint import LanguageCheckpoint, build_projector, read_language_checkpoint
from auricle.language.config import LanguageConfig
from auricle.language.decoder import build_decoder, require_transformers
from auricle.language.encoder import build_encoder, check_audio, encode
from auricle.language.precision import Int8Linear, check_precision, converter
from auricle.language.projector import AudioProjector
from auricle.language.prompts import PromptTokenizer


def _cache_keyword(model: nn.Module) -> str:
    """transformers 5.x names the KV cache argument ``cache``; earlier versions ``past_key_values``."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


class MiDashengLM(nn.Module):
    """The projector and the Qwen2 decoder of MiDashengLM, and the Dasheng encoder when built with it."""

    def __init__(self, config: LanguageConfig, projector: AudioProjector, decoder: nn.Module,
                 encoder: nn.Module | None = None):
        super().__init__()
        self.config = config
        self.projector = projector
        self.decoder = decoder
        self.encoder = encoder

    @classmethod
    def from_checkpoint(cls, checkpoint: LanguageCheckpoint, attn_implementation: str = "sdpa",
                        with_encoder: bool = False, int8: bool = False) -> "MiDashengLM":
        """``int8``: the checkpoint was read with :func:`auricle.language.precision.converter` ("int8")."""
        projector = build_projector(checkpoint)
        decoder = build_decoder(checkpoint.config.decoder, checkpoint.decoder_state,
                                f"{checkpoint.source} (decoder.*)", attn_implementation, int8)
        encoder = build_encoder(checkpoint.config.encoder, checkpoint.encoder_state,
                                checkpoint.source) if with_encoder else None
        return cls(checkpoint.config, projector, decoder, encoder).eval().requires_grad_(False)

    @classmethod
    def load(cls, path: str | os.PathLike, config: str | os.PathLike | None = None,
             attn_implementation: str = "sdpa", with_encoder: bool = False,
             precision: str | None = None) -> "MiDashengLM":
        """Read a checkpoint (file or folder) and build the model; ``with_encoder`` builds the Dasheng
        encoder from its ``audio_encoder.*`` too (else only encoder tokens can be given). ``precision``:
        None (as stored), "bf16" or "int8" (:mod:`auricle.language.precision`), converted as each tensor is read."""
        precision = check_precision(precision)
        checkpoint = read_language_checkpoint(path, config, converter(precision))
        return cls.from_checkpoint(checkpoint, attn_implementation, with_encoder, int8=precision == "int8")

    def encode_audio(self, waveform: torch.Tensor | np.ndarray, name: str = "<audio>") -> torch.Tensor:
        """Encoder tokens (T, D) of one 16 kHz mono clip; too short or silent audio is refused naming ``name``."""
        if self.encoder is None:
            raise AuricleError("this MiDashengLM was built without its audio encoder (load it with_encoder=True)")
        check_audio(waveform, name, self.config.subsample_factor)
        return encode(self.encoder, torch.as_tensor(waveform))

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder.get_input_embeddings().weight.dtype

    @property
    def precision(self) -> str:
        """"int8" (weight-only int8 linear layers), else the decoder's dtype ("bf16", "fp32", ...)."""
        if any(isinstance(module, Int8Linear) for module in self.decoder.modules()):
            return "int8"
        return {torch.bfloat16: "bf16", torch.float32: "fp32", torch.float16: "fp16"}.get(self.dtype, str(self.dtype))

    @torch.inference_mode()
    def project(self, encoder_tokens: torch.Tensor) -> torch.Tensor:
        """Audio embeddings (B, T // k, H) from encoder tokens (B, T, D)."""
        if encoder_tokens.dim() != 3 or encoder_tokens.shape[-1] != self.projector.net[0].in_features // \
                self.projector.subsample_factor:
            raise AuricleError(f"encoder tokens must be (batch, frames, {self.config.encoder_dim}), "
                               f"got {tuple(encoder_tokens.shape)}")
        return self.projector(encoder_tokens)

    def embed(self, input_ids: torch.Tensor, audio: Sequence[torch.Tensor]) -> torch.Tensor:
        """Input embeddings (B, L, H) with row ``i``'s audio tokens replaced by ``audio[i]`` (N_i, H) in order."""
        embeddings = self.decoder.get_input_embeddings()(input_ids)
        if len(audio) != input_ids.shape[0]:
            raise AuricleError(f"{input_ids.shape[0]} prompts but {len(audio)} audio embeddings")
        for row, clip in enumerate(audio):
            positions = (input_ids[row] == self.config.audio_token_id).nonzero().squeeze(-1)
            if positions.numel() != clip.shape[0]:
                raise AuricleError(f"prompt {row} has {positions.numel()} audio tokens but its audio makes "
                                   f"{clip.shape[0]} embeddings")
            embeddings[row, positions] = clip.to(embeddings.dtype)
        return embeddings

    @torch.inference_mode()
    def prefill_logits(self, input_ids: torch.Tensor, audio: Sequence[torch.Tensor]) -> torch.Tensor:
        """Logits (B, L, vocab) over whole prompts of equal length, positions 0..L-1."""
        positions = torch.arange(input_ids.shape[1]).expand_as(input_ids)
        return self.decoder(inputs_embeds=self.embed(input_ids, audio), position_ids=positions,
                            use_cache=False).logits

    @torch.inference_mode()
    def generate(self, prompts: Sequence[Sequence[int]], audio: Sequence[torch.Tensor],
                 max_new_tokens: int = choices.DEFAULT_MAX_NEW_TOKENS,
                 stop_ids: Sequence[int] = ()) -> list[list[int]]:
        """Greedy continuation of each prompt (token ids), without its stop token; a row ends at a stop id."""
        generated: list[list[int]] = [[] for _ in prompts]
        for step in self.steps(prompts, audio, max_new_tokens, stop_ids):
            for row, token in enumerate(step):
                if token is not None:
                    generated[row].append(token)
        return generated

    def stream(self, prompt: Sequence[int], audio: torch.Tensor,
               max_new_tokens: int = choices.DEFAULT_MAX_NEW_TOKENS, stop_ids: Sequence[int] = ()):
        """The greedy tokens of one prompt, one at a time as each is decoded (the stop token not included)."""
        for (token,) in self.steps([prompt], [audio], max_new_tokens, stop_ids):
            if token is not None:
                yield token

    def steps(self, prompts: Sequence[Sequence[int]], audio: Sequence[torch.Tensor], max_new_tokens: int,
              stop_ids: Sequence[int]):
        """Per decoding step, each row's new token (None for a row that has stopped), greedily with a KV cache."""
        if max_new_tokens < 1:
            raise AuricleError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        transformers = require_transformers()
        longest = max(len(prompt) for prompt in prompts)
        ids = torch.zeros(len(prompts), longest, dtype=torch.long)
        mask = torch.zeros(len(prompts), longest, dtype=torch.long)
        for row, prompt in enumerate(prompts):  # left padding: every row's last token is at -1
            ids[row, longest - len(prompt):] = torch.as_tensor(list(prompt), dtype=torch.long)
            mask[row, longest - len(prompt):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = transformers.DynamicCache()  # filled in place by every call
        cache_keyword = _cache_keyword(self.decoder.model)
        with torch.inference_mode():
            embeddings = self.embed(ids, audio)
        stops = torch.as_tensor(list(stop_ids), dtype=torch.long)
        done = torch.zeros(len(prompts), dtype=torch.bool)
        for _ in range(max_new_tokens):
            with torch.inference_mode():
                hidden = self.decoder.model(inputs_embeds=embeddings, attention_mask=mask, position_ids=positions,
                                            use_cache=True, **{cache_keyword: cache}).last_hidden_state
                # Only the last position's logits are needed: a 7B's lm_head over a whole prompt is costly.
                token = self.decoder.lm_head(hidden[:, -1]).argmax(-1)
            done |= torch.isin(token, stops)
            yield [None if stopped else int(value) for value, stopped in zip(token.tolist(), done.tolist())]
            if bool(done.all()):
                break
            with torch.inference_mode():
                embeddings = self.decoder.get_input_embeddings()(token[:, None])
            mask = torch.cat([mask, torch.ones(len(prompts), 1, dtype=mask.dtype)], dim=1)
            positions = positions[:, -1:] + 1

    def answer(self, tokenizer: PromptTokenizer, encoder_tokens: Sequence[torch.Tensor], question: str,
               max_new_tokens: int = choices.DEFAULT_MAX_NEW_TOKENS,
               system: str | None = choices.DEFAULT_SYSTEM_PROMPT) -> list[str]:
        """One answer to ``question`` per clip, from each clip's encoder tokens (T_i, D), batched greedily."""
        audio = [self.project(tokens[None])[0] for tokens in encoder_tokens]
        prompts = [tokenizer.prompt_ids(question, len(clip), system) for clip in audio]
        generated = self.generate(prompts, audio, max_new_tokens, tokenizer.stop_ids)
        return [tokenizer.decode(ids) for ids in generated]
