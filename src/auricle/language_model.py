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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from auricle.errors import AudioError, CheckpointError, OptionError
from auricle.language import choices
from auricle.language.diary import EventSegmentation, Span
from auricle.language.prompts import DEFAULT_PRESET, PRESETS, preset
from auricle.language.results import Description, Segment, Summary

#: Longest segment, in seconds, described in one prompt (the longest training clips, notes §2.3).
MAX_SEGMENT_SECONDS = 30.0
DEFAULT_SEGMENT_SECONDS = 30.0
#: The fewest samples that make one audio token.
MIN_SEGMENT_SAMPLES = (choices.SUBSAMPLE_FACTOR * choices.FRAMES_PER_ENCODER_TOKEN - 1) * choices.HOP_SAMPLES
#: Shortest stretch a diary describes: a shorter event is widened about its middle (one audio token,
#: 0.19 s, says little).
MIN_EVENT_SECONDS = 1.0
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


def check_fits(folder: Path, source: str) -> None:
    """Refuse, before reading any weights, a checkpoint bigger than the memory available."""
    size = checkpoint_bytes(folder)
    if size is None:
        return
    free = available_memory()
    if size * (1 + MEMORY_HEADROOM) > free:
        raise CheckpointError(
            f"{source}: the weights need {size / 1e9:.1f} GB of memory (plus about {MEMORY_HEADROOM:.0%}) but "
            f"{free / 1e9:.1f} GB is available; use a machine with more memory or a smaller precision "
            f"(the bf16 release, mispeech/midashenglm-7b-1021-bf16, needs 16.6 GB)")


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
    _check_segment_seconds(seconds)
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


class LanguageModelBase:
    """What every audio-language model offers, local or on a server: :meth:`describe`, :meth:`ask`,
    :meth:`diary`, :meth:`summarize` and :meth:`stream`.

    A subclass says how one segment is answered (:meth:`_answer`) and how a text-only question is
    (:meth:`_complete`); choosing the segments, silence, timing and the summary are here.
    """

    name: str

    # -- public entry points -----------------------------------------------------
    def describe(self, audio, prompt: str = DEFAULT_PRESET, max_new_tokens: int = choices.DEFAULT_MAX_NEW_TOKENS,
                 segment_seconds: float = DEFAULT_SEGMENT_SECONDS, name: str | None = None,
                 on_text: Callable[[str], None] | None = None, segments: Sequence[Span] | None = None,
                 summary: bool = False) -> Description:
        """What the model says about ``audio`` (a file path, or 16 kHz samples: mono, or channels first) for ``prompt``.

        ``prompt``: a preset name (caption, speech, music, sounds, environment, tags) or any question.
        ``on_text`` receives the answer's text piece by piece as it is generated. ``segments``: the
        stretches to describe (:class:`~auricle.language.diary.Span`, or ``(start, end)`` seconds),
        each cut to at most ``segment_seconds``; None: the whole recording in consecutive segments.
        ``summary``: one more pass writes a paragraph over the segment texts (:meth:`summarize`).
        """
        started = time.perf_counter()
        question = resolve_prompt(prompt)
        _check_max_new_tokens(max_new_tokens)
        waveform, name = self._waveform(audio, name)
        timing = {"encode": 0.0, "generate": 0.0}
        bounds = self._bounds(waveform, name, segment_seconds, segments)
        found = []
        for item in self._segments(waveform, name, question, max_new_tokens, bounds, timing):
            if isinstance(item, Segment):
                found.append(item)
            elif on_text is not None:
                on_text(item)
        timing["total"] = time.perf_counter() - started
        result = Description(name, self.name, question, len(waveform) / choices.SAMPLE_RATE, tuple(found), timing,
                             "fixed" if segments is None else "given")
        return self.summarize(result, max_new_tokens) if summary else result

    def ask(self, audio, question: str, max_new_tokens: int = choices.DEFAULT_MAX_NEW_TOKENS,
            segment_seconds: float = DEFAULT_SEGMENT_SECONDS, name: str | None = None,
            on_text: Callable[[str], None] | None = None, segments: Sequence[Span] | None = None,
            summary: bool = False) -> Description:
        """The answer to a free-form ``question`` about ``audio`` (taken as it is, never as a preset)."""
        if not isinstance(question, str) or not question.strip():
            raise OptionError("the question is empty")
        return self.describe(audio, _Literal(question), max_new_tokens, segment_seconds, name, on_text, segments,
                             summary)

    def diary(self, audio, tagger, prompt: str = DEFAULT_PRESET, max_new_tokens: int = choices.DEFAULT_MAX_NEW_TOKENS,
              segment_seconds: float = DEFAULT_SEGMENT_SECONDS, name: str | None = None,
              options: EventSegmentation = EventSegmentation(), summary: bool = False,
              on_text: Callable[[str], None] | None = None, literal: bool = False) -> Description:
        """A timestamped diary: ``tagger`` (a CED or Dasheng tagger) chooses where something happens and
        only those stretches are described (silence and nothing at all are skipped); see
        :mod:`auricle.language.diary`. ``literal``: ``prompt`` is a question, never a preset name."""
        if literal and (not isinstance(prompt, str) or not prompt.strip()):
            raise OptionError("the question is empty")
        question = _Literal(prompt) if literal else _Literal(resolve_prompt(prompt))  # refused before tagging
        _check_max_new_tokens(max_new_tokens)
        started = time.perf_counter()
        waveform, name = self._waveform(audio, name)
        spans = self.event_spans(waveform, name, tagger, segment_seconds, options)
        tagging = time.perf_counter() - started
        result = self.describe(waveform, question, max_new_tokens, segment_seconds, name, on_text, spans)
        timing = {**result.timing, "tag": tagging, "total": result.timing["total"] + tagging}
        result = replace(result, segmentation="events", timing=timing)
        return self.summarize(result, max_new_tokens) if summary else result

    @staticmethod
    def event_spans(waveform: np.ndarray, name: str, tagger, segment_seconds: float = DEFAULT_SEGMENT_SECONDS,
                    options: EventSegmentation = EventSegmentation()) -> list[Span]:
        """Where ``tagger`` hears something in ``waveform`` (16 kHz mono), as spans of at most ``segment_seconds``."""
        from auricle.language.diary import event_spans

        _check_segment_seconds(segment_seconds)
        try:
            return event_spans(tagger, waveform, len(waveform) / choices.SAMPLE_RATE, segment_seconds,
                               min(MIN_EVENT_SECONDS, segment_seconds), options)
        except AudioError as error:  # the tagger names the array "<array>": name the file
            raise AudioError(str(error).replace("<array>", name, 1)) from None

    def summarize(self, description: Description, max_new_tokens: int = choices.DEFAULT_MAX_NEW_TOKENS) -> Description:
        """``description`` with :attr:`~Description.summary`: one paragraph over its segment texts and times
        (an empty summary when no segment has text; nothing is generated then)."""
        from auricle.language.diary import summary_question

        timing = dict(description.timing)
        if not any(segment.skipped is None and segment.text.strip() for segment in description.segments):
            return replace(description, summary=Summary(""))
        clock = time.perf_counter()
        summary = self._complete(summary_question(description.segments), max_new_tokens, description.file, None)
        timing["summary"] = time.perf_counter() - clock
        timing["total"] = timing.get("total", 0.0) + timing["summary"]
        return replace(description, summary=summary, timing=timing)

    def complete(self, question: str, max_new_tokens: int = choices.DEFAULT_MAX_NEW_TOKENS, name: str = "<text>",
                 on_text: Callable[[str], None] | None = None) -> Summary:
        """The decoder's answer to a question without audio (what the summary pass asks), as a
        :class:`~auricle.language.results.Summary`; ``name`` is what an error names."""
        if not isinstance(question, str) or not question.strip():
            raise OptionError("the question is empty")
        _check_max_new_tokens(max_new_tokens)
        return self._complete(question, max_new_tokens, name, on_text)

    def stream(self, audio, prompt: str = DEFAULT_PRESET, max_new_tokens: int = choices.DEFAULT_MAX_NEW_TOKENS,
               segment_seconds: float = DEFAULT_SEGMENT_SECONDS, name: str | None = None) -> Iterator[str]:
        """The answer's text in pieces as they are generated; segments are separated by a newline."""
        _check_max_new_tokens(max_new_tokens)
        waveform, name = self._waveform(audio, name)
        timing = {"encode": 0.0, "generate": 0.0}
        bounds = self._bounds(waveform, name, segment_seconds, None)
        for item in self._segments(waveform, name, resolve_prompt(prompt), max_new_tokens, bounds, timing):
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

    @staticmethod
    def _bounds(waveform: np.ndarray, name: str, segment_seconds: float,
                spans: Sequence[Span] | None) -> list[tuple[int, int, tuple[str, ...]]]:
        """(start, end, labels) samples of the segments to describe; the whole recording checked first."""
        from auricle.language.diary import cut
        from auricle.language.encoder import check_audio

        check_audio(waveform, name)  # the whole recording: one line for too short or digital silence
        if spans is None:
            return [(start, end, ()) for start, end in segment_bounds(len(waveform), segment_seconds)]
        _check_segment_seconds(segment_seconds)
        duration = len(waveform) / choices.SAMPLE_RATE
        bounds = []
        for span in spans:
            start, end = (span.start, span.end) if isinstance(span, Span) else span
            labels = span.labels if isinstance(span, Span) else ()
            if not 0 <= start < end:
                raise OptionError(f"{name}: a segment must have 0 <= start < end, got {start:g}-{end:g} s")
            if start >= duration:
                raise OptionError(f"{name}: a segment starts at {start:g} s, after the end ({duration:.3f} s)")
            for first, last in cut(start, min(end, duration), segment_seconds,
                                   MIN_SEGMENT_SAMPLES / choices.SAMPLE_RATE, duration):
                bounds.append((int(round(first * choices.SAMPLE_RATE)),
                               min(len(waveform), int(round(last * choices.SAMPLE_RATE))), labels))
        return bounds

    def _segments(self, waveform: np.ndarray, name: str, question: str, max_new_tokens: int,
                  bounds: list[tuple[int, int, tuple[str, ...]]], timing: dict) -> Iterator[str | Segment]:
        """Text pieces as they are generated, then each segment once it is done."""
        for index, (start, end, labels) in enumerate(bounds):
            times = (start / choices.SAMPLE_RATE, end / choices.SAMPLE_RATE)
            piece = waveform[start:end]
            if not np.any(piece):
                yield Segment(*times, text="", skipped="silent", labels=labels)
                continue
            if index:
                yield "\n"
            for item in self._answer(piece, name, question, max_new_tokens, timing):
                if isinstance(item, Segment):
                    item = replace(item, start=times[0], end=times[1], labels=labels)
                yield item

    def _answer(self, piece: np.ndarray, name: str, question: str, max_new_tokens: int,
                timing: dict) -> Iterator[str | Segment]:
        """Text pieces of one segment's answer, then the Segment (its times are filled in by the caller)."""
        raise NotImplementedError

    def _complete(self, question: str, max_new_tokens: int, name: str,
                  on_text: Callable[[str], None] | None) -> Summary:
        """The answer to a question without audio (the summary pass), its text also given to ``on_text``."""
        raise NotImplementedError


def _check_max_new_tokens(max_new_tokens: int) -> None:
    if max_new_tokens < 1:
        raise OptionError(f"max_new_tokens must be at least 1, got {max_new_tokens}")


def _check_segment_seconds(seconds: float) -> None:
    if not 0 < seconds <= MAX_SEGMENT_SECONDS:
        raise OptionError(f"the segment length must be above 0 and at most {MAX_SEGMENT_SECONDS:g} s, got {seconds:g}")


class AudioLanguageModel(LanguageModelBase):
    """MiDashengLM loaded for use: :meth:`describe`, :meth:`ask`, :meth:`diary` and :meth:`stream`."""

    def __init__(self, network, tokenizer, name: str, source: str) -> None:
        self.network = network
        self.tokenizer = tokenizer
        self.name = name
        self.source = source

    def __repr__(self) -> str:
        return f"AudioLanguageModel(name={self.name!r}, dtype={self.network.dtype})"

    @property
    def context_tokens(self) -> int:
        """The decoder's context: prompt and answer together."""
        return self.network.config.decoder.max_position_embeddings

    def _room(self, prompt: list[int], max_new_tokens: int, name: str) -> int:
        """New tokens that fit after ``prompt`` in the context; one line naming ``name`` when none do."""
        room = self.context_tokens - len(prompt)
        if room < 1:
            raise AudioError(f"{name}: the prompt is {len(prompt)} tokens but the model's context is "
                             f"{self.context_tokens}; shorten the question or the segments (--segment)")
        return min(max_new_tokens, room)

    def _generate(self, prompt: list[int], audio, max_new_tokens: int, name: str) -> Iterator[str | tuple[int, ...]]:
        """Text pieces as the tokens come, then the token ids (the stop token not included)."""
        text = _Text(self.tokenizer.decode)
        for token in self.network.stream(prompt, audio, self._room(prompt, max_new_tokens, name),
                                         self.tokenizer.stop_ids):
            shown = text.add(token)
            if shown:
                yield shown
        yield tuple(text.ids)

    def _answer(self, piece, name, question, max_new_tokens, timing):
        import torch

        clock = time.perf_counter()
        tokens = self.network.encode_audio(torch.from_numpy(np.ascontiguousarray(piece)), name)
        audio = self.network.project(tokens[None])[0]
        timing["encode"] += time.perf_counter() - clock
        clock = time.perf_counter()
        prompt = self.tokenizer.prompt_ids(question, len(audio))
        for item in self._generate(prompt, audio, max_new_tokens, name):
            if isinstance(item, tuple):
                timing["generate"] += time.perf_counter() - clock
                yield Segment(0.0, 0.0, text=self.tokenizer.decode(list(item)), tokens=item,
                              prompt_tokens=len(prompt))
            else:
                yield item

    def _complete(self, question, max_new_tokens, name, on_text):
        import torch

        prompt = self.tokenizer.text_prompt_ids(question)
        no_audio = torch.zeros(0, self.network.decoder.config.hidden_size, dtype=self.network.dtype)
        for item in self._generate(prompt, no_audio, max_new_tokens, name):
            if isinstance(item, tuple):
                return Summary(self.tokenizer.decode(list(item)), item, prompt_tokens=len(prompt))
            if on_text is not None:
                on_text(item)
        raise AssertionError("unreachable")


def load_language_model(folder: str | os.PathLike, name: str | None = None) -> AudioLanguageModel:
    """A MiDashengLM from a model folder; refused in one line when it would not fit in memory."""
    from auricle.language.model import MiDashengLM
    from auricle.language.prompts import PromptTokenizer

    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a model folder (config.json, safetensors weights, tokenizer.json)")
    check_fits(folder, str(folder))
    network = MiDashengLM.load(folder, with_encoder=True)
    if not (folder / "tokenizer.json").is_file():
        raise CheckpointError(f"{folder}: no tokenizer.json in the model folder")
    tokenizer = PromptTokenizer.from_file(folder, audio_token_id=network.config.audio_token_id)
    return AudioLanguageModel(network, tokenizer, name or folder.name, str(folder))


def load_named(info, cache_dir: str | os.PathLike | None = None) -> AudioLanguageModel:
    """A registered MiDashengLM (``midashenglm-7b``): from the Hugging Face cache, else downloaded."""
    from auricle.models.hub import fetch_folder

    folder = fetch_folder(info, cache_dir, check=lambda where: check_fits(where, info.name))
    return load_language_model(folder, info.name)



def check_runs(engine: str, precision: str, device) -> None:
    """The MiDashengLM family's refusal of a way to run it that it does not support (the loading path asks)."""
    if engine != "torch" or precision != "fp32":
        raise OptionError("MiDashengLM runs on the torch engine in its stored precision; drop --engine/--precision")
    if device.type != "cpu":  # the encoder, projector and decoding loop keep their tensors on the CPU
        raise OptionError(f"MiDashengLM runs on the CPU in auricle for now, not on {device}")


def load_folder(folder: str | os.PathLike | None, info, cache_dir: str | os.PathLike | None) -> AudioLanguageModel:
    """The MiDashengLM family's model: a registered one (``info``) from the cache or the Hub, else ``folder``."""
    return load_named(info, cache_dir) if info is not None else load_language_model(folder)
