"""ONNX Runtime sessions for streams: one shared session per process, or one per stream.

The ``onnx`` engine (:mod:`auricle.engines.onnx`) and exported files
(:mod:`auricle.onnx.exported`) both run ONNX Runtime on the CPU split into streams;
they get their sessions here, so both are set up alike. No torch.
"""

from __future__ import annotations

import threading

#: What the onnx engine and prepared graphs say when ONNX Runtime is not installed.
ONNXRUNTIME_MISSING = "the onnx engine needs onnxruntime: pip install 'auricle[onnx]'"
#: ... and when onnx, which writes the graphs, is not (a graph already in the cache runs without it).
ONNX_MISSING = "the onnx engine needs onnx to write its graph: pip install 'auricle[onnx]'"


def stream_sessions(model: bytes | str, threads: int, streams: int) -> list:
    """Sessions of ``model`` (serialized bytes or a path) for ``streams`` streams over ``threads`` threads.

    Each session runs on ``threads // streams`` threads. A one-thread session runs on
    its caller's thread, so one session serves all streams (concurrent runs are
    safe); with more threads each stream needs its own thread pool, so its own session.
    Raises ImportError without onnxruntime and ONNX Runtime's own errors for a bad model.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads // streams)
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Attention and the quantised products produce subnormal floats; flushing them to
    # zero (values under 1.2e-38, invisible in any output) made int8 ~10% faster here.
    # ONNX Runtime sets it on its own threads and on the thread that creates a session, so
    # the sessions are made on a thread of their own: the caller's thread keeps IEEE
    # arithmetic (numpy and torch results after loading a model are what they were before).
    options.add_session_config_entry("session.set_denormal_as_zero", "1")
    count = 1 if options.intra_op_num_threads == 1 else streams
    made: list = []
    failed: list[BaseException] = []

    def make() -> None:
        try:
            made.extend(ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
                        for _ in range(count))
        except BaseException as error:  # handed to the caller, as if raised there
            failed.append(error)

    maker = threading.Thread(target=make, name="auricle-onnx-sessions")
    maker.start()
    maker.join()
    if failed:
        raise failed[0]
    return made
