"""Small MiDashengLM checkpoints and tokenizers written by the tests themselves (no downloads).

The checkpoint follows the inferred official layout (audio_encoder.*, audio_projector.net.{0,2}.*,
decoder.*) with random weights; the tokenizer is a word-level ``tokenizers`` model holding the real
special tokens, at the ids the tiny config names.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

# Sizes of the test model: small enough to build in milliseconds.
ENCODER_DIM = 8
AUDIO_TOKEN_ID, AUDIO_BOS_ID, AUDIO_EOS_ID = 61, 62, 63
TINY_CONFIG = {
    "audio_encoder": {"embed_dim": ENCODER_DIM, "depth": 1, "num_heads": 2},
    "subsample_factor": 5,
    "text": {"vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
             "num_key_value_heads": 1, "intermediate_size": 24, "rope_theta": 1e6,
             "max_position_embeddings": 256, "rms_norm_eps": 1e-6},
    "audio_token_id": AUDIO_TOKEN_ID,
    "audio_bos_token_id": AUDIO_BOS_ID,
    "audio_eos_token_id": AUDIO_EOS_ID,
}
WORDS = ["hello", "what", "is", "this", "sound", "a", "dog", "barks", "write", "an", "audio", "caption",
         "describing", "the", "user", "assistant", "system"]
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"]


def tiny_tensors(dtype: torch.dtype = torch.float32, seed: int = 0) -> dict[str, torch.Tensor]:
    """Every tensor of a tiny MiDashengLM in the official key layout."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    text = TINY_CONFIG["text"]
    decoder = Qwen2ForCausalLM(Qwen2Config(**text, tie_word_embeddings=False))
    tensors = {f"decoder.{key}": value for key, value in decoder.state_dict().items()}
    hidden = text["hidden_size"]
    tensors.update({
        "audio_projector.net.0.weight": torch.randn(hidden, ENCODER_DIM * 5) * 0.2,
        "audio_projector.net.0.bias": torch.randn(hidden) * 0.1,
        "audio_projector.net.2.weight": torch.randn(hidden, hidden) * 0.2,
        "audio_projector.net.2.bias": torch.randn(hidden) * 0.1,
    })
    tensors.update({f"audio_encoder.{key}": value for key, value in encoder_tensors().items()})
    return {key: (value.to(dtype) if value.is_floating_point() else value).contiguous()
            for key, value in tensors.items()}


def encoder_tensors() -> dict[str, torch.Tensor]:
    """A random Dasheng encoder of TINY_CONFIG's size under the checkpoint's names, frontend buffers included."""
    from auricle.frontend import mel_filterbank
    from auricle.models.dasheng import Dasheng
    from auricle.models.dasheng_config import DashengConfig

    encoder = Dasheng(DashengConfig(**TINY_CONFIG["audio_encoder"]))
    state = dict(encoder.state_dict())
    state["init_bn.running_mean"] = torch.randn(64) * 3 - 40  # as if trained: log-mels sit far below 0 dB
    state["init_bn.running_var"] = torch.rand(64) * 20 + 10
    state["front_end.0.spectrogram.window"] = torch.hann_window(512, periodic=True)
    state["front_end.0.mel_scale.fb"] = mel_filterbank()
    return state


def write_checkpoint(folder: Path, tensors: dict[str, torch.Tensor], config: dict | None = None) -> Path:
    """``folder`` with model.safetensors and config.json."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config or TINY_CONFIG))
    return folder


def write_sharded(folder: Path, tensors: dict[str, torch.Tensor], shards: int = 3,
                  config: dict | None = None) -> Path:
    """``folder`` with the tensors spread over ``shards`` files and model.safetensors.index.json."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    keys = sorted(tensors)
    weight_map = {}
    for index in range(shards):
        name = f"model-{index + 1:05d}-of-{shards:05d}.safetensors"
        part = {key: tensors[key] for key in keys[index::shards]}
        save_file(part, str(folder / name))
        weight_map.update({key: name for key in part})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps(config or TINY_CONFIG))
    return folder


def write_tokenizer(path: Path, special: list[str] = SPECIAL) -> Path:
    """A word-level tokenizer.json: the words at ids 0..57, then ``special`` in order (audio at 61, 62, 63)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    vocab = {"[UNK]": 0, **{word: i + 1 for i, word in enumerate(WORDS)}}
    vocab.update({f"w{i}": i for i in range(len(vocab), 64 - len(SPECIAL))})
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.add_special_tokens(special)
    tokenizer.save(str(path))
    return path


#: TINY_CONFIG in the official config.json schema (model_type midashenglm, audio_encoder_config, text_config).
OFFICIAL_CONFIG = {
    "architectures": ["MiDashengLMModel"],
    "model_type": "midashenglm",
    "audio_encoder_config": {**TINY_CONFIG["audio_encoder"], "patch_size": [64, 4], "patch_stride": [64, 4],
                             "target_length": 1008},
    "subsample_factor": 5,
    "text_config": {**TINY_CONFIG["text"], "model_type": "qwen2_5_omni_text"},
    "audio_token_id": AUDIO_TOKEN_ID,
    "audio_bos_token_id": AUDIO_BOS_ID,
    "audio_eos_token_id": AUDIO_EOS_ID,
    "torch_dtype": "bfloat16",
}


def write_model_folder(folder: Path, dtype: torch.dtype = torch.bfloat16, shards: int = 2, seed: int = 0) -> Path:
    """A tiny random MiDashengLM folder as the Hub publishes one: config.json, shards and their index,
    tokenizer.json and generation_config.json."""
    write_sharded(folder, tiny_tensors(dtype, seed), shards=shards, config=OFFICIAL_CONFIG)
    index = folder / "model.safetensors.index.json"
    values = json.loads(index.read_text())
    values["metadata"]["total_size"] = sum(path.stat().st_size for path in folder.glob("*.safetensors"))
    index.write_text(json.dumps(values))
    write_tokenizer(folder / "tokenizer.json")
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [60, 58], "do_sample": False}))
    return folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A tiny random MiDashengLM folder in the official layout, one per test module."""
    return write_model_folder(tmp_path_factory.mktemp("midashenglm-tiny"))


@pytest.fixture(scope="module")
def model(folder):
    """That folder loaded through the public API."""
    import auricle

    return auricle.load_model(checkpoint=folder)
