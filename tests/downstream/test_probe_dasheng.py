"""`auricle probe` on a frozen Dasheng encoder: clip embeddings are the mean frame token, the probe saves as its head."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

import auricle
from auricle.cli import cli
from auricle.downstream.probe import probe_scores
from conftest import REFERENCE, require
from downstream_support import tone_manifest


@pytest.fixture(scope="module")
def tones(tmp_path_factory):
    return tone_manifest(tmp_path_factory.mktemp("tones"))


@pytest.fixture(scope="module")
def encoder():
    return require(REFERENCE / "dasheng" / "dasheng_small_perturbed.pt")


def _run(*args):
    return CliRunner().invoke(cli, [*map(str, args)], catch_exceptions=False)


@pytest.mark.integration
def test_probe_trains_on_dasheng_embeddings_and_tag_serves_it(tones, encoder, tmp_path):
    output = tmp_path / "probe.safetensors"
    result = _run("probe", tones, "--checkpoint", encoder, "--no-cache", "-o", output, "--epochs", "50",
                  "--threads", "1")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["classes"] == ["high", "low", "mid"] and report["train_examples"] == 18
    assert report["test"]["examples"] == 6

    # The saved file is the Dasheng encoder with the probe as its head: tag scores are the probe's.
    served = auricle.load_model(checkpoint=output)
    assert served.network.family == "dasheng" and served.labels.names == ("high", "low", "mid")
    assert served.network.config.head_activation == "softmax"
    clip = tones.parent / "low" / "low_1.wav"
    tagged = _run("tag", "--checkpoint", output, "-f", "json", "-k", "3", clip)
    assert tagged.exit_code == 0, tagged.output
    tags = json.loads(tagged.stdout)
    tags = {tag["label"]: tag["score"] for tag in (tags[0] if isinstance(tags, list) else tags)["tags"]}
    assert sum(tags.values()) == pytest.approx(1.0, abs=1e-5)
    frozen = auricle.load_model(checkpoint=encoder)
    head = served.network.outputlayer
    expected = probe_scores(head, frozen.embed(str(clip)).clip[None], multi_label=False)[0]
    np.testing.assert_allclose([tags[name] for name in ("high", "low", "mid")], expected, atol=1e-4)


def test_an_mlp_head_cannot_be_saved_onto_dasheng(tones, encoder, tmp_path):
    result = _run("probe", tones, "--checkpoint", encoder, "--no-cache", "--head", "mlp",
                  "-o", tmp_path / "mlp.safetensors", "--threads", "1")
    assert result.exit_code != 0
    assert result.stderr.strip().splitlines() == [
        "auricle: error: a Dasheng encoder saves a linear probe head only (--head linear); "
        "an mlp probe can be trained and scored without --output"]
    assert not (tmp_path / "mlp.safetensors").exists()
