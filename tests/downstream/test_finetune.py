"""`auricle finetune`: a few steps on synthetic tones with a tiny encoder; resume, partial training, DDP."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import auricle
from auricle.cli import cli
from auricle.downstream.finetune import (
    EpochSampler, FinetuneConfig, TrainingNet, draw_augment_plan, freeze_for_partial, with_new_head,
)
from auricle.models.checkpoints import build_model, read_checkpoint
from auricle.models.files import find_config
from conftest import ROOT
from downstream_support import TINY, tiny_encoder, tone_manifest
from torchrun_support import failure_report, torchrun

FAST = ["--threads", "1", "--batch-size", "8", "--no-progress", "--warmup", "0.5"]


@pytest.fixture(scope="module")
def tones(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tones")
    return tone_manifest(folder), tiny_encoder(folder / "tiny.safetensors")


def _finetune(manifest, encoder, output, *extra):
    return CliRunner().invoke(cli, ["finetune", str(manifest), "--checkpoint", str(encoder), "-o", str(output),
                                    *FAST, *map(str, extra)], catch_exceptions=False)


@pytest.mark.integration
def test_finetune_trains_saves_and_the_result_tags(tones, tmp_path):
    manifest, encoder = tones
    output = tmp_path / "run"
    result = _finetune(manifest, encoder, output, "--epochs", "2", "--mixup", "0.3", "--balanced",
                       "--valid-fraction", "0.2")
    assert result.exit_code == 0, result.output
    assert "18 training clips" not in result.stderr  # 20% of train is held out per class
    assert "15 training clips, 3 validation" in result.stderr and "6 test" in result.stderr
    summary = json.loads(result.stdout)
    assert summary["epochs_run"] == 2 and summary["test"]["examples"] == 6
    assert 0 <= summary["test"]["accuracy"] <= 1
    saved = json.loads((output / "result.json").read_text())
    assert [record["epoch"] for record in saved["history"]] == [1, 2]
    meta = find_config(output / "model.safetensors")  # in the file's metadata: no model.json beside it
    assert meta["labels"] == ["high", "low", "mid"] and meta["config"]["head_activation"] == "softmax"
    assert meta["config"]["embed_dim"] == TINY.embed_dim

    tagged = CliRunner().invoke(cli, ["tag", "--checkpoint", str(output / "model.safetensors"), "-f", "json",
                                      "-k", "3", str(manifest.parent / "mid" / "mid_1.wav")])
    assert tagged.exit_code == 0, tagged.output
    tags = json.loads(tagged.stdout)
    tags = tags[0] if isinstance(tags, list) else tags
    assert sorted(tag["label"] for tag in tags["tags"]) == ["high", "low", "mid"]
    assert sum(tag["score"] for tag in tags["tags"]) == pytest.approx(1.0, abs=1e-5)


def test_files_that_cannot_be_decoded_are_left_out_and_reported(tones, tmp_path):
    import shutil

    manifest, encoder = tones
    data = tmp_path / "data"
    shutil.copytree(manifest.parent, data, ignore=shutil.ignore_patterns("*.safetensors", "*.json"))
    (data / "low" / "broken.wav").write_bytes(b"RIFF, but nothing after it")
    (data / "high" / "empty.wav").write_bytes(b"")
    with (data / "tones.csv").open("a") as handle:
        handle.write("low/broken.wav,low,train\nhigh/empty.wav,high,test\n")
    output = tmp_path / "run"
    result = _finetune(data / "tones.csv", encoder, output, "--epochs", "1", "--valid-fraction", "0.2")
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("auricle: error:")]
    assert len(errors) == 2 and all(line.endswith("(left out)") for line in errors)
    assert "broken.wav" in errors[0] and "empty.wav" in errors[1]
    assert result.stderr.splitlines()[-1] == ("auricle: 2 files could not be decoded and were left out "
                                              "(listed in result.json)")
    summary = json.loads(result.stdout)  # trained and scored on the rest
    assert summary["epochs_run"] == 1 and summary["test"]["examples"] == 6
    assert len(json.loads((output / "result.json").read_text())["failures"]) == 2
    assert (output / "model.safetensors").is_file()


@pytest.mark.integration
def test_resume_continues_exactly_where_it_stopped(tones, tmp_path):
    manifest, encoder = tones
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    options = ("--epochs", "2", "--time-masks", "1", "--mixup", "0.2")
    assert _finetune(manifest, encoder, straight, *options).exit_code == 0
    first = _finetune(manifest, encoder, interrupted, *options, "--stop-after", "1")
    assert first.exit_code == 0 and json.loads(first.stdout)["test"] is None
    again = _finetune(manifest, encoder, interrupted, *options)
    assert again.exit_code == 2 and "a run is already here; pass --resume" in again.stderr
    resumed = _finetune(manifest, encoder, interrupted, *options, "--resume")
    assert resumed.exit_code == 0 and "resumed after epoch 1" in resumed.stderr
    a = torch.load(straight / "last.pt", weights_only=True)
    b = torch.load(interrupted / "last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 2
    for key, tensor in a["model"].items():
        torch.testing.assert_close(b["model"][key], tensor, rtol=0, atol=0, msg=key)
    assert json.loads(resumed.stdout)["test"] == json.loads((straight / "result.json").read_text())["test"]


@pytest.mark.integration
def test_resume_refuses_other_settings_and_another_encoder(tones, tmp_path):
    """A new --lr was once overridden by the restored optimiser, yet recorded as the run's."""
    manifest, encoder = tones
    run = tmp_path / "run"
    assert _finetune(manifest, encoder, run, "--epochs", "3", "--stop-after", "1").exit_code == 0
    changed = _finetune(manifest, encoder, run, "--epochs", "3", "--resume", "--lr", "1e-2", "--seed", "4")
    assert changed.exit_code == 2
    assert changed.stderr.splitlines()[-1] == (
        f"auricle: error: {run / 'last.pt'}: cannot resume with other settings (learning_rate 0.0005 -> 0.01; "
        "seed 0 -> 4); use the run's settings, or another output folder")
    from dataclasses import replace

    from auricle.models.ced import CED
    from auricle.models.checkpoints import save_checkpoint

    other = save_checkpoint(CED(replace(TINY, depth=1)), tmp_path / "other.safetensors", labels=["a", "b"], name="o")
    swapped = _finetune(manifest, other, run, "--epochs", "3", "--resume")
    assert swapped.exit_code == 2 and "Traceback" not in swapped.output
    assert swapped.stderr.splitlines()[-1] == (f"auricle: error: {run / 'last.pt'}: made from another encoder than "
                                               "this one; resume with the run's --model or --checkpoint")
    longer = _finetune(manifest, encoder, run, "--epochs", "4", "--patience", "3", "--resume", "--stop-after", "1")
    assert longer.exit_code == 0, longer.output  # a longer schedule is a change a resume may make


@pytest.mark.integration
def test_bf16_autocast_trains_float32_weights_and_a_resumed_auto_run_keeps_its_precision(tones, tmp_path,
                                                                                          monkeypatch):
    from auricle import devices
    from auricle.inference.tuning import CpuFeatures

    manifest, encoder = tones
    bf16 = _finetune(manifest, encoder, tmp_path / "bf16", "--epochs", "1", "--precision", "bf16")
    assert bf16.exit_code == 0, bf16.output
    assert "training in bf16 autocast" in bf16.stderr
    assert json.loads((tmp_path / "bf16" / "result.json").read_text())["precision"] == "bf16"
    state = torch.load(tmp_path / "bf16" / "last.pt", weights_only=True)
    assert state["bf16"] is True
    assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())

    # Started in fp32; resumed where auto would mean bf16: it stays fp32, and says so.
    run = tmp_path / "fp32"
    assert _finetune(manifest, encoder, run, "--epochs", "3", "--precision", "fp32", "--stop-after", "1").exit_code == 0
    monkeypatch.setattr(devices, "cpu_features", lambda: CpuFeatures(2, True, True, True, True))
    resumed = _finetune(manifest, encoder, run, "--epochs", "3", "--resume", "--stop-after", "1")
    assert resumed.exit_code == 0, resumed.output
    assert "--precision auto keeps this run's fp32" in resumed.stderr and "training in bf16" not in resumed.stderr
    assert json.loads((run / "result.json").read_text())["precision"] == "fp32"
    # Asked for by name, the other precision applies from here on.
    switched = _finetune(manifest, encoder, run, "--epochs", "3", "--resume", "--precision", "bf16")
    assert switched.exit_code == 0 and "continuing in bf16" in switched.stderr
    assert json.loads((run / "result.json").read_text())["precision"] == "bf16"


def test_partial_finetuning_freezes_earlier_blocks(tones, tmp_path):
    manifest, encoder = tones
    output = tmp_path / "partial"
    result = _finetune(manifest, encoder, output, "--epochs", "1", "--train-blocks", "1", "--lr", "1e-2")
    assert result.exit_code == 0, result.output
    before = read_checkpoint(encoder).state_dict
    after = torch.load(output / "last.pt", weights_only=True)["model"]
    for key in ("patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "init_bn.running_mean"):
        torch.testing.assert_close(after[key], before[key], rtol=0, atol=0, msg=key)
    assert not torch.equal(after["blocks.1.attn.qkv.weight"], before["blocks.1.attn.qkv.weight"])
    too_many = _finetune(manifest, encoder, tmp_path / "x", "--epochs", "1", "--train-blocks", "3")
    assert too_many.exit_code == 2 and "--train-blocks 3: the encoder has only 2 blocks" in too_many.stderr


def test_finetune_usage_errors(tones, tmp_path):
    manifest, encoder = tones
    runner = CliRunner()
    both = runner.invoke(cli, ["finetune", str(manifest), "-o", str(tmp_path / "a"), "--from-scratch",
                               "--checkpoint", str(encoder)])
    assert both.exit_code == 2 and "exclude each other" in both.stderr
    split = runner.invoke(cli, ["finetune", str(manifest), "-o", str(tmp_path / "b"), "--checkpoint", str(encoder),
                                "--valid-split", "dev"])
    assert split.exit_code == 2 and "unknown split 'dev'" in split.stderr
    header, *rows = manifest.read_text().splitlines()
    first_of_each = {row.split(",")[1]: row for row in reversed(rows) if row.endswith(",train")}
    few = manifest.with_name("few.csv")  # one training clip of each class: 10% of one clip is none
    few.write_text("\n".join([header, *first_of_each.values()]) + "\n")
    small = runner.invoke(cli, ["finetune", str(few), "-o", str(tmp_path / "c"), "--checkpoint", str(encoder)])
    assert small.exit_code == 2 and "raise --valid-fraction" in small.stderr, small.stderr


def test_training_logits_match_the_served_model_and_ignore_padding_in_pooling():
    torch.manual_seed(0)
    network = with_new_head(auricle.models.ced.CED(TINY), 3, "softmax").eval()
    net = TrainingNet(network)
    clip = torch.randn(47 * 160)  # exactly 48 frames: three full time patches, no padding
    with torch.no_grad():
        training = net(clip[None], torch.tensor([len(clip)]), None)
        served = network.forward_head(network.encode(clip[None])[0])
        torch.testing.assert_close(training, served)
        # In a batch padded to 1 s, the pooled mean covers only the clip's three time patches.
        padded = torch.zeros(2, 16000)
        padded[0, : len(clip)] = clip
        tokens = network.forward_features(network.normalize(network.spectrogram(padded)))
        grid = tokens.reshape(2, 4, -1, TINY.embed_dim)
        expected = network.outputlayer(grid[0, :, :3].mean(dim=(0, 1)))
        together = net(padded, torch.tensor([len(clip), 16000]), None)
        torch.testing.assert_close(together[0], expected)

        # Under bf16 autocast the encoder and head round to bf16 but the log-mel does not: the logits stay close.
        seen = []
        hook = network.init_bn.register_forward_hook(lambda module, args, output: seen.append(output))
        net(padded, torch.tensor([len(clip), 16000]), None)
        half = TrainingNet(network, bf16=True)(padded, torch.tensor([len(clip), 16000]), None)
        hook.remove()
        assert seen[1].dtype == torch.float32 and torch.equal(seen[0], seen[1])
        assert half.dtype == torch.float32
        torch.testing.assert_close(half, together, rtol=0.05, atol=0.05)
        assert not torch.equal(half, together)


def test_sampler_is_seeded_balanced_and_sharded():
    targets = np.eye(2, dtype=np.float32)[[0] * 90 + [1] * 10]
    plain = EpochSampler(targets, balanced=False, seed=3)
    assert sorted(plain.indices(0)) == list(range(100)) and plain.indices(0) == plain.indices(0)
    assert plain.indices(0) != plain.indices(1)
    balanced = EpochSampler(targets, balanced=True, seed=3)
    drawn = np.array(balanced.indices(0))
    assert 35 <= (drawn >= 90).sum() <= 65  # rare class drawn about half the time, not 10%
    ranks = [EpochSampler(targets, False, 3, rank, 3).indices(0) for rank in range(3)]
    assert [len(r) for r in ranks] == [34, 34, 34] and set(sum(ranks, [])) == set(range(100))


def test_augment_plan_masks_within_the_clip():
    config = FinetuneConfig(time_masks=1, time_mask_fraction=0.5, freq_masks=1, freq_mask_bands=8, mixup_alpha=0.4)
    plan = draw_augment_plan((4, 64, 101), torch.tensor([16000] * 4), config, torch.Generator().manual_seed(0))
    assert plan.keep.shape == (4, 1, 64, 101)
    assert (plan.keep == 0).any() and (plan.keep == 1).any()
    assert plan.mix_weight.min() >= 0.5 and sorted(plan.mix_order.tolist()) == [0, 1, 2, 3]


def test_freeze_head_only():
    network = with_new_head(auricle.models.ced.CED(TINY), 5, "sigmoid")
    trainable = freeze_for_partial(network, 0)
    assert {id(p) for p in trainable} == {id(p) for p in network.outputlayer.parameters()}
    assert network.config.num_classes == 5 and network.outputlayer[-1].out_features == 5


@pytest.mark.integration
def test_two_process_gloo_run(tones, tmp_path):
    """The DDP path under torchrun: two CPU processes, gloo, one epoch; rank 0 saves a loadable model."""
    manifest, encoder = tones
    output = tmp_path / "ddp"
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    arguments = ["--nproc_per_node", "2", "--master_port", "29533", "-m", "auricle", "finetune", str(manifest),
                 "--checkpoint", str(encoder), "-o", str(output), "--epochs", "1", *FAST]
    completed = torchrun(arguments, tmp_path / "logs", environment, timeout=120)
    assert completed.returncode == 0, failure_report(completed, tmp_path / "logs")
    state = torch.load(output / "last.pt", weights_only=True)
    assert len(state["generator"]) == 2  # both ranks' RNG states are in the resume point
    model = build_model(read_checkpoint(output / "model.safetensors"))
    assert model.config.num_classes == 3


def test_multi_label_finetune_uses_sigmoid_and_map(tmp_path):
    from downstream_support import tone_clips

    rows = tone_clips(tmp_path, per_class=4)
    lines = ["file,labels"] + [f"{file},{label}{';loud' if n % 2 else ''}" for n, (file, label) in enumerate(rows)]
    (tmp_path / "multi.csv").write_text("\n".join(lines) + "\n")
    encoder = tiny_encoder(tmp_path / "tiny.safetensors")
    result = _finetune(tmp_path / "multi.csv", encoder, tmp_path / "run", "--epochs", "1", "--valid-fraction", "0.25")
    assert result.exit_code == 0, result.output
    assert "(multi-label: " in result.stderr and "validation map" in result.stderr
    meta = find_config(tmp_path / "run" / "model.safetensors")
    assert meta["config"]["head_activation"] == "sigmoid" and meta["labels"] == ["high", "loud", "low", "mid"]
