"""How :class:`~auricle.inference.pipeline.Tagger` keeps the model busy: a decoder thread that works
ahead of it (:func:`decoded_windows`), windows of many files gathered into calls (:class:`_Calls`),
each file's rows kept until it is complete (:class:`_FileState`), room made for long files, and a
file decoded block by block for embedding (:class:`FileBlocks`).

Apart from the pipeline because none of it depends on what a result is; ``auricle.inference.pipeline``
re-exports the public names under their old path.
"""

from __future__ import annotations

import dataclasses
import os
import queue as queue_module
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from auricle.audio import SAMPLE_RATE, AudioError, Blocks, Truncation, audio_info, iter_blocks, prepare_waveform
from auricle.errors import AuricleError
from auricle.inference.results import Embeddings
from auricle.inference.windows import WindowConfig, iter_windows

if TYPE_CHECKING:
    from auricle.inference.pipeline import Tagger

def is_array(source: object) -> bool:
    """A numpy array or a torch tensor (checked without importing torch)."""
    torch = sys.modules.get("torch")  # a tensor can only exist if torch is imported
    return isinstance(source, np.ndarray) or (torch is not None and isinstance(source, torch.Tensor))


#: Samples decoded at a time when a model embeds a file block by block (10 s).
EMBED_BLOCK_SAMPLES = 10 * SAMPLE_RATE


class FileBlocks:
    """``path`` decoded block by block, afresh on every call (embedding may read a file twice).

    :attr:`truncation` says whether the last complete reading found the file cut short.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = path
        self._last: Blocks | None = None

    def __call__(self) -> Iterator[np.ndarray]:
        self._last = iter_blocks(self.path, block_samples=EMBED_BLOCK_SAMPLES)
        return self._last

    @property
    def truncation(self) -> Truncation | None:
        return None if self._last is None else self._last.truncation


def file_blocks(path: str | os.PathLike) -> FileBlocks:
    """``path`` decoded block by block, afresh on every call (embedding may read a file twice)."""
    return FileBlocks(path)


def embedded_file(path: str | os.PathLike, embed: Callable[[FileBlocks], Embeddings]) -> Embeddings:
    """``embed`` of the blocks of ``path``, its result marked ``truncated`` where the file was cut short."""
    blocks = file_blocks(path)
    result = embed(blocks)
    cut = blocks.truncation
    return result if cut is None else dataclasses.replace(result, truncated=True, declared_duration=cut.declared)



@dataclass
class _FileState:
    """Bookkeeping of one recording while its windows are in flight."""

    name: str
    starts: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)
    rows: dict[int, np.ndarray] = field(default_factory=dict)
    finished: bool = False
    error: str | None = None
    truncation: Truncation | None = None

    def complete(self) -> bool:
        return self.error is not None or (self.finished and len(self.rows) == len(self.starts))


class _Calls:
    """Model calls in flight on the streams; rows come back in submission order.

    Each stream takes calls of ``part = batch_size // streams`` windows on its own.
    Up to two calls per stream are in flight, so no stream waits for another (or
    idles) while the caller or the decoder holds a core; with one stream every
    call runs at once, as a plain loop would.
    """

    def __init__(self, model: Tagger, batch_size: int | None = None, with_tokens: bool = False) -> None:
        self._model = model
        # with_tokens: each row the window's class scores, then its mean token (Tagger.iter_tag_embed)
        self._start = model._submit_with_tokens if with_tokens else model._submit
        self._run_here = model._score_now_with_tokens if with_tokens else model._score_now
        self.part = max(1, (batch_size or model.batch_size) // model.streams)
        self._keep = 2 * model.streams
        self._in_flight: deque[tuple[list, Future]] = deque()

    def submit(self, owners: list, windows: Sequence[np.ndarray], last: bool = False) -> list[tuple[object, np.ndarray]]:
        """Start a call on equal-length ``windows``; returns the (owner, row) pairs of calls that finished.

        ``last``: no more windows follow. Then, with nothing else in flight, the call runs
        here on all threads (split over the streams if it is big enough): a single clip
        would otherwise get one stream's thread and leave the others idle.
        """
        batch = np.stack(windows).astype(np.float32, copy=False)
        if last and not self._in_flight:
            return list(zip(owners, self._model._rows(self._run_here(batch))))
        self._in_flight.append((owners, self._start(batch)))
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
            rows.extend(zip(owners, self._model._rows(future.result())))
        return rows


#: Files at least this long are embedded on all streams, one at a time: on one
#: stream such a file would hold a single core long after the others ran out of work.
LONG_FILE_SECONDS = 300.0


#: Finished results kept for in-order output behind a file still in work.
MAX_HELD_RESULTS = 256


def _is_long(source) -> bool:
    if is_array(source):
        return len(source) >= LONG_FILE_SECONDS * SAMPLE_RATE
    try:
        duration = audio_info(source).duration
    except (AuricleError, OSError, ValueError):  # its job reports what is wrong with it
        return False
    return duration is not None and duration >= LONG_FILE_SECONDS


def _make_room(pending: deque, running: int, held: int) -> Iterator:
    """Yield the finished results at the head of ``pending``; return once another job may start.

    Waits while ``running`` jobs are unfinished or ``held`` results are queued.
    """
    while True:
        while pending and pending[0].done():
            yield pending.popleft().result()
        unfinished = [future for future in pending if not future.done()]
        if len(unfinished) < running and len(pending) < held:
            return
        wait(unfinished, return_when=FIRST_COMPLETED)


# Decoded windows waiting for the model: enough to keep the model busy while the
# decoder works ahead, small enough that memory stays flat on long files.
PREFETCH_WINDOWS = 32


def decoded_windows(
    sources: Iterable[str | os.PathLike | np.ndarray],
    names: Sequence[str] | None,
    window_config: WindowConfig,
    sample_rate: int | None = None,
) -> Iterator[tuple[str, int, object]]:
    """("start", item, name), ("window", item, (start, samples)), then ("end"|"error", item, ...) per source.

    An "end" carries the file's :class:`~auricle.audio.Truncation` (None: whole, or an array).

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
                array = is_array(source)
                name = names[item] if names is not None else f"<array {item}>" if array else str(source)
                if not put(("start", item, name)):
                    return
                try:
                    if array and sample_rate is None:
                        raise AudioError(f"{name}: a waveform array needs its sample_rate")
                    blocks = [prepare_waveform(source, sample_rate, name)] if array else iter_blocks(
                        source, block_samples=window_config.hop_samples
                    )
                    for start, samples in iter_windows(blocks, window_config):
                        if not put(("window", item, (start, np.ascontiguousarray(samples)))):
                            return
                except AuricleError as error:
                    if not put(("error", item, str(error))):
                        return
                    continue
                if not put(("end", item, getattr(blocks, "truncation", None))):
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
