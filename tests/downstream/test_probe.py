"""`auricle probe`: embeddings cached by model and content, probe scores, the probe served by `auricle tag`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import auricle
from auricle.cli import cli
from auricle.downstream.classification import score_classification
from auricle.downstream.probe import (
    EmbeddingCache, ProbeConfig, model_key, probe_scores, stratified_folds, train_probe, with_probe_head,
)
from auricle.models.files import find_config
from downstream_support import tiny_encoder, tone_manifest


@pytest.fixture(scope="module")
def tones(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tones")
    return tone_manifest(folder), tiny_encoder(folder / "tiny.safetensors")


def _probe(args, tmp_path):
    runner = CliRunner()
    return runner.invoke(cli, ["probe", *map(str, args), "--threads", "1"], catch_exceptions=False)


@pytest.mark.integration
def test_probe_reports_scores_caches_embeddings_and_serves_as_a_head(tones, tmp_path):
    manifest, encoder = tones
    cache, output = tmp_path / "cache", tmp_path / "probe.safetensors"
    first = _probe([manifest, "--checkpoint", encoder, "--cache-dir", cache, "-o", output, "--folds", "3"], tmp_path)
    assert first.exit_code == 0, first.output
    report = json.loads(first.stdout)
    assert report["classes"] == ["high", "low", "mid"] and not report["multi_label"]
    assert report["train_examples"] == 18 and report["test"]["examples"] == 6
    assert len(report["folds"]) == 3 and report["fold_mean"]["examples"] == 18
    # Three pure pitches are linearly separable even through a random encoder.
    assert report["test"]["accuracy"] == 1.0
    assert "24 clips" not in first.stderr and "(0 from the cache)" in first.stderr

    second = _probe([manifest, "--checkpoint", encoder, "--cache-dir", cache], tmp_path)
    assert "18 clips embedded (18 from the cache)" in second.stderr
    assert "6 clips embedded (6 from the cache)" in second.stderr
    assert json.loads(second.stdout)["test"] == report["test"]

    # The saved checkpoint is the encoder with the probe as its head: tag names the new classes.
    tagged = CliRunner().invoke(cli, ["tag", "--checkpoint", str(output), "-f", "json", "-k", "3",
                                      str(manifest.parent / "low" / "low_0.wav")])
    assert tagged.exit_code == 0, tagged.output
    tags = json.loads(tagged.stdout)
    tags = tags[0] if isinstance(tags, list) else tags
    assert tags["tags"][0]["label"] == "low"
    assert sum(tag["score"] for tag in tags["tags"]) == pytest.approx(1.0, abs=1e-5)  # softmax head

    # One file: the class names travel inside it (a .json beside it was needed, and its absence was
    # "head has 3 classes but the checkpoint names none").
    assert not output.with_suffix(".json").exists()
    alone = tmp_path / "elsewhere" / "moved.safetensors"
    alone.parent.mkdir()
    output.rename(alone)
    moved = CliRunner().invoke(cli, ["tag", "--checkpoint", str(alone), "-f", "json", "-k", "1",
                                     str(manifest.parent / "low" / "low_0.wav")])
    assert moved.exit_code == 0, moved.output
    moved_tags = json.loads(moved.stdout)
    assert (moved_tags[0] if isinstance(moved_tags, list) else moved_tags)["tags"][0]["label"] == "low"


def test_a_checkpoint_written_with_a_sidecar_still_reads_and_a_missing_one_is_named(tones, tmp_path):
    """Before the config went into the file, auricle wrote X.safetensors and X.json beside it."""
    from safetensors.torch import load_file, save_file

    manifest, encoder = tones
    new = auricle.load_model(checkpoint=encoder)
    old = tmp_path / "old.safetensors"
    save_file(load_file(str(encoder)), str(old), metadata={"format": "auricle"})  # as the old writer did
    meta = {"format": "auricle", "format_version": 1, "name": "old-style", "config": new.network.config.to_dict(),
            "labels": list(new.labels.names)}
    old.with_suffix(".json").write_text(json.dumps(meta))
    assert auricle.load_model(checkpoint=old).labels.names == new.labels.names
    old.with_suffix(".json").unlink()
    result = CliRunner().invoke(cli, ["tag", "--checkpoint", str(old), str(manifest.parent / "low" / "low_0.wav")])
    assert result.exit_code == 2 and result.stderr.splitlines() == [
        f"auricle: error: {old}: its config and class names are in {old.with_suffix('.json')}, which is missing "
        "(older auricle versions kept them there): put it back beside the weights"], result.stderr


def test_cache_key_follows_weights_not_names(tones, tmp_path):
    _, encoder = tones
    model = auricle.load_model(checkpoint=encoder)
    key = model_key(model.network)
    assert key == model_key(auricle.load_model(checkpoint=encoder).network)
    with torch.no_grad():
        model.network.blocks[0].mlp.fc1.bias[0] += 1e-3
    assert model_key(model.network) != key
    cache = EmbeddingCache(tmp_path, key)
    cache.put("abc", np.arange(4, dtype=np.float32))
    np.testing.assert_array_equal(cache.get("abc"), [0, 1, 2, 3])
    assert cache.get("other") is None and not list(cache.folder.glob("*.tmp*"))


@pytest.mark.parametrize("head, multi_label", [("linear", False), ("mlp", True)])
def test_saved_head_scores_equal_the_probe(tones, tmp_path, head, multi_label):
    """What `auricle tag` computes from the checkpoint is exactly the probe on the clip embedding."""
    manifest, encoder = tones
    model = auricle.load_model(checkpoint=encoder)
    files = sorted(manifest.parent.glob("*/*.wav"))[:9]
    embeddings = np.stack([model.embed(f).clip for f in files])
    targets = np.eye(3, dtype=np.float32)[np.arange(9) % 3]
    if multi_label:
        targets[0, 1] = 1
    config = ProbeConfig(head=head, hidden=16, epochs=5)
    probe = train_probe(embeddings, targets, multi_label, config)
    expected = probe_scores(probe, embeddings, multi_label)
    path = tmp_path / "head.safetensors"
    from auricle.models.checkpoints import save_checkpoint

    save_checkpoint(with_probe_head(model.network, probe, multi_label, config), path, labels=["x", "y", "z"])
    served = auricle.load_model(checkpoint=path)
    assert served.network.config.head_activation == ("sigmoid" if multi_label else "softmax")
    assert served.network.config.head_hidden == (16 if head == "mlp" else 0)
    from auricle.audio import load_audio

    got = np.stack([served.probabilities(torch.from_numpy(load_audio(f)))[0].numpy() for f in files])
    np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.integration
def test_multi_label_probe_and_bad_files(tmp_path):
    from downstream_support import tone_clips

    rows = tone_clips(tmp_path, per_class=4)
    lines = ["file,labels"] + [f"{file},{label}{';loud' if n % 2 else ''}" for n, (file, label) in enumerate(rows)]
    (tmp_path / "broken.wav").write_bytes(b"not audio at all")
    lines.append("broken.wav,low")
    (tmp_path / "multi.csv").write_text("\n".join(lines) + "\n")
    encoder = tiny_encoder(tmp_path / "tiny.safetensors")
    result = _probe([tmp_path / "multi.csv", "--checkpoint", encoder, "--no-cache", "--folds", "2",
                     "-o", tmp_path / "p.safetensors"], tmp_path)
    assert result.exit_code == 1
    assert "broken.wav" in result.stderr and "1 files failed and were left out" in result.stderr
    report = json.loads(result.stdout)
    assert report["multi_label"] and report["classes"] == ["high", "loud", "low", "mid"]
    assert report["train_examples"] == 12
    # Why the data counts as multi-label is said (one empty label field is enough to make it so).
    second = str(tmp_path / rows[1][0])
    assert f"auricle: multi-label data ({second} has 2 classes): a sigmoid probe, scored by mAP" in result.stderr
    assert find_config(tmp_path / "p.safetensors")["config"]["head_activation"] == "sigmoid"


def test_probe_usage_errors(tones, tmp_path):
    manifest, encoder = tones
    runner = CliRunner()
    no_test = runner.invoke(cli, ["probe", str(manifest), "--checkpoint", str(encoder), "--test-split", "eval"])
    assert no_test.exit_code == 2 and "no split 'eval' to score (splits: test, train); name one with --test-split" \
        in no_test.stderr
    bad_split = runner.invoke(cli, ["probe", str(manifest), "--checkpoint", str(encoder), "--train-split", "dev"])
    assert bad_split.exit_code == 2 and "no split 'dev' (splits: " in bad_split.stderr
    # One class, every clip labelled with it: "accuracy 1.0" from a head that scores 1 for any sound.
    lines = manifest.read_text().splitlines()
    one_class = manifest.with_name("low-only.csv")
    one_class.write_text("\n".join([lines[0], *(line for line in lines[1:] if ",low," in line)]) + "\n")
    for command in (["probe", str(one_class)], ["finetune", str(one_class), "-o", str(tmp_path / "ft")]):
        refused = runner.invoke(cli, [*command, "--checkpoint", str(encoder)])
        assert refused.exit_code == 2, refused.output
        assert refused.stderr.splitlines()[-1:] == [
            f"auricle: error: {one_class}[train]: one class ('low'), every clip labelled with it: a head has nothing "
            "to tell apart; add clips of other classes, or leave the clips without the class unlabelled "
            "(multi-label: a detector of it)"]


def test_stratified_folds_partition_every_class():
    targets = np.eye(3, dtype=np.float32)[[0] * 6 + [1] * 6 + [2] * 3]
    folds = stratified_folds(targets, 3, seed=1)
    assert sorted(np.concatenate(folds).tolist()) == list(range(15))
    for fold in folds:
        assert targets[fold].sum(axis=0).tolist() == [2, 2, 1]


def test_classification_scores_by_hand():
    targets = np.eye(2, dtype=np.float32)[[0, 0, 1, 1]]
    scores = np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.2, 0.8]])
    result = score_classification(targets, scores, multi_label=False)
    assert result.accuracy == 0.75
    # class 0: precision 1, recall 1/2 -> F1 2/3; class 1: precision 2/3, recall 1 -> F1 4/5.
    assert result.macro_f1 == pytest.approx((2 / 3 + 4 / 5) / 2)
    # class 0 ranks: 0.9(+) 0.4(+) 0.3 0.2 -> AP 1; class 1: 0.8(+) 0.7(+) 0.6 0.1 -> AP 1.
    assert result.mean_average_precision == pytest.approx(1.0)
    assert result.mean_auc == pytest.approx(1.0) and result.to_dict()["d_prime"] is None


@pytest.mark.integration
def test_clip_embeddings_keep_positions_past_cached_broken_and_unreadable_files(tiny_checkpoint, reference_dir,
                                                                                  tmp_path):
    from auricle.downstream.probe import clip_embeddings

    model = auricle.load_model(checkpoint=tiny_checkpoint, threads=2, streams=2)
    inputs = reference_dir / "inputs"
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"not audio at all")
    files = [str(inputs / "a_sine440_1s.wav"), str(broken), str(tmp_path / "missing.wav"),
             str(inputs / "d_mix_25p3s.wav"), str(inputs / "g_stereo_16k_2s.wav")]
    cache = EmbeddingCache(tmp_path / "cache", model_key(model.network))
    clip_embeddings(model, files[3:4], cache)  # one file already cached
    embeddings, kept, failures, hits = clip_embeddings(model, files, cache)
    assert kept == [0, 3, 4] and hits == 1
    assert [failure.file for failure in failures] == files[1:3]
    assert "missing.wav" in failures[1].error and "broken.wav" in failures[0].error
    for row, position in zip(embeddings, kept):
        np.testing.assert_allclose(row, model.embed(files[position]).clip, atol=1e-6, rtol=0)


def test_probe_on_class_folders_saves_without_a_test_split(tmp_path):
    """A folder per class has no splits: saving the probe is reason enough to train it."""
    from downstream_support import tone_clips

    tone_clips(tmp_path / "classes", per_class=3)
    encoder = tiny_encoder(tmp_path / "tiny.safetensors")
    saved = _probe([tmp_path / "classes", "--checkpoint", encoder, "--no-cache", "--epochs", "5",
                    "-o", tmp_path / "probe.safetensors"], tmp_path)
    assert saved.exit_code == 0, saved.output
    assert (tmp_path / "probe.safetensors").is_file()
    assert json.loads(saved.stdout)["train_examples"] == 9
    idle = _probe([tmp_path / "classes", "--checkpoint", encoder, "--no-cache"], tmp_path)
    assert idle.exit_code == 2
    assert idle.stderr.splitlines() == [f"auricle: error: {tmp_path / 'classes'}: no split 'test' to score (it has no "
                                        "splits); name one with --test-split, cross-validate with --folds K, or save "
                                        "the probe with --output FILE"]
