"""The tagging pipeline every model shares: decode -> windows -> batched scoring -> per-file results.

:class:`Tagger` holds everything of tagging that does not depend on who
computes the probabilities: options, the decoder thread that works ahead of
the model, batching windows of many files into calls, and turning each file's
window probabilities into a :class:`~auricle.inference.results.ClipTags`.
A subclass says only how a batch of equal-length 16 kHz windows is scored
(:meth:`Tagger._submit`, :meth:`Tagger._score_now`). :class:`auricle.model.AudioModel`
scores with a PyTorch network; :class:`auricle.onnx.exported.ExportedModel` with an
exported ONNX file, without importing torch (a torch import costs ~1-2 s of a
short command's start). The decoder thread, the batching of calls and block-by-block decoding
are :mod:`auricle.inference.batching`.

Over 400 lines: :meth:`Tagger.iter_tag` and :meth:`Tagger.iter_tag_embed` (``auricle index``'s one
pass) are one loop over the decoded windows, whose per-file state the two share.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future

import numpy as np

from auricle.audio import SAMPLE_RATE, AudioError, load_audio, prepare_waveform
from auricle.errors import NOT_FINITE, AuricleError, OptionError
from auricle.inference.batching import (  # noqa: F401 (the public names re-exported: their old import path)
    EMBED_BLOCK_SAMPLES, MAX_HELD_RESULTS, FileBlocks, _Calls, _FileState, _is_long, _make_room, decoded_windows,
    embedded_file, file_blocks, is_array,
)
from auricle.inference.events import EventOptions
from auricle.inference.streams import StreamPool
from auricle.inference.results import ClipTags, Embeddings, Failure
from auricle.inference.tagging import ClassSpace, TagOptions, summarize
from auricle.inference.windows import WindowConfig
from auricle.labels import LabelSet
from auricle.options import TAG_OPTIONS, check_numbers
from auricle.profiles import Profile, load_profile


def _not_a_recording(source, method: str, many: str = "") -> None:
    """Refuse what would be taken apart as a list of paths: bytes, an open file, a list where one is wanted."""
    if isinstance(source, (bytes, bytearray, memoryview)) or hasattr(source, "read"):
        taken = "a file path or a waveform array" if many else "a file path, a list of them or a waveform array"
        raise TypeError(f"{method} takes {taken}, not {type(source).__name__}; write encoded bytes to a file, "
                        "or decode them first")
    if many and not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"{method} takes one file path or waveform array, not {type(source).__name__}; "
                        f"for many, {many}")


def _no_rate_for_a_file(source, sample_rate: int | None) -> None:
    if sample_rate is not None:  # silently ignored, a wrong rate would look like a bug in the model
        raise OptionError(f"{source}: sample_rate applies to waveform arrays; a file's rate is read from it")


def finite_probabilities(result: np.ndarray, name: str = "<batch>") -> np.ndarray:
    """``result`` (batch, classes), or an AudioError naming the first clip that overflow made NaN."""
    bad = np.flatnonzero(~np.isfinite(result).all(axis=-1))
    if len(bad):
        raise AudioError(f"{name}: clip {bad[0]}: {NOT_FINITE}")
    return result


def finite_embeddings(result: Embeddings) -> Embeddings:
    """``result``, or an AudioError if overflow made it NaN (a row of NaN would pass for a result)."""
    if not (np.isfinite(result.clip).all() and np.isfinite(result.windows).all()):
        raise AudioError(f"{result.file}: {NOT_FINITE}")
    return result


class Tagger:
    """Tagging for any model that scores batches of 16 kHz windows; subclasses implement the scoring.

    Subclasses set ``name`` and ``labels`` and implement :attr:`batch_size`,
    :attr:`streams`, :meth:`_submit` and :meth:`_score_now`; models that embed
    also :meth:`embed_waveform`, which :meth:`embed` and :meth:`iter_embed` call.
    """

    name: str
    labels: LabelSet

    @property
    def sample_rate(self) -> int:
        return SAMPLE_RATE

    @property
    def batch_size(self) -> int:
        """Default windows per model call: enough to keep every stream busy."""
        raise NotImplementedError

    @property
    def streams(self) -> int:
        """How many calls run at once (each on its share of the threads)."""
        raise NotImplementedError

    def _submit(self, batch: np.ndarray) -> Future:
        """Start scoring ``batch`` (n, samples) float32 on the next free stream; a future of (n, classes)."""
        raise NotImplementedError

    def _score_now(self, batch: np.ndarray) -> np.ndarray:
        """Score ``batch`` here on all threads (a lone call, nothing else in flight); (n, classes)."""
        raise NotImplementedError

    @staticmethod
    def _rows(result) -> np.ndarray:
        """A finished call's result as a numpy array (subclasses whose calls return tensors convert here)."""
        return np.asarray(result)

    #: Whether one model call gives both a window's class scores and its mean token
    #: (:meth:`iter_tag_embed`); models that cannot are tagged and embedded apart.
    tags_with_tokens: bool = False

    def _submit_with_tokens(self, batch: np.ndarray) -> Future:
        """As :meth:`_submit`, each row the probabilities followed by the window's mean token (classes + dim)."""
        raise NotImplementedError

    def _score_now_with_tokens(self, batch: np.ndarray) -> np.ndarray:
        """As :meth:`_score_now`, rows as :meth:`_submit_with_tokens`'s."""
        raise NotImplementedError

    # -- embeddings --------------------------------------------------------------
    def embed_waveform(self, waveform: np.ndarray, name: str = "<array>", batch_size: int | None = None) -> Embeddings:
        """Embeddings of one 16 kHz mono signal (clip, and one per 10.12 s piece)."""
        raise NotImplementedError

    def embed(self, source, sample_rate: int | None = None, batch_size: int | None = None) -> Embeddings:
        """Embeddings of a file or a waveform array (then give ``sample_rate``)."""
        if is_array(source):
            if sample_rate is None:
                raise OptionError("a waveform array needs its sample_rate")
            return self.embed_waveform(prepare_waveform(source, sample_rate), batch_size=batch_size)
        _not_a_recording(source, "embed", "iter_embed")
        _no_rate_for_a_file(source, sample_rate)
        return finite_embeddings(self._embed_file(source, batch_size))

    def _embed_file(self, path: str | os.PathLike, batch_size: int | None = None) -> Embeddings:
        """Embeddings of a file; models that can stream a long recording override this."""
        return self.embed_waveform(load_audio(path), name=str(path), batch_size=batch_size)

    def _stream_pool(self) -> StreamPool | None:
        """The pool whose workers run the streams (None with one stream)."""
        return None

    def _embed_file_on_stream(self, stream: int, path: str | os.PathLike, batch_size: int | None = None) -> Embeddings:
        """:meth:`_embed_file` run whole on one stream's worker (decoding included), never on the pool;
        ``batch_size // streams`` pieces per call."""
        raise NotImplementedError

    def iter_embed(
        self, sources: Iterable[str | os.PathLike], batch_size: int | None = None
    ) -> Iterator[Embeddings | Failure]:
        """Embed many files, yielding a :class:`Failure` for each bad one and going on; in input order.

        With several streams, files are embedded several at once, each whole (decoding
        included) on one stream: a file's pieces share no call with another file's (each
        file has its own floor), so one by one a 10 s file was one call of one piece with
        decoding in between (48 files: 10.0 against 18.6 files/s, docs/benchmarks.md).
        A lone file, and one of :data:`LONG_FILE_SECONDS` or more (on one stream it would
        hold a single core long after the others ran out of work), get all streams, with
        ``batch_size`` pieces per call.
        """
        def alone(source) -> Embeddings | Failure:
            return self._embed_or_failure(lambda: self.embed(source, batch_size=batch_size), source)

        pool = self._stream_pool()
        sources = iter(sources)
        first = list(itertools.islice(sources, 2))
        if pool is None or len(first) < 2:
            yield from map(alone, itertools.chain(first, sources))
            return
        pending: deque[Future] = deque()
        for source in itertools.chain(first, sources):
            if _is_long(source):
                while pending:
                    yield pending.popleft().result()
                yield alone(source)
                continue
            yield from _make_room(pending, running=2 * self.streams, held=MAX_HELD_RESULTS)
            pending.append(pool.submit(self._embed_job, (source, batch_size)))
        while pending:
            yield pending.popleft().result()

    def _embed_job(self, stream: int, work: tuple[str | os.PathLike, int | None]) -> Embeddings | Failure:
        source, batch_size = work
        return self._embed_or_failure(lambda: self._embed_file_on_stream(stream, source, batch_size), source)

    @staticmethod
    def _embed_or_failure(embed, source) -> Embeddings | Failure:
        try:
            return finite_embeddings(embed())
        except AuricleError as error:
            return Failure(str(source), str(error))

    # -- scoring ---------------------------------------------------------------
    def score_windows(self, windows: Sequence[np.ndarray], batch_size: int | None = None) -> list[np.ndarray]:
        """Probabilities of windows of any lengths, batching equal lengths together.

        With several streams each takes calls of ``batch_size // streams``
        windows on its own (no stream waits for another between calls).
        """
        calls = _Calls(self, batch_size)
        results: list[np.ndarray | None] = [None] * len(windows)
        for position, row in calls.add(list(range(len(windows))), windows, last=True) + calls.collect(keep=0):
            results[position] = row
        return results  # type: ignore[return-value]

    # -- tagging ---------------------------------------------------------------
    def tag_options(
        self,
        *,
        top_k: int | None = None,
        threshold: float | None = None,
        classes: str | Sequence[str] = (),
        profile: str | Profile | None = None,
        pool: str = "max",
        events: bool | EventOptions = False,
        window: float = 10.0,
        hop: float | None = None,
    ) -> TagOptions:
        """Typed options from keyword arguments (what the CLI flags map to)."""
        # Seconds get the bounds of the CLI's flags and the service's parameters (TagOptions and
        # EventOptions check the other numbers, in their own words).
        seconds = {"window": window, "hop": hop}
        if isinstance(events, EventOptions):
            seconds.update(min_duration=events.min_duration, min_gap=events.min_gap)
        check_numbers(TAG_OPTIONS, seconds)
        if isinstance(profile, str):
            profile = load_profile(profile)
        if events is True:
            events = EventOptions()
        options = TagOptions(
            top_k=top_k,
            threshold=threshold,
            classes=(classes,) if isinstance(classes, str) else tuple(classes),  # "Dog;Cat" as -c takes it
            profile=profile,
            pool=pool,
            events=events or None,
            window=WindowConfig(window, hop),
        )
        # Resolve class names now so a typo fails before any audio is decoded.
        ClassSpace.build(self.labels, options.classes, options.profile)
        return options

    def tag(
        self,
        source,
        sample_rate: int | None = None,
        *,
        options: TagOptions | None = None,
        batch_size: int | None = None,
        **option_values,
    ) -> ClipTags | list[ClipTags]:
        """Tag a file, a list of files, or a waveform array (then give ``sample_rate``).

        Keyword arguments are those of :meth:`tag_options` (``top_k``,
        ``threshold``, ``classes``, ``profile``, ``pool``, ``events``,
        ``window``, ``hop``), or pass ``options`` directly. A list of files
        raises on the first bad file; :meth:`iter_tag` goes on past failures.
        """
        options = options or self.tag_options(**option_values)
        if is_array(source):
            if sample_rate is None:
                raise OptionError("a waveform array needs its sample_rate")
            # iter_tag prepares it (mix, scale, resample), once; its errors come back as its Failure's.
            return self._only(self.iter_tag([source], options, batch_size, names=["<array>"],
                                            sample_rate=sample_rate))
        _not_a_recording(source, "tag")
        if isinstance(source, (str, os.PathLike)):
            _no_rate_for_a_file(source, sample_rate)
            return self._only(self.iter_tag([source], options, batch_size))
        sources = list(source)
        if sources and isinstance(sources[0], (int, float, np.number)):
            raise TypeError("a list of numbers is not a waveform here: give a numpy array or torch tensor "
                            "(a list is taken as files to tag)")
        names = None
        if any(is_array(item) for item in sources):  # arrays in a list are resampled and named as one alone is
            if sample_rate is None:
                raise OptionError("waveform arrays need their sample_rate")
            names = [f"<array {i}>" if is_array(item) else str(item) for i, item in enumerate(sources)]
        results = []
        for result in self.iter_tag(sources, options, batch_size, names=names, sample_rate=sample_rate):
            if isinstance(result, Failure):
                raise AudioError(result.error)  # every failure of a recording is the audio's (decoding, overflow)
            results.append(result)
        return results

    @staticmethod
    def _only(results: Iterator[ClipTags | Failure]) -> ClipTags:
        result = next(results)
        if isinstance(result, Failure):
            raise AudioError(result.error)
        return result

    def iter_tag(
        self,
        sources: Iterable[str | os.PathLike | np.ndarray],
        options: TagOptions | None = None,
        batch_size: int | None = None,
        names: Sequence[str] | None = None,
        *,
        sample_rate: int | None = None,
        **option_values,
    ) -> Iterator[ClipTags | Failure]:
        """Tag many recordings, batching windows across files; yields in input order.

        ``options``, or the keyword arguments of :meth:`tag_options`. Waveform arrays among
        ``sources`` are prepared as :meth:`tag` prepares one (mixed to mono, integers scaled,
        resampled from ``sample_rate``) and named ``<array N>``. A recording that fails
        yields a :class:`Failure` and the rest go on. Results equal tagging each file alone
        (windows never share a frontend).
        """
        options = options or self.tag_options(**option_values)
        yield from self._iter_scored(sources, options, batch_size, names, sample_rate, with_tokens=False)

    def iter_tag_embed(
        self, sources: Iterable[str | os.PathLike | np.ndarray], options: TagOptions, batch_size: int | None = None,
        names: Sequence[str] | None = None, *, sample_rate: int | None = None,
    ) -> Iterator[tuple[ClipTags, np.ndarray] | Failure]:
        """Tag files and embed their windows from the same model call, each file decoded once.

        Yields per file (:class:`ClipTags`, window embeddings (windows, dim): the mean token of each
        tagging window, as its class scores come from) or a :class:`Failure`; in input order. Only
        for models whose ``tags_with_tokens`` is true (``auricle index`` uses it: one pass costs what
        ``tag`` costs, where tagging and embedding apart decoded and encoded every file twice).
        Waveform arrays among ``sources`` as :meth:`iter_tag`'s (``names``, ``sample_rate``).
        """
        if not self.tags_with_tokens:
            raise OptionError(f"{self.name}: does not give class scores and tokens from one call")
        yield from self._iter_scored(sources, options, batch_size, names, sample_rate, with_tokens=True)

    def _iter_scored(self, sources, options: TagOptions, batch_size: int | None, names: Sequence[str] | None,
                     sample_rate: int | None, with_tokens: bool) -> Iterator:
        """:meth:`iter_tag`'s work; ``with_tokens``: each result is (ClipTags, window mean tokens)."""
        space = ClassSpace.build(self.labels, options.classes, options.profile)
        window_config = options.window
        states: dict[int, _FileState] = {}
        queue: list[tuple[int, int, np.ndarray]] = []
        next_to_emit = 0
        calls = _Calls(self, batch_size, with_tokens)

        def store(rows: Iterable[tuple[tuple[int, int], np.ndarray]]) -> None:
            for (item, position), row in rows:
                if item in states:  # else its file failed meanwhile and was reported
                    states[item].rows[position] = row

        def flush(last: bool = False) -> None:
            store(calls.add([(item, position) for item, position, _ in queue],
                            [samples for _, _, samples in queue], last=last))
            queue.clear()

        def finished() -> Iterator[ClipTags | Failure]:
            nonlocal next_to_emit
            while next_to_emit in states and states[next_to_emit].complete():
                state = states.pop(next_to_emit)
                next_to_emit += 1
                if state.error is not None:
                    yield Failure(state.name, state.error)
                    continue
                bounds = np.array([state.starts, state.ends], dtype=float).T / SAMPLE_RATE
                probabilities = np.stack([state.rows[i] for i in range(len(state.starts))])
                tokens = None
                if with_tokens:  # one row per window: the class scores, then the mean token
                    probabilities, tokens = np.split(probabilities, [len(self.labels)], axis=1)
                if not (np.isfinite(probabilities).all() and (tokens is None or np.isfinite(tokens).all())):
                    yield Failure(state.name, f"{state.name}: {NOT_FINITE}")
                    continue
                result = summarize(
                    state.name, state.ends[-1] / SAMPLE_RATE, self.name, bounds, probabilities, space, options
                )
                if state.truncation is not None:
                    result = dataclasses.replace(result, truncated=True,
                                                 declared_duration=state.truncation.declared)
                yield result if tokens is None else (result, tokens)

        for kind, item, payload in decoded_windows(sources, names, window_config, sample_rate):
            if calls.ready():
                store(calls.collect())
                yield from finished()
            if kind == "start":
                states[item] = _FileState(payload)
                continue
            state = states[item]
            if kind == "window":
                start, samples = payload
                state.starts.append(start)
                state.ends.append(start + len(samples))
                queue.append((item, len(state.starts) - 1, samples))
                if len(queue) >= calls.part:
                    flush()
                    yield from finished()
                continue
            if kind == "error":
                state.error = payload
                queue[:] = [entry for entry in queue if entry[0] != item]
            elif not state.starts:  # "end" of a file that had no samples
                state.error = f"{state.name}: no audio samples"
            else:
                state.truncation = payload
            state.finished = True
            yield from finished()
        if queue:
            flush(last=True)
        store(calls.collect(keep=0))
        yield from finished()
