"""Dynamic batching: windows of concurrent requests scored together on one model thread.

One worker thread owns the model. Requests put windows on a queue and wait on
futures; the worker takes the oldest window, waits at most ``max_wait`` seconds
for more windows *of the same length* (the model scores equal-length clips in
one call, and padding would change their log-mel floor and thus the scores), and
runs up to ``max_batch_size`` of them at once. A window whose request gave up
(timed out) is cancelled and skipped. Other model work (embeddings) runs on the
same thread as a job, so the model is never used by two threads at once.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")


@dataclass
class _Window:
    samples: np.ndarray
    future: Future
    enqueued: float


@dataclass
class _Job:
    function: Callable[[], Any]
    future: Future


@dataclass
class BatchStats:
    """Counts since start: model calls, windows scored, the largest batch, jobs run."""

    batches: int = 0
    windows: int = 0
    largest_batch: int = 0
    jobs: int = 0
    batch_sizes: dict[int, int] = field(default_factory=dict)


class DynamicBatcher:
    """Scores windows from many threads in batches on one worker thread.

    ``score`` maps a (batch, samples) float32 array to (batch, classes)
    probabilities. Use as a context manager, or call :meth:`start` and :meth:`close`.
    """

    def __init__(self, score: Callable[[np.ndarray], np.ndarray], max_batch_size: int = 16,
                 max_wait: float = 0.005) -> None:
        self._score = score
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait
        self._queue: deque[_Window | _Job] = deque()
        self._lengths: dict[int, int] = {}  # queued windows per length
        self._condition = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self.stats = BatchStats()

    def __enter__(self) -> "DynamicBatcher":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="auricle-batcher", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop after the queued work is done."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    @property
    def queued(self) -> int:
        return len(self._queue)

    def submit(self, samples: np.ndarray) -> Future:
        """Queue one window (1-D float32, 16 kHz); the future gives its probabilities (classes,)."""
        future: Future = Future()
        with self._condition:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            self._queue.append(_Window(np.ascontiguousarray(samples, dtype=np.float32), future, time.monotonic()))
            self._lengths[len(samples)] = self._lengths.get(len(samples), 0) + 1
            self._condition.notify_all()
        return future

    def call(self, function: Callable[[], T]) -> Future:
        """Run ``function()`` on the model thread, in queue order; the future gives its result."""
        future: Future = Future()
        with self._condition:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            self._queue.append(_Job(function, future))
            self._condition.notify_all()
        return future

    # -- the worker ---------------------------------------------------------------
    def _run(self) -> None:
        while True:
            work = self._next()
            if work is None:
                return
            if isinstance(work, _Job):
                self._run_job(work)
            else:
                self._run_batch(work)

    def _next(self) -> _Job | list[_Window] | None:
        with self._condition:
            while not self._queue:
                if self._closed:
                    return None
                self._condition.wait()
            first = self._queue[0]
            if isinstance(first, _Job):
                return self._queue.popleft()
            length = len(first.samples)
            deadline = first.enqueued + self.max_wait
            while (self._lengths.get(length, 0) < self.max_batch_size and not self._closed
                   and (remaining := deadline - time.monotonic()) > 0):
                self._condition.wait(remaining)
            batch: list[_Window] = []
            kept: deque[_Window | _Job] = deque()
            for item in self._queue:
                if len(batch) < self.max_batch_size and isinstance(item, _Window) and len(item.samples) == length:
                    batch.append(item)
                else:
                    kept.append(item)
            self._queue = kept
            self._lengths[length] -= len(batch)
            return batch

    def _run_job(self, job: _Job) -> None:
        if not job.future.set_running_or_notify_cancel():
            return
        try:
            job.future.set_result(job.function())
        except BaseException as error:  # handed to the waiting request
            job.future.set_exception(error)
        self.stats.jobs += 1

    def _run_batch(self, batch: list[_Window]) -> None:
        live = [item for item in batch if item.future.set_running_or_notify_cancel()]
        if not live:
            return
        try:
            probabilities = self._score(np.stack([item.samples for item in live]))
        except BaseException as error:
            for item in live:
                item.future.set_exception(error)
            return
        for item, row in zip(live, probabilities):
            item.future.set_result(row)
        stats = self.stats
        stats.batches += 1
        stats.windows += len(live)
        stats.largest_batch = max(stats.largest_batch, len(live))
        stats.batch_sizes[len(live)] = stats.batch_sizes.get(len(live), 0) + 1
