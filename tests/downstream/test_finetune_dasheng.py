"""`auricle finetune` of a Dasheng encoder: a small Dasheng on synthetic tones, fp32 and bf16, resume, tag parity."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from auricle.audio import load_audio
from auricle.cli import cli
from auricle.downstream.finetune import predict
from auricle.models.checkpoints import save_checkpoint
from auricle.models.dasheng import Dasheng
from auricle.models.dasheng_config import SIZES
from auricle.models.files import find_config
from downstream_support import tiny_encoder, tone_manifest

FAST = ["--threads", "1", "--batch-size", "8", "--no-progress", "--warmup", "0.5", "--max-seconds", "1"]


@pytest.fixture(scope="module")
def tones(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tones")
    torch.manual_seed(0)
    encoder = save_checkpoint(Dasheng(SIZES["small"]), folder / "dasheng.safetensors", name="small dasheng")
    return tone_manifest(folder, per_class=4, test_every=4), encoder


def _finetune(manifest, encoder, output, *extra):
    return CliRunner().invoke(cli, ["finetune", str(manifest), "--checkpoint", str(encoder), "-o", str(output),
                                    *FAST, *map(str, extra)], catch_exceptions=False)


def _tag(checkpoint, clip):
    tagged = CliRunner().invoke(cli, ["tag", "--checkpoint", str(checkpoint), "-f", "json", "-k", "3", str(clip)])
    assert tagged.exit_code == 0, tagged.output
    tags = json.loads(tagged.stdout)
    return {tag["label"]: tag["score"] for tag in (tags[0] if isinstance(tags, list) else tags)["tags"]}


@pytest.mark.integration
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_dasheng_encoder_finetunes_and_tags_as_it_trained(tones, tmp_path, precision):
    manifest, encoder = tones
    output = tmp_path / "run"
    result = _finetune(manifest, encoder, output, "--epochs", "1", "--valid-fraction", "0.34",
                       "--precision", precision)
    assert result.exit_code == 0, result.output
    assert ("training in bf16 autocast" in result.stderr) == (precision == "bf16")
    assert json.loads((output / "result.json").read_text())["precision"] == precision
    meta = find_config(output / "model.safetensors")
    assert meta["family"] == "dasheng" and meta["labels"] == ["high", "low", "mid"]
    assert meta["config"]["head_activation"] == "softmax" and meta["config"]["embed_dim"] == 192

    # After one epoch the resume point holds the saved weights: the network in memory scores as `auricle tag`.
    state = torch.load(output / "last.pt", weights_only=True)
    assert all(value.dtype == torch.float32 for value in state["model"].values() if value.is_floating_point())
    network = Dasheng(replace(SIZES["small"], num_classes=3, head_activation="softmax"))
    network.load_state_dict(state["model"])
    clip = manifest.parent / "mid" / "mid_1.wav"
    in_memory = predict(network.eval(), [load_audio(clip)])[0]
    tagged = _tag(output / "model.safetensors", clip)
    assert np.allclose([tagged[label] for label in ("high", "low", "mid")], in_memory, atol=1e-5)
    assert sum(tagged.values()) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.integration
def test_a_dasheng_run_resumes_exactly(tones, tmp_path):
    manifest, encoder = tones
    straight = _finetune(manifest, encoder, tmp_path / "straight", "--epochs", "2", "--valid-fraction", "0.34")
    assert straight.exit_code == 0, straight.output
    first = _finetune(manifest, encoder, tmp_path / "split", "--epochs", "2", "--valid-fraction", "0.34",
                      "--stop-after", "1")
    assert first.exit_code == 0, first.output
    second = _finetune(manifest, encoder, tmp_path / "split", "--epochs", "2", "--valid-fraction", "0.34", "--resume")
    assert second.exit_code == 0 and "resumed after epoch 1" in second.stderr
    ours = torch.load(tmp_path / "split" / "last.pt", weights_only=True)["model"]
    theirs = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(ours[key], theirs[key]) for key in theirs)


@pytest.mark.integration
def test_a_dasheng_run_is_not_resumed_from_a_ced_encoder(tones, tmp_path):
    manifest, encoder = tones
    output = tmp_path / "run"
    assert _finetune(manifest, encoder, output, "--epochs", "1", "--valid-fraction", "0.34").exit_code == 0
    ced = tiny_encoder(tmp_path / "ced.safetensors")
    refused = _finetune(manifest, ced, output, "--epochs", "2", "--valid-fraction", "0.34", "--resume")
    assert refused.exit_code != 0
    assert refused.stderr.strip().splitlines()[-1].startswith("auricle: error: ")
    assert "made from another encoder" in refused.stderr and "Traceback" not in refused.output


def test_a_ced_run_is_not_resumed_from_a_dasheng_encoder(tones, tmp_path):
    manifest, encoder = tones
    output = tmp_path / "run"
    ced = tiny_encoder(tmp_path / "ced.safetensors")
    assert _finetune(manifest, ced, output, "--epochs", "1", "--valid-fraction", "0.34").exit_code == 0
    refused = _finetune(manifest, encoder, output, "--epochs", "2", "--valid-fraction", "0.34", "--resume")
    assert refused.exit_code != 0 and "made from another encoder" in refused.stderr.strip().splitlines()[-1]


def test_partial_dasheng_finetuning_trains_only_the_last_blocks(tones, tmp_path):
    manifest, encoder = tones
    output = tmp_path / "run"
    result = _finetune(manifest, encoder, output, "--epochs", "1", "--valid-fraction", "0.34", "--train-blocks", "1")
    assert result.exit_code == 0, result.output
    from safetensors.torch import load_file

    before, after = load_file(encoder), torch.load(output / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(before[key], after[key]) for key in before if not key.startswith(("blocks.3.", "norm.")))
    assert not torch.equal(before["blocks.3.mlp.fc1.weight"], after["blocks.3.mlp.fc1.weight"])


@pytest.mark.integration
def test_a_dasheng_size_starts_from_scratch():
    from auricle.downstream.finetune import load_encoder

    network, origin = load_encoder("dasheng-base", None, from_scratch=True, seed=3)
    again, _ = load_encoder("dasheng-base", None, from_scratch=True, seed=3)
    assert isinstance(network, Dasheng) and network.config.embed_dim == 768 and "random initialisation" in origin
    assert torch.equal(network.blocks[0].attn.qkv.weight, again.blocks[0].attn.qkv.weight)


@pytest.mark.integration
def test_an_audio_language_model_is_refused_in_one_line(tones, tmp_path):
    from language_support import write_model_folder

    manifest, _ = tones
    folder = write_model_folder(tmp_path / "lm")
    refused = _finetune(manifest, folder, tmp_path / "run", "--epochs", "1")
    assert refused.exit_code != 0
    assert refused.stderr.splitlines() == [
        f"auricle: error: {folder}: an audio-language model (MiDashengLM); it works with `auricle describe` "
        "and `auricle ask`, not `auricle finetune`"]
