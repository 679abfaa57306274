"""MiDashengLM's Dasheng encoder built from a language checkpoint: buffers checked, names, audio checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("transformers", reason="MiDashengLM needs the language extra (transformers)")

from language_support import tiny_tensors, write_checkpoint  # noqa: E402

from auricle.errors import AudioError, CheckpointError  # noqa: E402
from auricle.language.model import MiDashengLM  # noqa: E402


def _load(tmp_path, tensors):
    return MiDashengLM.load(write_checkpoint(tmp_path / "model", tensors), with_encoder=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_encoder_loads_with_checked_frontend_buffers(tmp_path, dtype):
    model = _load(tmp_path, tiny_tensors(dtype))
    assert model.encoder.patch_embed.proj.weight.dtype == dtype
    tokens = model.encode_audio(np.random.default_rng(0).standard_normal(16_000).astype(np.float32), "a.wav")
    assert tokens.shape == (25, 8) and tokens.dtype == dtype and torch.isfinite(tokens.float()).all()


@pytest.mark.parametrize("key", ["front_end.0.mel_scale.fb", "front_end.0.spectrogram.window"])
def test_a_different_frontend_is_refused(tmp_path, key):
    tensors = tiny_tensors()
    tensors[f"audio_encoder.{key}"] = tensors[f"audio_encoder.{key}"] * 1.01
    with pytest.raises(CheckpointError, match=f"audio_encoder.{key} differs from Dasheng's computed frontend"):
        _load(tmp_path, tensors)


def test_a_bf16_buffer_must_equal_the_computed_one_rounded(tmp_path):
    tensors = tiny_tensors(torch.bfloat16)
    fb = tensors["audio_encoder.front_end.0.mel_scale.fb"]
    tensors["audio_encoder.front_end.0.mel_scale.fb"] = (fb.float() * 1.02).to(torch.bfloat16)
    with pytest.raises(CheckpointError, match="mel_scale.fb differs"):
        _load(tmp_path, tensors)


def test_missing_frontend_buffers_are_refused(tmp_path):
    tensors = tiny_tensors()
    del tensors["audio_encoder.front_end.0.spectrogram.window"]
    with pytest.raises(CheckpointError, match="lacks audio_encoder.front_end.0.spectrogram.window"):
        _load(tmp_path, tensors)


def test_official_init_bn_1_names_are_accepted(tmp_path):
    tensors = {(key.replace("audio_encoder.init_bn.", "audio_encoder.init_bn.1.")): value
               for key, value in tiny_tensors().items()}
    reference = _load(tmp_path / "a", tiny_tensors())
    renamed = _load(tmp_path / "b", tensors)
    assert torch.equal(renamed.encoder.init_bn.running_mean, reference.encoder.init_bn.running_mean)


def test_a_missing_encoder_tensor_is_named(tmp_path):
    tensors = tiny_tensors()
    del tensors["audio_encoder.blocks.0.attn.qkv.weight"]
    with pytest.raises(CheckpointError, match=r"missing: blocks.0.attn.qkv.weight"):
        _load(tmp_path, tensors)


def test_too_short_and_silent_audio_are_refused_naming_the_file(tmp_path):
    model = _load(tmp_path, tiny_tensors())
    with pytest.raises(AudioError, match=r"^short.wav: too short to describe \(0.188 s; at least 0.19 s"):
        model.encode_audio(np.ones(3000, np.float32), "short.wav")
    assert model.encode_audio(np.ones(3040, np.float32), "ok.wav").shape[0] == 5
    with pytest.raises(AudioError, match=r"^quiet.wav: silent"):
        model.encode_audio(np.zeros(16_000, np.float32), "quiet.wav")
