"""`auricle distill teach` with a Dasheng tagger as a teacher beside a CED one."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import auricle
from auricle.cli import cli
from auricle.distill import DistillError
from auricle.distill.store import TargetStore
from auricle.distill.teachers import TeacherEnsemble, load_teacher
from dasheng_support import tagger, zenodo  # noqa: F401  (fixtures)
from test_distill_teach import AUGMENT, corpus  # noqa: F401  (a fixture)


def test_a_dasheng_teacher_scores_as_the_tagger_does(tagger):
    teacher = load_teacher(str(tagger))
    assert teacher.takes_mel and teacher.identity["config"]["embed_dim"] == 192 and len(teacher.mids) == 527
    waves = torch.from_numpy(np.random.default_rng(0).normal(0, 0.1, (2, 32000)).astype(np.float32))
    expected = auricle.load_model(checkpoint=tagger).probabilities(waves.numpy())
    np.testing.assert_allclose(teacher.probabilities(waves).numpy(), expected, atol=1e-6)


@pytest.mark.integration
def test_teach_with_ced_and_dasheng_teachers_and_verify(corpus, tagger, tmp_path):  # noqa: F811
    store_dir = tmp_path / "store"
    args = ["distill", "teach", "--shards", str(corpus["shards"]), "--teacher", str(corpus["teacher"]),
            "--teacher", f"{tagger}@2", "--epochs", "1", "--top-k", "8", "--out", str(store_dir), "--json", *AUGMENT]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["complete"]
    teachers = TargetStore.open(store_dir).manifest["teachers"]
    assert [t["weight"] for t in teachers] == [1.0, 2.0] and teachers[1]["name"] == "audioset"
    assert teachers[1]["config"]["embed_dim"] == 192
    result = CliRunner().invoke(cli, ["distill", "verify", str(store_dir), "--sample", "3", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["passed"] == 3


def test_the_ensemble_averages_ced_and_dasheng_by_weight(corpus, tagger):  # noqa: F811
    ced, dasheng = load_teacher(str(corpus["teacher"])), load_teacher(f"{tagger}@2")
    waves = torch.randn(2, 16000) * 0.1
    combined = TeacherEnsemble([ced, dasheng]).probabilities(waves)
    expected = (ced.probabilities(waves) + 2 * dasheng.probabilities(waves)) / 3
    np.testing.assert_allclose(combined.numpy(), expected.numpy(), atol=1e-6)


def test_an_encoder_without_a_head_is_refused(zenodo):
    with pytest.raises(DistillError, match="an encoder without a classification head cannot teach"):
        load_teacher(str(zenodo))


@pytest.mark.integration
@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_a_dasheng_teacher_in_bf16_or_int8_runs_on_that_engine_and_agrees_with_fp32(tagger, precision, monkeypatch):
    teacher = load_teacher(str(tagger), precision=precision)
    assert teacher.identity["precision"] == precision and teacher.encoder is not None
    calls = []
    run = teacher.encoder.forward_features
    monkeypatch.setattr(teacher.encoder, "forward_features", lambda *a, **k: calls.append(1) or run(*a, **k))
    waves = torch.from_numpy(np.random.default_rng(1).normal(0, 0.1, (2, 48000)).astype(np.float32))
    scores = teacher.probabilities(waves).numpy()
    assert calls, "the chunks did not go through the engine"
    np.testing.assert_allclose(scores, load_teacher(str(tagger)).probabilities(waves).numpy(), atol=0.02)
