"""The precision MiDashengLM runs at: as stored, bf16, or weight-only int8 for the decoder's linear layers.

``int8`` keeps each decoder linear layer's weight as int8 with one symmetric scale per output channel
(``w ≈ q * scale``, ``q`` in [-127, 127], ``scale = max|w_row| / 127`` rounded to bf16) and multiplies
with bf16 activations, so activations are never quantised. Every other decoder tensor (embeddings,
norms, biases), the projector and the encoder are bf16, as with ``bf16``.

Quantised: the seven projections of every layer (``q/k/v/o_proj``, ``gate/up/down_proj``) and
``lm_head``. ``lm_head`` is included because decoding reads all of it for every token (545 M of the
7.07 B weights read per token, 8 %) and a per-row scale gives every vocabulary entry its own scale,
so its logits carry only rounding noise; the input embeddings are a lookup of one row per token and
stay bf16 (quantising them saves memory but no time). The agreement this costs is measured by
``benchmarks/language_speed.py`` (docs/benchmarks.md).

The matrix product is ``torch._weight_int8pack_mm`` (bf16 activations × int8 weights × bf16 scales),
the fastest weight-only batch-1 product torch 2.13 offers on the CPU measured (docs/benchmarks.md:
2-2.5x bf16 ``linear``; dequantise-then-multiply is 6x slower than bf16, ``torch.compile`` slower too;
``torch.ao`` dynamic quantisation is about as fast but rounds the activations to int8 as well). It is a
private operator that returns wrong numbers or crashes when the input width is not a multiple of 16
(measured on torch 2.13); such layers (only in tiny test models) dequantise instead, and so does a
prompt's prefill (many rows), where the bf16 matrix product is faster.

Weights are quantised as each tensor is read (:func:`converter`), in row blocks with bounded float32
temporaries, so loading never holds the whole bf16 model next to the int8 one.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from auricle.errors import OptionError
from auricle.language.config import LANGUAGE_PRECISIONS

#: What ``precision=`` also accepts for MiDashengLM, meaning "as stored": "fp32" is the loaders' default
#: (the release is bf16; widening 7 B weights to fp32 would take 33 GB and gain nothing).
STORED = ("fp32", None)
#: Decoder modules (names inside transformers' ``Qwen2ForCausalLM``) whose weights become int8.
INT8_MODULES = re.compile(r"^(model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)|lm_head)$")
DECODER_PREFIX = "decoder."
#: float32 elements a row block may hold while quantising (64 MB): lm_head alone is 545 M.
BLOCK_ELEMENTS = 16 * 1024 * 1024
#: The packed product needs the input width to be a multiple of this (torch 2.13; other widths crash).
PACKED_WIDTH = 16
#: Above this many rows (a prompt's prefill) the packed product is slower than converting the int8
#: weight to bf16 and using the bf16 matrix product (measured here: 3x slower at 270 rows, even at 64).
PACKED_MAX_ROWS = 64
#: Bytes an int8 model holds per byte of a bf16 checkpoint: the quantised layers are 85 % of the
#: 7B's 8.28 B parameters and halve (0.57); the rest stays bf16. Rounded up for the scales and headroom.
INT8_MEMORY_FRACTION = 0.6


def check_precision(precision: str | None) -> str | None:
    """``"bf16"``, ``"int8"`` or None (as stored); anything else is refused in one line."""
    if precision in STORED:
        return None
    if precision not in LANGUAGE_PRECISIONS:
        raise OptionError(f"MiDashengLM runs at precision {' or '.join(LANGUAGE_PRECISIONS)} (or as stored, "
                          f"the default), not {precision!r}")
    return precision


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 weight, bf16 scale per output row) of a (out, in) weight; float32 only a block at a time."""
    rows, width = weight.shape
    quantized = torch.empty(rows, width, dtype=torch.int8)
    scale = torch.empty(rows, dtype=torch.bfloat16)
    step = max(1, BLOCK_ELEMENTS // max(width, 1))
    for start in range(0, rows, step):
        block = weight[start:start + step].float()
        # The scale is rounded to bf16 first, so q * scale is exactly what the product multiplies.
        row_scale = (block.abs().amax(dim=1) / 127).to(torch.bfloat16)
        row_scale[row_scale == 0] = 1  # an all-zero row: any scale gives q = 0
        scale[start:start + step] = row_scale
        quantized[start:start + step] = (block / row_scale.float()[:, None]).round_().clamp_(-127, 127).to(torch.int8)
    return quantized, scale


class Int8Linear(nn.Module):
    """A linear layer with an int8 weight and a bf16 scale per output channel; bf16 in, bf16 out."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.empty(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scale", torch.empty(out_features, dtype=torch.bfloat16))
        self.register_buffer("bias", torch.empty(out_features, dtype=torch.bfloat16) if bias else None)
        self.packed = in_features % PACKED_WIDTH == 0

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Int8Linear":
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None)
        layer.weight, layer.scale = quantize_weight(linear.weight.detach())
        if linear.bias is not None:
            layer.bias = linear.bias.detach().to(torch.bfloat16)
        return layer

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16).contiguous()
        if self.packed and flat.shape[0] <= PACKED_MAX_ROWS:
            out = torch._weight_int8pack_mm(flat, self.weight, self.scale)
        else:  # a long prompt, or a width the packed product gets wrong: the same q·x·scale in bf16
            out = F.linear(flat, self.weight.to(torch.bfloat16)) * self.scale
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)


def int8_module(name: str) -> bool:
    """Whether the decoder module ``name`` (inside ``Qwen2ForCausalLM``) is quantised."""
    return INT8_MODULES.match(name) is not None


def use_int8_layers(decoder: nn.Module) -> list[str]:
    """Swap every quantised module of a built decoder for an :class:`Int8Linear` (on meta, its weights
    still unset, or quantising the weights it holds); the names swapped."""
    swapped = []
    for name, module in list(decoder.named_modules()):
        if not int8_module(name) or not isinstance(module, nn.Linear):
            continue
        parent_name, _, child = name.rpartition(".")
        parent = decoder.get_submodule(parent_name) if parent_name else decoder
        if module.weight.is_meta:
            with torch.device("meta"):
                layer = Int8Linear(module.in_features, module.out_features, module.bias is not None)
        else:
            layer = Int8Linear.from_linear(module)
        setattr(parent, child, layer)
        swapped.append(name)
    return swapped


def converter(precision: str | None) -> Callable[[str, torch.Tensor], dict[str, torch.Tensor]] | None:
    """What each checkpoint tensor becomes as it is read (key, tensor) -> {key: tensor}; None: as stored."""
    if precision is None:
        return None

    def convert(key: str, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
        if precision == "int8" and key.startswith(DECODER_PREFIX) and key.endswith(".weight") \
                and int8_module(key[len(DECODER_PREFIX):-len(".weight")]):
            quantized, scale = quantize_weight(tensor)
            return {key: quantized, key[:-len("weight")] + "scale": scale}
        return {key: tensor.to(torch.bfloat16) if tensor.is_floating_point() else tensor}

    return convert
