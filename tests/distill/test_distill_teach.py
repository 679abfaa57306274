"""`auricle distill teach` and `verify`: teachers, the store, resume after SIGKILL, two ranks under torchrun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from distill_helpers import make_audio, make_teacher, waveform_teacher
from torchrun_support import failure_report, torchrun

from auricle.cli import cli
from auricle.distill import DistillError
from auricle.errors import CheckpointError
from auricle.distill.shards import ShardConfig, ShardSet, write_shards
from auricle.distill.store import TargetStore, decode_values, encode_values
from auricle.labels import audioset_labels

TESTS = Path(__file__).resolve().parents[1]
CALLABLE = "distill_helpers:waveform_teacher"
NO_MASKS = ["--time-mask", "0", "--freq-mask", "0"]
AUGMENT = ["--gain-db", "6", "--mixup-prob", "0.5", "--time-mask", "30", "--freq-mask", "8"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Six 2 s chunks in three shards, and two tiny CED teachers."""
    root = tmp_path_factory.mktemp("teach")
    audio = make_audio(root / "audio", bad=False)
    write_shards([str(audio / name) for name in ("a.wav", "b.wav", "e.wav")], root / "shards",
                 ShardConfig(chunk_seconds=2.0, chunks_per_shard=2))
    return {"root": root, "shards": root / "shards", "teacher": make_teacher(root / "t1.safetensors", seed=1),
            "teacher2": make_teacher(root / "t2.safetensors", seed=2)}


def _units(store_dir: Path) -> dict:
    store = TargetStore.open(store_dir)
    return {unit: store.read_unit(*unit) for unit in store.units()}


def _same_store(a: Path, b: Path) -> None:
    first, second = _units(a), _units(b)
    assert first.keys() == second.keys()
    for unit in first:
        assert np.array_equal(first[unit].indices, second[unit].indices), unit
        assert np.array_equal(first[unit].codes, second[unit].codes), unit


def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    return env


@pytest.mark.integration
def test_teach_and_verify_cli(corpus, tmp_path, monkeypatch):
    store_dir = tmp_path / "store"
    args = ["distill", "teach", "--shards", str(corpus["shards"]), "--teacher", str(corpus["teacher"]),
            "--teacher", f"{corpus['teacher2']}@3", "--epochs", "2", "--top-k", "8", "--seed", "5",
            "--out", str(store_dir), "--json", *AUGMENT]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    shards = ShardSet.open(corpus["shards"])
    assert report["views_total"] == 2 * len(shards) and report["complete"]
    assert report["bytes_per_view"] == pytest.approx(report["store_bytes"] / report["views_total"])
    assert report["payload_bytes_per_view"] == 8 * 3
    assert "B/view" in result.stderr and "% of the shards' audio" in result.stderr

    store = TargetStore.open(store_dir)
    manifest = store.manifest
    assert manifest["complete"] and manifest["seed"] == 5 and manifest["top_k"] == 8
    assert [t["weight"] for t in manifest["teachers"]] == [1.0, 3.0]
    assert all(len(t["sha256"]) == 64 for t in manifest["teachers"])
    assert manifest["augment"]["mixup_prob"] == 0.5 and manifest["code_version"]["auricle"]
    assert len(store.units()) == 2 * len(shards.shards) and store.done_units() == store.units()
    targets = store.targets(shards.shards[0].name, 1)
    assert list(targets) == shards.keys(shards.shards[0])
    indices, probabilities = next(iter(targets.values()))
    assert indices.shape == probabilities.shape == (8,) and np.all(np.diff(probabilities) <= 0)
    # Different epochs are different views, hence (generally) different targets.
    assert any(not np.array_equal(store.read_unit(s, 0).codes, store.read_unit(s, 1).codes)
               for s in manifest["shards"]["names"])

    result = CliRunner().invoke(cli, ["distill", "verify", str(store_dir), "--sample", "4", "--json"])
    assert result.exit_code == 0, result.output
    verified = json.loads(result.stdout)
    assert verified["sampled"] == verified["passed"] == 4 and verified["max_code_distance"] <= 1

    # A tampered value is caught.
    for shard, epoch in store.units():
        unit = store.read_unit(shard, epoch)
        codes = unit.codes.copy()
        codes[:, 0] = np.where(codes[:, 0] > 100, codes[:, 0] - 40, codes[:, 0] + 40)
        store.write_unit(shard, epoch, shards.keys(shard), unit.indices, decode_values(codes, store.codec))
    result = CliRunner().invoke(cli, ["distill", "verify", str(store_dir), "--sample", "2"])
    assert result.exit_code == 1 and "stored targets differ" in result.stderr

    # Resuming a complete store is a no-op; starting over in it is refused.
    result = CliRunner().invoke(cli, [*args[:-len(AUGMENT) - 1], "--resume", *AUGMENT])
    assert result.exit_code == 0 and f"0 views in 0 units ({len(store.units())} already done)" in result.stderr
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2 and "already holds targets" in result.stderr
    result = CliRunner().invoke(cli, [*args[:-len(AUGMENT) - 1], "--resume", "--top-k", "4", *AUGMENT])
    assert result.exit_code == 2 and "other top_k" in result.stderr
    # The same teachers and shards by other paths (copies, other spellings) are the same run: identity is content.
    import shutil

    copies = tmp_path / "copies"
    copies.mkdir()
    shutil.copy(corpus["teacher"], copies / "renamed.safetensors")  # one file: its config is in its metadata
    shutil.copytree(corpus["shards"], copies / "shards")
    moved = ["distill", "teach", "--shards", str(copies / "shards"), "--teacher", str(copies / "renamed.safetensors"),
             "--teacher", f"{corpus['teacher2']}@3", *args[8:-len(AUGMENT) - 1], "--resume", *AUGMENT]
    result = CliRunner().invoke(cli, moved)
    assert result.exit_code == 0 and f"({len(store.units())} already done)" in result.stderr, result.output
    # So does another spelling of the same paths, relative and through "..".
    monkeypatch.chdir(copies)
    spelled = ["distill", "teach", "--shards", "../copies/shards", "--teacher", "./renamed.safetensors",
               "--teacher", f"{os.path.relpath(corpus['teacher2'])}@3", *args[8:-len(AUGMENT) - 1], "--resume",
               *AUGMENT]
    result = CliRunner().invoke(cli, spelled)
    assert result.exit_code == 0 and f"({len(store.units())} already done)" in result.stderr, result.output
    # Other weights, or another weight in the ensemble, are refused, naming the teacher and what differs.
    make_teacher(copies / "other.safetensors", seed=9)
    result = CliRunner().invoke(cli, [*spelled[:5], "other.safetensors", *spelled[6:]])
    assert result.exit_code == 2 and result.stderr.strip() == (
        f"auricle: error: {store_dir}: was made with other teachers (teacher 1: sha256); cannot resume it with these")
    result = CliRunner().invoke(cli, [*spelled[:7], spelled[7].replace("@3", "@2"), *spelled[8:]])
    assert result.exit_code == 2 and "other teachers (teacher 2: weight);" in result.stderr


def test_verify_refuses_a_changed_teacher(corpus, tmp_path):
    teacher = make_teacher(tmp_path / "teacher.safetensors", seed=4)
    store_dir = tmp_path / "store"
    result = CliRunner().invoke(cli, ["distill", "teach", "--shards", str(corpus["shards"]), "--teacher",
                                      str(teacher), "--out", str(store_dir), "--top-k", "3"])
    assert result.exit_code == 0, result.output
    make_teacher(tmp_path / "teacher.safetensors", seed=5)
    result = CliRunner().invoke(cli, ["distill", "verify", str(store_dir)])
    assert result.exit_code == 1 and "sha256 is now" in result.stderr
    # So is a store whose shard set has changed since the teacher pass.
    manifest = TargetStore.open(store_dir).manifest
    manifest["shards"]["manifest_sha256"] = "0" * 64
    (store_dir / "manifest.json").write_text(json.dumps(manifest))
    result = CliRunner().invoke(cli, ["distill", "verify", str(store_dir)])
    assert result.exit_code == 1 and "another version of" in result.stderr


def test_verify_fails_a_store_with_missing_units_and_finds_moved_shards(corpus, tmp_path):
    import shutil

    shards = tmp_path / "shards"
    shutil.copytree(corpus["shards"], shards)
    store_dir = tmp_path / "store"
    result = CliRunner().invoke(cli, ["distill", "teach", "--shards", str(shards), "--teacher", str(corpus["teacher"]),
                                      "--out", str(store_dir), "--top-k", "3", "--epochs", "2"])
    assert result.exit_code == 0, result.output
    store = TargetStore.open(store_dir)
    shard, epoch = store.units()[-1]
    store.unit_path(shard, epoch).unlink()  # as a teacher pass killed before its last unit leaves it
    result = CliRunner().invoke(cli, ["distill", "verify", str(store_dir), "--sample", "2"])
    assert result.exit_code == 1  # the views it drew pass, but the store is not whole
    assert (f"auricle: error: {store_dir}: 1 unit missing ({shard} epoch {epoch}); the teacher pass did not "
            "finish: continue it with distill teach --resume") in result.stderr
    # The shard set moved: the store says where it looked, and --shards points to it.
    shards.rename(tmp_path / "moved")
    result = CliRunner().invoke(cli, ["distill", "verify", str(store_dir), "--sample", "2"])
    assert result.exit_code == 2 and "is not there; give its new place with --shards" in result.stderr
    result = CliRunner().invoke(cli, ["distill", "verify", str(store_dir), "--sample", "2", "--shards",
                                      str(tmp_path / "moved"), "--json"])
    assert json.loads(result.stdout)["passed"] == 2 and json.loads(result.stdout)["missing_units"]


def test_a_damaged_shard_fails_its_units_and_the_others_are_done(corpus, tmp_path):
    import shutil

    shards = tmp_path / "shards"
    shutil.copytree(corpus["shards"], shards)
    damaged = ShardSet.open(shards).shards[1]
    intact = damaged.read_bytes()
    data = bytearray(intact)
    data[1500:1900] = b"\x00" * 400  # inside the first FLAC member, past its tar header
    damaged.write_bytes(bytes(data))
    store_dir = tmp_path / "store"
    args = ["distill", "teach", "--shards", str(shards), "--teacher", str(corpus["teacher"]), "--out",
            str(store_dir), "--top-k", "3", "--epochs", "2"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("auricle: error:")]
    assert len(errors) == 2 and all(f"{damaged.name} epoch" in line for line in errors)
    assert "2 units failed; repair their shards and run again with --resume" in result.stderr
    store = TargetStore.open(store_dir)
    assert sorted(set(store.units()) - set(store.done_units())) == [(damaged.name, 0), (damaged.name, 1)]
    damaged.write_bytes(intact)  # repaired: the resume does only what failed
    result = CliRunner().invoke(cli, [*args, "--resume"])
    assert result.exit_code == 0 and "2 units (4 already done)" in result.stderr, result.output


def test_a_teacher_with_non_finite_output_stores_nothing(corpus, tmp_path):
    """NaN teacher output was stored as zeros, with exit status 0, and verify passed the store."""
    import torch

    from auricle.models.ced import CED, CEDConfig
    from auricle.models.checkpoints import save_checkpoint

    network = CED(CEDConfig(embed_dim=64, num_heads=1, depth=2))
    with torch.no_grad():
        network.outputlayer[1].bias.fill_(float("nan"))
    broken = save_checkpoint(network, tmp_path / "nan.safetensors")
    result = CliRunner().invoke(cli, ["distill", "teach", "--shards", str(corpus["shards"]), "--teacher",
                                      str(broken), "--out", str(tmp_path / "store"),
                                      "--top-k", "3"])
    assert result.exit_code != 0
    assert "the teachers' output is not finite" in result.stderr
    store = TargetStore.open(tmp_path / "store") if (tmp_path / "store" / "manifest.json").exists() else None
    assert store is None or not store.done_units()


def test_verify_passes_an_f32_store_scored_in_batches_and_fails_swapped_units(corpus, tmp_path):
    store_dir = tmp_path / "store"
    result = CliRunner().invoke(cli, ["distill", "teach", "--shards", str(corpus["shards"]), "--teacher",
                                      str(corpus["teacher"]), "--out", str(store_dir), "--top-k", "3",
                                      "--codec", "f32", "--batch-size", "2", *AUGMENT])
    assert result.exit_code == 0, result.output
    # Batches of 2 here, one view at a time in verify: the last bits differ, within float32's tolerance.
    result = CliRunner().invoke(cli, ["distill", "verify", str(store_dir), "--sample", "6", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["passed"] == 6
    store = TargetStore.open(store_dir)
    (first, _), (second, _) = store.units()[:2]
    a, b = store.unit_path(first, 0), store.unit_path(second, 0)
    swap = a.with_suffix(".swap")
    a.rename(swap), b.rename(a), swap.rename(b)  # training refuses them; verify passed them
    result = CliRunner().invoke(cli, ["distill", "verify", str(store_dir), "--sample", "1"])
    assert result.exit_code == 1
    assert f"auricle: error: {a}: rows do not follow the keys of {first}" in result.stderr


def test_a_teach_that_failed_before_its_first_unit_leaves_nothing_in_the_way(corpus, tmp_path):
    store_dir = tmp_path / "store"
    base = ["distill", "teach", "--shards", str(corpus["shards"]), "--out", str(store_dir), "--top-k", "3",
            "--time-mask", "0", "--freq-mask", "0"]
    failed = CliRunner().invoke(cli, [*base, "--teacher", "distill_helpers:misshapen_teacher"])
    assert failed.exit_code != 0 and "shape" in failed.stderr
    # Every unit fails alike, so it stops after three instead of reporting each unit of the corpus.
    assert "the first 3 units of the job all failed; the first here:" in failed.stderr
    # Neither a plain rerun ("already holds targets") nor a resume ("other teachers") is refused now.
    fixed = CliRunner().invoke(cli, [*base, "--teacher", CALLABLE])
    assert fixed.exit_code == 0, fixed.output
    assert TargetStore.open(store_dir).manifest["complete"]


def test_teach_refuses_a_shard_set_without_chunks(corpus, tmp_path):
    # A "complete" set of 0 shards (as older versions wrote for sources that gave no audio) gave "nan B/view", exit 0.
    empty = tmp_path / "empty"
    empty.mkdir()
    manifest = json.loads((corpus["shards"] / "manifest.json").read_text())
    (empty / "manifest.json").write_text(json.dumps(dict(manifest, shards=[], seconds=0.0)))
    (empty / "index.csv").write_text("key,shard,source,start,end,num_samples\n")
    result = CliRunner().invoke(cli, ["distill", "teach", "--shards", str(empty), "--teacher", str(corpus["teacher"]),
                                      "--out", str(tmp_path / "store")])
    assert result.exit_code == 1 and result.stderr == f"auricle: error: {empty}: the shard set holds no audio\n"
    assert not (tmp_path / "store" / "manifest.json").exists()


def test_callable_teacher_is_aligned_by_mid_and_weighted(corpus, tmp_path):
    from auricle.distill.teachers import TeacherEnsemble, load_teacher

    ced = load_teacher(str(corpus["teacher"]))
    foreign = load_teacher(f"{CALLABLE}@3")
    assert foreign.identity["note"] == "test teacher" and len(foreign.identity["module_sha256"]) == 64
    ensemble = TeacherEnsemble([ced, foreign])
    waves = torch.randn(2, 16000) * 0.1
    combined = ensemble.probabilities(waves)
    p_ced, p_foreign = ced.probabilities(waves), foreign.probabilities(waves)
    labels = audioset_labels()
    covered = {labels.index_of_mid(mid): column for column, mid in enumerate(waveform_teacher.mids[:100])}
    for index in range(527):
        if index in covered:
            expected = (p_ced[:, index] + 3 * p_foreign[:, covered[index]]) / 4
        else:
            expected = p_ced[:, index]
        assert torch.allclose(combined[:, index], expected, atol=1e-6)
    alone = TeacherEnsemble([foreign])
    assert int(alone.coverage.sum()) == 100 and alone.mapped_columns() == [100]
    assert torch.all(alone.probabilities(waves)[:, ~alone.coverage] == 0)

    # Through the CLI: a callable scores waveforms, so log-mel masks are refused ...
    base = ["distill", "teach", "--shards", str(corpus["shards"]), "--teacher", CALLABLE, "--top-k", "5"]
    result = CliRunner().invoke(cli, [*base, "--out", str(tmp_path / "masked")])
    assert result.exit_code == 2 and "cannot be masked on the log-mel" in result.stderr
    # ... and without masks it works, with uncovered classes recorded.
    result = CliRunner().invoke(cli, [*base, "--out", str(tmp_path / "store"), *NO_MASKS, "--gain-db", "3"])
    assert result.exit_code == 0, result.output
    manifest = TargetStore.open(tmp_path / "store").manifest
    assert len(manifest["uncovered_classes"]) == 427 and manifest["teachers"][0]["kind"] == "callable"
    # verify imports a module:function the store names only when the user names it too.
    result = CliRunner().invoke(cli, ["distill", "verify", str(tmp_path / "store"), "-n", "4"])
    assert result.exit_code == 2 and f"--teacher {CALLABLE} (if you trust it)" in result.stderr
    result = CliRunner().invoke(cli, ["distill", "verify", str(tmp_path / "store"), "-n", "4", "--teacher", CALLABLE])
    assert result.exit_code == 0, result.output


def test_teacher_spec_errors(corpus, tmp_path):
    from auricle.distill.teachers import TeacherSpec, load_teacher

    assert TeacherSpec.parse("ced-mini@2.5") == TeacherSpec("ced-mini", 2.5)
    assert TeacherSpec.parse("pkg.mod:fn") == TeacherSpec("pkg.mod:fn", 1.0)
    with pytest.raises(DistillError, match="cannot import"):
        load_teacher("no_such_module_xyz:fn")
    with pytest.raises(DistillError, match="not a callable"):
        load_teacher("distill_helpers:SOURCES")
    with pytest.raises(CheckpointError, match=r"^\./nope\.pt: teacher weights not found$"):
        load_teacher("./nope.pt")  # was "unknown model (available: ced-tiny, ...)"
    for bad in ("abc", "-1"):
        with pytest.raises(DistillError, match=f"the weight after '@' must be a positive number, not '{bad}'"):
            TeacherSpec.parse(f"{corpus['teacher']}@{bad}")
    with pytest.raises(DistillError, match="teacher weight must be a positive finite number"):
        TeacherSpec.parse("ced-mini@1e400")  # inf: NaN targets, and a manifest with Infinity (not JSON)
    result = CliRunner().invoke(cli, ["distill", "teach", "--shards", str(corpus["shards"]), "--teacher",
                                      str(tmp_path / "missing.pt"), "--out", str(tmp_path / "s")])
    assert result.exit_code == 2 and "missing.pt" in result.stderr  # bad input, as for `auricle tag`
    result = CliRunner().invoke(cli, ["distill", "teach", "--shards", str(corpus["shards"]), "--teacher",
                                      str(corpus["teacher"]), "--top-k", "600", "--out", str(tmp_path / "k")])
    assert result.exit_code == 2 and not (tmp_path / "k").exists()
    assert "--top-k 600: the teachers score 527 classes; give at most 527" in result.stderr


def test_an_unreachable_teacher_names_the_option_that_takes_a_file(corpus, tmp_path, monkeypatch):
    import huggingface_hub

    def offline(repo_id, filename, **options):
        raise FileNotFoundError(f"{filename} is not in the local cache")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    result = CliRunner().invoke(cli, ["distill", "teach", "--shards", str(corpus["shards"]), "--teacher", "ced-base",
                                      "--out", str(tmp_path / "s")])
    assert result.exit_code == 2
    [line] = result.stderr.splitlines()
    assert line.startswith("auricle: error: ced-base: weights are not in the local cache")
    assert line.endswith("pass --teacher PATH (the weights file or folder)") and "--checkpoint" not in line


@pytest.mark.integration
def test_teach_resumes_after_sigkill_with_no_loss_and_no_duplicates(corpus, tmp_path):
    base = [sys.executable, "-m", "auricle", "distill", "teach", "--shards", str(corpus["shards"]),
            "--teacher", str(corpus["teacher"]), "--epochs", "3", "--top-k", "5", "--batch-size", "1",
            "--threads", "1", *AUGMENT]
    killed = tmp_path / "killed"
    process = subprocess.Popen([*base, "--out", str(killed)], env=_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if len(list((killed / "targets").glob("*.npz"))) >= 2:
            break
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()
    done_before = len(list((killed / "targets").glob("*.npz")))
    total = 3 * len(ShardSet.open(corpus["shards"]).shards)
    assert 2 <= done_before < total, "the run must have been killed part-way"
    assert not TargetStore.open(killed).manifest["complete"]

    resumed = subprocess.run([*base, "--out", str(killed), "--resume"], env=_env(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"in {total - done_before} units ({done_before} already done)" in resumed.stderr
    assert TargetStore.open(killed).manifest["complete"]
    assert not list((killed / "targets").glob("*.tmp*"))

    from auricle.distill.augment import AugmentConfig
    from auricle.distill.teach import TeachConfig, teach

    augment = AugmentConfig(gain_db=6, mixup_prob=0.5, time_mask=30, freq_mask=8)
    teach(corpus["shards"], tmp_path / "whole", [str(corpus["teacher"])], TeachConfig(3, 5, 0, 7, augment=augment))
    _same_store(killed, tmp_path / "whole")


@pytest.mark.integration
def test_teach_under_torchrun_with_two_ranks(corpus, tmp_path):
    args = ["--shards", str(corpus["shards"]), "--teacher", str(corpus["teacher"]), "--epochs", "2",
            "--top-k", "5", "--threads", "1", *AUGMENT]
    result = torchrun(["--standalone", "--nproc_per_node", "2", "-m", "auricle", "distill", "teach", *args,
                       "--out", str(tmp_path / "two")], tmp_path / "logs", _env(), timeout=300)
    assert result.returncode == 0, failure_report(result, tmp_path / "logs")
    shards = ShardSet.open(corpus["shards"])
    units = [(shard, epoch) for epoch in range(2) for shard in shards.shards]
    rank1 = units[1::2]
    views = sum(len(shards.keys(shard)) for shard, _ in rank1)
    assert f"rank 1 of 2: {views} views in {len(rank1)} units (0 already done)" in result.stderr
    assert "on rank 0 of 2" in result.stderr
    assert TargetStore.open(tmp_path / "two").manifest["complete"]
    single = CliRunner().invoke(cli, ["distill", "teach", *args, "--out", str(tmp_path / "one")])
    assert single.exit_code == 0, single.output
    _same_store(tmp_path / "one", tmp_path / "two")


@pytest.mark.integration
def test_under_torchrun_the_job_stops_when_its_first_units_all_fail(corpus, tmp_path):
    """The rule counted per rank: with three units over two ranks (two and one) no rank reached three."""
    args = ["--shards", str(corpus["shards"]), "--teacher", "distill_helpers:misshapen_teacher", "--top-k", "3",
            "--threads", "1", "--out", str(tmp_path / "store"), *NO_MASKS]
    result = torchrun(["--standalone", "--nproc_per_node", "2", "-m", "auricle", "distill", "teach", *args],
                      tmp_path / "logs", _env(), timeout=300)
    assert result.returncode == 1, failure_report(result, tmp_path / "logs")
    assert result.stderr.count("the first 3 units of the job all failed") == 2, result.stderr
    # Rank 0's first three units fail while rank 1's succeed: not a broken teacher for the job, so both go on.
    args = [*args[:3], "distill_helpers:rank0_broken_teacher", *args[4:-len(NO_MASKS) - 2], "--epochs", "2",
            "--out", str(tmp_path / "half"), *NO_MASKS]
    result = torchrun(["--standalone", "--nproc_per_node", "2", "-m", "auricle", "distill", "teach", *args],
                      tmp_path / "logs2", _env(), timeout=300)
    assert result.returncode == 1, failure_report(result, tmp_path / "logs2")
    assert "all failed" not in result.stderr and "rank 1 of 2: " in result.stderr
    assert "auricle: 3 units failed" in result.stderr and result.stderr.count("broken on rank 0") == 3


def test_codecs_round_trip_within_their_step():
    p = np.concatenate([np.linspace(0, 1, 1001), [1e-5, 3e-4, 0.0123]]).astype(np.float32)
    for codec, bound in (("sqrt-u8", lambda q: np.sqrt(q) / 255 + 1 / 260100 + 1e-7), ("u16", lambda q: 7.7e-6),
                         ("f16", lambda q: q * 2**-11 + 6e-8), ("f32", lambda q: 0.0)):
        decoded = decode_values(encode_values(p, codec), codec)
        assert np.all(np.abs(decoded - p) <= bound(p)), codec


@pytest.mark.integration
def test_a_softmax_teacher_is_scored_with_its_own_activation():
    from auricle.distill.teachers import ced_probabilities_from_mel
    from auricle.models.ced import CED, CEDConfig

    torch.manual_seed(0)
    network = CED(CEDConfig(embed_dim=64, num_heads=1, depth=1, num_classes=10, head_activation="softmax")).eval()
    waveform = torch.randn(2, 16000) * 0.1
    scores = ced_probabilities_from_mel(network, network.spectrogram(waveform))
    torch.testing.assert_close(scores.sum(dim=-1), torch.ones(2))
    with torch.inference_mode():
        torch.testing.assert_close(scores, network(waveform))


def test_checkpoint_teachers_score_on_the_fused_cpu_encoder(tiny_checkpoint):
    from auricle.distill.teachers import load_teacher
    from auricle.engines.fused import fused_supported

    teacher = load_teacher(str(tiny_checkpoint))
    assert (teacher.encoder is not None) == fused_supported()
    waveforms = torch.randn(2, 48000, generator=torch.Generator().manual_seed(1)) * 0.1
    with torch.inference_mode():
        expected = teacher.network(waveforms)
    torch.testing.assert_close(teacher.probabilities(waveforms), expected, atol=1e-6, rtol=1e-5)


@pytest.mark.integration
def test_teach_in_bf16_records_it_verifies_in_it_and_resumes_only_in_it(corpus, tmp_path):
    base = ["distill", "teach", "--shards", str(corpus["shards"]), "--teacher", str(corpus["teacher"]),
            "--top-k", "5", "--epochs", "2", *NO_MASKS]
    stores = {}
    for precision in ("fp32", "bf16"):
        stores[precision] = tmp_path / precision
        result = CliRunner().invoke(cli, [*base, "--out", str(stores[precision]), "--precision", precision])
        assert result.exit_code == 0, result.output
    teachers = {p: TargetStore.open(store).manifest["teachers"][0] for p, store in stores.items()}
    assert "precision" not in teachers["fp32"]  # fp32 stores are what they were before the option existed
    assert teachers["bf16"]["precision"] == "bf16"
    # verify recomputes in the store's precision, so the bf16 store passes as the fp32 one does.
    from auricle.distill.verify import load_store_teachers

    assert load_store_teachers(TargetStore.open(stores["bf16"])).teachers[0].identity["precision"] == "bf16"
    for store in stores.values():
        result = CliRunner().invoke(cli, ["distill", "verify", str(store), "--sample", "4", "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["passed"] == 4
    # bf16 targets are close to fp32's, not the same numbers.
    fp32, bf16 = _units(stores["fp32"]), _units(stores["bf16"])
    top1 = np.mean([np.array_equal(fp32[u].indices[:, 0], bf16[u].indices[:, 0]) for u in fp32])
    errors = [np.abs(fp32[u].probabilities[:, 0] - bf16[u].probabilities[:, 0]).max() for u in fp32]
    assert top1 >= 0.5 and max(errors) < 0.05
    result = CliRunner().invoke(cli, [*base, "--out", str(stores["bf16"]), "--resume"])
    assert result.exit_code == 2 and "other teachers (teacher 1: precision)" in result.stderr


@pytest.mark.integration
def test_teachers_in_bf16_and_int8_agree_with_fp32(tiny_checkpoint):
    from auricle.distill.teachers import load_teacher

    waveforms = torch.randn(3, 32000, generator=torch.Generator().manual_seed(2)) * 0.1
    reference = load_teacher(str(tiny_checkpoint)).probabilities(waveforms)
    for precision in ("bf16", "int8"):
        teacher = load_teacher(str(tiny_checkpoint), precision=precision)
        assert teacher.identity["precision"] == precision
        scores = teacher.probabilities(waveforms)
        assert scores.dtype == torch.float32 and not torch.equal(scores, reference)
        assert (scores - reference).abs().max() < 0.05, precision
    with pytest.raises(DistillError, match="teacher precision must be one of fp32, bf16, int8"):
        load_teacher(str(tiny_checkpoint), precision="fp16")


PLANTED = '''
from pathlib import Path
Path(__file__).with_name("PLANTED_RAN").write_text("the manifest's module ran")
def run(waveforms):
    raise SystemExit("planted")
'''


def _crafted_store(corpus, tmp_path, identity: dict) -> Path:
    """A real store whose manifest then names a planted module that sits beside it (importable from the store)."""
    store_dir = tmp_path / "crafted"
    result = CliRunner().invoke(cli, ["distill", "teach", "--shards", str(corpus["shards"]), "--teacher",
                                      str(corpus["teacher"]), "--out", str(store_dir), "--top-k", "3"])
    assert result.exit_code == 0, result.output
    (store_dir / "planted_teacher.py").write_text(PLANTED)
    manifest = json.loads((store_dir / "manifest.json").read_text())
    manifest["teachers"] = [dict({"spec": "planted_teacher:run", "kind": "callable", "weight": 1.0}, **identity)]
    (store_dir / "manifest.json").write_text(json.dumps(manifest))
    return store_dir


@pytest.mark.integration
def test_verify_never_imports_a_module_named_by_the_store(corpus, tmp_path, monkeypatch):
    """`python -m auricle distill verify .` in a crafted store ran the code its manifest named."""
    from auricle.distill import file_sha256

    store_dir = _crafted_store(corpus, tmp_path, {})
    marker = store_dir / "PLANTED_RAN"
    refusal = (f"auricle: error: {Path('.') / 'manifest.json'}: names the teacher planted_teacher:run, code that "
               "verify imports only when given as --teacher planted_teacher:run (if you trust it)")
    monkeypatch.chdir(store_dir)
    monkeypatch.syspath_prepend(str(store_dir))
    result = CliRunner().invoke(cli, ["distill", "verify", "."])
    assert result.exit_code == 2 and result.stderr.strip() == refusal and not marker.exists()
    # As the report had it: a fresh interpreter in the store, whose folder is first on sys.path.
    completed = subprocess.run([sys.executable, "-m", "auricle", "distill", "verify", "."], cwd=store_dir,
                               capture_output=True, text=True, env=_env(), timeout=120)
    assert completed.returncode == 2 and completed.stderr.strip() == refusal and not marker.exists()
    # Named with --teacher, it still needs the hash the store records, checked before the import ...
    result = CliRunner().invoke(cli, ["distill", "verify", ".", "--teacher", "planted_teacher:run"])
    assert result.exit_code == 2 and not marker.exists()
    assert result.stderr.strip() == ("auricle: error: teacher planted_teacher:run: the store records no "
                                     "module_sha256, so it cannot be checked; refused")
    # ... and a hash other than the module's is refused before the import too.
    manifest = json.loads(Path("manifest.json").read_text())
    manifest["teachers"][0]["module_sha256"] = "0" * 64
    Path("manifest.json").write_text(json.dumps(manifest))
    result = CliRunner().invoke(cli, ["distill", "verify", ".", "--teacher", "planted_teacher:run"])
    assert result.exit_code == 1 and "module_sha256 is now" in result.stderr and not marker.exists()
    assert file_sha256(store_dir / "planted_teacher.py") in result.stderr


def test_verify_refuses_a_checkpoint_teacher_without_its_sha256(corpus, tmp_path):
    store_dir = tmp_path / "store"
    result = CliRunner().invoke(cli, ["distill", "teach", "--shards", str(corpus["shards"]), "--teacher",
                                      str(corpus["teacher"]), "--out", str(store_dir), "--top-k", "3"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((store_dir / "manifest.json").read_text())
    del manifest["teachers"][0]["sha256"]
    (store_dir / "manifest.json").write_text(json.dumps(manifest))
    result = CliRunner().invoke(cli, ["distill", "verify", str(store_dir)])
    assert result.exit_code == 2 and result.stderr.strip() == (
        f"auricle: error: teacher {corpus['teacher']}: the store records no sha256, so it cannot be checked; refused")


def test_resume_redoes_a_truncated_unit_and_verify_names_every_unreadable_one(corpus, tmp_path):
    """A unit file cut short counted as done, --resume never repaired it, and verify stopped at the first."""
    store_dir = tmp_path / "store"
    args = ["distill", "teach", "--shards", str(corpus["shards"]), "--teacher", str(corpus["teacher"]),
            "--top-k", "3", "--epochs", "2", "--out", str(store_dir)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    store = TargetStore.open(store_dir)
    before = _units(store_dir)
    cut = store.units()[:2]
    for unit in cut:
        path = store.unit_path(*unit)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    result = CliRunner().invoke(cli, ["distill", "verify", str(store_dir), "--sample", "2"])
    assert result.exit_code == 1, result.output
    for unit in cut:
        assert f"auricle: error: {store.unit_path(*unit)}: unreadable targets" in result.stderr
    result = CliRunner().invoke(cli, [*args, "--resume"])
    assert result.exit_code == 0, result.output
    assert f"{len(cut) * 2} views in {len(cut)} units ({len(store.units()) - len(cut)} already done)" in result.stderr
    assert result.stderr.count("; done again") == len(cut)
    after = _units(store_dir)
    for unit in before:
        assert np.array_equal(before[unit].codes, after[unit].codes) and np.array_equal(
            before[unit].indices, after[unit].indices), unit
    result = CliRunner().invoke(cli, ["distill", "verify", str(store_dir), "--sample", "2"])
    assert result.exit_code == 0, result.output
