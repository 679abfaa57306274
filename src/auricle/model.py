"""The user-facing model: load by name or checkpoint, then tag, embed or score."""

from __future__ import annotations

import os
import queue as queue_module
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from auricle.audio import SAMPLE_RATE, iter_blocks, prepare_waveform
from auricle.errors import AuricleError, CheckpointError
from auricle.frontend import HOP_LENGTH
from auricle.inference.engines import Engine, EngineConfig, make_engine, resolve_precision
from auricle.inference.events import EventOptions
from auricle.inference.results import ClipTags, Embeddings, Failure
from auricle.inference.tagging import ClassSpace, TagOptions, summarize
from auricle.inference.windows import WindowConfig, iter_windows
from auricle.labels import LabelSet, audioset_labels
from auricle.models.ced import CED, batched_tokens
from auricle.models.checkpoints import build_model, read_checkpoint
from auricle.models.registry import DEFAULT_MODEL, ModelInfo, available_models, model_info
from auricle.profiles import Profile, load_profile

Source = str | os.PathLike | np.ndarray | torch.Tensor


@dataclass
class _FileState:
    """Bookkeeping of one recording while its windows are in flight."""

    name: str
    starts: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)
    rows: dict[int, np.ndarray] = field(default_factory=dict)
    finished: bool = False
    error: str | None = None

    def complete(self) -> bool:
        return self.error is not None or (self.finished and len(self.rows) == len(self.starts))


class AudioModel:
    """A CED encoder with its labels, ready to tag and embed audio."""

    def __init__(
        self,
        network: CED,
        name: str,
        labels: LabelSet,
        device: str | torch.device = "cpu",
        engine: EngineConfig | Engine | None = None,
    ) -> None:
        self.network = network.to(device).eval()
        self.name = name
        self.labels = labels
        self.device = torch.device(device)
        # The encoder runner (torch fp32 unless asked otherwise); see auricle.inference.engines.
        self.engine = engine if isinstance(engine, Engine) else make_engine(self.network, engine)

    @property
    def sample_rate(self) -> int:
        return SAMPLE_RATE

    @property
    def embedding_dim(self) -> int:
        return self.network.config.embed_dim

    @property
    def batch_size(self) -> int:
        """Default windows per model call: enough to keep every engine stream busy."""
        return self.engine.batch_size

    def __repr__(self) -> str:
        return (f"AudioModel(name={self.name!r}, classes={len(self.labels)}, device={str(self.device)!r}, "
                f"engine={self.engine.config.label!r})")

    # -- raw scores ------------------------------------------------------------
    @torch.inference_mode()
    def probabilities(self, waveforms: torch.Tensor) -> torch.Tensor:
        """(batch, samples) 16 kHz clips of equal length -> (batch, classes) probabilities.

        Each clip is analysed on its own (no batch cross-talk); clips under one
        patch (0.15 s) are zero-padded.
        """
        waveforms = torch.as_tensor(waveforms, dtype=torch.float32)
        if waveforms.dim() == 1:
            waveforms = waveforms.unsqueeze(0)
        return self.engine.probabilities(waveforms.to(self.device)).cpu()

    def score_windows(self, windows: Sequence[np.ndarray], batch_size: int | None = None) -> list[np.ndarray]:
        """Probabilities of windows of any lengths, batching equal lengths together.

        With several engine streams each takes calls of ``batch_size // streams``
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
        classes: Sequence[str] = (),
        profile: str | Profile | None = None,
        pool: str = "max",
        events: bool | EventOptions = False,
        window: float = 10.0,
        hop: float | None = None,
    ) -> TagOptions:
        """Typed options from keyword arguments (what the CLI flags map to)."""
        if isinstance(profile, str):
            profile = load_profile(profile)
        if events is True:
            events = EventOptions()
        options = TagOptions(
            top_k=top_k,
            threshold=threshold,
            classes=tuple(classes),
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
        source: Source | Sequence[str | os.PathLike],
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
        if isinstance(source, (np.ndarray, torch.Tensor)):
            if sample_rate is None:
                raise ValueError("a waveform array needs its sample_rate")
            waveform = prepare_waveform(source, sample_rate)
            return self._only(self.iter_tag([waveform], options, batch_size, names=["<array>"]))
        if isinstance(source, (str, os.PathLike)):
            return self._only(self.iter_tag([source], options, batch_size))
        results = []
        for result in self.iter_tag(list(source), options, batch_size):
            if isinstance(result, Failure):
                raise AuricleError(result.error)
            results.append(result)
        return results

    @staticmethod
    def _only(results: Iterator[ClipTags | Failure]) -> ClipTags:
        result = next(results)
        if isinstance(result, Failure):
            raise AuricleError(result.error)
        return result

    def iter_tag(
        self,
        sources: Iterable[str | os.PathLike | np.ndarray],
        options: TagOptions,
        batch_size: int | None = None,
        names: Sequence[str] | None = None,
    ) -> Iterator[ClipTags | Failure]:
        """Tag many recordings, batching windows across files; yields in input order.

        A file that fails yields a :class:`Failure` and the rest go on. Results
        equal tagging each file alone (windows never share a frontend).
        """
        space = ClassSpace.build(self.labels, options.classes, options.profile)
        window_config = options.window
        states: dict[int, _FileState] = {}
        queue: list[tuple[int, int, np.ndarray]] = []
        next_to_emit = 0
        calls = _Calls(self, batch_size)

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
                yield summarize(
                    state.name, state.ends[-1] / SAMPLE_RATE, self.name, bounds, probabilities, space, options
                )

        for kind, item, payload in _decoded_windows(sources, names, window_config):
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
            state.finished = True
            yield from finished()
        if queue:
            flush(last=True)
        store(calls.collect(keep=0))
        yield from finished()

    # -- embeddings ------------------------------------------------------------
    @torch.inference_mode()
    def embed_waveform(self, waveform: np.ndarray, name: str = "<array>", batch_size: int | None = None) -> Embeddings:
        """Embeddings of one 16 kHz mono signal, computed as the official HEAR submission does.

        The whole recording gets one log-mel (its own 120 dB floor), cut into
        1012-frame pieces (10.12 s, the last zero-padded after normalisation);
        ``clip`` is the mean of all tokens, ``windows`` the mean per piece.
        """
        network = self.network
        batch_size = batch_size or self.batch_size
        wave = torch.from_numpy(np.ascontiguousarray(waveform, dtype=np.float32)).unsqueeze(0).to(self.device)
        pieces, count = network.pieces(network.normalize(network.spectrogram(wave)))
        token_means = []
        token_sums = torch.zeros(self.embedding_dim, dtype=torch.float64)
        token_count = 0
        for _, tokens in batched_tokens(self.engine.forward_features, pieces, batch_size):
            tokens = tokens.cpu()
            token_means.append(tokens.mean(dim=1))
            token_sums += tokens.double().sum(dim=(0, 1))
            token_count += tokens.shape[0] * tokens.shape[1]
        piece_seconds = network.config.target_frames * HOP_LENGTH / SAMPLE_RATE
        duration = len(waveform) / SAMPLE_RATE
        starts = np.arange(count) * piece_seconds
        return Embeddings(
            file=name,
            duration=duration,
            model=self.name,
            clip=(token_sums / token_count).float().numpy(),
            windows=torch.cat(token_means).numpy(),
            starts=starts,
            ends=np.minimum(starts + piece_seconds, duration),
        )

    def embed(
        self, source: Source, sample_rate: int | None = None, batch_size: int | None = None
    ) -> Embeddings:
        """Embeddings of a file or a waveform array (then give ``sample_rate``)."""
        from auricle.audio import load_audio

        if isinstance(source, (np.ndarray, torch.Tensor)):
            if sample_rate is None:
                raise ValueError("a waveform array needs its sample_rate")
            return self.embed_waveform(prepare_waveform(source, sample_rate), batch_size=batch_size)
        return self.embed_waveform(load_audio(source), name=str(source), batch_size=batch_size)

    def iter_embed(
        self, sources: Iterable[str | os.PathLike], batch_size: int | None = None
    ) -> Iterator[Embeddings | Failure]:
        """Embed many files, yielding a :class:`Failure` for each bad one and going on."""
        for source in sources:
            try:
                yield self.embed(source, batch_size=batch_size)
            except AuricleError as error:
                yield Failure(str(source), str(error))


class _Calls:
    """Model calls in flight on the engine's streams; rows come back in submission order.

    Each stream takes calls of ``part = batch_size // streams`` windows on its own.
    Up to two calls per stream are in flight, so no stream waits for another (or
    idles) while the caller or the decoder holds a core; with one stream every
    call runs at once, as a plain loop would.
    """

    def __init__(self, model: AudioModel, batch_size: int | None = None) -> None:
        self._model = model
        self.part = max(1, (batch_size or model.batch_size) // model.engine.streams)
        self._keep = 2 * model.engine.streams
        self._in_flight: deque[tuple[list, Future]] = deque()

    def submit(self, owners: list, windows: Sequence[np.ndarray], last: bool = False) -> list[tuple[object, np.ndarray]]:
        """Start a call on equal-length ``windows``; returns the (owner, row) pairs of calls that finished.

        ``last``: no more windows follow. Then, with nothing else in flight, the call runs
        here on all threads (split over the streams if it is big enough): a single clip
        would otherwise get one stream's thread and leave the others idle.
        """
        batch = torch.from_numpy(np.stack(windows)).to(self._model.device)
        if last and not self._in_flight:
            with torch.inference_mode():
                return list(zip(owners, self._model.engine.probabilities(batch).cpu().numpy()))
        self._in_flight.append((owners, self._model.engine.submit(batch)))
        return self.collect()

    def add(self, owners: list, windows: Sequence[np.ndarray], last: bool = False) -> list[tuple[object, np.ndarray]]:
        """Calls on windows of any lengths, equal lengths batched together, ``part`` per call.

        Returns the (owner, row) pairs of calls that finished; ``last`` marks the final call
        as :meth:`submit`'s ``last``.
        """
        by_length: dict[int, list[int]] = {}
        for index, samples in enumerate(windows):
            by_length.setdefault(len(samples), []).append(index)
        chunks = [indices[first : first + self.part]
                  for indices in by_length.values() for first in range(0, len(indices), self.part)]
        rows = []
        for number, chunk in enumerate(chunks):
            rows += self.submit([owners[i] for i in chunk], [windows[i] for i in chunk],
                                last=last and number == len(chunks) - 1)
        return rows

    def ready(self) -> bool:
        return bool(self._in_flight) and self._in_flight[0][1].done()

    def collect(self, keep: int | None = None) -> list[tuple[object, np.ndarray]]:
        """Rows of the finished calls, oldest first, waiting while more than ``keep`` are in flight."""
        keep = self._keep if keep is None else keep
        rows = []
        while self._in_flight and (len(self._in_flight) > keep or self._in_flight[0][1].done()):
            owners, future = self._in_flight.popleft()
            rows.extend(zip(owners, future.result().cpu().numpy()))
        return rows


# Decoded windows waiting for the model: enough to keep the model busy while the
# decoder works ahead, small enough that memory stays flat on long files.
PREFETCH_WINDOWS = 32


def _decoded_windows(
    sources: Iterable[str | os.PathLike | np.ndarray],
    names: Sequence[str] | None,
    window_config: WindowConfig,
) -> Iterator[tuple[str, int, object]]:
    """("start", item, name), ("window", item, (start, samples)), then ("end"|"error", item, ...) per source.

    Decoding (libsndfile, FFmpeg, soxr; all release the GIL) runs in a
    background thread, so it overlaps the model instead of alternating with it.
    """
    messages: queue_module.Queue = queue_module.Queue(maxsize=PREFETCH_WINDOWS)
    stop = threading.Event()

    def put(message) -> bool:
        while not stop.is_set():
            try:
                messages.put(message, timeout=0.1)
                return True
            except queue_module.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item, source in enumerate(sources):
                name = names[item] if names is not None else str(source)
                if not put(("start", item, name)):
                    return
                try:
                    blocks = [source] if isinstance(source, np.ndarray) else iter_blocks(
                        source, block_samples=window_config.hop_samples
                    )
                    for start, samples in iter_windows(blocks, window_config):
                        if not put(("window", item, (start, np.ascontiguousarray(samples)))):
                            return
                except AuricleError as error:
                    if not put(("error", item, str(error))):
                        return
                    continue
                if not put(("end", item, None)):
                    return
            put(("done", -1, None))
        except BaseException as error:  # anything unexpected is re-raised in the consumer
            put(("raise", -1, error))

    worker = threading.Thread(target=produce, name="auricle-decode", daemon=True)
    worker.start()
    try:
        while True:
            kind, item, payload = messages.get()
            if kind == "done":
                return
            if kind == "raise":
                raise payload
            yield kind, item, payload
    finally:
        stop.set()  # a consumer that stops early releases the decoder
        worker.join(timeout=5)


def load_model(
    name: str = DEFAULT_MODEL,
    checkpoint: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    cache_dir: str | os.PathLike | None = None,
    engine: str = "torch",
    precision: str = "fp32",
    threads: int | None = None,
    streams: int | None = None,
) -> AudioModel:
    """Load a CED model by name (``ced-tiny`` ... ``ced-base``) or from a checkpoint.

    Weights come from ``checkpoint`` if given (official ``.pt``, Hugging Face
    folder or auricle ``.safetensors``), else from the local Hugging Face cache,
    else they are downloaded from the Hub. ``engine`` (torch, onnx),
    ``precision`` (fp32, bf16, int8, or auto: the fastest this CPU supports) and
    ``threads`` and ``streams`` (concurrent calls a batch is split over; default one
    per thread) choose how the encoder runs (see :mod:`auricle.inference.engines`);
    results keep their format.
    """
    # fails before any weights are read
    engine_config = EngineConfig(engine, resolve_precision(engine, precision, device), threads, streams)
    if checkpoint is None:
        from auricle.models.hub import fetch_weights

        info: ModelInfo | None = model_info(name)
        checkpoint = fetch_weights(info, cache_dir=cache_dir)
    else:
        info = None
    loaded = read_checkpoint(checkpoint)
    if info is not None and loaded.config.embed_dim != info.config.embed_dim:
        raise CheckpointError(
            f"{checkpoint}: holds a {loaded.config.embed_dim}-wide encoder, not {info.name}"
        )
    if loaded.labels is not None:
        labels = LabelSet.from_names(loaded.labels)
    elif loaded.config.num_classes == 527:
        labels = audioset_labels()
    else:
        raise CheckpointError(
            f"{checkpoint}: head has {loaded.config.num_classes} classes but the checkpoint names none"
        )
    display_name = info.name if info is not None else (loaded.name or Path(str(checkpoint)).stem)
    return AudioModel(build_model(loaded), display_name, labels, device, engine=engine_config)


__all__ = ["AudioModel", "load_model", "available_models"]
