"""The CED transformer blocks on oneDNN, with prepacked weights and fused epilogues (CPU inference).

Same arithmetic as :meth:`auricle.models.ced.CED.forward_features`, faster on
x86 CPUs because:

* every Linear runs through oneDNN with its weight reordered once into the
  blocked layout the kernel wants (``addmm`` re-reads a plain layout and first
  copies the broadcast bias into the output), which alone is 10-15% faster on
  the narrow 192/256-wide matrices of ced-tiny and ced-mini;
* the fc1 GELU (exact, erf) and the two residual additions run in the GEMM
  epilogue instead of as separate passes over memory;
* the residual stream is kept as one contiguous (tokens, dim) matrix.

Results differ from the module only by float32 rounding order (~1e-6 on
tokens); the engine tests hold both to the official reference tolerances.

With ``dtype=torch.bfloat16`` the matrix products and attention run in
bfloat16 while the residual stream, LayerNorms and the output stay float32
(what autocast does, without its per-call weight casts).

The packed weights are a snapshot: when any encoder weight changes in place
(training, ``load_state_dict``), the next call repacks, so a model being
fine-tuned is never scored with stale weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from auricle.models.ced import CED

#: Rows the blocked weight layouts are tuned for (one 8-clip batch of 10 s windows is ~2000 token rows);
#: any other row count still works.
_ROWS_HINT = 2048


def fused_supported(device: torch.device | str = "cpu") -> bool:
    """True where the oneDNN fused linear kernels exist: CPU builds of torch with oneDNN (mkldnn)."""
    if torch.device(device).type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    try:
        _linear()
        torch.ops.mkldnn._reorder_linear_weight  # noqa: B018 - attribute lookup is the check
    except (AttributeError, RuntimeError):
        return False
    return True


def _linear():
    return torch.ops.mkldnn._linear_pointwise


@dataclass(frozen=True)
class _Packed:
    weight: torch.Tensor
    bias: torch.Tensor


@dataclass(frozen=True)
class _PackedBlock:
    qkv: _Packed
    proj: _Packed
    fc1: _Packed
    fc2: _Packed


class FusedEncoder:
    """Runs ``network``'s encoder (patch embedding, blocks, final norm) with fused oneDNN kernels."""

    def __init__(self, network: CED, dtype: torch.dtype = torch.float32) -> None:
        if dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"fused encoder runs float32 or bfloat16, not {dtype}")
        self.network = network
        self.dtype = dtype
        self._packed: list[_PackedBlock] = []
        self._signature: tuple = ()

    def _weights(self) -> list[nn.Parameter]:
        return list(self.network.blocks.parameters())

    def _current_signature(self) -> tuple:
        # _version moves on every in-place write (optimizer steps, copy_ from load_state_dict).
        return tuple((p.data_ptr(), p._version) for p in self._weights())

    def _pack(self, linear: nn.Linear) -> _Packed:
        weight = linear.weight.detach().to(self.dtype)
        bias = linear.bias.detach().to(self.dtype) if linear.bias is not None else None
        return _Packed(torch.ops.mkldnn._reorder_linear_weight(weight, _ROWS_HINT), bias)

    def _packed_blocks(self) -> list[_PackedBlock]:
        signature = self._current_signature()
        if signature != self._signature:
            with torch.no_grad():
                self._packed = [
                    _PackedBlock(self._pack(block.attn.qkv), self._pack(block.attn.proj),
                                 self._pack(block.mlp.fc1), self._pack(block.mlp.fc2))
                    for block in self.network.blocks
                ]
            self._signature = signature
        return self._packed

    @torch.inference_mode()
    def forward_features(self, pieces: torch.Tensor) -> torch.Tensor:
        """Normalised mel pieces (n, 1, n_mels, frames) -> float32 tokens (n, patches, dim)."""
        network = self.network
        x = network.patch_embed(pieces)
        x = x + network.time_pos_embed[:, :, :, : x.shape[-1]]
        x = x + network.freq_pos_embed
        batch, dim = x.shape[0], x.shape[1]
        x = x.flatten(2).transpose(1, 2).reshape(-1, dim)  # one contiguous (tokens, dim) matrix
        tokens = x.shape[0] // batch
        linear = _linear()
        low = self.dtype != torch.float32
        for block, packed in zip(network.blocks, self._packed_blocks()):
            heads = block.attn.num_heads
            h = F.layer_norm(x, (dim,), block.norm1.weight, block.norm1.bias, block.norm1.eps)
            qkv = linear(h.to(self.dtype), packed.qkv.weight, packed.qkv.bias, "none", [], "")
            q, k, v = qkv.reshape(batch, tokens, 3, heads, dim // heads).permute(2, 0, 3, 1, 4).unbind(0)
            attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(-1, dim)
            if low:  # residual stream stays float32, as under autocast
                x = x + linear(attended, packed.proj.weight, packed.proj.bias, "none", [], "")
            else:
                x = linear.binary(attended, x, packed.proj.weight, packed.proj.bias, "add")
            h = F.layer_norm(x, (dim,), block.norm2.weight, block.norm2.bias, block.norm2.eps)
            h = linear(h.to(self.dtype), packed.fc1.weight, packed.fc1.bias, "gelu", [None], "none")
            if low:
                x = x + linear(h, packed.fc2.weight, packed.fc2.bias, "none", [], "")
            else:
                x = linear.binary(h, x, packed.fc2.weight, packed.fc2.bias, "add")
        return network.norm(x.reshape(batch, tokens, dim).float())
