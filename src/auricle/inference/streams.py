"""Inference streams: several model calls at once, each on its own share of the cores.

One call of a small transformer spread over N threads waits at every operator
for the slowest thread, and the small operators (LayerNorm, softmax, the
attention of one head) split thinly. N calls on one thread each, on N parts of
the batch, have neither cost: in the same-run table on the 2-core development
VM, ced-mini ran 6% faster in torch fp32, 34% in torch int8 and 15-16% in ONNX
Runtime fp32 and int8 (ced-tiny torch int8 was 6% slower; docs/benchmarks.md). It also keeps the cores busy when another thread (the
decoder) takes one of them for a while: the other stream goes on instead of
waiting for it. OpenVINO's "throughput streams" are the same idea.

A :class:`StreamPool` holds the worker threads; an engine hands it the parts
of a batch. The workers never call back into the pool, so it cannot deadlock.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import TypeVar

Part = TypeVar("Part")
Result = TypeVar("Result")

_STOP = None


def split_bounds(total: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous (start, end) ranges covering ``range(total)``, sizes differing by at most one."""
    parts = max(1, min(parts, total))
    size, extra = divmod(total, parts)
    bounds, start = [], 0
    for index in range(parts):
        end = start + size + (index < extra)
        bounds.append((start, end))
        start = end
    return bounds


class StreamPool:
    """``streams`` worker threads, each running torch on ``threads_per_stream`` threads.

    Work goes to whichever worker is free. The threads start on first use and
    stop when the pool is garbage-collected or :meth:`close` is called. Work
    runs under ``torch.inference_mode`` (the mode is per thread in torch, so it
    is not inherited from the caller). ``initializer`` runs once in each worker
    before any work (per-thread CPU state such as flushing subnormals).
    ``torch_threads=False``: the work does not use torch (ONNX Runtime sessions
    sized by their own options); the pool then neither imports nor configures it.
    """

    def __init__(self, streams: int, threads_per_stream: int = 1,
                 initializer: Callable[[], None] | None = None, torch_threads: bool = True) -> None:
        if streams < 1 or threads_per_stream < 1:
            raise ValueError(f"streams and threads per stream must be at least 1, got {streams}, {threads_per_stream}")
        self.streams = streams
        self.threads_per_stream = threads_per_stream
        self._initializer = initializer
        self._torch_threads = torch_threads
        self._inbox: queue.SimpleQueue | None = None
        self._lock = threading.Lock()

    #: Seconds the first use waits for the workers to set themselves up.
    start_timeout: float = 60.0

    def __repr__(self) -> str:
        return f"StreamPool(streams={self.streams}, threads_per_stream={self.threads_per_stream})"

    def _start(self) -> queue.SimpleQueue:
        with self._lock:
            if self._inbox is not None:
                return self._inbox
            # torch.set_num_threads in a worker also sets the count that threads
            # created later start with; put the caller's count back once all are set.
            torch = _torch() if self._torch_threads else None
            restore = torch.get_num_threads() if torch is not None else 0
            ready = threading.Barrier(self.streams + 1)
            inbox: queue.SimpleQueue = queue.SimpleQueue()
            threads = self.threads_per_stream if torch is not None else None
            for stream in range(self.streams):
                threading.Thread(target=_work, args=(inbox, stream, threads, self._initializer, ready),
                                 name=f"auricle-stream-{stream}", daemon=True).start()
            try:
                ready.wait(timeout=self.start_timeout)
            except threading.BrokenBarrierError:  # a worker never got going: fail, do not hang
                _stop(inbox, self.streams)
                raise RuntimeError(f"the {self.streams} inference stream threads did not start within "
                                   f"{self.start_timeout:g} s") from None
            if torch is not None:
                torch.set_num_threads(restore)
            stopper = weakref.finalize(self, _stop, inbox, self.streams)
            # Not at interpreter exit: workers woken then would exit (and run torch's and ONNX
            # Runtime's per-thread clean-up) while the process tears those libraries down, which
            # once aborted a run ("terminate called without an active exception"). Left blocked,
            # daemon threads simply end with the process.
            stopper.atexit = False
            self._inbox = inbox
            return inbox

    def submit(self, function: Callable[[int, Part], Result], part: Part) -> Future:
        """Run ``function(stream, part)`` on the next free worker; its future."""
        future: Future = Future()
        self._start().put((function, part, future))
        return future

    def map(self, function: Callable[[int, Part], Result], parts: Sequence[Part]) -> list[Result]:
        """``[function(stream, part) for part in parts]``, run at once on the workers; in order.

        The first error raised by any part is re-raised here, after every part has finished.
        """
        futures = [self.submit(function, part) for part in parts]
        errors = [future.exception() for future in futures]  # waits for all
        for error in errors:
            if error is not None:
                raise error
        return [future.result() for future in futures]

    def close(self) -> None:
        """Stop the worker threads (they also stop when the pool is garbage-collected)."""
        with self._lock:
            if self._inbox is not None:
                _stop(self._inbox, self.streams)
            self._inbox = None


def run_here(function: Callable[..., Result], *args) -> Future:
    """A finished future of ``function(*args)`` run on this thread (its result or its exception).

    What a model's ``submit`` returns when it has no stream pool: callers treat both alike.
    """
    future: Future = Future()
    try:
        future.set_result(function(*args))
    except Exception as error:
        future.set_exception(error)
    return future


def _torch():
    import torch

    return torch


def _work(inbox: queue.SimpleQueue, stream: int, threads: int | None, initializer: Callable[[], None] | None,
          ready: threading.Barrier) -> None:
    """A worker's loop; ``threads``: its torch thread count, ``None`` for work without torch."""
    failure: BaseException | None = None
    scope: contextlib.AbstractContextManager = contextlib.nullcontext()
    try:
        if threads is not None:
            torch = _torch()
            # torch sets a thread's count lazily, on its first parallel operator, from the count
            # last set anywhere; asking for it runs that first, so the count set next sticks.
            torch.get_num_threads()
            torch.set_num_threads(threads)
            scope = torch.inference_mode()
        if initializer is not None:
            initializer()
    except BaseException as error:  # every task this worker takes will report it
        failure = error
    try:
        ready.wait()
    except threading.BrokenBarrierError:  # the pool gave up starting
        return
    with scope:
        while (task := inbox.get()) is not _STOP:
            function, part, future = task
            del task  # hold no reference to the work once it is done
            if future.set_running_or_notify_cancel():
                try:
                    if failure is not None:
                        raise failure
                    future.set_result(function(stream, part))
                except BaseException as error:  # handed to the caller, which re-raises it
                    future.set_exception(error)
            del function, part, future


def _stop(inbox: queue.SimpleQueue, streams: int) -> None:
    for _ in range(streams):
        inbox.put(_STOP)
