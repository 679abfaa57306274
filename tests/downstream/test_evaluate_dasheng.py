"""`auricle evaluate` with a Dasheng tagger (the AudioSet head): tagging and event metrics as for CED."""

from __future__ import annotations

import json

import pytest

from dasheng_support import tagger, zenodo  # noqa: F401  (fixtures)
from test_evaluate import recordings, run  # noqa: F401  (a fixture)


@pytest.mark.integration
def test_tagging_metrics_equal_scoring_its_tag_output(tagger, recordings, tmp_path):  # noqa: F811
    direct = run("evaluate", recordings / "labels.csv", "--checkpoint", tagger, "--threads", "1", "--json", "-")
    assert direct.exit_code == 0, direct.output
    tags = run("tag", *(recordings / f"r{n}.wav" for n in range(4)), "--checkpoint", tagger, "--threads", "1",
               "--format", "json", "--output", tmp_path / "tags.json", "--top-k", "527")
    assert tags.exit_code == 0, tags.output
    scored = run("evaluate", recordings / "labels.csv", "--predictions", tmp_path / "tags.json", "--json", "-")
    ours, theirs = json.loads(direct.output), json.loads(scored.output)
    assert ours["model"] == "audioset" and ours["files"] == 4
    for key in ("mAP", "mean_auc"):
        assert ours[key] == pytest.approx(theirs[key], abs=1e-5)
    assert [c["positives"] for c in ours["classes"]] == [3, 2]  # Cat, Dog


def test_event_metrics_run_on_the_dasheng_tagger(tagger, recordings):  # noqa: F811
    result = run("evaluate", recordings / "events.csv", "--events", "--checkpoint", tagger, "--threads", "1",
                 "--window", "1", "--json", "-")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["model"] == "audioset"


def test_an_encoder_without_a_head_is_one_line(zenodo, recordings):  # noqa: F811
    result = run("evaluate", recordings / "labels.csv", "--checkpoint", zenodo, "--threads", "1")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "auricle: error: dasheng_small_perturbed: this encoder has no classification head; tag with "
        "dasheng-base-audioset, or use embed"]
