"""Embeddings of long recordings: streamed log-mel, one floor for the whole recording, pieces in batches."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from auricle.errors import AuricleError
from auricle.inference.results import Failure
from auricle.frontend import LogMel, LogMelStream
from auricle.models.ced import MIN_SAMPLES

from audio_support import write_broken_midway

PIECE = 1012


def whole_decibels(frontend: LogMel, signal: torch.Tensor) -> torch.Tensor:
    signal = torch.nn.functional.pad(signal, (0, max(0, MIN_SAMPLES - len(signal))))
    return frontend.decibels(frontend.power_mel(signal))


@pytest.mark.parametrize("samples", [1, 300, MIN_SAMPLES - 1, MIN_SAMPLES + 1, 161_759, 161_920, 2 * 161_920 - 352,
                                     2 * 161_920 - 353, 3 * 161_920 + 37])
@pytest.mark.integration
@pytest.mark.parametrize("block", [999, 16_000, 10**6])
def test_streamed_log_mel_equals_the_whole_signals(samples, block):
    frontend = LogMel()
    signal = torch.from_numpy(np.random.default_rng(samples).standard_normal(samples).astype(np.float32)) * 0.1
    stream = LogMelStream(frontend, PIECE, min_samples=MIN_SAMPLES)
    chunks = []
    for start in range(0, samples, block):
        chunks += stream.push(signal[start : start + block])
    chunks += stream.finish()
    assert all(chunk.shape == (64, PIECE) for chunk in chunks[:-1])
    assert 1 <= chunks[-1].shape[-1] <= PIECE
    expected = whole_decibels(frontend, signal)
    got = torch.cat(chunks, dim=-1)
    assert got.shape == expected.shape
    # Batched FFTs of other lengths round differently in the last bits.
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert stream.samples == samples


def test_a_stream_without_samples_fails():
    stream = LogMelStream(LogMel(), PIECE)
    assert stream.push(np.zeros(0, dtype=np.float32)) == []
    with pytest.raises(ValueError, match="no samples"):
        stream.finish()


@pytest.mark.integration
@pytest.mark.parametrize(("loud_first", "runs"), [(True, 7), (False, 11)])
def test_pieces_run_once_unless_a_later_floor_changes_them(tiny_model, loud_first, runs):
    """Loud first: every piece has its final floor when it runs. Silence first: the 4 pieces with
    digital silence ran under a lower floor than the recording's, and run again."""
    from auricle.inference.embedding import token_means

    rate = 16000
    loud = 0.8 * np.sin(2 * np.pi * 440 * np.arange(20 * rate) / rate)
    quiet = 0.05 * np.random.default_rng(0).standard_normal(20 * rate)
    parts = [loud, quiet, np.zeros(21 * rate)] if loud_first else [np.zeros(31 * rate), quiet, loud[: 10 * rate]]
    waveform = np.concatenate(parts).astype(np.float32)
    network = tiny_model.network
    seen = []

    def forward(pieces):
        seen.append(len(pieces))
        return network.forward_features(pieces)

    blocks = [waveform[start : start + 48000] for start in range(0, len(waveform), 48000)]
    means = token_means(network, forward, lambda: blocks, batch_size=2)
    clip, pieces = official_embeddings(network, waveform)
    assert sum(seen) == runs and len(means.pieces) == 7  # 61 s: 6101 frames
    np.testing.assert_allclose(means.pieces, pieces, atol=1e-4, rtol=0)
    np.testing.assert_allclose(means.clip, clip, atol=1e-4, rtol=0)


def official_embeddings(network, waveform: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The whole recording at once: one log-mel, cut into pieces, every token averaged."""
    with torch.inference_mode():
        wave = torch.from_numpy(waveform).unsqueeze(0)
        pieces, _ = network.pieces(network.normalize(network.spectrogram(wave)))
        tokens = network.forward_features(pieces)
    return tokens.mean(dim=(0, 1)).numpy(), tokens.mean(dim=1).numpy()


@pytest.fixture(scope="module")
def quiet_and_loud(tmp_path_factory) -> tuple[str, np.ndarray]:
    """57 s: digital silence, a quiet hum, then a loud tone, so the recording's floor decides the silent pieces."""
    rate = 16000
    rng = np.random.default_rng(7)
    time = np.arange(57 * rate) / rate
    waveform = np.concatenate([
        np.zeros(12 * rate),
        1e-4 * rng.standard_normal(20 * rate),
        0.9 * np.sin(2 * np.pi * 440 * time[: 25 * rate]),
    ]).astype(np.float32)
    path = tmp_path_factory.mktemp("long") / "quiet_and_loud.wav"
    sf.write(path, waveform, rate, subtype="FLOAT")
    return str(path), waveform


@pytest.mark.integration
def test_file_embeddings_equal_the_whole_recording_at_once(tiny_model, quiet_and_loud):
    path, waveform = quiet_and_loud
    clip, pieces = official_embeddings(tiny_model.network, waveform)
    embeddings = tiny_model.embed(path, batch_size=2)
    assert embeddings.windows.shape == pieces.shape == (6, tiny_model.embedding_dim)
    np.testing.assert_allclose(embeddings.windows, pieces, atol=1e-4, rtol=0)
    np.testing.assert_allclose(embeddings.clip, clip, atol=1e-4, rtol=0)
    np.testing.assert_allclose(embeddings.ends, [10.12, 20.24, 30.36, 40.48, 50.6, 57.0])
    assert embeddings.duration == pytest.approx(57.0)
    # The array path is the same computation.
    np.testing.assert_allclose(tiny_model.embed(waveform, sample_rate=16000).windows, embeddings.windows, atol=1e-6)


def test_silent_pieces_take_the_whole_recordings_floor(tiny_model, quiet_and_loud):
    """Each piece alone would floor 120 dB under its own loudest bin; the recording's floor is another."""
    path, waveform = quiet_and_loud
    piece_samples = PIECE * 160
    alone = tiny_model.embed(waveform[:piece_samples], sample_rate=16000).clip  # the silent first piece
    together = tiny_model.embed(path).windows[0]
    assert np.abs(alone - together).max() > 1e-2


@pytest.mark.integration
def test_a_bad_file_fails_with_its_name_and_the_batch_goes_on(tiny_model, quiet_and_loud, tmp_path):
    path, _ = quiet_and_loud
    broken = tmp_path / "broken.flac"
    broken.write_bytes(b"fLaC" + b"\x00" * 100)
    results = list(tiny_model.iter_embed([str(broken), path]))
    assert str(broken) in results[0].error
    assert results[1].windows.shape[0] == 6
    with pytest.raises(AuricleError, match="broken.flac"):
        tiny_model.embed(str(broken))


@pytest.mark.integration
def test_many_files_embed_on_their_streams_as_one_by_one(tiny_checkpoint, reference_dir, quiet_and_loud, tmp_path):
    """Several files at once, each whole on one stream: same embeddings, input order, failures in place."""
    import auricle

    model = auricle.load_model(checkpoint=tiny_checkpoint, threads=2, streams=2)
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF not audio")
    inputs = reference_dir / "inputs"
    files = [str(inputs / "a_sine440_1s.wav"), quiet_and_loud[0], str(broken), str(inputs / "d_mix_25p3s.wav"),
             str(inputs / "i_tooshort_0p1s.wav"), str(inputs / "f_stereo_44k1_2s.wav")]
    results = list(model.iter_embed(files))
    assert [r.file for r in results] == files
    assert "broken.wav" in results[2].error
    for result, file in zip(results, files):
        if file == str(broken):
            continue
        alone = model.embed(file)
        np.testing.assert_allclose(result.windows, alone.windows, atol=1e-6, rtol=0)
        np.testing.assert_allclose(result.clip, alone.clip, atol=1e-6, rtol=0)
        np.testing.assert_allclose(result.ends, alone.ends)


@pytest.mark.integration
def test_a_long_file_among_many_gets_all_streams(tiny_checkpoint, reference_dir, tmp_path, monkeypatch):
    import auricle
    from auricle.inference import batching

    model = auricle.load_model(checkpoint=tiny_checkpoint, threads=2, streams=2)
    monkeypatch.setattr(batching, "LONG_FILE_SECONDS", 30.0)  # a 35 s file stands in for a long one
    long_file = tmp_path / "long.wav"
    sf.write(long_file, (0.1 * np.random.default_rng(2).standard_normal(35 * 16000)).astype(np.float32), 16000)
    inputs = reference_dir / "inputs"
    files = [str(inputs / "a_sine440_1s.wav"), str(long_file), str(inputs / "d_mix_25p3s.wav")]
    on_one_stream = []
    original = model._embed_file_on_stream

    def spy(stream, path, batch_size=None):
        on_one_stream.append(str(path))
        return original(stream, path, batch_size)

    monkeypatch.setattr(model, "_embed_file_on_stream", spy)
    results = list(model.iter_embed(files))
    assert [r.file for r in results] == files
    assert sorted(on_one_stream) == sorted([files[0], files[2]])
    np.testing.assert_allclose(results[1].windows, model.embed(str(long_file)).windows, atol=1e-6, rtol=0)


@pytest.mark.integration
def test_a_file_that_breaks_midway_fails_by_name_and_the_rest_is_embedded(tiny_checkpoint, quiet_and_loud, tmp_path):
    """NaN after 90 s, when pieces have already run: one line naming the file, the next file embedded."""
    import auricle

    model = auricle.load_model(checkpoint=tiny_checkpoint, threads=2, streams=2)
    broken = write_broken_midway(tmp_path / "broken.wav")
    results = list(model.iter_embed([str(broken), quiet_and_loud[0]]))
    assert isinstance(results[0], Failure) and str(broken) in results[0].error and "\n" not in results[0].error
    assert results[1].windows.shape[0] == 6
    with pytest.raises(AuricleError, match="broken.wav"):
        model.embed(str(broken))  # alone, on all streams


