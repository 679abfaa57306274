"""Decoding runs ahead of the model in a background thread: order, early stop and errors."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import soundfile as sf

from auricle.inference.pipeline import decoded_windows as _decoded_windows
from auricle.inference.windows import WindowConfig


def decoder_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "auricle-decode"]


def test_messages_come_in_file_order(tmp_path):
    paths = []
    for index, seconds in enumerate([3.0, 0.5, 12.0]):
        path = tmp_path / f"{index}.wav"
        sf.write(path, np.zeros(int(16000 * seconds), np.float32), 16000)
        paths.append(str(path))
    (tmp_path / "bad.wav").write_bytes(b"not audio at all")
    paths.insert(1, str(tmp_path / "bad.wav"))
    messages = list(_decoded_windows(paths, None, WindowConfig(window_seconds=10)))
    kinds = [(kind, item) for kind, item, _ in messages]
    assert kinds == [("start", 0), ("window", 0), ("end", 0), ("start", 1), ("error", 1),
                     ("start", 2), ("window", 2), ("end", 2),
                     ("start", 3), ("window", 3), ("window", 3), ("end", 3)]
    assert "bad.wav" in messages[4][2]


def test_a_consumer_that_stops_early_releases_the_decoder(tmp_path):
    path = tmp_path / "long.wav"
    sf.write(path, np.zeros(16000 * 600, np.float32), 16000)  # 60 windows: more than the prefetch bound
    stream = _decoded_windows([str(path)], None, WindowConfig(window_seconds=10))
    next(stream), next(stream)
    stream.close()
    assert decoder_threads() == []


def test_unexpected_errors_reach_the_consumer():
    def sources():
        yield np.zeros(16000, np.float32)
        raise RuntimeError("listing failed")

    with pytest.raises(RuntimeError, match="listing failed"):
        list(_decoded_windows(sources(), None, WindowConfig()))
    assert decoder_threads() == []
