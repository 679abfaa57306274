"""Tagging with an `auricle export` file: same results as the weights, through ONNX Runtime, without torch.

A 2-block CED with the 527 AudioSet classes keeps the exports fast; the
pipeline around the graph (decoding, windows, batching, summaries) is the one
every model uses.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

import auricle
from auricle.cli import cli
from auricle.errors import AuricleError, CheckpointError
from auricle.models.ced import CED, CEDConfig
from auricle.models.checkpoints import save_checkpoint
from auricle.onnx import exported as exported_module
from auricle.onnx.export import export_onnx
from auricle.onnx.exported import ExportedModel, load_exported
from no_torch_support import NO_TORCH, without_torch

onnxruntime = pytest.importorskip("onnxruntime")
FILES = ["a_sine440_1s", "d_mix_25p3s", "f_stereo_44k1_2s", "h_edge_20p23s", "i_tooshort_0p1s", "r_JeD5V5aaaoI_931_932"]
# The CLI sets torch's process-wide thread count; later tests get theirs back.
pytestmark = pytest.mark.usefixtures("restore_torch_threads")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    # A head sharper than this one makes the export refuse the file: on pure tones the float32 DFT of
    # the exported frontend differs from torch's FFT by up to 0.2 dB in near-silent bins.
    torch.manual_seed(1)
    network = CED(CEDConfig(embed_dim=64, num_heads=2, depth=2))
    return save_checkpoint(network, tmp_path_factory.mktemp("weights") / "small.safetensors", name="small")


@pytest.fixture(scope="module")
def torch_model(weights):
    return auricle.load_model(checkpoint=weights)


@pytest.fixture(scope="module")
def exported(torch_model, tmp_path_factory):
    """The portable fp32 file, as `auricle export` writes it."""
    path = tmp_path_factory.mktemp("exported") / "small.onnx"
    export_onnx(torch_model, path)
    return path


@pytest.fixture(scope="module")
def files(reference_dir):
    return [str(reference_dir / "inputs" / f"{name}.wav") for name in FILES]


def tag_json(*args: str) -> tuple[int, list[dict], str]:
    result = CliRunner().invoke(cli, ["tag", "--format", "json", *args], catch_exceptions=False)
    return result.exit_code, json.loads(result.stdout or "[]"), result.stderr


@pytest.mark.integration
def test_cli_tag_with_exported_file_equals_the_weights(weights, exported, files, tmp_path):
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF not audio")
    paths = files[:3] + [str(broken)] + files[3:]
    # Every class (threshold 0), compared by score: close scores may swap ranks between runtimes.
    options = ["--threshold", "0", "--events", "--window", "4", "--hop", "2"]
    code, from_file, stderr = tag_json(*paths, "--checkpoint", str(exported), *options)
    assert code == 1 and "broken.wav" in stderr and f"tagged {len(files)} of {len(paths)} files" in stderr
    code, from_weights, _ = tag_json(*paths, "--checkpoint", str(weights), *options)
    assert code == 1
    assert [r["file"] for r in from_file] == [r["file"] for r in from_weights] == files
    for ours, theirs in zip(from_file, from_weights):
        assert ours["model"] == theirs["model"] == "small"
        assert ours["duration"] == theirs["duration"]
        assert len(ours["tags"]) == 527
        ours_scores = {t["mid"]: t["score"] for t in ours["tags"]}
        np.testing.assert_allclose([ours_scores[t["mid"]] for t in theirs["tags"]],
                                   [t["score"] for t in theirs["tags"]], atol=1e-4)
        # Events come from the same window scores; an onset may move where a score sits within 1e-5 of its threshold.
        assert isinstance(ours["events"], list) and abs(len(ours["events"]) - len(theirs["events"])) <= 2


@pytest.mark.integration
def test_tagging_an_exported_file_works_without_torch(exported, weights, files):
    """The point of the path: no torch import (1-2 s of a short command), so it also runs where torch is absent."""
    result = without_torch("tag", files[0], "--checkpoint", str(exported), "-k", "3")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "a_sine440_1s.wav" in result.stdout and result.stdout.count("\n") >= 4
    refused = without_torch("tag", files[0], "--checkpoint", str(weights))
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert refused.stderr.startswith("auricle: error: this needs PyTorch, which is not installed")


def test_probabilities_give_back_the_kind_of_array_they_are_given(torch_model, exported):
    # Swapping weights for an exported file must not change what the caller gets.
    model = auricle.load_model(checkpoint=exported, threads=1, streams=1)
    waves = (0.1 * np.random.default_rng(1).standard_normal((2, 16000))).astype(np.float32)
    for scorer in (torch_model, model):
        from_numpy, from_tensor = scorer.probabilities(waves), scorer.probabilities(torch.from_numpy(waves))
        assert type(from_numpy) is np.ndarray and from_numpy.dtype == np.float32 and from_numpy.shape == (2, 527)
        assert isinstance(from_tensor, torch.Tensor) and from_tensor.dtype == torch.float32
        np.testing.assert_allclose(from_tensor.numpy(), from_numpy, atol=1e-6)
        assert scorer.probabilities(waves[0].tolist()).shape == (1, 527)  # one clip, as a list
        # Integer samples are scaled by their full scale, as tag() scales them.
        as_int16 = np.round(waves * 32767).astype(np.int16)
        np.testing.assert_allclose(scorer.probabilities(as_int16), scorer.probabilities(as_int16 / np.float32(32768)),
                                   atol=1e-6)
        for bad, message in [(waves[None], r"expected \(batch, samples\) waveforms, got shape \(1, 2, 16000\)"),
                             (np.full((1, 800), np.nan, np.float32), "contains NaN or Inf samples"),
                             (waves.T.copy(), "has more clips than samples; a \\(samples, channels\\) signal"),
                             (np.zeros((0, 800), np.float32), "no audio samples"),
                             # finite but far beyond full scale: NaN probabilities would pass for scores
                             (np.stack([waves[0], np.full(16000, 1e30, np.float32)]),
                              "clip 1: the model's output is not finite")]:
            with pytest.raises(AuricleError, match=message):
                scorer.probabilities(bad)


def test_api_exported_model_scores_as_the_torch_model(torch_model, exported, files):
    model = auricle.load_model(checkpoint=exported, threads=2, streams=2)
    assert isinstance(model, ExportedModel)
    assert (model.name, model.precision, model.streams) == ("small", "fp32", 2)
    assert model.labels == torch_model.labels  # 527 AudioSet classes and their MIDs, from the file's metadata
    rng = np.random.default_rng(0)
    waves = (0.1 * rng.standard_normal((5, 40000))).astype(np.float32)
    expected = torch_model.probabilities(torch.from_numpy(waves)).numpy()
    np.testing.assert_allclose(model.probabilities(waves), expected, atol=1e-4)
    one_stream = load_exported(exported, threads=2, streams=1)
    # Split over two streams, ONNX Runtime picks other kernels for the smaller batches: last-bit differences.
    np.testing.assert_allclose(np.stack(one_stream.score_windows(list(waves))), model.probabilities(waves), atol=1e-6)
    # An array input and a list of files, as AudioModel.tag takes them.
    from_array = {t.label: t.score for t in model.tag(waves[0], 16000, threshold=0.0).tags}
    from_torch = {t.label: t.score for t in torch_model.tag(waves[0], 16000, threshold=0.0).tags}
    assert from_array.keys() == from_torch.keys()
    np.testing.assert_allclose([from_array[k] for k in from_torch], list(from_torch.values()), atol=1e-4)
    assert [r.file for r in model.tag(files[:2], top_k=1)] == files[:2]


@pytest.mark.integration
def test_int8_file_and_precision_requests(torch_model, exported, files, tmp_path):
    int8 = tmp_path / "small-int8.onnx"
    export_onnx(torch_model, int8, int8=True)
    model = auricle.load_model(checkpoint=int8, precision="auto")
    assert model.precision == "int8"
    assert len(model.tag(files[1], top_k=5).tags) == 5
    with pytest.raises(CheckpointError, match="holds an int8 model, not fp32"):
        auricle.load_model(checkpoint=int8, precision="fp32")
    code, _, stderr = tag_json(files[0], "--checkpoint", str(exported), "--precision", "int8")
    assert code == 2 and "holds an fp32 model, not int8 (export with --int8" in stderr
    code, _, stderr = tag_json(files[0], "--checkpoint", str(exported), "--engine", "torch")
    assert code == 2 and "runs in ONNX Runtime, not the torch engine" in stderr
    code, _, stderr = tag_json(files[0], "--checkpoint", str(exported), "--device", "cuda")
    assert code == 2 and "runs on the CPU only" in stderr


def test_bad_exported_files_fail_with_one_line(torch_model, exported, files, tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(CheckpointError, match="junk.onnx: not a loadable ONNX model"):
        load_exported(junk)
    with pytest.raises(CheckpointError, match="missing.onnx: no such file"):
        load_exported(tmp_path / "missing.onnx")
    foreign = onnx.load_model(str(exported))
    del foreign.metadata_props[:]
    onnx.save_model(foreign, tmp_path / "foreign.onnx")
    with pytest.raises(CheckpointError, match="not an auricle export"):
        load_exported(tmp_path / "foreign.onnx")
    mel = tmp_path / "mel.onnx"  # what `auricle export --mel-input` declares (a real one is slow to export)
    relabelled = onnx.load_model(str(exported))
    next(entry for entry in relabelled.metadata_props if entry.key == "input").value = "log-mel"
    onnx.save_model(relabelled, mel)
    code, _, stderr = tag_json(files[0], "--checkpoint", str(mel))
    assert code == 2 and stderr.strip().splitlines() == [
        f"auricle: error: {mel}: takes log-mel input; tagging needs a file exported with waveform input "
        f"(auricle export without --mel-input)"]
    with pytest.raises(AuricleError, match="has no per-piece embeddings; export it with --piece-embeddings"):
        auricle.embed(files[0], checkpoint=exported)
    result = CliRunner().invoke(cli, ["embed", files[0], "-o", str(tmp_path / "e.npz"), "--checkpoint", str(exported)])
    assert result.exit_code == 2 and "export it with --piece-embeddings" in result.stderr
    # Training needs the weights: said in one line instead of failing on the file.
    manifest = tmp_path / "labels.csv"
    manifest.write_text("file,labels\n" + "".join(f"{f},{'ab'[n % 2]}\n" for n, f in enumerate(files)))
    result = CliRunner().invoke(cli, ["probe", str(manifest), "--folds", "2", "--checkpoint", str(exported)])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1 and "not train" in result.stderr


@pytest.mark.integration
def test_embed_with_piece_embeddings_equals_the_weights(weights, torch_model, files, tmp_path):
    """`auricle export --piece-embeddings` files embed as the weights do, also through the CLI."""
    path = tmp_path / "pieces.onnx"
    result = CliRunner().invoke(cli, ["export", "--checkpoint", str(weights),
                                      "--piece-embeddings", "--out", str(path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    model = load_exported(path)
    assert model.can_embed
    long = files[1]  # 25.3 s: three pieces, the last one short
    ours, theirs = model.embed(long), torch_model.embed(long)
    np.testing.assert_allclose(ours.starts, theirs.starts)
    np.testing.assert_allclose(ours.ends, theirs.ends)
    assert ours.windows.shape == theirs.windows.shape == (3, 64) and ours.duration == theirs.duration
    np.testing.assert_allclose(ours.clip, theirs.clip, atol=1e-3)
    np.testing.assert_allclose(ours.windows, theirs.windows, atol=1e-3)
    out = tmp_path / "e.npz"
    cli_result = CliRunner().invoke(cli, ["embed", long, files[0], "-o", str(out), "--checkpoint", str(path)],
                                    catch_exceptions=False)
    assert cli_result.exit_code == 0, cli_result.output
    saved = np.load(out)
    np.testing.assert_allclose(saved["clip"][0], ours.clip, atol=1e-6)
    assert list(saved["window_file"]) == [0, 0, 0, 1]
    # and where torch cannot be imported
    result = without_torch("embed", long, "-o", str(tmp_path / "e.npy"), "--checkpoint", str(path))
    assert result.returncode == 0, result.stderr[-2000:]
    np.testing.assert_allclose(np.load(tmp_path / "e.npy")[0], ours.clip, atol=1e-6)


@pytest.fixture(scope="module")
def piece_file(torch_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("pieces") / "small_pieces.onnx"
    export_onnx(torch_model, path, piece_embeddings=True)
    return path


@pytest.fixture(scope="module")
def long_recording(tmp_path_factory):
    """95 s, 10 pieces, ending in digital silence: the recording's floor, not the silence's own, decides its pieces."""
    rate = 16000
    rng = np.random.default_rng(11)
    waveform = np.concatenate([0.8 * np.sin(2 * np.pi * 523 * np.arange(10 * rate) / rate),
                               0.05 * rng.standard_normal(30 * rate), np.zeros(55 * rate)]).astype(np.float32)
    path = tmp_path_factory.mktemp("long") / "long.flac"
    sf.write(path, waveform, rate)
    return path, sf.read(path, dtype="float32")[0]


@pytest.mark.integration
@pytest.mark.parametrize("streams", [1, 2])
def test_a_long_recording_embeds_a_few_pieces_per_call_as_in_one(piece_file, torch_model, long_recording, streams):
    path, waveform = long_recording
    model = load_exported(piece_file, threads=2, streams=streams)
    session = onnxruntime.InferenceSession(str(piece_file), providers=["CPUExecutionProvider"])
    _, clip, pieces = session.run(None, {"waveforms": waveform[np.newaxis]})
    embeddings = model.embed(str(path))
    assert embeddings.windows.shape == (10, 64)
    np.testing.assert_allclose(embeddings.windows, pieces[:, 0], atol=1e-6, rtol=0)
    np.testing.assert_allclose(embeddings.clip, clip[0], atol=1e-5, rtol=0)
    np.testing.assert_allclose(embeddings.windows, torch_model.embed(str(path)).windows, atol=1e-3, rtol=0)
    np.testing.assert_allclose(model.embed(waveform, sample_rate=16000).windows, embeddings.windows, atol=1e-6)


@pytest.mark.integration
def test_many_files_embed_on_their_streams_as_one_by_one(piece_file, long_recording, files, tmp_path):
    model = load_exported(piece_file, threads=2, streams=2)
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF not audio")
    paths = [files[0], str(long_recording[0]), str(broken), files[1], files[4]]
    results = list(model.iter_embed(paths))
    assert [r.file for r in results] == paths and "broken.wav" in results[2].error
    for result, path in zip(results, paths):
        if path != str(broken):
            np.testing.assert_allclose(result.windows, model.embed(path).windows, atol=1e-6, rtol=0)


@pytest.mark.integration
def test_a_long_file_that_breaks_midway_fails_by_name_and_the_rest_is_embedded(piece_file, long_recording, tmp_path):
    """NaN after 90 s: the loudest-frame pass reads into it, before any row ran."""
    from audio_support import write_broken_midway

    model = load_exported(piece_file, threads=2, streams=2)
    broken = write_broken_midway(tmp_path / "broken.wav")
    results = list(model.iter_embed([str(broken), str(long_recording[0])]))
    assert str(broken) in results[0].error and "\n" not in results[0].error
    assert results[1].windows.shape == (10, 64)
    with pytest.raises(AuricleError, match="broken.wav"):
        model.embed(str(broken))


@pytest.mark.integration
def test_a_recording_rows_cannot_reproduce_goes_in_one_call(piece_file, long_recording, monkeypatch):
    path, waveform = long_recording
    model = load_exported(piece_file)
    expected = model.embed(str(path))

    def refuse(*args, **kwargs):
        raise exported_module.InexactRows("made up")

    monkeypatch.setattr(exported_module, "rows", refuse)
    embeddings = model.embed(str(path))
    np.testing.assert_allclose(embeddings.windows, expected.windows, atol=1e-6, rtol=0)
    assert embeddings.duration == expected.duration == len(waveform) / 16000


def test_evaluate_with_exported_file_equals_the_weights(weights, exported, files, tmp_path):
    names = ["Speech", "Music", "Dog", "Speech;Music", "Music", "Dog"]
    manifest = tmp_path / "labels.csv"
    manifest.write_text("file,labels\n" + "".join(f"{file},{labels}\n" for file, labels in zip(files, names)))
    reports = []
    for checkpoint in (exported, weights):
        result = CliRunner().invoke(cli, ["evaluate", str(manifest), "--checkpoint", str(checkpoint), "--json", "-"],
                                    catch_exceptions=False)
        assert result.exit_code == 0, result.output
        reports.append(json.loads(result.stdout))
    ours, theirs = reports
    assert ours["files"] == theirs["files"] == len(files)
    # Scores agree within 1e-4; with six files an AP moves only if two of them swap ranks.
    assert ours["mAP"] == pytest.approx(theirs["mAP"], abs=1e-6)


def test_serve_an_exported_file(exported, files):
    """The service over an exported file: tagging as the library, no /v1/embed (it needs the weights)."""
    pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")
    from fastapi.testclient import TestClient
    from serve_support import LOCAL

    from auricle.serve.app import create_app
    from auricle.serve.config import ServeConfig

    model = load_exported(exported)
    with TestClient(create_app(model, ServeConfig(max_wait=0.001)), base_url=LOCAL) as client:
        audio = open(files[1], "rb").read()
        response = client.post("/v1/tag?threshold=0&spectrogram=true", content=audio)
        assert response.status_code == 200, response.text
        body = response.json()
        expected = {t.mid: t.score for t in model.tag(files[1], threshold=0.0).tags}
        scores = {t["mid"]: t["score"] for t in body["tags"]}
        assert scores.keys() == expected.keys()
        np.testing.assert_allclose([scores[mid] for mid in expected], list(expected.values()), atol=1e-5)
        assert body["spectrogram"]["mels"] == 64
        info = client.get("/v1/models").json()["model"]
        assert info == {"name": "small", "classes": 527, "embedding_dim": 64, "sample_rate": 16000}
        refused = client.post("/v1/embed", content=audio)
        assert refused.status_code == 501 and "exported ONNX file" in refused.json()["detail"]
        # An install without torch cannot draw the page's spectrogram: 501 with the reason, tagging goes on.
        with pytest.MonkeyPatch.context() as patch:
            patch.setitem(sys.modules, "auricle.frontend", None)
            no_image = client.post("/v1/tag?spectrogram=true", content=audio)
        assert no_image.status_code == 501 and "spectrogram images need PyTorch" in no_image.json()["detail"]
        assert client.post("/v1/tag", content=audio).status_code == 200


def test_serve_workers_build_the_app_from_an_exported_file(exported, monkeypatch):
    pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")
    from auricle.serve.app import create_app_from_environment

    monkeypatch.setenv("AURICLE_SERVE", json.dumps({"model": "ced-mini", "checkpoint": str(exported), "threads": 1,
                                                    "engine": "torch", "precision": "fp32", "config": {}}))
    model = create_app_from_environment().state.model
    assert isinstance(model, ExportedModel) and model.threads == 1 and model.name == "small"


@pytest.mark.integration
def test_the_metadata_snippet_runs_without_torch(exported, files):
    """docs/deploy.md's "Using the file" snippet, where torch cannot be imported."""
    script = NO_TORCH + f"""
import json, numpy as np, onnxruntime as ort
from auricle.audio import load_audio
from auricle.onnx.exported import read_metadata

session = ort.InferenceSession({str(exported)!r})
labels = json.loads(read_metadata({str(exported)!r})["labels"])
probabilities, embedding = session.run(None, {{"waveforms": load_audio({files[0]!r})[None, :]}})
print([labels[i] for i in np.argsort(-probabilities[0])[:5]])
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(ast.literal_eval(result.stdout)) == 5


@pytest.mark.integration
def test_every_commands_help_works_without_torch():
    """`auricle --help` is the first thing typed on a small device; it imported torch for finetune and distill.

    transformers is blocked too: describe and ask need it only once a model is loaded."""
    top = without_torch("--help")
    assert top.returncode == 0, top.stderr
    commands = [line.split()[0] for line in top.stdout.split("Commands:")[1].splitlines() if line.strip()]
    assert {"tag", "finetune", "distill", "serve", "describe", "ask"} <= set(commands)
    for command in [*commands, "distill train", "distill teach"]:
        shown = without_torch(*command.split(), "--help")
        assert shown.returncode == 0 and shown.stdout.startswith("Usage: auricle"), (command, shown.stderr)


def test_auricle_load_model_and_auricle_model_load_model_give_one_answer(exported, weights):
    """They were two functions: ``engine="torch"`` for an exported file was refused by one, taken by the other."""
    import auricle.model

    for load in (auricle.load_model, auricle.model.load_model):
        with pytest.raises(CheckpointError, match="runs in ONNX Runtime, not the torch engine"):
            load(checkpoint=exported, engine="torch")
        assert isinstance(load(checkpoint=exported), ExportedModel)
        assert isinstance(load(checkpoint=exported, engine="onnx", precision="auto"), ExportedModel)
        assert load(checkpoint=weights, engine="torch").engine.config.engine == "torch"
