"""`auricle export` of Dasheng encoders (waveform-in ONNX, fp32 and int8) and running such a file without torch.

The reference checkpoint holds perturbed random weights: fp32 files are held to the torch model tightly;
int8 files to a frame cosine of 0.999 here (the issue's 0.99 on real clips is a benchmark figure for
full-size models, benchmarks/dasheng_precision.py; these random weights happen to quantise well).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

import auricle
from auricle.cli import cli
from auricle.onnx.export import export_onnx
from auricle.onnx.exported import ExportedModel

from dasheng_support import tagger, zenodo  # noqa: F401  (fixtures)
from no_torch_support import without_torch

RATE = 16000


def frame_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


@pytest.fixture(scope="module")
def model(zenodo):
    return auricle.load_model(checkpoint=zenodo)


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    """A short clip, one exactly two chunks long, and one of 85 s (long enough to run in rows of chunks)."""
    folder = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(3)
    paths = {}
    for name, seconds in (("short", 0.3), ("two_chunks", 20.16), ("long", 85.0)):
        t = np.arange(int(seconds * RATE)) / RATE
        waveform = (0.05 * rng.standard_normal(len(t)) + 0.3 * np.sin(2 * np.pi * (200 + 40 * t) * t)).astype(np.float32)
        paths[name] = folder / f"{name}.wav"
        sf.write(paths[name], waveform, RATE, subtype="FLOAT")
    return paths


@pytest.fixture(scope="module")
def fp32_file(zenodo, tmp_path_factory):
    """Exported through the CLI, as a user would (portable operators)."""
    out = tmp_path_factory.mktemp("export") / "dasheng.onnx"
    result = CliRunner().invoke(cli, ["export", "--checkpoint", str(zenodo), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"wrote {out} (")
    assert "dasheng_small_perturbed, waveform input, fp32, portable runtime" in result.output
    assert "embeddings (clip and frame)" in result.output
    return out


@pytest.fixture(scope="module")
def int8_file(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "dasheng-int8.onnx"
    report = export_onnx(model, out, int8=True, runtime="onnxruntime")
    assert report.int8 and report.max_abs_diff is None and report.top5_overlap is None  # no head
    return out


@pytest.mark.integration
def test_an_fp32_file_embeds_as_the_torch_model(model, fp32_file, recordings):
    exported = auricle.load_model(checkpoint=fp32_file)
    assert isinstance(exported, ExportedModel) and exported.labels is None and exported.embedding_dim == 192
    assert exported.metadata["family"] == "dasheng" and exported.metadata["piece_frames"] == "1008"
    for path in recordings.values():
        expected, found = model.embed(str(path)), exported.embed(str(path))
        assert found.windows.shape == expected.windows.shape
        np.testing.assert_allclose(found.windows, expected.windows, atol=1e-4, rtol=0)
        np.testing.assert_allclose(found.clip, expected.clip, atol=1e-5, rtol=0)
        np.testing.assert_allclose(found.starts, expected.starts)
        np.testing.assert_allclose(found.ends, expected.ends)


@pytest.mark.integration
def test_an_int8_file_embeds_close_to_fp32(model, int8_file, recordings):
    exported = auricle.load_model(checkpoint=int8_file, precision="int8")
    for path in recordings.values():
        expected, found = model.embed(str(path)), exported.embed(str(path))
        assert found.windows.shape == expected.windows.shape
        assert frame_cosines(found.windows, expected.windows).min() > 0.999
        # Not the same numbers: a broken int8 graph would pass a cosine test only by accident.
        assert np.abs(found.windows - expected.windows).max() > 1e-4


@pytest.mark.integration
def test_embed_cli_with_a_dasheng_export_runs_without_torch(model, fp32_file, recordings, tmp_path):
    out = tmp_path / "out"
    result = without_torch("embed", str(recordings["two_chunks"]), "--checkpoint", str(fp32_file), "-o", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    stored = np.load(out / "two_chunks.npz")
    expected = model.embed(str(recordings["two_chunks"]))
    assert stored["windows"].shape == (504, 192)
    np.testing.assert_allclose(stored["windows"], expected.windows, atol=1e-4, rtol=0)
    # An encoder without a head embeds only: tagging says so in one line.
    refused = without_torch("tag", str(recordings["short"]), "--checkpoint", str(fp32_file))
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.splitlines() == [f"auricle: error: {fp32_file}: this encoder has no classification head; "
                                           "tag with an export of dasheng-base-audioset, or use embed"]


@pytest.mark.integration
def test_an_audioset_tagger_exports_with_its_labels_and_tags_as_torch(tagger, recordings, tmp_path):
    torch_model = auricle.load_model(checkpoint=tagger)
    out = tmp_path / "tagger.onnx"
    # A token sees all 64 bands, so the pure tones among the check clips, whose near-floor mel bins round
    # apart in the graph's float32 DFT, move every token (~1.3e-3) and this random head's probabilities by
    # ~2e-4, past the default limit of 1e-4 (which then refuses the file, as the next lines check).
    refused = CliRunner().invoke(cli, ["export", "--checkpoint", str(tagger), "-o", str(out)])
    assert refused.exit_code == 1 and "nothing written" in refused.stderr and not out.exists()
    result = CliRunner().invoke(cli, ["export", "--checkpoint", str(tagger), "-o", str(out), "--json",
                                      "--tolerance", "1e-3"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["max_abs_diff"] < 1e-3 and report["precision"] == "fp32" and report["top5_overlap"] == 1.0
    exported = auricle.load_model(checkpoint=out)
    assert exported.labels == torch_model.labels and len(exported.labels) == 527
    waves = np.stack([sf.read(recordings["two_chunks"], dtype="float32")[0]] * 2)
    np.testing.assert_allclose(exported.probabilities(waves), torch_model.probabilities(waves), atol=1e-4, rtol=0)
    result = CliRunner().invoke(cli, ["tag", str(recordings["two_chunks"]), "--checkpoint", str(out), "-k", "3",
                                      "--format", "json"])
    assert result.exit_code == 0, result.output
    expected = torch_model.tag(str(recordings["two_chunks"]), top_k=3).to_dict()
    found = json.loads(result.stdout)
    found = found[0] if isinstance(found, list) else found
    assert [item["label"] for item in found["tags"]] == [item["label"] for item in expected["tags"]]


@pytest.mark.integration
def test_a_dasheng_export_refuses_what_it_cannot_be(fp32_file, zenodo, tmp_path):
    result = CliRunner().invoke(cli, ["embed", "x.wav", "--checkpoint", str(fp32_file), "--precision", "bf16",
                                      "-o", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [f"auricle: error: {fp32_file}: holds an fp32 model, not bf16 "
                                          "(bf16 needs the torch engine and the model's weights)"]
    with pytest.raises(auricle.CheckpointError, match="runs in ONNX Runtime, not the torch engine"):
        auricle.load_model(checkpoint=fp32_file, engine="torch")


def test_weights_past_onnx_2gib_limit_are_refused_in_one_line(monkeypatch, model, tmp_path):
    """dasheng-0.6b and 1.2b in fp32 (2.3 and 4.2 GiB of weights) cannot be one ONNX file; int8 can."""
    from auricle.onnx import cache

    monkeypatch.setattr(cache, "PROTOBUF_LIMIT", 4_000_000)  # the small encoder: ~8.6 MB in fp32, ~2.2 MB in int8
    with pytest.raises(auricle.ExportError, match="passes ONNX's 2 GiB single-file limit; use int8"):
        export_onnx(model, tmp_path / "big.onnx")
    assert not (tmp_path / "big.onnx").exists()
