"""Dasheng embeddings of long recordings: streamed in blocks, one floor for the whole recording."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

import auricle
from auricle.dasheng_model import DashengModel
from auricle.inference import pipeline

from conftest import REFERENCE, require

RATE = 16000


@pytest.fixture(scope="module")
def model() -> DashengModel:
    return auricle.load_model(checkpoint=require(REFERENCE / "dasheng" / "dasheng_small_perturbed.pt"))


@pytest.fixture(scope="module")
def quiet_then_loud(tmp_path_factory) -> tuple[str, np.ndarray]:
    """30.5 s: digital silence, a faint hum, then a loud tone, so the recording's floor decides the quiet chunks.

    30.5 s is 3051 frames: two full 1008-frame chunks, then 1035 frames (one more chunk of
    1008 and a 27-frame tail of 6 tokens and 3 frames left over).
    """
    rng = np.random.default_rng(3)
    waveform = np.concatenate([
        np.zeros(8 * RATE),
        1e-4 * rng.standard_normal(12 * RATE),
        0.9 * np.sin(2 * np.pi * 440 * np.arange(int(10.5 * RATE)) / RATE),
    ]).astype(np.float32)
    path = tmp_path_factory.mktemp("dasheng_long") / "quiet_then_loud.wav"
    sf.write(path, waveform, RATE, subtype="FLOAT")
    return str(path), waveform


def whole(model: DashengModel, waveform: np.ndarray) -> np.ndarray:
    return model.tokens(waveform[None])[0].numpy()


@pytest.mark.integration
@pytest.mark.parametrize("batch_size", [1, 2, 8])
def test_a_file_streamed_equals_the_whole_recording_at_once(model, quiet_then_loud, batch_size):
    path, waveform = quiet_then_loud
    expected = whole(model, waveform)
    embeddings = model.embed(path, batch_size=batch_size)
    assert embeddings.windows.shape == expected.shape == (3051 // 4, model.embedding_dim)
    np.testing.assert_allclose(embeddings.windows, expected, atol=1e-4, rtol=0)
    np.testing.assert_allclose(embeddings.clip, expected.mean(axis=0), atol=1e-5, rtol=0)
    assert embeddings.duration == pytest.approx(30.5)
    np.testing.assert_allclose(embeddings.starts[:3], [0.0, 0.04, 0.08])
    assert embeddings.ends[-1] == pytest.approx(762 * 0.04)  # the last 3 frames make no token
    # The array path is the same computation.
    np.testing.assert_allclose(model.embed(waveform, sample_rate=RATE, batch_size=batch_size).windows,
                               embeddings.windows, atol=1e-6, rtol=0)


def test_a_file_is_never_held_whole_nor_run_whole(model, quiet_then_loud, monkeypatch):
    path, _ = quiet_then_loud

    def whole_file(*args, **kwargs):
        raise AssertionError("the whole file was decoded at once")

    monkeypatch.setattr(pipeline, "load_audio", whole_file)
    widths = []
    forward = model.network.forward_features

    def spy(normalized, *args):
        widths.append(tuple(normalized.shape))
        return forward(normalized, *args)

    monkeypatch.setattr(model.network, "forward_features", spy)
    model.embed(path, batch_size=2)
    # Two calls of two full chunks, then the tail alone: never the 3051 frames at once.
    assert [shape[0] for shape in widths] == [2, 1, 1]
    assert max(shape[-1] for shape in widths) == 1008


def test_quiet_chunks_take_the_whole_recordings_floor(model, quiet_then_loud):
    """The first chunk alone would floor 120 dB under its own loudest bin; the recording's floor is another."""
    path, waveform = quiet_then_loud
    alone = model.embed(waveform[: 1008 * 160], sample_rate=RATE).windows
    together = model.embed(path).windows[: len(alone)]
    assert np.abs(alone - together).max() > 1e-2


@pytest.mark.parametrize("seconds", [0.01, 0.2, 10.08, 10.1])
def test_short_and_edge_lengths_equal_the_whole_computation(model, tmp_path, seconds):
    waveform = (0.1 * np.random.default_rng(5).standard_normal(int(seconds * RATE))).astype(np.float32)
    path = tmp_path / "clip.wav"
    sf.write(path, waveform, RATE, subtype="FLOAT")
    expected = whole(model, waveform)
    embeddings = model.embed(str(path))
    assert len(embeddings.windows) == len(expected) >= 1
    np.testing.assert_allclose(embeddings.windows, expected, atol=1e-4, rtol=0)


def test_a_bad_file_fails_with_its_name_and_the_batch_goes_on(model, quiet_then_loud, tmp_path):
    path, _ = quiet_then_loud
    broken = tmp_path / "broken.flac"
    broken.write_bytes(b"fLaC" + b"\x00" * 100)
    results = list(model.iter_embed([str(broken), path]))
    assert str(broken) in results[0].error
    assert results[1].windows.shape[0] == 3051 // 4
    assert torch.is_grad_enabled()
