"""Inference streams: a batch split over concurrent worker threads must change speed, never results.

Public interfaces first (StreamPool, engines, AudioModel, `auricle tag`), then the
subtle parts: torch's per-thread thread counts, errors that must arrive (not hang),
rows of a file that failed while its windows were in flight, and worker threads
that must stop with their pool. Every test that could hang runs its work under a
timeout, so a broken pool fails the test instead of stalling the suite.
"""

from __future__ import annotations

import gc
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from auricle.cli import cli
from auricle.engines import EngineConfig, EngineError, make_engine
from auricle.inference.results import ClipTags, Failure
from auricle.inference.streams import StreamPool, split_bounds
from auricle.model import load_model
from auricle.models.checkpoints import save_checkpoint
from encoder_support import perturbed_network

SR = 16000
HANG = 60.0  # seconds after which model work that should have returned counts as hung
QUICK = 10.0  # the same for trivial work on a bare pool


# -- helpers -----------------------------------------------------------------------

def within(function: Callable, timeout: float = HANG):
    """``function()``, run in a daemon thread; fails instead of hanging when it does not return."""
    outcome: dict = {}

    def target() -> None:
        try:
            outcome["value"] = function()
        except BaseException as error:  # re-raised in the test's thread
            outcome["error"] = error

    thread = threading.Thread(target=target, name="test-within", daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"did not return within {timeout} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


@contextmanager
def open_pool(*args, **kwargs) -> Iterator[StreamPool]:
    pool = StreamPool(*args, **kwargs)
    try:
        yield pool
    finally:
        within(pool.close, QUICK)  # a pool stuck while starting holds its lock: fail instead of hanging


def stream_threads() -> set[threading.Thread]:
    return {thread for thread in threading.enumerate() if thread.name.startswith("auricle-stream-")}


def all_stopped(threads: set[threading.Thread], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while any(thread.is_alive() for thread in threads):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def spy_threads(monkeypatch, engine, method: str = "_probabilities") -> list[tuple[str, int]]:
    """Record (thread name, batch length) of every call of ``engine.<method>``."""
    calls: list[tuple[str, int]] = []
    original = getattr(engine, method)

    def spy(batch, stream=0):
        calls.append((threading.current_thread().name, len(batch)))
        return original(batch, stream)

    monkeypatch.setattr(engine, method, spy)
    return calls


def assert_records_close(got, expected, atol: float, where: str = "") -> None:
    """Equal JSON-like structures, floats within ``atol``."""
    if isinstance(expected, dict):
        assert isinstance(got, dict) and got.keys() == expected.keys(), where
        for key in expected:
            assert_records_close(got[key], expected[key], atol, f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(got, list) and len(got) == len(expected), where
        for index, (a, b) in enumerate(zip(got, expected)):
            assert_records_close(a, b, atol, f"{where}[{index}]")
    elif isinstance(expected, float):
        assert got == pytest.approx(expected, abs=atol), where
    else:
        assert got == expected, where


def signal(kind: str, seconds: float, seed: int = 0) -> np.ndarray:
    """Clips of clearly different content, so that mixed-up rows would show."""
    t = np.arange(int(round(seconds * SR))) / SR
    rng = np.random.default_rng(seed)
    if kind == "sine":
        wave = 0.3 * np.sin(2 * np.pi * 440 * t)
    elif kind == "chirp":
        wave = 0.3 * np.sin(2 * np.pi * (100 + 800 * t) * t)
    elif kind == "square":
        wave = 0.2 * np.sign(np.sin(2 * np.pi * 150 * t))
    elif kind == "quiet":
        wave = 0.001 * rng.standard_normal(len(t))
    else:
        wave = 0.1 * rng.standard_normal(len(t))
    return wave.astype(np.float32)


def different_rows(rows: np.ndarray) -> bool:
    return all(not np.allclose(rows[i], rows[j], atol=1e-4) for i in range(len(rows)) for j in range(i))


# -- fixtures ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def network():
    return perturbed_network(seed=3, num_heads=1)


@pytest.fixture(scope="module")
def clips() -> torch.Tensor:
    """An uneven batch (5 over 2 streams: parts of 3 and 2) of different content."""
    kinds = ["sine", "noise", "chirp", "square", "quiet"]
    return torch.from_numpy(np.stack([signal(kind, 3.0, seed) for seed, kind in enumerate(kinds)]))


@pytest.fixture(scope="module")
def checkpoint(network, tmp_path_factory):
    return save_checkpoint(network, tmp_path_factory.mktemp("streams") / "small.safetensors", name="small")


@pytest.fixture(scope="module")
def models(checkpoint):
    """The same checkpoint with one and with two streams (two threads both)."""
    threads = torch.get_num_threads()
    loaded = {streams: load_model(checkpoint=checkpoint, threads=2, streams=streams) for streams in (1, 2)}
    torch.set_num_threads(threads)
    return loaded


@pytest.fixture(scope="module")
def audio_files(tmp_path_factory) -> list[str]:
    """WAV files of different lengths (23 s and 12 s have several windows) and a corrupt one in the middle."""
    folder = tmp_path_factory.mktemp("streams-audio")
    specs = [("sine", 1.0), ("noise", 23.0), ("chirp", 4.5), None, ("square", 12.0), ("noise", 0.3)]
    paths = []
    for index, spec in enumerate(specs):
        if spec is None:
            path = folder / f"{index}-corrupt.wav"
            path.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio")
        else:
            path = folder / f"{index}-{spec[0]}.wav"
            sf.write(path, signal(spec[0], spec[1], seed=index), SR)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory):
    pytest.importorskip("onnxruntime")
    return tmp_path_factory.mktemp("streams-onnx")


# -- split_bounds ------------------------------------------------------------------

@pytest.mark.parametrize("total", [0, 1, 2, 3, 5, 7, 16, 33])
@pytest.mark.parametrize("parts", [1, 2, 3, 4, 8])
def test_split_bounds_cover_the_range_in_near_equal_contiguous_parts(total, parts):
    bounds = split_bounds(total, parts)
    assert len(bounds) == max(1, min(parts, total))
    assert bounds[0][0] == 0 and bounds[-1][1] == total
    assert all(end == start for (_, end), (start, _) in zip(bounds, bounds[1:]))  # contiguous, no overlap
    sizes = [end - start for start, end in bounds]
    assert max(sizes) - min(sizes) <= 1
    if total:
        assert min(sizes) >= 1  # never an empty part when there is work


def test_split_bounds_edge_cases():
    assert split_bounds(0, 3) == [(0, 0)]
    assert split_bounds(1, 3) == [(0, 1)]
    assert split_bounds(3, 5) == [(0, 1), (1, 2), (2, 3)]
    assert split_bounds(5, 2) == [(0, 3), (3, 5)]


# -- StreamPool --------------------------------------------------------------------

def test_pool_map_keeps_order_and_runs_parts_at_once_on_distinct_threads():
    barrier = threading.Barrier(3, timeout=QUICK)  # a pool that ran parts one by one breaks it instead of hanging
    names = []

    def work(stream, part):
        names.append((stream, threading.current_thread().name))
        barrier.wait()
        time.sleep(0.01 * (3 - part))  # finish in reverse order
        return part * 10

    with open_pool(3) as pool:
        assert within(lambda: pool.map(work, [0, 1, 2]), QUICK) == [0, 10, 20]
        assert within(lambda: pool.map(lambda stream, part: part, list("abcdefg")), QUICK) == list("abcdefg")
    assert len({name for _, name in names}) == 3
    assert all(name.startswith("auricle-stream-") for _, name in names)
    assert sorted(stream for stream, _ in names) == [0, 1, 2]


@pytest.mark.parametrize(("streams", "per_stream"), [(2, 1), (1, 2)])
def test_workers_keep_their_thread_count_and_the_caller_keeps_its(restore_torch_threads, streams, per_stream):
    torch.set_num_threads(3)

    def count_after_parallel_op(stream=0, part=None) -> int:
        # torch applies a thread's count lazily, on its first parallel operator: ask after one.
        a = torch.randn(512, 512)
        (a @ a).sum()
        return torch.get_num_threads()

    with open_pool(streams, per_stream) as pool:
        counts = within(lambda: pool.map(count_after_parallel_op, range(2 * streams)), QUICK)
    assert counts == [per_stream] * (2 * streams)
    assert torch.get_num_threads() == 3
    assert count_after_parallel_op() == 3
    # a thread created after the workers starts with the caller's count, not theirs
    assert within(count_after_parallel_op, QUICK) == 3


@pytest.mark.integration
def test_an_error_in_one_part_is_raised_after_the_other_parts_finished():
    finished = []

    def work(stream, part):
        if part == 0:
            raise ValueError("part 0 failed")
        time.sleep(0.2)
        finished.append(part)
        return part

    with open_pool(2) as pool:
        with pytest.raises(ValueError, match="part 0 failed"):
            within(lambda: pool.map(work, [0, 1, 2, 3]), QUICK)
        assert sorted(finished) == [1, 2, 3]
        assert within(lambda: pool.map(lambda stream, part: part + 1, [1, 2]), QUICK) == [2, 3]  # still works


def test_a_failing_initializer_fails_every_task_without_hanging():
    def setup():
        raise RuntimeError("no per-thread setup here")

    with open_pool(2, 1, setup) as pool:
        futures = within(lambda: [pool.submit(lambda stream, part: part, index) for index in range(4)], QUICK)
        for future in futures:
            with pytest.raises(RuntimeError, match="no per-thread setup here"):
                future.result(timeout=QUICK)
        with pytest.raises(RuntimeError, match="no per-thread setup here"):
            within(lambda: pool.map(lambda stream, part: part, [1, 2]), QUICK)


def test_the_initializer_runs_once_in_each_worker():
    ran = []
    with open_pool(2, 1, lambda: ran.append(threading.current_thread().name)) as pool:
        within(lambda: pool.map(lambda stream, part: part, range(6)), QUICK)
        within(lambda: pool.map(lambda stream, part: part, range(6)), QUICK)
    assert sorted(ran) == ["auricle-stream-0", "auricle-stream-1"]


def test_work_runs_in_inference_mode():
    with open_pool(2) as pool:
        modes = within(lambda: pool.map(lambda stream, part: torch.is_inference_mode_enabled(), range(4)), QUICK)
        tensors = within(lambda: pool.map(lambda stream, part: torch.ones(2) * part, range(2)), QUICK)
    assert modes == [True] * 4
    assert all(tensor.is_inference() for tensor in tensors)
    assert not torch.is_inference_mode_enabled()  # the caller's mode is its own


def test_workers_start_lazily_and_stop_on_close():
    before = stream_threads()
    pool = StreamPool(2)
    assert stream_threads() == before
    within(lambda: pool.map(lambda stream, part: part, [1, 2]), QUICK)
    ours = stream_threads() - before
    assert len(ours) == 2
    within(pool.close, QUICK)
    assert all_stopped(ours)


@pytest.mark.integration
def test_workers_stop_when_the_pool_is_garbage_collected():
    before = stream_threads()
    pool = StreamPool(2)
    within(lambda: pool.map(lambda stream, part: part, [1, 2]), QUICK)
    ours = stream_threads() - before
    assert len(ours) == 2
    del pool
    gc.collect()
    assert all_stopped(ours)


@pytest.mark.integration
def test_an_engines_workers_stop_when_the_engine_is_garbage_collected(network, clips, restore_torch_threads):
    # The workers must not keep the last task (a closure over the engine) alive.
    before = stream_threads()
    engine = make_engine(network, EngineConfig(threads=2, streams=2))
    within(lambda: engine.probabilities(clips))
    ours = stream_threads() - before
    assert len(ours) == 2
    del engine
    gc.collect()
    assert all_stopped(ours)


def test_pool_rejects_bad_sizes():
    with pytest.raises(ValueError, match="at least 1"):
        StreamPool(0)
    with pytest.raises(ValueError, match="at least 1"):
        StreamPool(2, 0)


# -- engines -----------------------------------------------------------------------

def test_torch_streams_give_the_same_probabilities_and_features(network, clips, monkeypatch,
                                                                restore_torch_threads):
    one = make_engine(network, EngineConfig("torch", "fp32", threads=2, streams=1))
    two = make_engine(network, EngineConfig("torch", "fp32", threads=2, streams=2))
    assert (one.streams, two.streams) == (1, 2)
    calls = spy_threads(monkeypatch, two)
    with torch.inference_mode():
        expected = one.probabilities(clips)
        got = within(lambda: two.probabilities(clips))
        pieces = network.pieces(network.normalize(network.spectrogram(clips)))[0]
        feature_calls = spy_threads(monkeypatch, two, "_features")
        features = within(lambda: two.forward_features(pieces))
        expected_features = one.forward_features(pieces)
    assert different_rows(expected.numpy())  # the clips really differ, so swapped rows would show
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(features, expected_features, atol=1e-6, rtol=0)
    # The uneven batch really went to the workers, as parts of 3 and 2 (which worker takes
    # which part is up to them: the pool hands work to whichever is free).
    for recorded in (calls, feature_calls):
        assert sorted(length for _, length in recorded) == [2, 3]
        assert all(name.startswith("auricle-stream-") for name, _ in recorded)


@pytest.mark.parametrize(("streams", "small"), [(2, 1), (3, 2)])
def test_torch_batch_smaller_than_the_streams_runs_on_the_calling_thread(network, clips, monkeypatch, streams,
                                                                         small, restore_torch_threads):
    engine = make_engine(network, EngineConfig("torch", "fp32", threads=streams, streams=streams))
    calls = spy_threads(monkeypatch, engine)
    engine.probabilities(clips[:small])
    assert calls == [(threading.current_thread().name, small)]
    calls.clear()
    within(lambda: engine.probabilities(clips[:streams]))  # as large as the stream count: spread
    assert [length for _, length in calls] == [1] * streams
    assert all(name.startswith("auricle-stream-") for name, _ in calls)


@pytest.mark.parametrize("streams", [1, 2])
def test_submit_equals_probabilities(network, clips, streams, restore_torch_threads):
    engine = make_engine(network, EngineConfig("torch", "fp32", threads=2, streams=streams))
    with torch.inference_mode():
        expected = engine.probabilities(clips)
    futures = [engine.submit(clips), engine.submit(clips[1:3])]
    torch.testing.assert_close(futures[0].result(timeout=HANG), expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(futures[1].result(timeout=HANG), expected[1:3], atol=1e-6, rtol=0)


def test_submit_hands_errors_to_the_future(network, clips, monkeypatch, restore_torch_threads):
    for streams in (1, 2):
        engine = make_engine(network, EngineConfig("torch", "fp32", threads=2, streams=streams))

        def broken(waveforms, stream=0):
            raise RuntimeError(f"broken call on {streams}")

        monkeypatch.setattr(engine, "_probabilities", broken)
        future = engine.submit(clips)
        with pytest.raises(RuntimeError, match=f"broken call on {streams}"):
            future.result(timeout=HANG)


def test_onnx_streams_agree_and_share_one_session(network, clips, onnx_cache, monkeypatch,
                                                  restore_torch_threads):
    one = make_engine(network, EngineConfig("onnx", "fp32", threads=2, streams=1), cache_dir=onnx_cache)
    two = make_engine(network, EngineConfig("onnx", "fp32", threads=2, streams=2), cache_dir=onnx_cache)
    assert len(two._sessions) == 1  # one thread per stream: one session, run concurrently
    calls = spy_threads(monkeypatch, two)
    with torch.inference_mode():
        expected = one.probabilities(clips)
        reference = network(clips)
    got = within(lambda: two.probabilities(clips))
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(got.numpy(), reference.numpy(), atol=1e-4, rtol=0)
    assert sorted(length for _, length in calls) == [2, 3]
    assert all(name.startswith("auricle-stream-") for name, _ in calls)


def test_onnx_spreads_a_batch_smaller_than_the_streams(network, clips, onnx_cache, monkeypatch,
                                                       restore_torch_threads):
    # Its sessions are sized for one stream, so 2 clips on 3 streams run as two one-clip parts
    # (torch would run them whole on the calling thread, on all its threads).
    engine = make_engine(network, EngineConfig("onnx", "fp32", threads=3, streams=3), cache_dir=onnx_cache)
    calls = spy_threads(monkeypatch, engine)
    got = within(lambda: engine.probabilities(clips[:2]))
    assert [length for _, length in calls] == [1, 1]
    assert all(name.startswith("auricle-stream-") for name, _ in calls)
    with torch.inference_mode():
        np.testing.assert_allclose(got.numpy(), network(clips[:2]).numpy(), atol=1e-4, rtol=0)


def test_onnx_streams_with_several_threads_get_a_session_each(network, clips, onnx_cache,
                                                             restore_torch_threads):
    engine = make_engine(network, EngineConfig("onnx", "fp32", threads=4, streams=2), cache_dir=onnx_cache)
    assert len(engine._sessions) == 2
    with torch.inference_mode():
        reference = network(clips)
    np.testing.assert_allclose(within(lambda: engine.probabilities(clips)).numpy(), reference.numpy(), atol=1e-4)


def test_engine_streams_default_to_one_per_thread(network, restore_torch_threads):
    assert make_engine(network, EngineConfig(threads=2)).streams == 2
    assert make_engine(network, EngineConfig(threads=3, streams=2)).streams == 2
    single = make_engine(network, EngineConfig(threads=1))
    assert single.streams == 1 and single._pool is None


def test_bad_stream_counts_are_engine_errors(checkpoint):
    with pytest.raises(EngineError, match="streams must be at least 1"):
        EngineConfig(streams=0)
    with pytest.raises(EngineError, match="3 streams need at least as many threads, got 2"):
        EngineConfig(threads=2, streams=3)
    with pytest.raises(EngineError, match="streams need"):  # before any weights are read
        load_model(checkpoint=str(checkpoint) + ".missing", threads=2, streams=3)


# -- AudioModel --------------------------------------------------------------------

@pytest.mark.integration
def test_iter_tag_with_streams_equals_one_stream_past_a_corrupt_file(models, audio_files, monkeypatch):
    options = models[1].tag_options(top_k=5, events=True)
    calls = spy_threads(monkeypatch, models[2].engine)
    expected = list(within(lambda: models[1].iter_tag(audio_files, options)))
    got = list(within(lambda: models[2].iter_tag(audio_files, options)))
    assert len(got) == len(expected) == len(audio_files)
    assert calls and all(name.startswith("auricle-stream-") for name, _ in calls)
    for path, result, reference in zip(audio_files, got, expected):
        if "corrupt" in path:
            assert isinstance(result, Failure) and isinstance(reference, Failure)
            assert result.file == path and path in result.error
            continue
        assert isinstance(result, ClipTags), result
        assert result.file == path
        np.testing.assert_allclose(result.scores, reference.scores, atol=1e-6, rtol=0)
        assert_records_close(result.to_dict(), reference.to_dict(), atol=1e-5, where=path)
        alone = models[1].tag(path, options=options)  # the failure next door changed nothing
        np.testing.assert_allclose(result.scores, alone.scores, atol=1e-6, rtol=0)
    by_name = {result.file: result for result in got}
    assert len(by_name[audio_files[1]].windows) == 3 and len(by_name[audio_files[4]].windows) == 2
    assert all(result.events is not None for result in got if isinstance(result, ClipTags))
    assert different_rows(np.stack([r.scores[0] for r in got if isinstance(r, ClipTags)]))


@pytest.mark.integration
def test_rows_of_a_file_that_failed_while_its_windows_were_in_flight_are_dropped(models, tmp_path, monkeypatch):
    # The decoder finds the NaN at 42 s after three windows were cut: two of them are
    # already with the (slowed) model when the error arrives, and come back afterwards.
    broken = np.concatenate([signal("noise", 42.0), np.full(3 * SR, np.nan, np.float32)])
    sf.write(tmp_path / "broken.wav", broken, SR, subtype="FLOAT")
    sf.write(tmp_path / "good.wav", signal("chirp", 12.0), SR)
    paths = [str(tmp_path / "broken.wav"), str(tmp_path / "good.wav")]
    model = models[2]
    options = model.tag_options(top_k=3)
    alone = model.tag(paths[1], options=options)
    original = model.engine._probabilities

    def slow(waveforms, stream=0):
        time.sleep(0.3)
        return original(waveforms, stream)

    monkeypatch.setattr(model.engine, "_probabilities", slow)
    results = list(within(lambda: model.iter_tag(paths, options)))
    assert [type(result) for result in results] == [Failure, ClipTags]
    assert results[0].file == paths[0] and "broken.wav" in results[0].error
    np.testing.assert_allclose(results[1].scores, alone.scores, atol=1e-6, rtol=0)


def test_score_windows_with_streams_equals_one_stream(models):
    lengths = [10 * SR, SR, 10 * SR, 5000, 10 * SR, SR, 72000, 10 * SR]
    kinds = ["sine", "noise", "chirp", "square", "quiet", "chirp", "noise", "square"]
    windows = [signal(kind, length / SR, seed) for seed, (kind, length) in enumerate(zip(kinds, lengths))]
    expected = models[1].score_windows(windows)
    got = within(lambda: models[2].score_windows(windows))
    assert len(got) == len(windows)
    for row, reference, samples in zip(got, expected, windows):
        np.testing.assert_allclose(row, reference, atol=1e-6, rtol=0)
        np.testing.assert_allclose(row, models[1].probabilities(torch.from_numpy(samples))[0].numpy(), atol=1e-6)
    assert different_rows(np.stack(got))


@pytest.mark.parametrize(("threads", "streams", "batch"),
                         [(1, None, 4), (2, 1, 4), (2, 2, 4), (3, 3, 6), (4, 4, 8), (4, 2, 4), (3, None, 6)])
def test_model_batch_size_is_two_windows_per_stream_at_least_four(checkpoint, threads, streams, batch,
                                                                 restore_torch_threads):
    model = load_model(checkpoint=checkpoint, threads=threads, streams=streams)
    assert model.engine.streams == (streams or threads)
    assert model.batch_size == batch == max(4, 2 * model.engine.streams)


@pytest.mark.integration
@pytest.mark.parametrize("streams", [1, 2])
def test_an_error_in_a_model_call_reaches_the_iter_tag_caller(models, audio_files, monkeypatch, streams):
    model = models[streams]
    original = model.engine._probabilities
    calls, decoders = [], set()
    lock = threading.Lock()

    def fails_on_the_second_call(waveforms, stream=0):
        with lock:
            calls.append(len(waveforms))
            second = len(calls) == 2
        if second:
            decoders.update(thread for thread in threading.enumerate() if thread.name == "auricle-decode")
            raise RuntimeError("the model broke")
        return original(waveforms, stream)

    monkeypatch.setattr(model.engine, "_probabilities", fails_on_the_second_call)
    # 400 s first: 40 windows, more than the decoder may hold ready, so it is still at work when the call fails.
    good = [path for path in audio_files if "corrupt" not in path]
    sources = [np.zeros(400 * SR, np.float32), *good]
    with pytest.raises(RuntimeError, match="the model broke"):
        within(lambda: list(model.iter_tag(sources, model.tag_options(), names=["long", *good], sample_rate=SR)))
    assert len(calls) >= 2
    assert decoders, "the decoder had already finished: this test would not see it left blocked"
    gc.collect()
    assert all_stopped(decoders)  # the decoder is released, not left blocked on its full queue


# -- CLI ---------------------------------------------------------------------------

@pytest.mark.integration
def test_cli_tag_with_streams_equals_one_stream(checkpoint, audio_files, monkeypatch, restore_torch_threads):
    good = [path for path in audio_files if "corrupt" not in path]
    engine_streams = []
    original = make_engine

    def spy(network, config=None, cache_dir=None):
        engine = original(network, config, cache_dir)
        engine_streams.append(engine.streams)
        return engine

    monkeypatch.setattr("auricle.model.make_engine", spy)
    outputs = {}
    for streams in ("1", "2"):
        result = CliRunner().invoke(cli, ["tag", *good, "--checkpoint", str(checkpoint), "--threads", "2",
                                          "--streams", streams, "--format", "json", "--events"],
                                   catch_exceptions=False)
        assert result.exit_code == 0, result.output
        outputs[streams] = json.loads(result.stdout)
    assert [record["file"] for record in outputs["2"]] == good
    assert engine_streams == [1, 2]
    assert_records_close(outputs["2"], outputs["1"], atol=1e-5)


def test_cli_rejects_more_streams_than_threads_in_one_line(checkpoint, audio_files, restore_torch_threads):
    result = CliRunner().invoke(cli, ["tag", audio_files[0], "--checkpoint", str(checkpoint), "--threads", "2",
                                      "--streams", "3"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("auricle: error:") and "--streams" in lines[0]
    assert result.stdout == ""


def test_a_single_clip_runs_on_the_calling_thread_with_all_threads(checkpoint, audio_files, monkeypatch,
                                                                    restore_torch_threads):
    """`auricle tag one.wav`: the one call is not handed to a one-thread stream while the other stream idles."""
    model = load_model(checkpoint=checkpoint, threads=2, streams=2)
    calls = spy_threads(monkeypatch, model.engine)
    (result,) = within(lambda: list(model.iter_tag([audio_files[2]], model.tag_options(top_k=3))))  # 4.5 s: one window
    assert isinstance(result, ClipTags)
    assert calls == [("test-within", 1)]  # the thread that called iter_tag
    assert model.score_windows([signal("chirp", 2.0)])[0].shape == (model.network.config.num_classes,)
    assert calls[1:] == [(threading.current_thread().name, 1)]
    assert model.engine._pool._inbox is None  # the workers never started


@pytest.mark.integration
def test_the_last_call_goes_to_a_stream_while_others_are_in_flight(checkpoint, monkeypatch, restore_torch_threads):
    model = load_model(checkpoint=checkpoint, threads=2, streams=2)
    calls = spy_threads(monkeypatch, model.engine)
    scored = model.engine._probabilities

    def slow(batch, stream=0):  # the first calls stay in flight while the last is handed out
        if len(batch) == 2:
            time.sleep(0.5)
        return scored(batch, stream)

    monkeypatch.setattr(model.engine, "_probabilities", slow)
    windows = [signal("noise", 1.0, seed) for seed in range(5)]  # calls of 2, 2 and a last 1
    within(lambda: model.score_windows(windows))
    assert sorted(size for _, size in calls) == [1, 2, 2]
    assert all(name.startswith("auricle-stream-") for name, _ in calls)


@pytest.mark.integration
def test_a_worker_that_never_starts_fails_the_pool_instead_of_hanging(monkeypatch):
    import auricle.inference.streams as streams_module

    real_work = streams_module._work

    def stuck_first_worker(inbox, stream, threads, initializer, ready):
        if stream == 0:
            return  # never reaches the start barrier
        real_work(inbox, stream, threads, initializer, ready)

    monkeypatch.setattr(streams_module, "_work", stuck_first_worker)
    before = stream_threads()
    pool = StreamPool(2)
    pool.start_timeout = 0.5
    with pytest.raises(RuntimeError, match="did not start"):
        within(lambda: pool.submit(lambda stream, part: part, 1))
    assert all_stopped(stream_threads() - before)
