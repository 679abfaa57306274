"""`--engine onnx` runs one prepared ONNX Runtime graph: exported on the first run, then loaded without torch."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import auricle
from auricle.cli import cli
from auricle.models.ced import CED, CEDConfig
from auricle.models.checkpoints import save_checkpoint
from auricle.onnx import prepared
from auricle.onnx.export import ExportError, ParityError
from auricle.loading import load_prepared, weights_file  # the name -> weights -> graph path is the loading path's
from auricle.onnx.prepared import PrepareError, prepared_path
from no_torch_support import without_torch

pytest.importorskip("onnxruntime")
# The tests share one prepared-graph cache and build on the graphs earlier ones made: they run together.
pytestmark = [pytest.mark.usefixtures("restore_torch_threads"), pytest.mark.integration]
FILES = ["a_sine440_1s", "d_mix_25p3s"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(1)  # a head mild enough for the exported frontend (see test_exported.py)
    network = CED(CEDConfig(embed_dim=64, num_heads=2, depth=2))
    return save_checkpoint(network, tmp_path_factory.mktemp("weights") / "small.safetensors", name="small")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One cache for the module, so the graphs are exported once; also what the commands see."""
    folder = tmp_path_factory.mktemp("auricle-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AURICLE_CACHE", str(folder))
        yield folder


@pytest.fixture(scope="module")
def files(reference_dir):
    return [str(reference_dir / "inputs" / f"{name}.wav") for name in FILES]


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def scores(records: list[dict]) -> list[dict[str, float]]:
    return [{tag["mid"]: tag["score"] for tag in record["tags"]} for record in records]


@pytest.mark.integration
def test_first_run_prepares_its_graph_once(weights, cache, files):
    options = ["--checkpoint", str(weights), "--format", "json", "--threshold", "0"]
    code, stdout, stderr = run("tag", *files, *options, "--engine", "onnx")
    assert code == 0, stderr
    assert stderr.count("preparing small (fp32) for ONNX Runtime, once") == 1
    graphs = list((cache / "prepared").glob("small-*-fp32.onnx"))
    assert len(graphs) == 1
    code, from_torch, _ = run("tag", *files, *options)
    assert code == 0
    ours, theirs = scores(json.loads(stdout)), scores(json.loads(from_torch))
    for one, other in zip(ours, theirs, strict=True):
        assert len(one) == 527
        np.testing.assert_allclose([one[mid] for mid in other], list(other.values()), atol=1e-4)


def test_later_runs_start_without_torch(weights, cache, files):
    code, _, stderr = run("tag", files[0], "--checkpoint", str(weights), "--engine", "onnx", "-k", "3")
    assert code == 0, stderr  # the graph is prepared (here, or by the test before)
    again = without_torch("tag", files[0], "--checkpoint", str(weights), "--engine", "onnx", "-k", "3")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "a_sine440_1s.wav" in again.stdout and "preparing" not in again.stderr
    # AURICLE_ENGINE sets the default for every command, so a shell can make ONNX Runtime the norm.
    by_env = without_torch("tag", files[0], "--checkpoint", str(weights), "-k", "3", AURICLE_ENGINE="onnx")
    assert by_env.returncode == 0, by_env.stderr[-2000:]
    assert by_env.stdout == again.stdout


def test_embed_with_the_prepared_graph_equals_the_weights(weights, cache, files, tmp_path):
    code, _, stderr = run("embed", files[1], "--checkpoint", str(weights), "--engine", "onnx",
                          "--output", str(tmp_path / "onnx.npz"))
    assert code == 0, stderr
    assert "preparing" not in stderr  # the graph of the test before, with its piece embeddings
    code, _, stderr = run("embed", files[1], "--checkpoint", str(weights), "--output", str(tmp_path / "torch.npz"))
    assert code == 0, stderr
    ours, theirs = np.load(tmp_path / "onnx.npz"), np.load(tmp_path / "torch.npz")
    np.testing.assert_array_equal(ours["starts"], theirs["starts"])
    assert str(ours["model"]) == str(theirs["model"]) == "small"
    np.testing.assert_allclose(ours["clip"], theirs["clip"], atol=1e-4)
    np.testing.assert_allclose(ours["windows"], theirs["windows"], atol=1e-4)


@pytest.mark.integration
def test_int8_and_auto_prepare_their_own_graph(weights, cache, files, monkeypatch):
    model = load_prepared(checkpoint=weights, precision="int8")
    assert model.precision == "int8" and model.path.name.endswith("-int8.onnx")
    reference = auricle.load_model(checkpoint=weights)
    clip = auricle.audio.load_audio(files[1])
    top = np.argsort(-model.probabilities(clip[None]))[0, :5]
    expected = np.argsort(-reference.probabilities(torch.from_numpy(clip[None])).numpy())[0, :5]
    assert len(set(top) & set(expected)) >= 4  # int8 really ran and still agrees
    monkeypatch.setattr(prepared, "fastest_precision", lambda features=None, engine="torch": "int8")
    assert load_prepared(checkpoint=weights, precision="auto").path == model.path
    with pytest.raises(auricle.errors.AuricleError, match="fp32 or int8, not bf16"):
        load_prepared(checkpoint=weights, precision="bf16")


@pytest.mark.integration
def test_a_damaged_graph_is_prepared_again(weights, cache, files):
    path = prepared_path(weights_file(checkpoint=weights), None, "fp32")
    assert path.is_file()  # from the first test
    intact = path.read_bytes()
    path.write_bytes(intact[: len(intact) // 3])  # a copy cut short
    messages = []
    model = load_prepared(checkpoint=weights, announce=messages.append)
    assert len(messages) == 1 and model.path == path and path.stat().st_size == len(intact)
    assert not list(path.parent.glob("*.tmp"))


def test_the_key_follows_the_weights_and_their_config(weights, tmp_path):
    copy = tmp_path / "copy" / "small.safetensors"
    copy.parent.mkdir()
    shutil.copy(weights, copy)
    first = prepared_path(copy, None, "fp32", tmp_path)
    assert first == prepared_path(copy, None, "fp32", tmp_path)
    assert first != prepared_path(copy, None, "int8", tmp_path)
    os.utime(copy, ns=(copy.stat().st_atime_ns, copy.stat().st_mtime_ns + 10**9))  # replaced weights
    second = prepared_path(copy, None, "fp32", tmp_path)
    assert second != first
    (copy.parent / "small.json").write_text(json.dumps({"name": "renamed"}))  # a config now names the model
    assert prepared_path(copy, None, "fp32", tmp_path) != second
    # A model name fetched from the hub: its name in the file name, its own key.
    named = prepared_path(copy, "ced-mini", "fp32", tmp_path)
    assert named.name.startswith("ced-mini-") and named != prepared_path(copy, None, "fp32", tmp_path)
    assert weights_file(checkpoint=copy.parent) == copy  # a folder with one weights file


def test_model_names_are_fetched_as_for_the_weights(weights, monkeypatch, tmp_path):
    import auricle.models.hub as hub

    asked = []
    monkeypatch.setattr(hub, "fetch_weights", lambda info, cache_dir=None: asked.append(info.name) or weights)
    assert weights_file("tiny") == weights and asked == ["ced-tiny"]


def failing_export(monkeypatch, error: Exception) -> list:
    """Make every export raise ``error``; the list returned collects where each attempt would have written."""
    attempts = []

    def export(model, out, **options):
        attempts.append(out)
        raise error

    monkeypatch.setattr("auricle.onnx.export.export_onnx", export)
    return attempts


def test_a_refused_export_is_remembered_and_the_weights_run(weights, files, tmp_path, monkeypatch):
    monkeypatch.setenv("AURICLE_CACHE", str(tmp_path))
    attempts = failing_export(monkeypatch, ParityError("small: exported graph differs from torch by 2.00e-03 in "
                                                       "probability"))
    for _ in range(2):
        code, stdout, stderr = run("tag", files[0], "--checkpoint", str(weights), "--engine", "onnx", "-k", "3")
        assert code == 0 and "a_sine440_1s.wav" in stdout
        warning = [line for line in stderr.splitlines() if line.startswith("auricle: warning:")]
        assert warning == ["auricle: warning: small: exported graph differs from torch by 2.00e-03 in probability; "
                           "running only the encoder in ONNX Runtime"]
    assert len(attempts) == 1  # the second run read the .failed note instead of exporting again
    assert list((tmp_path / "prepared").glob("*.failed"))


def test_an_export_that_breaks_is_tried_again(weights, tmp_path, monkeypatch):
    attempts = failing_export(monkeypatch, ExportError("small: ONNX export failed: out of memory"))
    for _ in range(2):
        with pytest.raises(PrepareError, match="out of memory"):
            load_prepared(checkpoint=weights, cache=tmp_path)
    assert len(attempts) == 2 and not list((tmp_path / "prepared").glob("*.failed"))
    assert not list((tmp_path / "prepared").glob("*.onnx"))


def test_without_onnxruntime_one_line(weights, files, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "onnxruntime" else find_spec(name, *args))
    code, _, stderr = run("tag", files[0], "--checkpoint", str(weights), "--engine", "onnx")
    assert code == 2
    assert stderr.splitlines() == ["auricle: error: the onnx engine needs onnxruntime: pip install 'auricle[onnx]'"]


def test_an_env_precision_yields_to_an_exported_file(weights, cache, files, monkeypatch):
    graph = prepared_path(weights_file(checkpoint=weights), None, "fp32")
    monkeypatch.setenv("AURICLE_PRECISION", "int8")  # a default, like fp32 is: the fp32 file decides
    code, stdout, stderr = run("tag", files[0], "--checkpoint", str(graph), "-k", "3")
    assert code == 0, stderr
    code, _, stderr = run("tag", files[0], "--checkpoint", str(graph), "-k", "3", "--precision", "int8")
    assert code == 2 and "holds an fp32 model, not int8" in stderr


def test_serve_workers_load_the_prepared_graph(weights, cache, monkeypatch):
    """Several worker processes build their app from AURICLE_SERVE: they get the graph, not the weights."""
    uvicorn = pytest.importorskip("uvicorn")
    started = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: started.append((app, options)))
    monkeypatch.delenv("AURICLE_SERVE", raising=False)
    code, _, stderr = run("serve", "--checkpoint", str(weights), "--engine", "onnx", "--workers", "2")
    assert code == 0, stderr
    assert started and started[0][1]["workers"] == 2
    spec = json.loads(os.environ["AURICLE_SERVE"])
    assert spec["checkpoint"] == str(prepared_path(weights_file(checkpoint=weights), None, "fp32"))
    monkeypatch.delenv("AURICLE_SERVE")


def test_a_cache_that_cannot_be_written_runs_the_encoder_engine(weights, files, tmp_path, monkeypatch):
    """A read-only home or a full disk costs the fast start, not the run (as for the encoder engine's cache)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("AURICLE_CACHE", str(blocker / "cache"))
    code, stdout, stderr = run("tag", files[0], "--checkpoint", str(weights), "--engine", "onnx", "-k", "3")
    assert code == 0 and "a_sine440_1s.wav" in stdout
    assert [line for line in stderr.splitlines() if line.startswith("auricle:")] == [
        f"auricle: warning: {blocker / 'cache' / 'prepared'}: cannot keep a prepared graph there (Not a directory); "
        "running only the encoder in ONNX Runtime"]


def test_stale_partial_exports_are_cleared_and_never_counted(tmp_path):
    from auricle.onnx.cache import prepared_graphs, remove_stale_partials

    folder = tmp_path / "prepared"
    folder.mkdir()
    (folder / "small-abc-fp32.onnx").write_bytes(b"graph")
    old, fresh = folder / "small-abc-fp32.onnx.123.tmp", folder / "small-abc-fp32.onnx.456.tmp"
    old.write_bytes(b"killed")
    fresh.write_bytes(b"under way")
    os.utime(old, (0, 0))
    assert prepared_graphs(tmp_path) == [folder / "small-abc-fp32.onnx"]
    remove_stale_partials(folder)
    assert not old.exists() and fresh.exists()
