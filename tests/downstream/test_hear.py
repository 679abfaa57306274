"""The HEAR 2021 API (auricle.downstream.hear): every rule of the spec, and parity with the official embeddings."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from auricle.downstream import hear
from auricle.errors import AudioError, CheckpointError
from auricle.models.ced import CED, CEDConfig
from auricle.models.checkpoints import save_checkpoint
from parity_support import assert_as_accurate_as_official

# HEAR's accepted sample rates (hear-validator's ACCEPTABLE_SAMPLE_RATE).
HEAR_SAMPLE_RATES = (16000, 22050, 32000, 44100, 48000)
# 0.1 s .. 60 s: one patch, the validator's own lengths, one and several internal pieces.
LENGTHS = (0.1, 1.07, 1.98, 2.74, 4.0, 10.12, 10.13, 60.0)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Many tiny forward passes: one thread is faster, and far faster on a shared, loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    network = CED(CEDConfig(embed_dim=32, num_heads=1, depth=1, num_classes=3))
    path = tmp_path_factory.mktemp("hear") / "small.safetensors"
    save_checkpoint(network, path, labels=["a", "b", "c"], name="small")
    return path


@pytest.fixture(scope="module", params=hear.TIMESTAMP_MODES)
def small_model(request, small_checkpoint):
    return hear.load_model(str(small_checkpoint), timestamps=request.param)


def noise(sounds: int, seconds: float, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(sounds, int(seconds * 16000), generator=generator) * 2 - 1


def test_model_has_the_hear_attributes(small_model):
    assert isinstance(small_model, torch.nn.Module)
    assert small_model.sample_rate in HEAR_SAMPLE_RATES
    assert isinstance(small_model.scene_embedding_size, int) and small_model.scene_embedding_size == 32
    assert isinstance(small_model.timestamp_embedding_size, int) and small_model.timestamp_embedding_size == 32
    small_model.to("cpu")  # the validator moves the model; it must stay usable
    assert hear.get_scene_embeddings(noise(1, 0.5), small_model).shape == (1, 32)


@pytest.mark.integration
@pytest.mark.parametrize("seconds", LENGTHS)
def test_scene_and_timestamp_embeddings_follow_the_spec(small_model, seconds):
    audio = noise(2, seconds)
    scene = hear.get_scene_embeddings(audio, small_model)
    assert scene.dtype == torch.float32 and scene.shape == (2, small_model.scene_embedding_size)
    assert torch.isfinite(scene).all()

    embeddings, timestamps = hear.get_timestamp_embeddings(audio, small_model)
    assert embeddings.dtype == torch.float32
    assert embeddings.dim() == 3 and timestamps.dim() == 2
    assert embeddings.shape[0] == 2 and embeddings.shape[2] == small_model.timestamp_embedding_size
    assert timestamps.shape == embeddings.shape[:2]
    assert torch.isfinite(embeddings).all()
    duration_ms = 1000 * seconds
    hop_ms = hear.timestamp_hop_ms(small_model)
    # The grid drops a last partial patch (< 160 ms), as the official encoder does.
    reach_ms = hop_ms if small_model.timestamps == "windows" else 2 * hop_ms
    for row in timestamps.numpy():
        np.testing.assert_array_equal(row, timestamps[0].numpy())  # same clock for every sound
        assert row.min() >= 0 and row.max() <= duration_ms  # in ms, never past the end
        assert row.min() <= hop_ms  # starts at the beginning
        assert row.max() >= duration_ms - reach_ms  # covers the end
        if len(row) > 1:
            steps = np.diff(row.astype(np.float64))
            assert (steps > 0).all()  # monotonic
            assert np.abs(steps - hop_ms).max() <= 1.0  # regular, to the validator's 1 ms


def test_window_timestamps_are_official_50ms_centres(small_checkpoint):
    model = hear.load_model(str(small_checkpoint))
    _, timestamps = hear.get_timestamp_embeddings(noise(1, 1.0), model)
    # 16000 samples, hop 800, windows centred on 0, 800, ..., 16000 samples.
    np.testing.assert_array_equal(timestamps[0].numpy(), np.arange(21) * 50.0)


def test_grid_timestamps_are_patch_centres_and_stay_regular_past_one_piece(small_checkpoint):
    model = hear.load_model(str(small_checkpoint), timestamps="grid")
    _, timestamps = hear.get_timestamp_embeddings(noise(1, 25.0), model)
    frames = 1 + 25 * 16000 // 160
    np.testing.assert_allclose(timestamps[0].numpy(), 75.0 + 160.0 * np.arange(frames // 16))


def test_batch_independence(small_model):
    """An item's embeddings do not depend on its batch mates, their loudness, or the chunking."""
    # Two internal pieces for the grid (and the scene); windows never see pieces, so keep them cheap.
    audio = noise(3, 10.5 if small_model.timestamps == "grid" else 2.5, seed=1)
    audio[1] *= 1e-3  # a near-silent mate: a shared dB floor would change the others
    audio[2] = torch.sin(torch.arange(audio.shape[1]) * 0.3)
    scene = hear.get_scene_embeddings(audio, small_model)
    stamps, times = hear.get_timestamp_embeddings(audio, small_model)
    for item in range(3):
        alone = audio[item : item + 1]
        torch.testing.assert_close(hear.get_scene_embeddings(alone, small_model)[0], scene[item], atol=1e-5, rtol=0)
        alone_stamps, alone_times = hear.get_timestamp_embeddings(alone, small_model)
        torch.testing.assert_close(alone_stamps[0], stamps[item], atol=1e-5, rtol=0)
        np.testing.assert_array_equal(alone_times[0].numpy(), times[item].numpy())
    # Chunks of 7 cut across items and pieces.
    rechunked = hear.HearModel(small_model.network, "x", small_model.timestamps, batch_size=7)
    torch.testing.assert_close(hear.get_scene_embeddings(audio, rechunked), scene, atol=1e-5, rtol=0)
    torch.testing.assert_close(hear.get_timestamp_embeddings(audio, rechunked)[0], stamps, atol=1e-5, rtol=0)


def test_batched_tokens_are_the_tokens_of_all_pieces_in_order(small_model):
    from auricle.models.ced import batched_tokens

    network = small_model.network
    pieces = torch.randn(5, 1, network.config.n_mels, 32, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        batches = list(batched_tokens(network.forward_features, pieces, 2))
        everything = network.forward_features(pieces)
    assert [first for first, _ in batches] == [0, 2, 4]
    assert [len(tokens) for _, tokens in batches] == [2, 2, 1]
    torch.testing.assert_close(torch.cat([tokens for _, tokens in batches]), everything, atol=1e-5, rtol=0)


def test_numpy_input_and_bad_shapes(small_model):
    audio = noise(2, 0.5)
    torch.testing.assert_close(
        hear.get_scene_embeddings(audio.numpy(), small_model), hear.get_scene_embeddings(audio, small_model)
    )
    with pytest.raises(ValueError, match="n_sounds, n_samples"):
        hear.get_scene_embeddings(audio[0], small_model)
    with pytest.raises(ValueError, match="no samples"):
        hear.get_timestamp_embeddings(torch.zeros(2, 0), small_model)
    # An empty batch has no rows, and the timestamp axis a sound of that length has.
    assert hear.get_scene_embeddings(torch.zeros(0, 8000), small_model).shape == (0, small_model.scene_embedding_size)
    embeddings, timestamps = hear.get_timestamp_embeddings(torch.zeros(0, 8000), small_model)
    _, expected = hear.get_timestamp_embeddings(audio[:1], small_model)
    assert embeddings.shape == (0, expected.shape[1], small_model.timestamp_embedding_size)
    assert timestamps.shape == (0, expected.shape[1])


def test_integer_audio_is_scaled_and_nan_or_overflow_refused(small_model):
    audio = noise(2, 0.3)
    as_int16 = torch.round(audio * 32767).to(torch.int16)
    for get in (hear.get_scene_embeddings, lambda a, m: hear.get_timestamp_embeddings(a, m)[0]):
        torch.testing.assert_close(get(as_int16, small_model), get(as_int16.float() / 32768, small_model))
        with pytest.raises(AudioError, match="audio: contains NaN or Inf samples"):
            get(torch.full((1, 8000), float("nan")), small_model)
        # Finite but far beyond full scale: the spectrogram overflows; NaN rows would pass for embeddings.
        with pytest.raises(AudioError, match="audio: the model's output is not finite"):
            get(torch.full((1, 8000), 1e30), small_model)


def test_bad_options_are_refused(small_checkpoint):
    with pytest.raises(ValueError, match="timestamps must be"):
        hear.load_model(str(small_checkpoint), timestamps="frames")
    with pytest.raises(ValueError, match="whole number of samples"):
        hear.load_model(str(small_checkpoint), hop_ms=12.34)
    with pytest.raises(CheckpointError, match="model.onnx: the HEAR API runs the encoder's layers"):
        hear.load_model("model.onnx")


# -- parity with the official CED HEAR embeddings (../shared/reference) -----------------
PARITY_INPUTS = ["a_sine440_1s", "b_noise_3p7s", "d_mix_25p3s", "e_short_0p2s", "r_JeD5V5aaaoI_931_932"]


@pytest.fixture(scope="module")
def tiny_hear(tiny_checkpoint):
    return hear.load_model(str(tiny_checkpoint))


@pytest.mark.integration
def test_scene_embeddings_match_official_emb_hear_and_embed_waveform(tiny_hear, tiny_model, reference_dir):
    for name in PARITY_INPUTS:
        samples, rate = sf.read(reference_dir / "inputs" / f"{name}.wav", dtype="int16")
        assert rate == 16000
        waveform = samples.astype(np.float32) / 32768
        scene = hear.get_scene_embeddings(torch.from_numpy(waveform)[None], tiny_hear)[0].numpy()
        official = np.load(reference_dir / "official" / f"ref_tiny_{name}.npz")
        assert_as_accurate_as_official(scene, official["emb_hear"][0], official["emb_hear_f64"][0], floor=1e-4,
                                       label=name)
        np.testing.assert_allclose(scene, tiny_model.embed_waveform(waveform).clip, atol=1e-5, rtol=0, err_msg=name)


def test_window_embedding_is_mean_token_of_the_centred_window(tiny_hear, tiny_model):
    audio = noise(1, 2.0, seed=3)
    embeddings, timestamps = hear.get_timestamp_embeddings(audio, tiny_hear)
    k = 10  # centred on 500 ms: samples 8000 - 3838 .. 8000 + 3839
    assert timestamps[0, k] == 500.0
    window = audio[:, 8000 - hear.WINDOW_SAMPLES // 2 : 8000 + hear.WINDOW_SAMPLES - hear.WINDOW_SAMPLES // 2]
    expected = tiny_model.embed_waveform(window[0].numpy()).clip
    np.testing.assert_allclose(embeddings[0, k].numpy(), expected, atol=1e-5, rtol=0)


def test_short_module_name_is_the_same_api():
    import auricle.hear

    for name in ("load_model", "get_scene_embeddings", "get_timestamp_embeddings"):
        assert getattr(auricle.hear, name) is getattr(hear, name)
