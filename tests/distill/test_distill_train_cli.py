"""`auricle distill train` end to end: real shards, a real (tiny) teacher pass, the CLI, `auricle tag`."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from click.testing import CliRunner

from torchrun_support import failure_report, torchrun
from auricle.cli import cli

TINY = {"embed_dim": 64, "num_heads": 1, "depth": 1}


@pytest.fixture(scope="module")
def distill_data(tmp_path_factory):
    """Shards of 0.5 s chunks from six 2 s recordings, and a 2-epoch top-5 store of a tiny random teacher."""
    from auricle.distill.augment import AugmentConfig
    from auricle.distill.shards import ShardConfig, write_shards
    from auricle.distill.teach import TeachConfig, teach
    from auricle.models.ced import CED, CEDConfig
    from auricle.models.checkpoints import save_checkpoint

    root = tmp_path_factory.mktemp("distill")
    rng = np.random.default_rng(1)
    sources = []
    t = np.arange(32000) / 16000
    for i in range(6):
        wave = 0.3 * np.sin(2 * np.pi * (200 + 900 * i) * t) + 0.02 * rng.standard_normal(t.size)
        path = root / f"clip{i}.wav"
        soundfile.write(path, wave.astype(np.float32), 16000)
        sources.append(str(path))
    write_shards(sources, root / "shards", ShardConfig(chunk_seconds=0.5, chunks_per_shard=8))
    torch.manual_seed(0)
    teacher = CED(CEDConfig(**TINY))
    with torch.no_grad():  # random weights give near-flat outputs; spread them so top-k means something
        teacher.outputlayer[1].weight.mul_(8)
    teacher_path = save_checkpoint(teacher, root / "teacher.safetensors", name="tiny-teacher")
    augment = AugmentConfig(shift=0.3, gain_db=3.0, time_mask=10, freq_mask=8, mixup_prob=0.5)
    teach(root / "shards", root / "store", [str(teacher_path)],
          TeachConfig(epochs=2, top_k=5, seed=11, batch_size=8, augment=augment))
    student = root / "student.json"
    student.write_text(json.dumps(TINY))
    return root


def _train_args(root: Path, out: Path, *extra: str) -> list[str]:
    return ["distill", "train", "--shards", str(root / "shards"), "--targets", str(root / "store"),
            "--out", str(out), "--student", str(root / "student.json"), "--epochs", "2", "--batch-size", "4",
            "--checkpoint-every", "2", "--eval-every", "2", "--holdout-fraction", "0.2", "--holdout-max", "4",
            "--log-every", "1", "--threads", "1", "--quiet", "--device", "cpu", *extra]


def _invoke(args: list[str]):
    return CliRunner().invoke(cli, args, catch_exceptions=False)


@pytest.mark.integration
def test_train_then_tag_with_the_student(distill_data, tmp_path):
    out = tmp_path / "run"
    labelled = tmp_path / "eval.csv"
    labelled.write_text("file,labels\n" + "".join(
        f"clip{i}.wav,{'Speech' if i % 2 else 'Music;Sine wave'}\n" for i in range(6)))
    result = _invoke(_train_args(distill_data, out, "--mixup-alpha", "0.4", "--fill", "last_mean",
                                 "--eval-csv", str(labelled), "--eval-audio-dir", str(distill_data)))
    assert result.exit_code == 0, result.output
    assert "student:" in result.output and "agreement_top1" in result.output and " map " in result.output
    with open(out / "eval.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert all(0 < float(row["map"]) <= 1 and row["score"] == row["map"] for row in rows)
    config = json.loads((out / "config.json").read_text())
    assert config["total_steps"] == 2 * config["steps_per_epoch"] > 0
    tagged = _invoke(["tag", "--checkpoint", str(out / "student.safetensors"), str(distill_data / "clip0.wav"),
                      "--format", "json", "--top-k", "3"])
    assert tagged.exit_code == 0, tagged.output
    assert len(json.loads(tagged.output)[0]["tags"]) == 3


@pytest.mark.integration
def test_cli_resume_after_stop_matches_an_uninterrupted_run(distill_data, tmp_path):
    from safetensors.torch import load_file

    from auricle.distill.checkpointing import list_states

    assert _invoke(_train_args(distill_data, tmp_path / "whole")).exit_code == 0
    # Without --quiet: stderr is not a terminal here, so there must be no progress bar (as teach).
    verbose = [arg for arg in _train_args(distill_data, tmp_path / "split", "--stop-after-steps", "3")
               if arg != "--quiet"]
    stopped = _invoke(verbose)
    assert stopped.exit_code == 0 and "stopped after step 3 of" in stopped.stderr
    assert "continue with --resume" in stopped.stderr and "%|" not in stopped.stderr and "\r" not in stopped.stderr
    # Step 3 lies between the checkpoints at 2 and 4: the stop itself must be the resume point.
    assert [step for step, _ in list_states(tmp_path / "split" / "state")] == [2, 3]
    again = _invoke(_train_args(distill_data, tmp_path / "split"))
    assert again.exit_code == 2 and "--resume" in again.output
    resumed = _invoke(_train_args(distill_data, tmp_path / "split", "--resume"))
    assert resumed.exit_code == 0, resumed.output
    whole = load_file(str(tmp_path / "whole" / "student.safetensors"))
    split = load_file(str(tmp_path / "split" / "student.safetensors"))
    assert all(torch.equal(whole[key], split[key]) for key in whole)


def test_train_help_shows_the_torchrun_command_whole():
    result = CliRunner().invoke(cli, ["distill", "train", "--help"], terminal_width=60)
    assert result.exit_code == 0
    lines = [line.strip() for line in result.output.splitlines()]
    assert "torchrun --standalone --nproc-per-node 2 -m auricle distill train ..." in lines  # not wrapped


def test_the_student_is_trained_on_the_views_the_teacher_scored(distill_data):
    """Score the trainer's rendering of each view with the teacher: it must give the stored top-k."""
    from auricle.distill.teachers import load_teacher
    from auricle.distill.views import StoreViews

    views = StoreViews(distill_data / "shards", distill_data / "store")
    teacher = load_teacher(str(distill_data / "teacher.safetensors"))
    checked = 0
    for epoch in views.stored_epochs:
        for shard in views.shard_names:
            stored = views.targets(shard, epoch)
            for key in views.keys(shard)[:4]:
                waveform, params = views.view(shard, key, epoch, views.seed)
                mel = views.mel([waveform], [params])
                probabilities = teacher.probabilities(torch.from_numpy(waveform)[None], mel)[0].numpy()
                indices, values = stored[key]
                assert np.abs(probabilities[indices] - values).max() < 0.005
                # The stored classes are the teacher's top 5 (up to near-ties that thread counts can flip).
                assert probabilities[indices].min() >= np.sort(probabilities)[-5] - 1e-4
                checked += 1
    assert checked == 2 * len(views.shard_names) * 4
    # A different seed (what --inconsistent uses) gives other views.
    shard = views.shard_names[0]
    key = views.keys(shard)[0]
    a, _ = views.view(shard, key, 0, views.seed)
    b, _ = views.view(shard, key, 0, views.seed + 1)
    assert not np.array_equal(a, b)


def test_targets_of_another_shard_set_are_refused(distill_data, tmp_path):
    from auricle.distill.shards import ShardConfig, write_shards

    write_shards([str(distill_data / "clip0.wav")], tmp_path / "other", ShardConfig(chunk_seconds=0.5))
    args = _train_args(distill_data, tmp_path / "run")
    args[args.index("--shards") + 1] = str(tmp_path / "other")
    result = _invoke(args)
    assert result.exit_code == 2
    assert "another shard set" in result.output and "Traceback" not in result.output


def test_train_refuses_an_out_that_holds_other_things(distill_data, tmp_path):
    # The target store itself as --out: the student's files would be mixed into it.
    result = _invoke(_train_args(distill_data, distill_data / "store"))
    assert result.exit_code == 2 and "holds files that are not a training run's (manifest.json, targets)" in result.output
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    result = _invoke(_train_args(distill_data, occupied, "--resume"))
    assert result.exit_code == 2 and "(notes.txt); choose an empty or new --out" in result.output
    assert sorted(path.name for path in occupied.iterdir()) == ["notes.txt"]


def test_half_written_files_a_killed_run_left_do_not_block_its_out(distill_data, tmp_path):
    # kill -9 in the middle of an atomic write leaves NAME.PID.tmp: still a training run's folder.
    out = tmp_path / "left"
    out.mkdir()
    (out / "config.json.999.tmp").write_text("{")
    (out / "result.json.12.tmp").write_text("")
    result = _invoke(_train_args(distill_data, out, "--epochs", "1", "--resume"))
    assert result.exit_code == 0, result.output
    names = sorted(path.name for path in out.iterdir())
    assert "config.json" in names and not [name for name in names if name.endswith(".tmp")]
    # A name that merely looks similar is someone else's.
    (out / "notes.json.tmp").write_text("mine")
    result = _invoke(_train_args(distill_data, out, "--epochs", "1", "--resume"))
    assert result.exit_code == 2 and "(notes.json.tmp)" in result.output


@pytest.mark.integration
def test_two_processes_under_torchrun(distill_data, tmp_path):
    out = tmp_path / "ddp"
    arguments = ["--standalone", "--nproc-per-node", "2", "-m", "auricle",
                 *_train_args(distill_data, out, "--epochs", "1", "--batch-size", "2")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # Stopped early, the job says so once (both ranks did).
    completed = torchrun([*arguments, "--stop-after-steps", "1"], tmp_path / "logs", env, timeout=120)
    assert completed.returncode == 0, failure_report(completed, tmp_path / "logs")
    assert completed.stderr.count("stopped after step 1 of") == 1, completed.stderr
    completed = torchrun([*arguments, "--resume"], tmp_path / "logs2", env, timeout=120)
    assert completed.returncode == 0, failure_report(completed, tmp_path / "logs2")
    config = json.loads((out / "config.json").read_text())
    assert config["world_size"] == 2
    assert (out / "student.safetensors").is_file()
    assert completed.stdout.count("student:") == 1  # only rank 0 reports and writes


@pytest.mark.integration
def test_sigkill_in_the_middle_of_training_then_resume_matches_an_uninterrupted_run(distill_data, tmp_path):
    import signal
    import time

    from safetensors.torch import load_file

    args = ["--epochs", "8"]
    assert _invoke(_train_args(distill_data, tmp_path / "whole", *args)).exit_code == 0
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "auricle", *_train_args(distill_data, out, *args)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 120
    while not list((out / "state").glob("state-*.pt")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (out / "student.safetensors").exists()
    resumed = _invoke(_train_args(distill_data, out, *args, "--resume"))
    assert resumed.exit_code == 0, resumed.output
    whole = load_file(str(tmp_path / "whole" / "student.safetensors"))
    killed = load_file(str(out / "student.safetensors"))
    assert all(torch.equal(whole[key], killed[key]) for key in whole)
