"""MiDashengLM as a user-facing model: describe a recording, ask about it, or stream the answer.

A model folder is the Hugging Face layout: ``config.json``, ``model.safetensors`` or shards with
``model.safetensors.index.json``, ``tokenizer.json`` (and ``generation_config.json``, not needed).
The weights keep their stored dtype (bf16 for the recommended release); the encoder's log-mel is
computed in float32. Decoding is greedy (:mod:`auricle.language.choices`).

A recording is cut into segments of at most 30 s (what the model was trained on, research notes
§2.3), each described on its own with its start and end; a last piece too short for one audio token
joins the segment before it. Before any weights are read, their size is compared with the memory
available, and a model that cannot fit is refused in one line.
"""

from __future__ import annotations

import json
import os
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from auricle.errors import CheckpointError, OptionError
from auricle.language import choices
from auricle.language.prompts import DEFAULT_PRESET, PRESETS, preset
from auricle.language.results import Description, Segment

#: Longest segment, in seconds, described in one prompt (the longest training clips, notes §2.3).
MAX_SEGMENT_SECONDS = 30.0
DEFAULT_SEGMENT_SECONDS = 30.0
#: The fewest samples that make one audio token.
MIN_SEGMENT_SAMPLES = (choices.SUBSAMPLE_FACTOR * choices.FRAMES_PER_ENCODER_TOKEN - 1) * choices.HOP_SAMPLES
#: Memory kept free beyond the weights (activations, KV cache, the interpreter), as a fraction of them.
MEMORY_HEADROOM = 0.1


def is_language_checkpoint(path: str | os.PathLike | None) -> bool:
    """Whether ``path`` is a MiDashengLM folder (its config.json names the model)."""
    if path is None or not Path(path).is_dir():
        return False
    try:
        values = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(values, dict) and (values.get("model_type") == "midashenglm"
                                         or "MiDashengLMModel" in (values.get("architectures") or []))


def _safetensors_bytes(path: Path) -> int:
    """Bytes of a safetensors file's tensors, from its header alone."""
    with open(path, "rb") as handle:
        header = json.loads(handle.read(struct.unpack("<Q", handle.read(8))[0]))
    return max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)


def checkpoint_bytes(folder: Path) -> int | None:
    """Bytes of a model folder's tensors (the index's total_size, else the shards' headers); None if unknown."""
    index = folder / "model.safetensors.index.json"
    try:
        if index.is_file():
            values = json.loads(index.read_text())
            total = (values.get("metadata") or {}).get("total_size")
            if total is not None:
                return int(total)
            shards = sorted(set(values["weight_map"].values()))
            return sum(_safetensors_bytes(folder / shard) for shard in shards)
        if (folder / "model.safetensors").is_file():
            return _safetensors_bytes(folder / "model.safetensors")
    except (OSError, ValueError, KeyError, TypeError, AttributeError, struct.error):
        return None  # unreadable: the checkpoint reader names the problem
    return None


def available_memory() -> int:
    """Bytes of memory available for new allocations (Linux's MemAvailable, else free physical pages)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_fits(folder: Path, source: str, precision: str | None = None) -> None:
    """Refuse, before reading any weights, a checkpoint bigger than the memory available (int8: about
    0.6 of a bf16 checkpoint's size, :data:`auricle.language.precision.INT8_MEMORY_FRACTION`)."""
    from auricle.language.precision import INT8_MEMORY_FRACTION

    size = checkpoint_bytes(folder)
    if size is None:
        return
    if precision == "int8":
        size = int(size * INT8_MEMORY_FRACTION)
    free = available_memory()
    if size * (1 + MEMORY_HEADROOM) > free:
        smaller = "" if precision == "int8" else "precision=\"int8\" (--precision int8, about 9.5 GB), "
        raise CheckpointError(
            f"{source}: the weights need {size / 1e9:.1f} GB of memory (plus about {MEMORY_HEADROOM:.0%}) but "
            f"{free / 1e9:.1f} GB is available; use a machine with more memory or a smaller precision "
            f"({smaller}the bf16 release, mispeech/midashenglm-7b-1021-bf16, needs 16.6 GB)")


class _Literal(str):
    """A question that is never read as a preset name (``ask(audio, "music")`` asks "music")."""


def resolve_prompt(prompt: str) -> str:
    """A preset's official text, or the text itself."""
    if isinstance(prompt, _Literal):
        return str(prompt)
    if not isinstance(prompt, str) or not prompt.strip():
        raise OptionError(f"the prompt must be a preset ({', '.join(PRESETS)}) or a question, got {prompt!r}")
    return preset(prompt) if prompt in PRESETS else prompt


def segment_bounds(samples: int, seconds: float) -> list[tuple[int, int]]:
    """(start, end) samples of consecutive segments of ``seconds``; a tail too short joins the one before."""
    if not 0 < seconds <= MAX_SEGMENT_SECONDS:
        raise OptionError(f"the segment length must be above 0 and at most {MAX_SEGMENT_SECONDS:g} s, got {seconds:g}")
    step = max(int(round(seconds * choices.SAMPLE_RATE)), MIN_SEGMENT_SAMPLES)
    bounds = [(start, min(start + step, samples)) for start in range(0, samples, step)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < MIN_SEGMENT_SAMPLES:
        bounds[-2:] = [(bounds[-2][0], samples)]
    return bounds


class _Text:
    """Token ids to text as they come: a piece is handed out once its characters are whole."""

    def __init__(self, decode: Callable[[list[int]], str]) -> None:
        self.decode = decode
        self.ids: list[int] = []
        self.shown = ""

    def add(self, token: int) -> str:
        self.ids.append(token)
        text = self.decode(self.ids)
        if text.endswith("\ufffd") or not text.startswith(self.shown):
            return ""  # half a multi-byte character, or a merge that rewrote the end: wait for more
        piece, self.shown = text[len(self.shown):], text
        return piece


class AudioLanguageModel:
    """MiDashengLM loaded for use: :meth:`describe`, :meth:`ask` and :meth:`stream`."""

    def __init__(self, network, tokenizer, name: str, source: str) -> None:
        self.network = network
        self.tokenizer = tokenizer
        self.name = name
        self.source = source

    def __repr__(self) -> str:
        return f"AudioLanguageModel(name={self.name!r}, precision={self.network.precision!r})"

    # -- public entry points -----------------------------------------------------
    def describe(self, audio, prompt: str = DEFAULT_PRESET, max_new_tokens: int = choices.DEFAULT_MAX_NEW_TOKENS,
                 segment_seconds: float = DEFAULT_SEGMENT_SECONDS, name: str | None = None,
                 on_text: Callable[[str], None] | None = None) -> Description:
        """What the model says about ``audio`` (a file path, or 16 kHz samples: mono, or channels first) for ``prompt``.

        ``prompt``: a preset name (caption, speech, music, sounds, environment, tags) or any question.
        ``on_text`` receives the answer's text piece by piece as it is generated.
        """
        started = time.perf_counter()
        question = resolve_prompt(prompt)
        waveform, name = self._waveform(audio, name)
        timing = {"encode": 0.0, "generate": 0.0}
        segments = []
        for item in self._segments(waveform, name, question, max_new_tokens, segment_seconds, timing):
            if isinstance(item, Segment):
                segments.append(item)
            elif on_text is not None:
                on_text(item)
        timing["total"] = time.perf_counter() - started
        return Description(name, self.name, question, len(waveform) / choices.SAMPLE_RATE, tuple(segments), timing)

    def ask(self, audio, question: str, max_new_tokens: int = choices.DEFAULT_MAX_NEW_TOKENS,
            segment_seconds: float = DEFAULT_SEGMENT_SECONDS, name: str | None = None,
            on_text: Callable[[str], None] | None = None) -> Description:
        """The answer to a free-form ``question`` about ``audio`` (taken as it is, never as a preset)."""
        if not isinstance(question, str) or not question.strip():
            raise OptionError("the question is empty")
        return self.describe(audio, _Literal(question), max_new_tokens, segment_seconds, name, on_text)

    def stream(self, audio, prompt: str = DEFAULT_PRESET, max_new_tokens: int = choices.DEFAULT_MAX_NEW_TOKENS,
               segment_seconds: float = DEFAULT_SEGMENT_SECONDS, name: str | None = None) -> Iterator[str]:
        """The answer's text in pieces as they are generated; segments are separated by a newline."""
        waveform, name = self._waveform(audio, name)
        timing = {"encode": 0.0, "generate": 0.0}
        for item in self._segments(waveform, name, resolve_prompt(prompt), max_new_tokens, segment_seconds, timing):
            if isinstance(item, str):
                yield item

    # -- the work ------------------------------------------------------------------
    @staticmethod
    def _waveform(audio, name: str | None) -> tuple[np.ndarray, str]:
        if isinstance(audio, (str, os.PathLike)):
            from auricle.audio import load_audio

            return load_audio(audio), name or str(audio)
        from auricle.audio import prepare_waveform

        name = name or "<array>"
        return prepare_waveform(audio, choices.SAMPLE_RATE, name=name), name

    def _segments(self, waveform: np.ndarray, name: str, question: str, max_new_tokens: int,
                  segment_seconds: float, timing: dict) -> Iterator[str | Segment]:
        """Text pieces as they are generated, then each segment once it is done."""
        import torch

        from auricle.language.encoder import check_audio

        if max_new_tokens < 1:
            raise OptionError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        check_audio(waveform, name, self.network.config.subsample_factor)  # the whole recording: one line
        bounds = segment_bounds(len(waveform), segment_seconds)
        for index, (start, end) in enumerate(bounds):
            times = (start / choices.SAMPLE_RATE, end / choices.SAMPLE_RATE)
            piece = waveform[start:end]
            if not np.any(piece):
                yield Segment(*times, text="", skipped="silent")
                continue
            if index:
                yield "\n"
            clock = time.perf_counter()
            tokens = self.network.encode_audio(torch.from_numpy(np.ascontiguousarray(piece)), name)
            audio = self.network.project(tokens[None])[0]
            timing["encode"] += time.perf_counter() - clock
            clock = time.perf_counter()
            prompt = self.tokenizer.prompt_ids(question, len(audio))
            text = _Text(self.tokenizer.decode)
            for token in self.network.stream(prompt, audio, max_new_tokens, self.tokenizer.stop_ids):
                shown = text.add(token)
                if shown:
                    yield shown
            timing["generate"] += time.perf_counter() - clock
            yield Segment(*times, text=self.tokenizer.decode(text.ids), tokens=tuple(text.ids))


def load_language_model(folder: str | os.PathLike, name: str | None = None,
                        precision: str | None = None) -> AudioLanguageModel:
    """A MiDashengLM from a model folder; refused in one line when it would not fit in memory.

    ``precision``: None (as stored), "bf16", or "int8" (weight-only int8 for the decoder's linear
    layers, quantised as the weights are read; :mod:`auricle.language.precision`).
    """
    from auricle.language.model import MiDashengLM
    from auricle.language.precision import check_precision
    from auricle.language.prompts import PromptTokenizer

    precision = check_precision(precision)
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a model folder (config.json, safetensors weights, tokenizer.json)")
    check_fits(folder, str(folder), precision)
    network = MiDashengLM.load(folder, with_encoder=True, precision=precision)
    if not (folder / "tokenizer.json").is_file():
        raise CheckpointError(f"{folder}: no tokenizer.json in the model folder")
    tokenizer = PromptTokenizer.from_file(folder, audio_token_id=network.config.audio_token_id)
    return AudioLanguageModel(network, tokenizer, name or folder.name, str(folder))


def load_named(info, cache_dir: str | os.PathLike | None = None, precision: str | None = None) -> AudioLanguageModel:
    """A registered MiDashengLM (``midashenglm-7b``): from the Hugging Face cache, else downloaded."""
    from auricle.language.precision import check_precision
    from auricle.models.hub import fetch_folder

    precision = check_precision(precision)
    folder = fetch_folder(info, cache_dir, check=lambda where: check_fits(where, info.name, precision))
    return load_language_model(folder, info.name, precision)

