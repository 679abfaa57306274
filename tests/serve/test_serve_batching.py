"""The dynamic batcher: batches across threads, equal lengths only, cancellation, errors, jobs."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from auricle.serve.batching import DynamicBatcher


def row_sums(batch: np.ndarray) -> np.ndarray:
    """A stand-in model: per clip, (sum, length); remembers the batch shapes it saw."""
    row_sums.shapes.append(batch.shape)
    return np.stack([batch.sum(axis=1), np.full(len(batch), batch.shape[1], dtype=float)], axis=1)


row_sums.shapes = []


@pytest.fixture(autouse=True)
def _clear_shapes():
    row_sums.shapes.clear()


def test_concurrent_windows_are_scored_together_and_each_gets_its_own_row():
    with DynamicBatcher(row_sums, max_batch_size=8, max_wait=0.5) as batcher:
        futures = [batcher.submit(np.full(100, i, np.float32)) for i in range(8)]
        results = [future.result(timeout=5) for future in futures]
    assert [r[0] for r in results] == [100.0 * i for i in range(8)]
    # The batch filled before the wait bound: one model call for all eight.
    assert row_sums.shapes == [(8, 100)]
    assert batcher.stats.largest_batch == 8 and batcher.stats.windows == 8


def test_a_lone_window_waits_at_most_max_wait():
    with DynamicBatcher(row_sums, max_batch_size=16, max_wait=0.05) as batcher:
        began = time.monotonic()
        batcher.submit(np.ones(10, np.float32)).result(timeout=5)
        waited = time.monotonic() - began
    assert waited < 2.0  # generous: the bound is 0.05 s, the machine is shared
    assert row_sums.shapes == [(1, 10)]


@pytest.mark.integration
def test_windows_of_different_lengths_are_never_mixed():
    with DynamicBatcher(row_sums, max_batch_size=16, max_wait=0.2) as batcher:
        futures = [batcher.submit(np.ones(n, np.float32)) for n in (10, 20, 10, 20, 30)]
        lengths = [future.result(timeout=5)[1] for future in futures]
    assert lengths == [10, 20, 10, 20, 30]
    assert sorted(row_sums.shapes) == [(1, 30), (2, 10), (2, 20)]


@pytest.mark.integration
def test_batches_are_capped_at_max_batch_size():
    with DynamicBatcher(row_sums, max_batch_size=3, max_wait=0.2) as batcher:
        futures = [batcher.submit(np.ones(5, np.float32)) for _ in range(7)]
        [future.result(timeout=5) for future in futures]
    assert [shape[0] for shape in row_sums.shapes] == [3, 3, 1]


def test_many_threads_share_batches():
    barrier = threading.Barrier(6)
    results = {}

    with DynamicBatcher(row_sums, max_batch_size=6, max_wait=1.0) as batcher:
        def client(i):
            barrier.wait()
            results[i] = batcher.submit(np.full(50, i, np.float32)).result(timeout=10)[0]

        threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert results == {i: 50.0 * i for i in range(6)}
    assert batcher.stats.batches < 6  # at least two requests shared a model call


def test_cancelled_windows_are_skipped_and_errors_reach_every_waiter():
    gate = threading.Event()

    def slow(batch):
        gate.wait(5)
        return row_sums(batch)

    with DynamicBatcher(slow, max_batch_size=1, max_wait=0.0) as batcher:
        first = batcher.submit(np.ones(4, np.float32))  # occupies the worker
        time.sleep(0.05)
        second = batcher.submit(np.ones(4, np.float32))
        assert second.cancel()
        gate.set()
        first.result(timeout=5)
    assert batcher.stats.windows == 1

    def broken(batch):
        raise RuntimeError("model failed")

    with DynamicBatcher(broken, max_batch_size=4, max_wait=0.1) as batcher:
        futures = [batcher.submit(np.ones(4, np.float32)) for _ in range(2)]
        for future in futures:
            with pytest.raises(RuntimeError, match="model failed"):
                future.result(timeout=5)


def test_jobs_run_on_the_model_thread_in_queue_order():
    order = []
    with DynamicBatcher(lambda b: order.append("batch") or row_sums(b), max_batch_size=4, max_wait=0.0) as batcher:
        window = batcher.submit(np.ones(3, np.float32))
        job = batcher.call(lambda: order.append(threading.current_thread().name) or 42)
        assert job.result(timeout=5) == 42
        window.result(timeout=5)
    assert order == ["batch", "auricle-batcher"]
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit(np.ones(3, np.float32))
