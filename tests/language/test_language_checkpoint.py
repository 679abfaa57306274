"""Reading MiDashengLM checkpoints: layout, strictness, shards, dtype, configs; one-line errors."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers", reason="MiDashengLM needs the language extra (transformers)")

from conftest import REFERENCE, require  # noqa: E402
from language_support import TINY_CONFIG, tiny_tensors, write_checkpoint, write_sharded  # noqa: E402

from auricle.errors import CheckpointError  # noqa: E402
from auricle.language.checkpoint import read_language_checkpoint  # noqa: E402
from auricle.language.config import OMNI_7B_TEXT, read_config  # noqa: E402
from auricle.language.model import MiDashengLM  # noqa: E402


def _one_line(error: pytest.ExceptionInfo, *parts: str) -> str:
    message = str(error.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, message
    return message


def _logits(model: MiDashengLM) -> torch.Tensor:
    torch.manual_seed(0)
    audio = model.project(torch.randn(1, 10, TINY_CONFIG["audio_encoder"]["embed_dim"]).to(model.dtype))[0]
    return model.prefill_logits(torch.tensor([[1, 61, 61, 2]]), [audio])


def test_the_reference_layout_loads_strictly_and_hands_the_encoder_its_tensors_untouched():
    reference = require(REFERENCE / "midashenglm")
    from safetensors.torch import load_file

    checkpoint = read_language_checkpoint(reference / "tiny_midashenglm.safetensors", reference / "tiny_config.json")
    stored = load_file(str(reference / "tiny_midashenglm.safetensors"))
    assert (len(checkpoint.encoder_state), len(checkpoint.projector_state), len(checkpoint.decoder_state)) == (37, 4, 27)
    for key, tensor in checkpoint.encoder_state.items():
        assert torch.equal(tensor, stored[f"audio_encoder.{key}"]) and tensor.dtype == stored[f"audio_encoder.{key}"].dtype
    assert "front_end.0.mel_scale.fb" in checkpoint.encoder_state
    assert checkpoint.config.schema == "tiny" and checkpoint.config.encoder_dim == 64
    MiDashengLM.from_checkpoint(checkpoint)


def test_a_folder_and_its_sharded_copy_give_the_same_model(tmp_path):
    tensors = tiny_tensors()
    single = MiDashengLM.load(write_checkpoint(tmp_path / "single", tensors))
    sharded_folder = write_sharded(tmp_path / "sharded", tensors, shards=3)
    assert len(list(sharded_folder.glob("*.safetensors"))) == 3
    sharded = MiDashengLM.load(sharded_folder)
    assert torch.equal(_logits(single), _logits(sharded))


def test_bf16_weights_stay_bf16_and_are_not_copied(tmp_path):
    folder = write_checkpoint(tmp_path, tiny_tensors(torch.bfloat16))
    checkpoint = read_language_checkpoint(folder)
    model = MiDashengLM.from_checkpoint(checkpoint)
    floats = [p for p in model.parameters() if p.is_floating_point()]
    assert floats and all(p.dtype == torch.bfloat16 for p in floats)
    # The model holds the very tensors read from the file: no float32 (or any) copy was made.
    assert model.decoder.lm_head.weight.data_ptr() == checkpoint.decoder_state["lm_head.weight"].data_ptr()
    assert model.projector.net[0].weight.data_ptr() == checkpoint.projector_state["net.0.weight"].data_ptr()
    assert model.dtype == torch.bfloat16
    assert torch.isfinite(_logits(model)).all()  # transformers 4.x returns them as float32, 5.x as bf16


@pytest.mark.parametrize("change, words", [
    (lambda t: t.pop("decoder.model.norm.weight"), ["missing: model.norm.weight", "(decoder.*)"]),
    (lambda t: t.pop("audio_projector.net.2.bias"), ["missing: net.2.bias", "(audio_projector.*)"]),
    (lambda t: t.__setitem__("decoder.model.extra", torch.zeros(1)), ["unexpected: model.extra"]),
    (lambda t: t.__setitem__("decoder.lm_head.weight", torch.zeros(64, 15)), ["wrong shape: lm_head.weight (64, 15)"]),
    (lambda t: t.__setitem__("vision_tower.proj", torch.zeros(1)), ["not MiDashengLM weights", "vision_tower.proj"]),
])
def test_a_checkpoint_that_does_not_match_is_a_one_line_error_naming_the_file(tmp_path, change, words):
    tensors = tiny_tensors()
    change(tensors)
    folder = write_checkpoint(tmp_path, tensors)
    with pytest.raises(CheckpointError) as error:
        MiDashengLM.load(folder)
    _one_line(error, str(folder / "model.safetensors"), *words)


def test_a_broken_shard_index_is_a_one_line_error(tmp_path):
    folder = write_sharded(tmp_path, tiny_tensors(), shards=2)
    index = folder / "model.safetensors.index.json"
    values = json.loads(index.read_text())
    first = sorted(set(values["weight_map"].values()))[0]
    (folder / first).unlink()
    with pytest.raises(CheckpointError) as error:
        read_language_checkpoint(folder)
    _one_line(error, str(index), f"shard {first} is not a file")

    write_sharded(folder, tiny_tensors(), shards=2)
    del values["weight_map"]["decoder.model.norm.weight"]
    index.write_text(json.dumps(values))
    with pytest.raises(CheckpointError) as error:
        read_language_checkpoint(folder)
    _one_line(error, "holds decoder.model.norm.weight that the index does not list")

    values["weight_map"] = {key: "model-00002-of-00002.safetensors" for key in values["weight_map"]}
    index.write_text(json.dumps(values))
    with pytest.raises(CheckpointError) as error:
        read_language_checkpoint(folder)
    _one_line(error, "model-00002-of-00002.safetensors", "that the index places in it")


def test_missing_or_unreadable_files_are_one_line_errors(tmp_path):
    with pytest.raises(CheckpointError) as error:
        read_language_checkpoint(tmp_path)
    _one_line(error, str(tmp_path), "no model.safetensors or model.safetensors.index.json")

    folder = write_checkpoint(tmp_path / "noconfig", tiny_tensors())
    (folder / "config.json").unlink()
    with pytest.raises(CheckpointError) as error:
        read_language_checkpoint(folder)
    _one_line(error, "no config.json beside the weights")

    (folder / "model.safetensors").write_bytes(b"RIFF not weights")
    (folder / "config.json").write_text(json.dumps(TINY_CONFIG))
    with pytest.raises(CheckpointError) as error:
        read_language_checkpoint(folder)
    _one_line(error, str(folder / "model.safetensors"), "unreadable safetensors file")


def test_the_official_config_schema_is_read(tmp_path):
    official = {
        "architectures": ["MiDashengLMModel"],
        "model_type": "midashenglm",
        "audio_encoder_config": {"embed_dim": 8, "depth": 1, "num_heads": 2},
        "subsample_factor": 5,
        "text_config": {**TINY_CONFIG["text"], "model_type": "qwen2_5_omni_text",
                        "rope_scaling": {"mrope_section": [2, 1, 1], "type": "default"}},
        "audio_token_id": 61,
    }
    folder = write_checkpoint(tmp_path, tiny_tensors(), official)
    config = read_config(folder / "config.json")
    assert config.schema == "official" and config.audio_token_id == 61 and config.decoder.hidden_size == 16
    assert _logits(MiDashengLM.load(folder)).shape == (1, 4, 64)

    bare = read_config(_write(tmp_path / "bare.json", {"architectures": ["MiDashengLMModel"]}))
    assert bare.decoder.to_dict() == {**OMNI_7B_TEXT}
    assert bare.encoder_dim == 1280 and bare.subsample_factor == 5
    nested = {"model_type": "midashenglm", "text_config": {"rope_parameters": {"rope_theta": 5e5}}}
    assert read_config(_write(tmp_path / "nested.json", nested)).decoder.rope_theta == 5e5


def _write(path, values):
    path.write_text(json.dumps(values))
    return path


@pytest.mark.parametrize("values, words", [
    ({"architectures": ["Qwen2AudioForConditionalGeneration"], "model_type": "qwen2_audio"},
     ["a config for Qwen2AudioForConditionalGeneration, not MiDashengLM"]),
    ({"model_type": "ced"}, ["a config for ced, not MiDashengLM"]),
    ({"model_type": "midashenglm", "text_config": {"hidden_size": 100}}, ["do not divide evenly"]),
    ({"text": {"hidden_size": 16}, "audio_token_id": 1}, ["the text config lacks vocab_size"]),
    ([1, 2], ["not a JSON object"]),
])
def test_a_config_of_another_model_is_a_one_line_error(tmp_path, values, words):
    path = _write(tmp_path / "config.json", values)
    with pytest.raises(CheckpointError) as error:
        read_config(path)
    _one_line(error, str(path), *words)
