"""The HEAR 2021 API over a Dasheng encoder: frame tokens every 40 ms, their mean for the scene."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import auricle
from auricle.downstream import hear
from auricle.errors import AudioError

from conftest import REFERENCE, require

# One frame, a few, one chunk of 252 tokens and a little more, several chunks.
LENGTHS = (0.02, 0.1, 1.07, 10.08, 10.13, 25.0)


@pytest.fixture(scope="module")
def checkpoint():
    return require(REFERENCE / "dasheng" / "dasheng_small_perturbed.pt")


@pytest.fixture(scope="module")
def model(checkpoint):
    return hear.load_model(str(checkpoint))


@pytest.fixture(scope="module")
def embedder(checkpoint):
    return auricle.load_model(checkpoint=checkpoint)


def noise(sounds: int, seconds: float, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return 0.3 * (torch.rand(sounds, int(seconds * 16000), generator=generator) * 2 - 1)


def test_model_has_the_hear_attributes(model):
    assert isinstance(model, torch.nn.Module) and model.sample_rate == 16000
    assert model.scene_embedding_size == model.timestamp_embedding_size == 192
    assert model.timestamps == hear.FRAMES and hear.timestamp_hop_ms(model) == 40.0
    model.to("cpu")
    assert hear.get_scene_embeddings(noise(1, 0.5), model).shape == (1, 192)


@pytest.mark.integration
@pytest.mark.parametrize("seconds", LENGTHS)
def test_embeddings_are_the_frames_every_40ms_and_their_mean(model, embedder, seconds):
    audio = noise(2, seconds, seed=int(seconds * 100))
    scene = hear.get_scene_embeddings(audio, model)
    embeddings, timestamps = hear.get_timestamp_embeddings(audio, model)
    frames = max(1, (1 + audio.shape[1] // 160) // 4)
    assert scene.shape == (2, 192) and scene.dtype == torch.float32
    assert embeddings.shape == (2, frames, 192) and timestamps.shape == (2, frames)
    expected = np.stack([[15.0 + 40 * k for k in range(frames)]] * 2)
    np.testing.assert_allclose(timestamps.numpy(), np.minimum(expected, 1000 * seconds), atol=1e-3)
    for row in range(2):
        own = embedder.embed(audio[row].numpy(), sample_rate=16000)
        np.testing.assert_allclose(embeddings[row].numpy(), own.windows, atol=1e-4, rtol=0)
        np.testing.assert_allclose(scene[row].numpy(), own.clip, atol=1e-5, rtol=0)


def test_batch_independence(model):
    """A clip's embeddings do not depend on its batch mates (each has its own floor), however many per call."""
    quiet, loud = 1e-3 * noise(1, 3.0, seed=1), noise(1, 3.0, seed=2)
    alone = hear.get_timestamp_embeddings(quiet, model)[0]
    together = hear.get_timestamp_embeddings(torch.cat([quiet, loud]), model)[0][:1]
    one_per_call = hear.HearModel(model.network, "x", batch_size=1)
    apart = hear.get_timestamp_embeddings(torch.cat([quiet, loud]), one_per_call)[0][:1]
    np.testing.assert_allclose(together.numpy(), alone.numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(apart.numpy(), alone.numpy(), atol=1e-5, rtol=0)


def test_empty_batch_and_bad_input(model):
    assert hear.get_scene_embeddings(torch.zeros(0, 16000), model).shape == (0, 192)
    embeddings, timestamps = hear.get_timestamp_embeddings(torch.zeros(0, 16000), model)
    assert embeddings.shape == (0, 25, 192) and timestamps.shape == (0, 25)
    with pytest.raises(ValueError, match="n_sounds, n_samples"):
        hear.get_scene_embeddings(torch.zeros(16000), model)
    with pytest.raises(AudioError, match="NaN"):
        hear.get_scene_embeddings(torch.full((1, 8000), float("nan")), model)


def test_bad_options_are_refused(checkpoint):
    with pytest.raises(ValueError, match=r"timestamps must be one of \('frames',\)"):
        hear.load_model(str(checkpoint), timestamps="windows")
    with pytest.raises(ValueError, match="hop_ms does not apply"):
        hear.load_model(str(checkpoint), hop_ms=40)
