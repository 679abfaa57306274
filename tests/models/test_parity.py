"""Parity with the official CED implementation (../shared/reference), through the public API."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from auricle.frontend import LogMel
from auricle.models.ced import MIN_SAMPLES

from parity_support import FLOAT64_TOLERANCE, assert_as_accurate_as_official, float64_copy

INPUTS = [
    "a_sine440_1s",
    "b_noise_3p7s",
    "c_chirp_10s",
    "d_mix_25p3s",
    "e_short_0p2s",
    "h_edge_20p23s",
    "r_JeD5V5aaaoI_931_932",
]
PROB_TOLERANCE = 1e-5  # observed ~1e-7; official float32 vs float64 differs by up to 8e-5
TOKEN_TOLERANCE = 1e-4


def reference(reference_dir, size: str, name: str):
    return np.load(reference_dir / "official" / f"ref_{size}_{name}.npz")


def read_int16(path) -> np.ndarray:
    samples, _ = sf.read(path, dtype="int16", always_2d=True)
    return samples.T.astype(np.float32) / 32768


def official_log_mel(frontend: LogMel, waveform: torch.Tensor) -> torch.Tensor:
    if waveform.shape[0] > 1:
        # The official floor spans both channels; reproduce it to compare the rest.
        power_db = 10 * torch.log10(torch.clamp(frontend.power_mel(waveform), min=1e-10))
        return torch.maximum(power_db, power_db.max() - 120)
    return frontend(waveform)


@pytest.mark.parametrize("name", INPUTS + ["g_stereo_16k_2s"])
def test_frontend_matches_official(reference_dir, name):
    data = np.load(reference_dir / "official" / f"frontend_{name}.npz")
    waveform = torch.from_numpy(data["wav"])
    exact = official_log_mel(LogMel().double(), waveform.double()).numpy()
    np.testing.assert_allclose(exact, data["mel_f64"], atol=1e-6, rtol=0)
    ours = official_log_mel(LogMel(), waveform).numpy()
    assert ours.dtype == np.float32
    assert_as_accurate_as_official(ours, data["mel"], data["mel_f64"], floor=1e-3, label=name)


@pytest.mark.integration
@pytest.mark.parametrize("size", ["tiny", "mini"])
@pytest.mark.parametrize("name", INPUTS)
def test_tag_reproduces_official_inference(request, reference_dir, size, name):
    model = request.getfixturevalue(f"{size}_model")
    ref = reference(reference_dir, size, name)
    path = reference_dir / "inputs" / f"{name}.wav"
    result = model.tag(path, top_k=3)
    # No class selection: score columns are the 527 classes in model order.
    assert result.scores.shape == ref["probs_inference"].shape
    # The exact (float64) probabilities of the same windows; the official float32 is as near them as its rounding allows.
    waveform = torch.from_numpy(read_int16(path)[0]).double()
    exact_network = float64_copy(model.network)
    with torch.inference_mode():
        exact = np.concatenate([exact_network(waveform[round(start * 16000) : round(end * 16000)][None]).numpy()
                                for start, end in result.window_bounds])
    assert_as_accurate_as_official(result.scores, ref["probs_inference"], exact, floor=PROB_TOLERANCE, label=name)
    lengths = (result.window_bounds[:, 1] - result.window_bounds[:, 0]) * 16000
    np.testing.assert_allclose(lengths, ref["chunk_lengths_inference"], atol=0.5)
    assert [t.index for t in result.tags] == list(np.argsort(-ref["probs_inference"].max(0))[:3])


@pytest.mark.integration
@pytest.mark.parametrize("size", ["tiny", "mini"])
@pytest.mark.parametrize("name", INPUTS)
def test_tokens_and_logits_match_official(request, reference_dir, size, name):
    """The encoder and head on the official normalised log-mel: no FFT, so no CPU-dependent rounding of near-silent bins."""
    model = request.getfixturevalue(f"{size}_model")
    ref = reference(reference_dir, size, name)
    waveform = torch.from_numpy(read_int16(reference_dir / "inputs" / f"{name}.wav"))
    with torch.inference_mode():
        pieces = model.network.pieces(model.network.normalize(model.network.spectrogram(waveform)))[1]
        official_pieces, count = model.network.pieces(torch.from_numpy(ref["init_bn"]))
        tokens = model.network.forward_features(official_pieces)
        logits = model.network.forward_head(tokens)
    n = int(ref["n_splits"])
    assert pieces == count
    if name == "h_edge_20p23s":
        # Official quirk: an exactly full last piece is dropped; we keep it.
        assert (n, pieces) == (1, 2)
    else:
        assert pieces == n
    np.testing.assert_allclose(tokens[:n].numpy(), ref["tokens"], atol=TOKEN_TOLERANCE, rtol=0)
    np.testing.assert_allclose(logits[:n].numpy(), ref["logits_per_split"], atol=TOKEN_TOLERANCE, rtol=0)


@pytest.mark.integration
@pytest.mark.parametrize("size", ["tiny", "mini"])
@pytest.mark.parametrize("name", INPUTS)
def test_float64_reproduces_official_float64(request, reference_dir, size, name):
    """In float64, rounding drops out: the waveform-to-probabilities function is the official one to 1e-8."""
    network = float64_copy(request.getfixturevalue(f"{size}_model").network)
    ref = reference(reference_dir, size, name)
    waveform = torch.from_numpy(read_int16(reference_dir / "inputs" / f"{name}.wav")).double()
    with torch.inference_mode():
        tokens, count = network.encode(waveform)
        official_pieces = int(ref["n_splits"])  # h_edge: the official model drops its exactly full last piece
        probabilities = network.clip_probabilities(tokens[:official_pieces], official_pieces)
    assert tokens.dtype == torch.float64
    np.testing.assert_allclose(probabilities.numpy(), ref["probs_full_f64"], atol=FLOAT64_TOLERANCE, rtol=0)
    np.testing.assert_allclose(tokens[:official_pieces].mean(dim=(0, 1)).numpy(), ref["emb_hear_f64"][0],
                               atol=FLOAT64_TOLERANCE, rtol=0)


@pytest.mark.integration
@pytest.mark.parametrize("size", ["tiny", "mini"])
@pytest.mark.parametrize("name", INPUTS)
def test_embedding_matches_official_hear(request, reference_dir, size, name):
    model = request.getfixturevalue(f"{size}_model")
    ref = reference(reference_dir, size, name)
    embeddings = model.embed(reference_dir / "inputs" / f"{name}.wav")
    if name == "h_edge_20p23s":
        assert_as_accurate_as_official(embeddings.windows[0], ref["emb_hear"][0], ref["emb_hear_f64"][0],
                                       floor=TOKEN_TOLERANCE, label=name)
        np.testing.assert_allclose(embeddings.clip, embeddings.windows.mean(0), atol=1e-6, rtol=0)
        # The second piece ends where the audio ends (20.23 s), not at 20.24 s.
        np.testing.assert_allclose(embeddings.ends, [10.12, 20.23])
    else:
        assert_as_accurate_as_official(embeddings.clip, ref["emb_hear"][0], ref["emb_hear_f64"][0],
                                       floor=TOKEN_TOLERANCE, label=name)


@pytest.mark.parametrize("size", ["tiny", "mini"])
def test_no_batch_crosstalk(request, reference_dir, size):
    model = request.getfixturevalue(f"{size}_model")
    data = np.load(reference_dir / "official" / f"batch_crosstalk_{size}.npz")
    batched = model.probabilities(torch.from_numpy(data["batch_wav"])).numpy()
    np.testing.assert_allclose(batched[0], data["probs_single_chirp"][0], atol=PROB_TOLERANCE, rtol=0)
    np.testing.assert_allclose(batched[1], data["probs_single_quiet"][0], atol=PROB_TOLERANCE, rtol=0)
    # The official batched run differs clearly; ours does not.
    assert np.abs(data["probs_batched"][1] - data["probs_single_quiet"][0]).max() > 1e-3


def test_too_short_clip_is_padded_to_one_patch(tiny_model, reference_dir):
    path = reference_dir / "inputs" / "i_tooshort_0p1s.wav"
    waveform = read_int16(path)[0]
    result = tiny_model.tag(path, top_k=5)
    assert result.scores.shape == (1, 527)
    assert result.duration == pytest.approx(0.1)
    assert result.windows[0].end == pytest.approx(0.1)
    padded = np.zeros(MIN_SAMPLES, dtype=np.float32)
    padded[: len(waveform)] = waveform
    expected = tiny_model.probabilities(torch.from_numpy(padded)[None]).numpy()
    np.testing.assert_allclose(result.scores, expected, atol=1e-6, rtol=0)


def test_stereo_and_44k1_input_agree_with_16k(tiny_model, reference_dir):
    at_44k = tiny_model.tag(reference_dir / "inputs" / "f_stereo_44k1_2s.wav")
    at_16k = tiny_model.tag(reference_dir / "inputs" / "g_stereo_16k_2s.wav")
    assert at_44k.duration == pytest.approx(2.0, abs=1e-3)
    # Same content; only the resampler differs.
    assert np.abs(at_44k.scores - at_16k.scores).max() < 0.02
    # Stereo is mixed to mono by the mean of the channels.
    mono = read_int16(reference_dir / "inputs" / "g_stereo_16k_2s.wav").mean(0)
    expected = tiny_model.probabilities(torch.from_numpy(mono)[None]).numpy()
    np.testing.assert_allclose(at_16k.scores, expected, atol=1e-6, rtol=0)


def test_summary_top3_agrees(tiny_model, reference_dir):
    summary = json.loads((reference_dir / "official" / "summary.json").read_text())
    result = tiny_model.tag(reference_dir / "inputs" / "b_noise_3p7s.wav", top_k=3)
    assert [t.index for t in result.tags] == summary["tiny/b_noise_3p7s"]["top3"]
