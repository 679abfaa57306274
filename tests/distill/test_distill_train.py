"""The student trainer on in-memory views: it learns, resumes bit-exactly, and saves a taggable checkpoint."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from auricle.distill.augment import AugmentConfig, ViewRenderer
from auricle.distill.train import TrainConfig, TrainingError, epoch_order, rank_block, train

LABELS = ("low", "mid", "high", "noise")
SAMPLES = 8000  # 0.5 s chunks keep a step to a few milliseconds


class FakeViews:
    """The trainer's view of shards + a target store, built in memory.

    Each chunk is a tone in one of three bands or noise; the "teacher" stores
    its class with probability 0.9 and one other class with 0.05 (top-2).
    """

    def __init__(self, shards: int = 3, per_shard: int = 12, seed: int = 7, epochs: int = 2,
                 varied: bool = False) -> None:
        rng = np.random.default_rng(0)
        self.seed = seed
        self.labels = LABELS
        self.stored_epochs = list(range(epochs))
        self.augment = AugmentConfig(shift=0.2, gain_db=3.0, time_mask=8, freq_mask=6, mixup_prob=0.3)
        self.shard_names = [f"shard-{i:06d}.tar" for i in range(shards)]
        self._audio, self._targets = {}, {}
        t = np.arange(SAMPLES) / 16000
        for shard in self.shard_names:
            audio, targets = {}, {}
            for i in range(per_shard):
                key = f"{shard[:-4]}-{i:03d}"
                label = int(rng.integers(0, 4))
                if label < 3:
                    wave = 0.3 * np.sin(2 * np.pi * (300, 1500, 5000)[label] * t)
                else:
                    wave = 0.1 * rng.standard_normal(SAMPLES)
                length = SAMPLES if i % 5 else SAMPLES // 2  # a few short tails
                if varied:  # every chunk its own length, as clips of a corpus of short recordings are
                    length = SAMPLES - 160 * (i + 1)
                audio[key] = wave[:length].astype(np.float32)
                targets[key] = (np.array([label, (label + 1) % 4]), np.array([0.9, 0.05], np.float32))
            self._audio[shard] = audio
            self._targets[shard] = targets

    def keys(self, shard):
        return list(self._audio[shard])

    def targets(self, shard, epoch):
        return self._targets[shard]

    def view(self, shard, key, epoch, seed):
        renderer = ViewRenderer(self.augment, seed)
        audio = self._audio[shard]
        params = renderer.params(key, epoch, len(audio[key]), list(audio))
        return renderer.waveform(audio[key], params, audio.__getitem__), params

    def mel(self, waveforms, params):
        return ViewRenderer(self.augment, self.seed).mel(waveforms, params)

    def partner(self, shard, key, epoch, seed, index=None):
        from auricle.distill.augment import mixup_partner

        return mixup_partner(key, epoch, seed, self.augment, list(self._audio[shard]), index)[0]


@pytest.fixture()
def student_config(tmp_path) -> Path:
    path = tmp_path / "student.json"
    path.write_text(json.dumps({"embed_dim": 64, "num_heads": 1, "depth": 1}))
    return path


def _config(tmp_path, student_config, out="run", **overrides) -> TrainConfig:
    values = dict(shards="shards", targets="store", out=str(tmp_path / out), student=str(student_config),
                  epochs=2, batch_size=4, lr=3e-3, checkpoint_every=3, eval_every=2, average_best=2,
                  holdout_fraction=0.2, holdout_max=6, log_every=1, progress=False, device="cpu", mixup_alpha=0.5)
    values.update(overrides)
    return TrainConfig(**values)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


@pytest.mark.integration
def test_training_writes_logs_states_and_a_taggable_checkpoint(tmp_path, student_config):
    torch.set_num_threads(1)
    result = train(_config(tmp_path, student_config), FakeViews())
    out = tmp_path / "run"
    assert result.finished and result.steps == result.total_steps
    assert result.final_checkpoint == out / "student.safetensors"
    assert 1 <= len(result.averaged_steps) <= 2
    with open(out / "train.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["step"]) for row in rows] == list(range(1, result.total_steps + 1))
    assert all(np.isfinite(float(row["loss"])) for row in rows)
    with open(out / "eval.csv") as handle:
        evals = list(csv.DictReader(handle))
    assert evals[-1]["kind"] == "final" and evals[-1]["agreement_top1"] != ""
    assert sorted(p.name for p in (out / "state").iterdir())[-1] == f"state-{result.total_steps:08d}.pt"

    import auricle

    model = auricle.load_model(checkpoint=result.final_checkpoint)
    assert model.labels.names == LABELS
    tags = model.tag(np.zeros(16000, np.float32), 16000, top_k=2)
    assert len(tags.tags) == 2


@pytest.mark.integration
def test_the_student_learns_the_teacher_on_held_out_views(tmp_path, student_config):
    torch.set_num_threads(1)
    config = _config(tmp_path, student_config, epochs=8, eval_every=1, checkpoint_every=100, mixup_alpha=0.0,
                     head_prior=False)  # from a random head, so the first evaluation is the untrained baseline
    result = train(config, FakeViews())
    with open(tmp_path / "run" / "eval.csv") as handle:
        evals = [row for row in csv.DictReader(handle) if row["kind"] == "eval"]
    first, last = float(evals[0]["holdout_bce"]), float(evals[-1]["holdout_bce"])
    assert last < 0.7 * first, (first, last)
    assert result.final_scores["agreement_top1"] >= 0.5


@pytest.mark.integration
def test_resume_after_a_stop_gives_the_same_weights_as_an_uninterrupted_run(tmp_path, student_config):
    torch.set_num_threads(1)
    views = FakeViews()
    whole = train(_config(tmp_path, student_config, out="whole"), views)
    # Stop after step 5, between the states of steps 3 and 6: the stop keeps one of its own.
    first = train(_config(tmp_path, student_config, out="split", stop_after_steps=5), views)
    assert not first.finished and first.steps == 5 and first.final_checkpoint is None
    assert (tmp_path / "split" / "state" / "state-00000005.pt").is_file()
    second = train(_config(tmp_path, student_config, out="split", resume=True), views)
    assert second.finished
    for name in ("student.safetensors", "student-last.safetensors"):
        a, b = _weights(tmp_path / "whole" / name), _weights(tmp_path / "split" / name)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[key], b[key]) for key in a), name
    assert whole.averaged_steps == second.averaged_steps
    with open(tmp_path / "split" / "train.csv") as handle:
        steps = [int(row["step"]) for row in csv.DictReader(handle)]
    assert steps == list(range(1, whole.total_steps + 1))  # no duplicated rows after the resume


@pytest.mark.integration
def test_inconsistent_views_train_on_other_inputs(tmp_path, student_config):
    torch.set_num_threads(1)
    views = FakeViews()
    consistent = train(_config(tmp_path, student_config, out="c", epochs=1, average_best=0), views)
    inconsistent = train(_config(tmp_path, student_config, out="i", epochs=1, average_best=0, inconsistent=True), views)
    a = _weights(consistent.final_checkpoint)
    b = _weights(inconsistent.final_checkpoint)
    assert not all(torch.equal(a[key], b[key]) for key in a)


def test_output_biases_start_at_the_log_odds_of_the_mean_target(tmp_path, student_config):
    from auricle.distill.train import Trainer

    trainer = Trainer(_config(tmp_path, student_config), FakeViews())
    bias = torch.sigmoid(trainer.network.outputlayer[-1].bias)
    views = FakeViews()
    dense = np.zeros((0, 4))
    for shard in views.shard_names:
        for indices, values in views.targets(shard, 0).values():
            row = np.zeros(4)
            row[indices] = values
            dense = np.vstack([dense, row])
    assert torch.allclose(bias, torch.tensor(dense.mean(0), dtype=torch.float32).clamp(1e-4, 1 - 1e-4), atol=1e-6)
    plain = Trainer(_config(tmp_path, student_config, head_prior=False), FakeViews())
    assert not torch.allclose(torch.sigmoid(plain.network.outputlayer[-1].bias), bias)


def test_bf16_autocast_runs_on_cpu(tmp_path, student_config):
    torch.set_num_threads(1)
    result = train(_config(tmp_path, student_config, epochs=1, precision="bf16", average_best=0), FakeViews())
    assert result.finished
    weights = _weights(result.final_checkpoint)
    assert all(tensor.dtype != torch.bfloat16 and torch.isfinite(tensor.float()).all() for tensor in weights.values())


@pytest.mark.integration
def test_a_resumed_auto_run_keeps_the_precision_it_started_in(tmp_path, student_config, monkeypatch, capsys):
    """A run started in bf16 (a CPU with AMX) and resumed on a machine where auto means fp32 stays bf16."""
    from auricle.distill import train as train_module

    torch.set_num_threads(1)
    views = FakeViews()
    small = dict(epochs=1, average_best=0)
    whole = train(_config(tmp_path, student_config, out="whole", precision="bf16", **small), views)
    monkeypatch.setattr(train_module, "bf16_trains_faster", lambda device: True)
    train(_config(tmp_path, student_config, out="split", stop_after_steps=3, **small), views)
    monkeypatch.setattr(train_module, "bf16_trains_faster", lambda device: False)
    resumed = train(_config(tmp_path, student_config, out="split", resume=True, **small), views)
    assert resumed.finished
    assert "keeps this run's bf16" in capsys.readouterr().err
    assert json.loads((tmp_path / "split" / "config.json").read_text())["bf16"] is True
    a, b = _weights(whole.final_checkpoint), _weights(resumed.final_checkpoint)
    assert all(torch.equal(a[key], b[key]) for key in a)  # bf16 all the way, bit for bit
    # Asking for the precision it runs in is no change; asking for another one is.
    with pytest.raises(Exception, match="precision 'bf16' -> 'fp32'"):
        train(_config(tmp_path, student_config, out="split", resume=True, precision="fp32", **small), views)


def test_refuses_to_overwrite_or_resume_with_other_settings(tmp_path, student_config):
    torch.set_num_threads(1)
    views = FakeViews()
    train(_config(tmp_path, student_config, stop_after_steps=3), views)
    with pytest.raises(TrainingError, match="--resume"):
        train(_config(tmp_path, student_config), views)
    with pytest.raises(Exception, match="batch_size 4 -> 2"):
        train(_config(tmp_path, student_config, batch_size=2, resume=True), views)


def test_paths_spelt_otherwise_are_the_same_settings(tmp_path, student_config, monkeypatch):
    """`--eval-csv dist/eval.csv` then an absolute path, or `dist/audio/`, was refused as other settings."""
    monkeypatch.chdir(tmp_path)
    typed = _config(tmp_path, student_config, eval_csv="dist/eval.csv", eval_audio_dir="dist/audio").trajectory()
    spelt = _config(tmp_path, student_config, eval_csv=str(tmp_path / "dist" / "eval.csv"), shards="./shards/",
                    eval_audio_dir="dist/audio/").trajectory()
    assert spelt == typed
    other = _config(tmp_path, student_config, eval_csv="dist/other.csv", eval_audio_dir="dist/audio").trajectory()
    assert other["eval_csv"] != typed["eval_csv"]


def test_best_weights_dropped_are_removed_only_once_a_state_no_longer_lists_them(tmp_path):
    from auricle.distill.checkpointing import BestCheckpoints

    best = BestCheckpoints(tmp_path / "best", keep=1)
    (tmp_path / "best").mkdir()
    weights = {"w": torch.ones(2)}
    assert best.offer(0.5, 10, weights) and best.offer(0.7, 20, weights)
    # Step 10 dropped, but a state saved before this offer still lists it: a run killed now resumes from it.
    assert best.path(10).exists() and best.entries == [(0.7, 20)]
    best.tidy()  # what the trainer does once the next state is saved
    assert not best.path(10).exists() and best.path(20).exists()
    best.entries = [(0.7, 20), (0.5, 10)]  # a state of older code listing a file it had already removed
    torch.testing.assert_close(best.average()["w"], torch.ones(2))


@pytest.mark.integration
def test_a_run_killed_between_an_evaluation_and_its_state_finishes_on_resume(tmp_path, student_config):
    """Resumed from the state before them, with another --average-best (free to change): it finishes."""
    torch.set_num_threads(1)
    views = FakeViews()
    small = dict(epochs=2, checkpoint_every=4, eval_every=1, average_best=2)
    stopped = train(_config(tmp_path, student_config, stop_after_steps=7, **small), views)
    assert not stopped.finished
    states = sorted((tmp_path / "run" / "state").glob("state-*.pt"))
    states[-1].unlink()  # as a SIGKILL after the evaluations of steps 5-7 and before their state
    resumed = train(_config(tmp_path, student_config, resume=True, **{**small, "average_best": 3}), views)
    assert resumed.finished and resumed.final_checkpoint.exists()


@pytest.mark.integration
def test_mixup_says_when_it_finds_no_partners(tmp_path, student_config, monkeypatch, capsys):
    """Views of other lengths are never mixed: on varied lengths --mixup-alpha did nothing, silently."""
    from auricle.distill import train as train_module

    torch.set_num_threads(1)
    monkeypatch.setattr(train_module, "MIXUP_CHECK_VIEWS", 8)
    train(_config(tmp_path, student_config, out="same", epochs=1, average_best=0), FakeViews())
    assert "mixup found no partner" not in capsys.readouterr().err
    train(_config(tmp_path, student_config, out="varied", epochs=1, average_best=0), FakeViews(varied=True))
    assert re.search(r"auricle: warning: mixup found no partner for (7[5-9]|[89]\d|100)% of the views so far",
                     capsys.readouterr().err)


def test_too_little_data_is_a_clear_error(tmp_path, student_config):
    with pytest.raises(TrainingError, match="too few"):
        train(_config(tmp_path, student_config, batch_size=64), FakeViews())


def test_epoch_order_is_a_seeded_permutation_split_into_disjoint_rank_blocks():
    keys = {f"s{i}": [f"s{i}-{j}" for j in range(5)] for i in range(4)}
    order = epoch_order(keys, seed=1, epoch=0, window=2)
    assert sorted(order) == sorted((s, k) for s, ks in keys.items() for k in ks)
    assert order == epoch_order(keys, seed=1, epoch=0, window=2)
    assert order != epoch_order(keys, seed=1, epoch=1, window=2)
    # A window of 2 shards holds the chunks of exactly 2 shards per run of 10 items.
    assert len({shard for shard, _ in order[:10]}) == 2
    blocks = [rank_block(order, rank, 3, 2) for rank in range(3)]
    assert all(len(block) == 6 for block in blocks)
    flat = [item for block in blocks for item in block]
    assert len(set(flat)) == len(flat)


@pytest.mark.parametrize("values, message", [
    ({"embed_dim": 64, "dept": 2, "num_heads": 2}, "unknown student config keys 'dept'"),
    ({"embed_dim": 64, "depth": 2}, "the student config needs 'num_heads'"),
    ([64, 2], "a student config is a JSON object"),
])
def test_a_student_config_with_a_typo_is_refused(tmp_path, values, message):
    from auricle.distill.train import build_student

    path = tmp_path / "student.json"
    path.write_text(json.dumps(values))
    with pytest.raises(TrainingError, match=message) as error:
        build_student(str(path), 527)
    assert str(error.value).startswith(f"{path}: ") and "\n" not in str(error.value)


@pytest.mark.parametrize("inconsistent", [False, True])
def test_no_training_view_mixes_in_a_held_out_chunk(tmp_path, student_config, inconsistent):
    """Held-out chunks were mixup partners of training views: the student heard what it was checked on."""
    from auricle.distill.train import Trainer

    views = FakeViews()
    views.augment = AugmentConfig(shift=0.2, mixup_prob=1.0)  # every view mixes with a chunk of its shard
    config = _config(tmp_path, student_config, holdout_fraction=0.3, holdout_max=8, inconsistent=inconsistent)
    trainer = Trainer(config, views)
    held = {key for keys in trainer.holdout.values() for key in keys}
    assert held
    trained = 0
    for epoch in range(config.epochs):
        for batch in trainer._batches(epoch, 0):
            for params in batch.params:
                assert params.partner is not None and params.partner not in held, (epoch, params)
                trained += 1
    assert trained > 0
    # Only chunks of the shards with held-out chunks were left out, and the others of those shards still train.
    left_out = {key for shard in views.shard_names for key in views.keys(shard)} - held - {
        key for keys in trainer.train_keys.values() for key in keys}
    assert left_out and all(any(key.startswith(shard[:-4]) for shard in trainer.holdout) for key in left_out)
