"""`auricle export`: the ONNX graph reproduces the torch model on the reference inputs.

A 2-block CED keeps the export fast; the frontend, piece splitting and head in
the graph are the same code for every size. The slow test repeats the check
with the ced-tiny reference checkpoint.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

import auricle
from auricle.audio import load_audio
from auricle.cli import cli
from auricle.onnx.export import ExportError, export_onnx, read_metadata, top_k_overlap
from auricle.models.ced import CED, CEDConfig
from auricle.models.checkpoints import save_checkpoint

INPUTS = ["a_sine440_1s", "b_noise_3p7s", "d_mix_25p3s", "f_stereo_44k1_2s", "h_edge_20p23s", "i_tooshort_0p1s",
          "r_JeD5V5aaaoI_931_932"]
LABELS = [f"sound {i}" for i in range(10)]
# The CLI sets torch's process-wide thread count; later tests get theirs back.
pytestmark = pytest.mark.usefixtures("restore_torch_threads")


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    network = CED(CEDConfig(embed_dim=64, num_heads=2, depth=2, num_classes=10))
    with torch.no_grad():  # spread the head so probabilities are not all ~0.5
        network.outputlayer[1].weight.mul_(20)
    return save_checkpoint(network, tmp_path_factory.mktemp("small") / "small.safetensors", labels=LABELS,
                           name="small")


@pytest.fixture(scope="module")
def waveforms(reference_dir) -> dict[str, np.ndarray]:
    return {name: load_audio(reference_dir / "inputs" / f"{name}.wav") for name in INPUTS}


def session(model):
    """An ONNX Runtime session of a file (path) or of a ModelProto."""
    import onnxruntime as ort

    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"])


def check_against_torch(path, model, waveforms, tolerance):
    graph = session(path)
    worst = 0.0
    for name, wave in waveforms.items():
        probabilities, embedding = graph.run(None, {"waveforms": wave[None, :]})
        expected = model.probabilities(torch.from_numpy(wave)[None]).numpy()
        assert probabilities.shape == expected.shape, name
        worst = max(worst, float(np.abs(probabilities - expected).max()))
        np.testing.assert_allclose(embedding[0], model.embed(wave, sample_rate=16000).clip, atol=10 * tolerance)
    assert worst <= tolerance
    return worst


@pytest.mark.integration
def test_export_waveform_graph(small_checkpoint, waveforms, tmp_path):
    out = tmp_path / "models" / "small.onnx"
    result = CliRunner().invoke(cli, ["export", "--checkpoint", str(small_checkpoint), "--out", str(out)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "max |diff| probabilities" in result.stdout
    model = auricle.load_model(checkpoint=small_checkpoint)
    check_against_torch(out, model, waveforms, 1e-4)

    # Dynamic batch: clips of one length together equal each alone.
    batch = np.stack([waveforms["d_mix_25p3s"][:200000], waveforms["d_mix_25p3s"][200000:400000]])
    together, _ = session(out).run(None, {"waveforms": batch})
    np.testing.assert_allclose(together, model.probabilities(torch.from_numpy(batch)).numpy(), atol=1e-4)

    metadata = read_metadata(out)
    assert json.loads(metadata["labels"]) == LABELS
    assert metadata["input"] == "waveform" and metadata["precision"] == "fp32"
    assert metadata["runtime"] == "portable" and "portable runtime" in result.stdout
    assert not contrib_ops(out)
    onnx.checker.check_model(onnx.load_model(out), full_check=True)  # standard operators, types and shapes
    frontend = json.loads(metadata["frontend"])
    assert (frontend["sample_rate"], frontend["hop_length"], frontend["n_mels"]) == (16000, 160, 64)
    assert int(metadata["piece_frames"]) == 1012


@pytest.mark.integration
def test_export_mel_input_int8(small_checkpoint, waveforms, tmp_path):
    out = tmp_path / "small-mel-int8.onnx"
    result = CliRunner().invoke(cli, ["export", "--checkpoint", str(small_checkpoint), "--out", str(out),
                                      "--mel-input", "--int8", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["int8"] and report["input"] == "log-mel" and report["max_abs_diff"] > 0
    metadata = read_metadata(out)
    assert (metadata["input"], metadata["precision"]) == ("log-mel", "int8") == (report["input"], report["precision"])
    model = auricle.load_model(checkpoint=small_checkpoint)
    graph = session(out)
    for wave in waveforms.values():
        mel = model.network.spectrogram(torch.from_numpy(wave)[None])
        probabilities, _ = graph.run(None, {"mel": mel.numpy()})
        expected = model.probabilities(torch.from_numpy(wave)[None]).numpy()
        assert probabilities.shape == (1, 10)
        assert np.abs(probabilities - expected).max() < 0.05


def onnx_nodes(path) -> list:
    import onnx

    return list(onnx.load_model(str(path)).graph.node)


def contrib_ops(path) -> set[str]:
    return {node.op_type for node in onnx_nodes(path) if node.domain == "com.microsoft"}


@pytest.mark.integration
def test_export_onnxruntime_runtime_fused_encoder(small_checkpoint, waveforms, tmp_path):
    out = tmp_path / "small-ort.onnx"
    result = CliRunner().invoke(cli, ["export", "--checkpoint", str(small_checkpoint), "--out", str(out),
                                      "--runtime", "onnxruntime"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "onnxruntime runtime" in result.stdout
    assert {"Attention", "BiasGelu"} <= contrib_ops(out)
    metadata = read_metadata(out)
    assert (metadata["runtime"], metadata["input"], metadata["precision"]) == ("onnxruntime", "waveform", "fp32")
    assert json.loads(metadata["labels"]) == LABELS

    model = auricle.load_model(checkpoint=small_checkpoint)
    # reference inputs: 0.1 s (padded), 1 s, 3.7 s, 20.23 s, 25.3 s (three pieces) ...
    check_against_torch(out, model, waveforms, 1e-4)
    # ... a 10 s clip, and a batch of two 25 s clips (pieces of both clips through one encoder call)
    ten = waveforms["d_mix_25p3s"][:160000]
    check_against_torch(out, model, {"10s": ten}, 1e-4)
    batch = np.stack([waveforms["d_mix_25p3s"][:400000], 0.5 * waveforms["d_mix_25p3s"][-400000:]])
    together, embedding = session(out).run(None, {"waveforms": batch})
    np.testing.assert_allclose(together, model.probabilities(torch.from_numpy(batch)).numpy(), atol=1e-4)
    assert embedding.shape == (2, 64)


@pytest.mark.integration
@pytest.mark.parametrize("runtime", ["onnxruntime", "portable"])
def test_export_int8_keeps_top5_agreement(runtime, small_checkpoint, waveforms, tmp_path):
    out = tmp_path / f"small-{runtime}-int8.onnx"
    result = CliRunner().invoke(cli, ["export", "--checkpoint", str(small_checkpoint), "--out", str(out),
                                      "--runtime", runtime, "--int8", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["runtime"], report["int8"]) == (runtime, True)
    assert read_metadata(out)["precision"] == "int8"
    ops = contrib_ops(out)
    standard = [node.op_type for node in onnx_nodes(out) if node.domain == ""]
    if runtime == "onnxruntime":
        assert "QAttention" in ops and "Attention" not in ops
        # Only the encoder is quantised: its projection and MLP MatMuls (3 per block, 2 blocks); the
        # frontend's mel filterbank MatMul and the head's stay float.
        assert standard.count("MatMulInteger") == 6 and standard.count("MatMul") == 2
    else:
        assert not ops
        # qkv, proj, fc1, fc2 in 2 blocks and the head; the mel filterbank product stays float
        assert standard.count("MatMulInteger") == 9
        onnx.checker.check_model(onnx.load_model(out), full_check=True)

    model = auricle.load_model(checkpoint=small_checkpoint)
    graph = session(out)
    worst, overlaps = 0.0, []
    for wave in waveforms.values():
        probabilities, _ = graph.run(None, {"waveforms": wave[None, :]})
        expected = model.probabilities(torch.from_numpy(wave)[None]).numpy()
        worst = max(worst, float(np.abs(probabilities - expected).max()))
        overlaps.extend(top_k_overlap(expected, probabilities, 5))
    assert 0 < worst < 0.05  # int8 really ran, and stayed close
    assert np.mean(overlaps) >= 0.95


@pytest.mark.integration
@pytest.mark.parametrize("runtime", ["onnxruntime", "portable"])
def test_export_int8_weights_are_per_channel_and_seven_bit(runtime, small_checkpoint, tmp_path):
    # 8-bit weights saturate ONNX Runtime's u8s8 products on CPUs without VNNI (AVX2),
    # so the file must carry 7-bit weights with one scale per output channel wherever it was made.
    from onnx import numpy_helper

    out = tmp_path / f"small-{runtime}-int8.onnx"
    export_onnx(auricle.load_model(checkpoint=small_checkpoint), out, int8=True, runtime=runtime)
    proto = onnx.load_model(out)
    initializers = {item.name: numpy_helper.to_array(item) for item in proto.graph.initializer}
    # (weight, weight zero point) inputs of every quantised product
    positions = {"MatMulInteger": (1, 3), "QAttention": (1, 7)}
    quantised = [(initializers[node.input[w]], initializers[node.input[z]]) for node in proto.graph.node
                 if node.op_type in positions for w, z in [positions[node.op_type]]]
    assert len(quantised) == (8 if runtime == "onnxruntime" else 9)
    for weight, zero_point in quantised:
        assert weight.dtype == np.int8 and np.abs(weight.astype(np.int32)).max() <= 64
        assert zero_point.shape == (weight.shape[1],)  # one scale and zero point per output channel


@pytest.mark.integration
def test_export_onnxruntime_mel_input(small_checkpoint, waveforms, tmp_path):
    model = auricle.load_model(checkpoint=small_checkpoint)
    report = export_onnx(model, tmp_path / "mel.onnx", mel_input=True, runtime="onnxruntime")
    assert (report.runtime, report.input) == ("onnxruntime", "log-mel") and report.max_abs_diff <= 1e-4
    assert "Attention" in contrib_ops(report.path)
    graph = session(report.path)
    for name, wave in waveforms.items():
        mel = model.network.spectrogram(torch.from_numpy(np.stack([wave, 0.5 * wave])))
        probabilities, _ = graph.run(None, {"mel": mel.numpy()})
        expected = model.probabilities(torch.from_numpy(np.stack([wave, 0.5 * wave]))).numpy()
        np.testing.assert_allclose(probabilities, expected, atol=1e-4, err_msg=name)


def test_export_refuses_unknown_runtime(small_checkpoint, tmp_path):
    result = CliRunner().invoke(cli, ["export", "--checkpoint", str(small_checkpoint), "--out",
                                      str(tmp_path / "x.onnx"), "--runtime", "tensorrt"])
    assert result.exit_code == 2 and "--runtime" in result.stderr
    model = auricle.load_model(checkpoint=small_checkpoint)
    with pytest.raises(ExportError, match="unknown runtime 'tensorrt'"):
        export_onnx(model, tmp_path / "x.onnx", runtime="tensorrt")
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.integration
def test_an_fp32_export_past_the_tolerance_is_refused_and_writes_nothing(small_checkpoint, tmp_path):
    out = tmp_path / "x.onnx"
    result = CliRunner().invoke(cli, ["export", "--checkpoint", str(small_checkpoint), "--out", str(out),
                                      "--tolerance", "1e-12"])
    assert result.exit_code == 1 and list(tmp_path.iterdir()) == []
    [line] = result.stderr.strip().splitlines()
    assert "in probability (limit 1e-12); nothing written (raise the limit with --tolerance to accept it)" in line


def test_export_refuses_an_out_file_that_tag_would_not_take_for_an_exported_file(small_checkpoint, tmp_path):
    result = CliRunner().invoke(cli, ["export", "--checkpoint", str(small_checkpoint), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "--out" in result.stderr and "name the file .onnx" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_export_refuses_missing_checkpoint(tmp_path):
    result = CliRunner().invoke(cli, ["export", "--checkpoint", str(tmp_path / "none.pt"), "--out",
                                      str(tmp_path / "x.onnx")])
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "none.pt" in result.stderr
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.slow
def test_export_ced_tiny_on_reference_inputs(tiny_model, waveforms, tmp_path):
    report = export_onnx(tiny_model, tmp_path / "tiny.onnx")
    # Tonal clips: ONNX Runtime's DFT and torch's FFT round differently in near-silent
    # bins (as float32 vs float64 do in the official code: up to 8e-5).
    worst = check_against_torch(tmp_path / "tiny.onnx", tiny_model, waveforms, 1e-4)
    print(f"ced-tiny waveform graph: max |diff| {worst:.2e} on the reference inputs; export report {report}")


def test_convolutional_stft_log_mel_matches_the_frontend():
    from auricle.onnx.graph import log_mel_graph
    from auricle.frontend import LogMel

    reference, graph = LogMel(), session(log_mel_graph())
    conv = lambda waveforms: torch.from_numpy(graph.run(None, {"waveforms": waveforms.numpy()})[0])  # noqa: E731
    generator = torch.Generator().manual_seed(0)
    tone = torch.sin(2 * torch.pi * 440 * torch.arange(48000) / 16000)
    for waveforms in [torch.randn(2, 160000, generator=generator) * 0.1,  # noise
                      torch.stack([tone, tone * 1e-4]),  # a tone, and one 80 dB quieter
                      torch.randn(3, 2400, generator=generator),  # the shortest clip a model takes
                      torch.zeros(1, 16000)]:  # silence: everything at the floor
        expected, got = reference(waveforms), conv(waveforms)
        assert got.shape == expected.shape
        error = (got - expected).abs()
        # float32 rounding of the DFT sum is relative to the frame's energy: bins within 60 dB of the clip's
        # maximum agree to 1e-3 dB (the official float32/float64 frontends differ by 8e-3), bins near the
        # 120 dB floor of a pure tone by up to ~0.15 dB
        loud = expected >= expected.amax(dim=(-2, -1), keepdim=True) - 60
        assert error[loud].max() < 1e-3
        assert error.max() < 0.5


@pytest.mark.integration
def test_a_head_of_fewer_than_five_classes_is_checked_on_all_of_them(tmp_path):
    """A probe's head of two classes: a top 5 would count classes that are not there (it read 0.400)."""
    torch.manual_seed(0)
    network = CED(CEDConfig(embed_dim=64, num_heads=2, depth=2, num_classes=2))
    checkpoint = save_checkpoint(network, tmp_path / "two.safetensors", labels=["yes", "no"], name="two")
    result = CliRunner().invoke(cli, ["export", "--checkpoint", str(checkpoint), "--mel-input",
                                      "--out", str(tmp_path / "two.onnx")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "top-2 overlap 1.000" in result.stdout


@pytest.mark.integration
@pytest.mark.parametrize("runtime", ["portable", "onnxruntime"])
def test_an_mlp_softmax_head_exports_as_it_scores(runtime, tmp_path):
    """A probe's MLP head (LayerNorm, Linear, GELU, Linear) with softmax scores, as `auricle probe --head mlp` makes."""
    torch.manual_seed(0)
    network = CED(CEDConfig(embed_dim=64, num_heads=2, depth=1, num_classes=3, head_hidden=16,
                            head_activation="softmax"))
    with torch.no_grad():
        network.outputlayer[3].weight.mul_(20)  # scores far from uniform
    checkpoint = save_checkpoint(network, tmp_path / "mlp.safetensors", labels=["a", "b", "c"], name="mlp")
    model = auricle.load_model(checkpoint=checkpoint)
    report = export_onnx(model, tmp_path / "mlp.onnx", runtime=runtime)
    assert report.max_abs_diff <= 1e-4
    assert "pieces of the softmax" in read_metadata(tmp_path / "mlp.onnx")["outputs"]
    wave = 0.1 * np.random.default_rng(0).standard_normal((2, 40000)).astype(np.float32)
    probabilities, _ = session(tmp_path / "mlp.onnx").run(None, {"waveforms": wave})
    np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(probabilities, model.probabilities(torch.from_numpy(wave)).numpy(), atol=1e-4)
    assert probabilities.max() > 0.6


@pytest.mark.integration
@pytest.mark.parametrize("int8", [False, True], ids=["fp32", "int8"])
@pytest.mark.parametrize("mel_input", [False, True], ids=["waveform", "mel"])
def test_the_portable_graph_runs_in_onnxs_reference_implementation(mel_input, int8):
    """onnx.reference is a second, independent implementation of the standard operators: the portable
    graph is standard ONNX, not only what ONNX Runtime accepts (OpenVINO ran it too, by hand)."""
    from onnx.reference import ReferenceEvaluator

    from auricle.onnx.graph import model_graph

    torch.manual_seed(0)
    network = CED(CEDConfig(embed_dim=64, num_heads=2, depth=2, num_classes=10)).eval()
    rng = np.random.default_rng(0)
    for wave in [0.1 * rng.standard_normal((1, 1600)), 0.1 * rng.standard_normal((2, 170000))]:  # padded; 2 pieces
        wave = torch.from_numpy(wave.astype(np.float32))
        with torch.inference_mode():
            expected = network(wave).numpy()
            tokens, count = network.encode(wave)
            pieces = tokens.mean(dim=1).reshape(count, len(wave), -1).numpy()
            feed = network.spectrogram(wave) if mel_input else wave
        graph = ReferenceEvaluator(model_graph(network, mel_input, fused=False, piece_embeddings=True, int8=int8))
        probabilities, embedding, piece_embeddings = graph.run(None, {"mel" if mel_input else "waveforms":
                                                                      feed.numpy()})
        error = np.abs(probabilities - expected).max()
        if int8:
            assert 0 < error < 0.05
        else:
            assert error < 1e-5
            np.testing.assert_allclose(piece_embeddings, pieces, atol=1e-5)
            np.testing.assert_allclose(embedding, pieces.mean(axis=0), atol=1e-5)


@pytest.mark.parametrize("missing", ["onnxruntime", "onnx"])
def test_export_without_the_onnx_extra_says_what_to_install(missing, small_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, missing, None)  # `import missing` now raises ImportError
    result = CliRunner().invoke(cli, ["export", "--checkpoint", str(small_checkpoint), "--out",
                                      str(tmp_path / "x.onnx")])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"auricle: error: auricle export needs {missing}: pip install 'auricle[onnx]'"]
    assert not (tmp_path / "x.onnx").exists()
