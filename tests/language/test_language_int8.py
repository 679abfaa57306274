"""MiDashengLM at precision bf16 and int8 (weight-only int8 for the decoder's linear layers), tiny fixture."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

pytest.importorskip("transformers", reason="MiDashengLM needs the language extra (transformers)")

import torch  # noqa: E402
from language_support import TINY_CONFIG, folder  # noqa: E402,F401  (folder: a fixture)

import auricle  # noqa: E402
from auricle.language import folder as folder_checks  # noqa: E402
from auricle.cli import cli  # noqa: E402
from auricle.errors import CheckpointError, OptionError  # noqa: E402
from auricle.language import precision as int8  # noqa: E402
from auricle.language.precision import Int8Linear, quantize_weight  # noqa: E402

LAYERS = TINY_CONFIG["text"]["num_hidden_layers"]
NO_AUDIO = [torch.zeros(0, TINY_CONFIG["text"]["hidden_size"])]


@pytest.fixture(scope="module")
def models(folder):
    return {precision: auricle.load_model(checkpoint=folder, precision=precision) for precision in ("bf16", "int8")}


@pytest.fixture(scope="module")
def wav(tmp_path_factory):
    path = tmp_path_factory.mktemp("audio") / "dog.wav"
    sf.write(path, np.random.default_rng(0).standard_normal(24_000).astype(np.float32) * 0.1, 16_000)
    return path


def test_quantize_weight_is_symmetric_per_output_channel_and_blockwise(monkeypatch):
    weight = torch.randn(37, 48, dtype=torch.bfloat16) * torch.logspace(-3, 1, 37)[:, None].to(torch.bfloat16)
    weight[5] = 0  # an all-zero row
    quantized, scale = quantize_weight(weight)
    assert quantized.dtype == torch.int8 and scale.dtype == torch.bfloat16 and scale.shape == (37,)
    assert int(quantized.abs().max()) <= 127 and (quantized[5] == 0).all()
    rows = [row for row in range(37) if row != 5]
    assert (quantized[rows].abs().amax(dim=1) >= 126).all()  # each row uses its own full range
    error = (quantized.float() * scale.float()[:, None] - weight.float()).abs()
    assert (error <= scale.float()[:, None] * 0.5 + 1e-6 * weight.float().abs()).all()  # rounding, nothing more
    monkeypatch.setattr(int8, "BLOCK_ELEMENTS", 100)  # two rows at a time: the same result
    blocked, blocked_scale = quantize_weight(weight)
    assert torch.equal(blocked, quantized) and torch.equal(blocked_scale, scale)


@pytest.mark.parametrize("rows", [1, 3, int8.PACKED_MAX_ROWS + 1])
@pytest.mark.parametrize("width", [32, 24])  # 32: the packed kernel; 24: a width it gets wrong, dequantised
def test_int8_linear_computes_x_times_q_times_scale_plus_bias(rows, width):
    linear = torch.nn.Linear(width, 40).to(torch.bfloat16)
    layer = Int8Linear.from_linear(linear)
    assert layer.packed == (width % 16 == 0)
    x = torch.randn(2, rows, width, dtype=torch.bfloat16)
    expected = x.float() @ (layer.weight.float() * layer.scale.float()[:, None]).t() + layer.bias.float()
    out = layer(x)
    assert out.shape == (2, rows, 40) and out.dtype == torch.bfloat16
    assert float((out.float() - expected).abs().max()) <= 0.02 * float(expected.abs().max())


def test_int8_replaces_every_decoder_linear_and_only_those(models):
    network = models["int8"].network
    names = [name for name, module in network.decoder.named_modules() if isinstance(module, Int8Linear)]
    assert len(names) == 7 * LAYERS + 1 and "lm_head" in names
    assert not [name for name, module in network.decoder.named_modules() if isinstance(module, torch.nn.Linear)]
    assert all(network.decoder.get_submodule(name).weight.dtype == torch.int8 for name in names)
    assert network.decoder.get_input_embeddings().weight.dtype == torch.bfloat16  # a lookup: stays bf16
    assert network.precision == "int8" and "precision='int8'" in repr(models["int8"])
    assert models["bf16"].network.precision == "bf16"


def test_int8_logits_stay_close_to_bf16_and_agree_on_the_next_token(models):
    """The same weights in int8 move the logits by rounding only: measured 0.6 % of their spread and top-1
    agreement 0.99 to 0.995 over 200 teacher-forced positions for four seeds of this tiny random model
    (whose median top-1 margin is a quarter of the logits' spread, so near-ties do flip)."""
    ids = torch.randint(0, 58, (1, 200), generator=torch.Generator().manual_seed(0))
    bf16 = models["bf16"].network.prefill_logits(ids, NO_AUDIO).float()[0]
    quantized = models["int8"].network.prefill_logits(ids, NO_AUDIO).float()[0]
    spread = (bf16 - bf16.mean(-1, keepdim=True)).norm()
    assert float((quantized - bf16).norm() / spread) < 0.02
    assert float((quantized.argmax(-1) == bf16.argmax(-1)).float().mean()) >= 0.95


def test_int8_describes_through_the_api(models, wav):
    result = models["int8"].describe(wav, max_new_tokens=6)
    assert 1 <= result.tokens <= 6 and result.text == models["int8"].tokenizer.decode(list(result.segments[0].tokens))


def test_int8_and_bf16_through_the_cli(folder, wav, tmp_path):
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(cli, ["describe", str(wav), "--checkpoint", str(folder), "--precision", "int8",
                                      "--max-new-tokens", "4", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text().splitlines()[0])["file"] == str(wav)
    # Resuming with another precision would mix outputs: refused like any other changed setting.
    other = tmp_path / "other.wav"
    sf.write(other, np.random.default_rng(1).standard_normal(24_000).astype(np.float32) * 0.1, 16_000)
    again = CliRunner().invoke(cli, ["describe", str(wav), str(other), "--checkpoint", str(folder),
                                     "--precision", "bf16", "-o", str(out), "--resume"])
    assert again.exit_code != 0 and 'precision "int8" -> "bf16"' in again.stderr


def test_bad_precisions_are_refused_in_one_line(folder, wav):
    with pytest.raises(OptionError, match=r"^MiDashengLM runs at precision bf16 or int8 .*, not 'auto'$"):
        auricle.load_model(checkpoint=folder, precision="auto")
    with pytest.raises(OptionError, match=r"^MiDashengLM runs at precision bf16 or int8 .*, not 'fp16'$"):
        auricle.load_model(checkpoint=folder, precision="fp16")  # the family's words, before the device is looked for
    with pytest.raises(OptionError, match="not 'fp8'"):
        int8.check_precision("fp8")
    result = CliRunner().invoke(cli, ["describe", str(wav), "--checkpoint", str(folder), "--precision", "fp16"])
    assert result.exit_code == 2 and "'fp16' is not one of 'bf16', 'int8'" in result.stderr


def test_int8_fits_where_bf16_does_not(folder, monkeypatch):
    """The memory check before loading counts an int8 model at about 0.6 of the bf16 files."""
    from auricle import language_model

    size = language_model.checkpoint_bytes(folder)
    monkeypatch.setattr(folder_checks, "available_memory", lambda: int(size * 0.8))
    with pytest.raises(CheckpointError, match=r"smaller precision \(precision=\"int8\" \(--precision int8"):
        auricle.load_model(checkpoint=folder)
    assert auricle.load_model(checkpoint=folder, precision="int8").network.precision == "int8"


def test_the_checkpoint_is_converted_one_tensor_at_a_time(folder, monkeypatch):
    """int8 never holds the stored decoder beside the quantised one: each tensor is converted as it is read."""
    from auricle.language import checkpoint

    seen, convert = [], int8.converter("int8")

    def spy(key, tensor):
        seen.append(key)
        return convert(key, tensor)

    read = checkpoint.read_language_checkpoint(folder, convert=spy)
    assert len(seen) == len(set(seen)) and seen  # every stored tensor once
    assert read.decoder_state["lm_head.weight"].dtype == torch.int8 and "lm_head.scale" in read.decoder_state
    assert read.decoder_state["model.embed_tokens.weight"].dtype == torch.bfloat16


def test_auricle_serve_takes_precision_int8(folder, monkeypatch):
    from serve_support import serve_in_process

    result, served, port = serve_in_process(monkeypatch, "--checkpoint", str(folder), "--threads", "1",
                                            "--precision", "int8")
    assert result.exit_code == 0, result.output
    assert served["app"].state.model.network.precision == "int8"
    auto = CliRunner().invoke(cli, ["serve", "--checkpoint", str(folder), "--port", str(port), "--precision", "auto"])
    assert auto.exit_code == 2 and "MiDashengLM runs at precision bf16 or int8 (or as stored, the default), not 'auto'" in auto.output


def test_each_worker_process_loads_int8(folder, monkeypatch):
    from auricle.serve.app import create_app_from_environment

    monkeypatch.setenv("AURICLE_SERVE", json.dumps({"model": "ced-mini", "checkpoint": str(folder), "threads": 1,
                                                    "precision": "int8"}))
    assert create_app_from_environment().state.model.network.precision == "int8"
