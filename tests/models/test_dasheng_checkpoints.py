"""Dasheng checkpoints: the Zenodo, Hugging Face and auricle layouts, strict shapes, and loading by name."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import save_file

import auricle
from auricle.dasheng_model import DashengModel
from auricle.errors import CheckpointError, OptionError
from auricle.frontend import mel_filterbank
from auricle.models import hub
from auricle.models.checkpoints import read_checkpoint, save_checkpoint
from auricle.models.dasheng import Dasheng
from auricle.models.dasheng_checkpoints import config_from_shapes, read_dasheng_checkpoint, to_auricle_keys
from auricle.models.dasheng_config import SIZES
from auricle.models.files import find_config

from conftest import REFERENCE, require
from dasheng_support import write_audioset_checkpoint, zenodo_dump

FOLDER = REFERENCE / "dasheng"
RELEASED = {"dasheng-base": "base", "dasheng-0.6B": "0.6b", "dasheng-1.2B": "1.2b"}


@pytest.fixture(scope="module")
def zenodo() -> Path:
    return require(FOLDER / "dasheng_small_perturbed.pt")


@pytest.fixture(scope="module")
def model(zenodo) -> DashengModel:
    return auricle.load_model(checkpoint=zenodo)


@pytest.fixture(scope="module")
def noise() -> np.ndarray:
    return np.random.default_rng(0).normal(0, 0.1, (2, 24000)).astype(np.float32)


def test_both_released_layouts_load_to_identical_weights(zenodo, model, noise):
    official, huggingface = read_dasheng_checkpoint(zenodo), read_dasheng_checkpoint(require(FOLDER / "hf"))
    assert (official.layout, huggingface.layout) == ("official", "huggingface")
    assert official.config == huggingface.config == SIZES["small"]
    assert official.state_dict.keys() == huggingface.state_dict.keys()
    for key, tensor in official.state_dict.items():
        assert torch.equal(tensor, huggingface.state_dict[key]), key
    from_hf = auricle.load_model(checkpoint=FOLDER / "hf")
    assert from_hf.name == "dasheng-small-perturbed"  # from its config.json
    np.testing.assert_array_equal(from_hf.tokens(noise).numpy(), model.tokens(noise).numpy())


def test_auricle_format_round_trip(model, tmp_path, noise):
    path = save_checkpoint(model.network, tmp_path / "mine.safetensors", name="my-dasheng")
    assert not path.with_suffix(".json").exists()  # one file: the config is in its metadata
    assert find_config(path)["family"] == "dasheng"
    again = auricle.load_model(checkpoint=path)
    assert isinstance(again, DashengModel) and again.name == "my-dasheng"
    np.testing.assert_array_equal(again.tokens(noise).numpy(), model.tokens(noise).numpy())


def meta_state(shapes: dict) -> dict[str, torch.Tensor]:
    return {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}


@pytest.mark.integration
@pytest.mark.parametrize("release", sorted(RELEASED))
def test_released_shapes_are_those_of_the_known_sizes(release):
    """Every key and shape of the released files, strictly, without their weights."""
    released = json.loads(require(FOLDER / "released_shapes.json").read_text())[release]
    config = SIZES[RELEASED[release]]
    assert {key: getattr(config, key) for key in released["config"]} == released["config"]
    converted, layout = to_auricle_keys(meta_state(released["state_dict"]), release)
    assert layout == "official"
    assert config_from_shapes(converted, release) == config
    own = Dasheng.meta_state_dict(config)
    assert {k: tuple(v.shape) for k, v in own.items()} == {k: tuple(v.shape) for k, v in converted.items()}
    with torch.device("meta"):
        network = Dasheng(config)
    assert sum(p.numel() for p in network.parameters()) == released["parameters"]
    # The Hugging Face layout of the same release: encoder. prefix, no frontend buffers.
    huggingface = {f"encoder.{k}": v for k, v in released["state_dict"].items() if not k.startswith("front_end.")}
    assert config_from_shapes(to_auricle_keys(meta_state(huggingface), release)[0], release) == config


def test_shapes_of_no_known_size_are_refused(zenodo, tmp_path):
    state = zenodo_dump(zenodo)
    shallower = {k: v for k, v in state["model"].items() if not k.startswith("blocks.3.")}
    path = tmp_path / "shallow.pt"
    torch.save({"model": shallower, "config": {"embed_dim": 192, "depth": 3, "num_heads": 3}}, path)
    with pytest.raises(CheckpointError) as error:
        auricle.load_model(checkpoint=path)
    assert str(error.value).startswith(f"{path}: a 192-wide, 3-deep encoder matches no known Dasheng size")
    wrong = dict(state["model"], **{"blocks.0.mlp.fc1.weight": torch.zeros(700, 192)})
    torch.save({"model": wrong, "config": state["config"]}, path)
    with pytest.raises(CheckpointError, match=r"wrong shape: blocks.0.mlp.fc1.weight \(700, 192\) != \(768, 192\)"):
        auricle.load_model(checkpoint=path)


def test_a_stored_config_must_agree_with_the_tensors(zenodo, tmp_path):
    state = zenodo_dump(zenodo)
    path = tmp_path / "liar.pt"
    torch.save({"model": state["model"], "config": {"embed_dim": 192, "depth": 4, "num_heads": 6}}, path)
    with pytest.raises(CheckpointError, match="its stored config says num_heads 6 but the tensors are those of 3"):
        auricle.load_model(checkpoint=path)


def test_stored_frontend_buffers_are_checked(zenodo, tmp_path):
    state = zenodo_dump(zenodo)
    assert torch.equal(state["model"]["front_end.0.mel_scale.fb"], mel_filterbank())
    state["model"]["front_end.0.mel_scale.fb"] = mel_filterbank(f_max=7000.0)
    path = tmp_path / "other_features.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="front_end.0.mel_scale.fb differs"):
        auricle.load_model(checkpoint=path)


def test_ced_and_dasheng_are_not_taken_for_each_other(zenodo, tiny_checkpoint):
    with pytest.raises(CheckpointError) as error:
        read_dasheng_checkpoint(tiny_checkpoint)
    assert str(error.value) == f"{tiny_checkpoint}: holds a CED encoder (16x16 patches), not Dasheng"
    with pytest.raises(CheckpointError) as error:
        read_checkpoint(zenodo)
    assert str(error.value) == f"{zenodo}: holds a Dasheng encoder, not CED; this needs a CED checkpoint"


def test_a_truncated_file_is_one_line(zenodo, tmp_path):
    for name, whole in (("cut.pt", zenodo), ("cut.safetensors", FOLDER / "hf" / "model.safetensors")):
        data = whole.read_bytes()
        path = tmp_path / name
        path.write_bytes(data[: len(data) // 2])
        with pytest.raises(CheckpointError) as error:
            auricle.load_model(checkpoint=path)
        assert str(error.value).startswith(f"{path}: ") and "\n" not in str(error.value)


def test_the_audioset_head_tags_a_file(zenodo, tmp_path, noise):
    tagger = auricle.load_model(checkpoint=write_audioset_checkpoint(zenodo, tmp_path / "audioset.pt"))
    recording = tmp_path / "noise.wav"
    sf.write(recording, noise[0], 16000, subtype="FLOAT")
    result = tagger.tag(recording, top_k=3)
    assert result.scores.shape == (1, 527) and len(result.tags) == 3
    with torch.inference_mode():
        network = tagger.network
        expected = torch.sigmoid(network.outputlayer(network.encode(torch.from_numpy(noise[:1])).mean(dim=1)))
    np.testing.assert_allclose(result.scores, expected.numpy(), atol=1e-6)
    np.testing.assert_allclose(tagger.probabilities(noise[:1]), expected.numpy(), atol=1e-6)


def test_an_encoder_without_head_says_so_when_asked_to_tag(model, tmp_path):
    with pytest.raises(OptionError, match="has no classification head; tag with dasheng-base-audioset"):
        model.tag(np.zeros(16000, np.float32), sample_rate=16000)


@pytest.mark.integration
def test_names_load_through_the_hub(zenodo, tmp_path, monkeypatch, noise):
    """``load_model("dasheng-base")`` takes the weights the hub gives (faked) and checks their size."""
    folder = tmp_path / "hub"
    folder.mkdir()
    torch.manual_seed(0)
    network = Dasheng(SIZES["base"])
    save_file({f"encoder.{k}": v.contiguous() for k, v in network.state_dict().items()},
              str(folder / "model.safetensors"))
    asked = []
    monkeypatch.setattr(hub, "fetch_weights", lambda info, cache_dir=None: asked.append(info.hf_repo) or
                        (folder / "model.safetensors" if info.name == "dasheng-base" else zenodo))
    base = auricle.load_model("dasheng-base")
    assert isinstance(base, DashengModel) and base.name == "dasheng-base" and base.embedding_dim == 768
    assert base.embed(noise[0], sample_rate=16000).windows.shape == (37, 768)
    with pytest.raises(CheckpointError, match="holds a 192-wide, 4-deep Dasheng encoder, not dasheng-0.6b"):
        auricle.load_model("dasheng-0.6b")
    assert asked == ["mispeech/dasheng-base", "mispeech/dasheng-0.6B"]
    with pytest.raises(CheckpointError, match=r"published only on Zenodo \(https://zenodo.org/records/13315686"):
        auricle.load_model("dasheng-base-audioset")
    # Any engine and precision runs a Dasheng encoder (tests/engines/test_dasheng_engines.py).
    assert auricle.load_model(checkpoint=zenodo, precision="bf16").engine.config.label == "torch-bf16"


def test_cli_embeds_with_dasheng_and_other_commands_say_they_take_ced(zenodo, tmp_path, noise):
    from click.testing import CliRunner

    from auricle.cli import cli

    recording = tmp_path / "noise.wav"
    sf.write(recording, noise[0], 16000, subtype="FLOAT")
    result = CliRunner().invoke(cli, ["embed", str(recording), "-o", str(tmp_path / "out"),
                                      "--checkpoint", str(zenodo)])
    assert result.exit_code == 0, result.output
    stored = np.load(next((tmp_path / "out").glob("*.npz")))
    assert stored["windows"].shape == (37, 192)
    result = CliRunner().invoke(cli, ["listen", str(recording), "--checkpoint", str(zenodo)])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == ["auricle: error: dasheng_small_perturbed: auricle listen takes CED models; "
                                          "a Dasheng encoder works with tag, embed, probe, finetune, serve, export and "
                                          "evaluate (and in Python)"]
