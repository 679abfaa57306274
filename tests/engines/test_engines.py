"""Engines and precisions against the fp32 torch model, on the reference inputs (../shared/reference).

What the agreement tests can and cannot show: the weights are random (perturbed
official layout), so the *values* of bf16/int8 errors are those of these
weights, not of the published ones. Two guards keep the top-5 figure honest:
the fp32 top 5 must differ between inputs (an engine returning one fixed
ranking would fail), and each input's 5th and 6th fp32 probabilities must be
further apart than the engine's error for the overlap to be a real check;
where they are not, the overlap is still reported but not asserted for that input.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import auricle
from auricle.audio import load_audio
from auricle.cli import cli
from auricle.engines import EngineConfig, EngineError
from auricle.onnx.cache import weights_digest
from auricle.onnx.export import top_k_overlap
from auricle.inference.tuning import cpu_features, default_batch_size, fastest_precision

INPUTS = ["a_sine440_1s", "b_noise_3p7s", "c_chirp_10s", "d_mix_25p3s", "e_short_0p2s",
          "f_stereo_44k1_2s", "h_edge_20p23s", "i_tooshort_0p1s", "r_JeD5V5aaaoI_931_932"]
# (engine, precision) -> largest probability difference allowed vs torch fp32. bf16 keeps 8
# mantissa bits and int8 about 7, so ~1e-3 is expected; the bounds leave a margin of ~5x.
ENGINES = {("onnx", "fp32"): 1e-4, ("torch", "bf16"): 1e-2, ("torch", "int8"): 1e-2, ("onnx", "int8"): 1e-2}


@pytest.fixture(scope="module", autouse=True)
def engine_cache(tmp_path_factory):
    """Keep exported encoders out of the user's cache; shared by this module's tests.

    Loading a model sets torch's process-wide thread count; it is put back so
    later tests see the thread count they started with.
    """
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AURICLE_CACHE", str(tmp_path_factory.mktemp("auricle-cache")))
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def waveforms(reference_dir) -> dict[str, torch.Tensor]:
    return {name: torch.from_numpy(load_audio(reference_dir / "inputs" / f"{name}.wav")).unsqueeze(0)
            for name in INPUTS}


@pytest.fixture(scope="module")
def fp32_probabilities(tiny_model, waveforms) -> dict[str, np.ndarray]:
    return {name: tiny_model.probabilities(wave).numpy() for name, wave in waveforms.items()}


@pytest.fixture(scope="module")
def engine_models(tiny_checkpoint):
    cache = {}

    def get(engine: str, precision: str):
        if (engine, precision) not in cache:
            cache[engine, precision] = auricle.load_model(checkpoint=tiny_checkpoint, engine=engine,
                                                          precision=precision)
        return cache[engine, precision]

    return get


@pytest.mark.integration
def test_fp32_top5_differs_between_inputs(fp32_probabilities):
    # Guard: if every input had the same top 5, a top-5 overlap of 1.0 would prove nothing.
    rows = np.concatenate(list(fp32_probabilities.values()))
    pairs = [top_k_overlap(rows[i : i + 1], rows[j : j + 1])[0]
             for i in range(len(rows)) for j in range(i + 1, len(rows))]
    assert np.mean(pairs) < 0.8


@pytest.mark.integration
@pytest.mark.parametrize(("engine", "precision"), list(ENGINES))
def test_engine_agrees_with_fp32(engine_models, waveforms, fp32_probabilities, engine, precision):
    model = engine_models(engine, precision)
    assert model.engine.config == EngineConfig(engine, precision, None)
    worst, overlaps, asserted = 0.0, [], []
    for name, wave in waveforms.items():
        expected = fp32_probabilities[name]
        got = model.probabilities(wave).numpy()
        assert got.shape == expected.shape and got.dtype == np.float32
        error = float(np.abs(got - expected).max())
        worst = max(worst, error)
        overlap = top_k_overlap(expected, got, 5)[0]
        overlaps.append(overlap)
        ranked = np.sort(expected[0])[::-1]
        if ranked[4] - ranked[5] > 2 * error:  # the top 5 is decidable at this error
            asserted.append(overlap)
    print(f"{engine}-{precision}: max |diff| {worst:.2e}, top-5 overlap {np.mean(overlaps):.3f} "
          f"({len(asserted)} of {len(overlaps)} inputs with a decidable top 5)")
    assert worst <= ENGINES[engine, precision]
    assert len(asserted) >= len(overlaps) // 2
    assert np.mean(asserted) >= 0.95


@pytest.mark.integration
@pytest.mark.parametrize(("engine", "precision"), [("onnx", "fp32"), ("torch", "int8")])
def test_embeddings_route_through_engine(engine_models, tiny_model, waveforms, engine, precision):
    wave = waveforms["d_mix_25p3s"][0].numpy()  # three pieces
    expected = tiny_model.embed(wave, sample_rate=16000)
    got = engine_models(engine, precision).embed(wave, sample_rate=16000)
    assert got.windows.shape == expected.windows.shape
    error = np.abs(got.clip - expected.clip).max()
    if precision == "fp32":
        assert error <= 1e-4
    else:  # int8 really runs: the embedding moves, but stays close
        assert 0 < error <= 0.1
        assert np.corrcoef(got.clip, expected.clip)[0, 1] > 0.99


@pytest.mark.integration
def test_tag_cli_engines_give_the_same_format(tiny_checkpoint, reference_dir):
    inputs = [str(reference_dir / "inputs" / f"{name}.wav") for name in ("a_sine440_1s", "d_mix_25p3s")]
    outputs = {}
    for engine, precision in [("torch", "fp32"), ("onnx", "fp32"), ("torch", "int8")]:
        result = CliRunner().invoke(cli, ["tag", *inputs, "--checkpoint", str(tiny_checkpoint), "--format", "json",
                                          "--engine", engine, "--precision", precision, "--events"],
                                   catch_exceptions=False)
        assert result.exit_code == 0, result.output
        outputs[engine, precision] = json.loads(result.stdout)

    def shape(value):
        if isinstance(value, dict):
            return {key: shape(item) for key, item in value.items()}
        if isinstance(value, list):
            return [shape(value[0])] if value else []
        return type(value).__name__

    reference = outputs["torch", "fp32"]
    onnx = outputs["onnx", "fp32"]
    assert [r["tags"][0]["label"] for r in onnx] == [r["tags"][0]["label"] for r in reference]
    for record in outputs.values():
        assert [r["file"] for r in record] == inputs
        assert shape(record[0]) == shape(reference[0])


def test_onnx_engine_cache_is_reused(engine_models, tiny_checkpoint, tiny_model, monkeypatch):
    engine_models("onnx", "fp32")  # exported into the module cache
    cached = list((Path(os.environ["AURICLE_CACHE"]) / "onnx").glob(f"encoder-*{weights_digest(tiny_model.network)}*"))
    assert cached, "the exported encoder was not cached"

    def no_export(*args, **kwargs):
        raise AssertionError("exported again although the cache holds this encoder")

    monkeypatch.setattr("auricle.onnx.encoder.encoder_graph", no_export)
    model = auricle.load_model(checkpoint=tiny_checkpoint, engine="onnx")
    wave = torch.zeros(1, 16000)
    np.testing.assert_allclose(model.probabilities(wave), tiny_model.probabilities(wave), atol=1e-5)


def test_without_onnx_the_onnx_engine_says_so_unless_its_graph_is_cached(tmp_path, monkeypatch):
    import importlib.util

    from auricle.engines import make_engine
    from auricle.models.ced import CED, CEDConfig

    network = CED(CEDConfig(embed_dim=64, num_heads=1, depth=1, num_classes=10)).eval()
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name == "onnx" else
                        find_spec(name, *args))
    with pytest.raises(EngineError, match=r"needs onnx to write its graph: pip install 'auricle\[onnx\]'"):
        make_engine(network, EngineConfig("onnx", "fp32"), cache_dir=tmp_path)
    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    make_engine(network, EngineConfig("onnx", "fp32"), cache_dir=tmp_path)  # writes the graph into the cache
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name == "onnx" else
                        find_spec(name, *args))
    wave = torch.zeros(1, 16000)
    cached = make_engine(network, EngineConfig("onnx", "fp32"), cache_dir=tmp_path)
    with torch.inference_mode():
        np.testing.assert_allclose(cached.probabilities(wave).numpy(), network(wave).numpy(), atol=1e-5)


def test_bad_engine_choices():
    with pytest.raises(EngineError, match="onnx engine runs fp32 or int8"):
        EngineConfig("onnx", "bf16")
    with pytest.raises(EngineError, match="unknown precision"):
        EngineConfig("torch", "fp16")


def test_more_streams_than_threads_says_where_the_threads_came_from(tiny_checkpoint, reference_dir):
    from auricle.inference.tuning import default_threads

    clip = str(reference_dir / "inputs" / "a_sine440_1s.wav")
    streams = str(default_threads() + 1)
    result = CliRunner().invoke(cli, ["tag", clip, "--checkpoint", str(tiny_checkpoint), "--streams", streams])
    assert result.exit_code == 2  # "got 2" read as if the user had typed it
    assert (f"--streams {streams} needs at least as many --threads ({default_threads()} by default here, one per "
            "usable core)") in result.stderr
    result = CliRunner().invoke(cli, ["tag", clip, "--checkpoint", str(tiny_checkpoint), "--streams", "3",
                                      "--threads", "2"])
    assert result.exit_code == 2 and "--streams 3 needs at least as many --threads (got 2)" in result.stderr


def test_cli_rejects_onnx_bf16_in_one_line(tiny_checkpoint, reference_dir):
    result = CliRunner().invoke(cli, ["tag", str(reference_dir / "inputs" / "a_sine440_1s.wav"), "--checkpoint",
                                      str(tiny_checkpoint), "--engine", "onnx", "--precision", "bf16"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "auricle: error: the onnx engine runs fp32 or int8; use --engine torch for bf16"]


def test_cpu_features_from_flags(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor : 0\nflags : fpu avx2 avx512f avx512_vnni\n")
    features = cpu_features(cpuinfo)
    assert (features.bf16, features.vnni) == (False, True)
    assert features.cores >= 1
    assert fastest_precision(features) == "int8"
    cpuinfo.write_text("processor : 0\nflags : fpu avx2 avx512f avx512_vnni avx512_bf16 amx_tile amx_bf16 amx_int8\n")
    features = cpu_features(cpuinfo)
    assert (features.amx, features.bf16, features.vnni) == (True, True, True)
    assert (fastest_precision(features), fastest_precision(features, "onnx")) == ("bf16", "int8")
    cpuinfo.write_text("processor : 0\nflags : fpu avx2\n")
    assert not cpu_features(cpuinfo).amx and cpu_features(cpuinfo).avx2 and fastest_precision(cpu_features(cpuinfo)) == "int8"
    cpuinfo.write_text("processor : 0\nflags : fpu sse4_2\n")
    assert fastest_precision(cpu_features(cpuinfo)) == "fp32"
    assert default_batch_size("cpu") == 4 and default_batch_size("cuda:0") > 4


@pytest.mark.parametrize("engine,precision", [("torch", "int8"), ("torch", "bf16")])
def test_softmax_heads_keep_their_activation_in_every_engine(engine, precision):
    from auricle.engines import make_engine
    from auricle.models.ced import CED, CEDConfig

    torch.manual_seed(0)
    network = CED(CEDConfig(embed_dim=64, num_heads=1, depth=1, num_classes=10, head_activation="softmax")).eval()
    waveforms = torch.randn(2, 16000) * 0.1
    with torch.inference_mode():
        reference = network(waveforms)
        scores = make_engine(network, EngineConfig(engine, precision)).probabilities(waveforms)
    torch.testing.assert_close(scores.sum(dim=-1), torch.ones(2))
    assert (scores - reference).abs().max() < 0.05


def test_precision_auto_resolves_per_cpu_and_engine(tmp_path):
    from auricle.engines import resolve_precision
    from auricle.inference.tuning import CpuFeatures

    vnni, bf16_only, plain = CpuFeatures(2, True, True), CpuFeatures(2, True, False), CpuFeatures(2, False, False)
    assert resolve_precision("torch", "auto", features=vnni) == "int8"
    assert resolve_precision("onnx", "auto", features=vnni) == "int8"
    assert resolve_precision("torch", "auto", features=bf16_only) == "bf16"
    assert resolve_precision("onnx", "auto", features=bf16_only) == "fp32"  # ONNX Runtime has no bf16 path here
    assert resolve_precision("torch", "auto", features=plain) == "fp32"
    avx2 = CpuFeatures(2, False, False, avx2=True)
    assert resolve_precision("torch", "auto", features=avx2) == resolve_precision("onnx", "auto", features=avx2) \
        == "int8"
    amx = CpuFeatures(2, True, True, avx2=True, amx=True)  # Sapphire Rapids: AMX bf16 beats VNNI int8 in torch
    assert resolve_precision("torch", "auto", features=amx) == "bf16"
    assert resolve_precision("onnx", "auto", features=amx) == "int8"
    assert resolve_precision("torch", "auto", device="cuda:0", features=vnni) == "fp32"
    assert resolve_precision("torch", "bf16", features=plain) == "bf16"  # explicit choices are kept


def test_cli_precision_auto_tags_with_this_cpus_choice(tiny_checkpoint, reference_dir, monkeypatch):
    from auricle import engines
    from auricle.engines import config

    loaded = []
    original = engines.make_engine

    def spy(network, config=None, cache_dir=None):
        loaded.append(config.precision)
        return original(network, config, cache_dir)

    monkeypatch.setattr("auricle.model.make_engine", spy)
    monkeypatch.setattr(config, "fastest_precision", lambda features=None, engine="torch": "bf16")
    result = CliRunner().invoke(cli, ["tag", str(reference_dir / "inputs" / "a_sine440_1s.wav"), "--checkpoint",
                                      str(tiny_checkpoint), "--precision", "auto", "--format", "json"])
    assert result.exit_code == 0, result.output
    assert loaded == ["bf16"]
    assert json.loads(result.stdout)[0]["tags"]


def test_bf16_without_cpu_kernels_runs_emulated_and_says_so(tiny_checkpoint, reference_dir, waveforms,
                                                             fp32_probabilities, monkeypatch):
    # AVX2-only CPUs (e.g. AMD Zen 3): oneDNN refuses to pack bf16 weights. bf16 must still run
    # (through autocast), with a one-line warning that it is slow, instead of a RuntimeError.
    import warnings

    from auricle.engines import EngineWarning, fused

    monkeypatch.setattr(fused, "bf16_kernels", lambda: False)
    assert not fused.fused_supported("cpu", "bf16") and fused.fused_supported("cpu", "fp32")
    with pytest.warns(EngineWarning, match="runs emulated"):
        model = auricle.load_model(checkpoint=tiny_checkpoint, precision="bf16")
    got = model.probabilities(waveforms["c_chirp_10s"]).numpy()
    error = np.abs(got - fp32_probabilities["c_chirp_10s"]).max()
    assert 0 < error <= ENGINES["torch", "bf16"]  # really bf16, and close
    with warnings.catch_warnings():
        warnings.simplefilter("error", EngineWarning)  # the precisions that have kernels stay quiet
        auricle.load_model(checkpoint=tiny_checkpoint, precision="int8")

    result = CliRunner().invoke(cli, ["tag", str(reference_dir / "inputs" / "c_chirp_10s.wav"), "--checkpoint",
                                      str(tiny_checkpoint), "--precision", "bf16", "--format", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["tags"]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("auricle: warning: bf16 has no fast kernels on this CPU")
