"""Prompts: ChatML text with the audio placeholder expanded, the preset questions, and the tokenizer.

The official processor expands each ``<|AUDIO|>`` to one token per projected audio embedding and wraps
the run in ``<|audio_bos|>``/``<|audio_eos|>``; the chat template is ChatML (research notes §2.3). The
presets are prompts from the official evaluation list (dasheng-lm ``evaluate/prompt.csv``, notes §2.6).
Where the text and audio sit in the user turn, and whether there is a system turn, are open choices
named in :mod:`auricle.language.choices`.

The tokenizer is a ``tokenizer.json`` read with the ``tokenizers`` library (no remote code); it must
know the audio and ChatML special tokens, or a one-line error names the file.
"""

from __future__ import annotations

import os
from pathlib import Path

from auricle.errors import AuricleError, CheckpointError, OptionError
from auricle.language import choices
from auricle.language.config import EXTRA_MISSING

IM_START, IM_END = "<|im_start|>", "<|im_end|>"

#: Preset name -> the official prompt it stands for (dasheng-lm evaluate/prompt.csv).
PRESETS: dict[str, str] = {
    # AudioCaps / Clotho / AutoACD captioning, the tasks of the published FENSE scores.
    "caption": "Write an audio caption describing the sound",
    # MECAT's content questions, one per kind of sound.
    "speech": "What is the speech content can be heard in this audio?",
    "music": "What is the musical content in this audio?",
    "sounds": "What are the sound effects in this audio?",
    "environment": "What is the acoustic environment and recording quality of this audio?",
    # Multi-label tagging (FSD50K, AudioSet).
    "tags": "Which labels describe the sound?",
}
DEFAULT_PRESET = "caption"

#: Tokens a MiDashengLM tokenizer must know.
REQUIRED_TOKENS = (choices.AUDIO_TOKEN, choices.AUDIO_BOS_TOKEN, choices.AUDIO_EOS_TOKEN, IM_START, IM_END)


def preset(name: str = DEFAULT_PRESET) -> str:
    """The official prompt behind a preset name."""
    try:
        return PRESETS[name]
    except KeyError:
        raise OptionError(f"unknown prompt preset {name!r} (choose from {', '.join(PRESETS)})") from None


def audio_placeholder(audio_tokens: int) -> str:
    """``<|audio_bos|>`` + ``<|AUDIO|>`` × N + ``<|audio_eos|>``, as the processor expands it."""
    if audio_tokens < 1:
        raise AuricleError(f"the audio makes {audio_tokens} tokens; it must be long enough for at least one")
    return choices.AUDIO_BOS_TOKEN + choices.AUDIO_TOKEN * audio_tokens + choices.AUDIO_EOS_TOKEN


def render_prompt(question: str, audio_tokens: int, system: str | None = choices.DEFAULT_SYSTEM_PROMPT) -> str:
    """The ChatML text of one question about one clip, ending where the assistant's answer begins."""
    parts = [question, audio_placeholder(audio_tokens)]
    if not choices.AUDIO_AFTER_TEXT:
        parts.reverse()
    turns = f"{IM_START}system\n{system}{IM_END}\n" if system is not None else ""
    return f"{turns}{IM_START}user\n{choices.PART_SEPARATOR.join(parts)}{IM_END}\n{IM_START}assistant\n"


def render_text_prompt(question: str, system: str | None = choices.DEFAULT_SYSTEM_PROMPT) -> str:
    """The ChatML text of a question without audio (the summary pass over segment texts)."""
    turns = f"{IM_START}system\n{system}{IM_END}\n" if system is not None else ""
    return f"{turns}{IM_START}user\n{question}{IM_END}\n{IM_START}assistant\n"


class PromptTokenizer:
    """A ``tokenizers.Tokenizer`` checked to hold MiDashengLM's special tokens, with their ids."""

    def __init__(self, tokenizer, source: str, audio_token_id: int | None = None):
        ids = {token: tokenizer.token_to_id(token) for token in REQUIRED_TOKENS}
        lacking = [token for token, token_id in ids.items() if token_id is None]
        if lacking:
            raise CheckpointError(f"{source}: the tokenizer lacks {', '.join(lacking)}; not a MiDashengLM tokenizer")
        if audio_token_id is not None and ids[choices.AUDIO_TOKEN] != audio_token_id:
            raise CheckpointError(f"{source}: the tokenizer's {choices.AUDIO_TOKEN} is id {ids[choices.AUDIO_TOKEN]} "
                                  f"but the config's audio_token_id is {audio_token_id}")
        self.tokenizer = tokenizer
        self.source = source
        self.ids = ids
        self.stop_ids = tuple(i for i in (tokenizer.token_to_id(t) for t in choices.STOP_TOKENS) if i is not None)

    @classmethod
    def from_file(cls, path: str | os.PathLike, audio_token_id: int | None = None) -> "PromptTokenizer":
        """Read ``tokenizer.json`` (or a folder holding it)."""
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise AuricleError(EXTRA_MISSING) from None
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as error:  # tokenizers raises its own exception type for every problem
            cause = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise CheckpointError(f"{path}: not a readable tokenizer.json ({cause})") from None
        return cls(tokenizer, str(path), audio_token_id)

    def encode(self, text: str) -> list[int]:
        """Token ids of rendered prompt text; special tokens are matched whole."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def prompt_ids(self, question: str, audio_tokens: int, system: str | None = choices.DEFAULT_SYSTEM_PROMPT) -> list[int]:
        return self.encode(render_prompt(question, audio_tokens, system))

    def text_prompt_ids(self, question: str, system: str | None = choices.DEFAULT_SYSTEM_PROMPT) -> list[int]:
        return self.encode(render_text_prompt(question, system))

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)
