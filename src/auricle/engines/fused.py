"""The transformer blocks of CED and Dasheng with prepacked weights and fused kernels (CPU inference).

Same computation as the network's ``piece_features`` (:meth:`auricle.models.ced.CED.forward_features`;
Dasheng's chunks with their key mask), faster on x86 CPUs. Per precision:

``fp32``
    The residual stream is one contiguous (tokens, dim) matrix, and the Linear
    layers run one of two ways (``products``, by default picked from the CPU by
    :func:`fp32_products`):

    * ``"onednn"`` (AVX-512 CPUs): oneDNN with each weight reordered once into
      the blocked layout the kernel wants (``addmm`` re-reads a plain layout and
      first copies the broadcast bias into its output), the fc1 GELU (exact,
      erf) and both residual additions in the GEMM epilogue; 10-15% faster than
      ``addmm`` on the 192/256-wide matrices of ced-tiny and ced-mini on an
      AVX-512 AMD Zen 4.
    * ``"blas"`` (AVX2 CPUs): ``addmm`` (MKL), with the residual accumulated
      in the product's output and GELU as its own vectorised pass. On an
      AVX2-only AMD Zen 3, oneDNN's epilogue GELU alone cost a third of the
      fc1 product, and this way was 8-21% faster on one thread for all four sizes.

    Either differs from the module only by float32 rounding order (~1e-6 on tokens).
``bf16``
    The same oneDNN linears on bfloat16 weights, and attention in bfloat16: PyTorch's
    fused attention kernel on CPUs with AMX, elsewhere two batched products around a
    softmax, which are faster there (``attention``, by default :func:`bf16_attention`). The residual stream,
    LayerNorms and output stay float32, as under autocast. Needs AVX-512 or
    AVX-NE-CONVERT (:func:`bf16_kernels`); elsewhere the engine uses autocast.
``int8``
    The Linear layers as FBGEMM dynamic int8 products (weights int8 per tensor,
    symmetric, exactly what ``torch.ao.quantization.quantize_dynamic`` makes;
    activations quantised per call), and attention in bfloat16 as above where
    the CPU has native bf16 (``avx512_bf16``/AMX), else float32.

The packed weights are a snapshot: when any encoder weight changes in place
(training, ``load_state_dict``), the next call repacks, so a model being
fine-tuned is never scored with stale weights.

Memory: the packed weights are a second copy (not for ``"blas"``, which reads the module's), made
once however many streams call at once. Where the module's weights lie in a memory-mapped
checkpoint (auricle's loaders map safetensors and zip ``.pt`` files), each block's pages are
handed back to the kernel once packed (:mod:`auricle.engines.pages`), so the weights are resident
about once, not twice (dasheng-base: 1 minute of ``auricle embed`` peaked at 1.3 GB, now ~0.7 GB,
docs/benchmarks.md); the module still runs, its pages read back from the file.
"""

from __future__ import annotations

import functools
import threading
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from auricle.engines.config import PRECISIONS
from auricle.engines.pages import release_file_pages
from auricle.models.ced import CED
from auricle.models.dasheng import Dasheng, key_bias

#: Rows the blocked weight layouts are tuned for (8 ten-second windows are ~2000 token rows);
#: any other row count still works.
_ROWS_HINT = 2048


def fused_supported(device: torch.device | str = "cpu", precision: str = "fp32") -> bool:
    """True where this precision's fused kernels exist: CPU builds of torch with oneDNN (and FBGEMM for int8)."""
    if torch.device(device).type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    try:
        torch.ops.mkldnn._linear_pointwise  # noqa: B018 - the lookups are the check
        torch.ops.mkldnn._reorder_linear_weight  # noqa: B018
        if precision == "int8":
            return "fbgemm" in torch.backends.quantized.supported_engines
    except (AttributeError, RuntimeError):
        return False
    return precision != "bf16" or bf16_kernels()


@functools.cache
def bf16_kernels() -> bool:
    """True where oneDNN has bfloat16 linear kernels: CPUs with AVX-512 (bw, vl, dq) or AVX-NE-CONVERT.

    Elsewhere (e.g. AVX2-only CPUs such as AMD Zen 3) it refuses to pack bf16
    weights, so the fused bf16 encoder cannot run. Probed, not read off the CPU
    flags, because the requirement is oneDNN's and may change with it.
    """
    try:
        torch.ops.mkldnn._reorder_linear_weight(torch.zeros(16, 16, dtype=torch.bfloat16), 16)
    except (AttributeError, RuntimeError):
        return False
    return True


def fp32_products() -> str:
    """How the fp32 Linear layers run fastest here: ``"onednn"`` on AVX-512 CPUs, else ``"blas"``.

    Read off ATen's vector capability (``AVX512``, ``AVX2``, ...), so it follows
    ``ATEN_CPU_CAPABILITY`` when that is set to force a narrower ISA.
    """
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
        return "onednn"
    return "onednn" if capability.upper().startswith("AVX512") else "blas"


def native_bf16() -> bool:
    """True where bfloat16 products run in hardware (avx512_bf16, AMX) rather than emulated."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def bf16_attention() -> str:
    """How bfloat16 attention runs fastest here: ``"sdpa"`` on CPUs with AMX, else ``"products"``.

    ``"sdpa"`` is PyTorch's fused attention kernel (``scaled_dot_product_attention``);
    ``"products"`` two bfloat16 batched products around a softmax. With AMX tiles (Intel
    Sapphire Rapids and later; a 2-core Xeon VM) the fused kernel made ced-mini's torch bf16
    and int8 engines 9-13% faster (bf16: 111.8 against 98.6 clips/s); without AMX (AVX-512 AMD
    Zen 4) the products were about 10% faster (docs/benchmarks.md).
    """
    try:
        amx = bool(torch.cpu._is_amx_tile_supported())  # also false where the kernel refuses the tiles
    except (AttributeError, RuntimeError):
        amx = False
    return "sdpa" if amx else "products"


def _gelu_in_place(x: torch.Tensor) -> torch.Tensor:
    """Exact (erf) GELU written over ``x``, a product this encoder just made and owns.

    Saves one (rows, 4 dim) allocation per block; same results bit for bit. Not a
    claimed speed-up (ad-hoc comparisons on the Zen 3 VM were within noise to +4%).
    """
    return torch.ops.aten.gelu_(x)


@dataclass(frozen=True)
class _PackedBlock:
    qkv: Any
    proj: Any
    fc1: Any
    fc2: Any


class FusedEncoder:
    """Runs ``network``'s encoder (patch embedding, blocks, final norm) with fused CPU kernels."""

    def __init__(self, network: CED | Dasheng, precision: str = "fp32", products: str | None = None,
                 attention: str | None = None) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"fused encoder runs {', '.join(PRECISIONS)}, not {precision!r}")
        products = products or fp32_products()
        if products not in ("onednn", "blas"):
            raise ValueError(f"fp32 products run through 'onednn' or 'blas', not {products!r}")
        attention = attention or bf16_attention()
        if attention not in ("sdpa", "products"):
            raise ValueError(f"bf16 attention runs as 'sdpa' or 'products', not {attention!r}")
        self.network = network
        self.precision = precision
        #: Only fp32 has the choice: bf16 needs oneDNN's kernels, int8 FBGEMM's.
        self.products = products if precision == "fp32" else ("fbgemm" if precision == "int8" else "onednn")
        self._dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        # Attention in bf16 only where it is fast; bf16 precision always (it is asked for).
        self._bf16_attention = precision == "bf16" or (precision == "int8" and native_bf16())
        #: Only bf16 attention has the choice: fp32 attention is always the fused kernel.
        self.attention = attention if self._bf16_attention else "sdpa"
        self._packed: list[_PackedBlock] = []
        self._signature: tuple = ()
        # The engine's streams call forward_features at once: unguarded, each packed its own copy
        # on the first call (dasheng-base: two ~330 MB copies, a 1.3 GB peak for a minute of audio).
        self._packing = threading.Lock()

    def _current_signature(self) -> tuple:
        # _version moves on every in-place write (optimizer steps, copy_ from load_state_dict).
        return tuple((p.data_ptr(), p._version) for p in self.network.blocks.parameters())

    def _pack(self, linear: nn.Linear):
        weight = linear.weight.detach()
        bias = linear.bias.detach() if linear.bias is not None else None
        if self.precision == "int8":
            observer = torch.ao.quantization.MinMaxObserver(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric)
            observer(weight)
            scale, zero_point = observer.calculate_qparams()
            with warnings.catch_warnings():  # quantized tensors print a deprecation notice per call
                warnings.simplefilter("ignore")
                quantized = torch.quantize_per_tensor(weight, float(scale), int(zero_point), torch.qint8)
                return torch.ops.quantized.linear_prepack(quantized, bias)
        if self.products == "blas":
            return weight.t(), bias  # a transposed view: BLAS reads it as is
        weight = torch.ops.mkldnn._reorder_linear_weight(weight.to(self._dtype), _ROWS_HINT)
        return weight, bias.to(self._dtype) if bias is not None else None

    def _packed_blocks(self) -> list[_PackedBlock]:
        with self._packing:
            signature = self._current_signature()
            if signature != self._signature:
                self._packed = []  # the old copy goes before the new one is made
                packed = []
                with torch.no_grad():
                    for block in self.network.blocks:
                        linears = (block.attn.qkv, block.attn.proj, block.mlp.fc1, block.mlp.fc2)
                        packed.append(_PackedBlock(*(self._pack(linear) for linear in linears)))
                        if self.products != "blas":  # "blas" packs views: the module's weights are the ones read
                            # Packing read this block's weights of a memory-mapped checkpoint into resident
                            # memory, and this encoder never reads them again (auricle.engines.pages); block
                            # by block, so they are never all resident beside the packed copy. The biases
                            # stay: fp32 uses the module's own.
                            release_file_pages(linear.weight for linear in linears)
                self._packed = packed
                self._signature = signature
            return self._packed

    # -- the three linear flavours: (input, packed) -> output, optionally + residual / GELU ------
    def _linear(self, x: torch.Tensor, packed, activation: str = "none") -> torch.Tensor:
        if self.precision == "int8":
            out = torch.ops.quantized.linear_dynamic(x, packed, reduce_range=True)
            return _gelu_in_place(out) if activation == "gelu" else out
        weight, bias = packed
        if self.products == "blas":
            out = torch.addmm(bias, x, weight) if bias is not None else torch.mm(x, weight)
            return _gelu_in_place(out) if activation == "gelu" else out
        if activation == "gelu":
            return torch.ops.mkldnn._linear_pointwise(x.to(self._dtype), weight, bias, "gelu", [None], "none")
        return torch.ops.mkldnn._linear_pointwise(x.to(self._dtype), weight, bias, "none", [], "")

    def _residual(self, x: torch.Tensor, h: torch.Tensor, packed) -> torch.Tensor:
        """x + linear(h): in the GEMM epilogue for fp32, as a float32 add otherwise."""
        if self.products == "blas":
            weight, bias = packed
            out = torch.addmm(x, h, weight)  # the residual is the product's accumulator
            return out.add_(bias) if bias is not None else out
        if self.precision == "fp32":
            weight, bias = packed
            return torch.ops.mkldnn._linear_pointwise.binary(h, x, weight, bias, "add")
        return x + self._linear(h, packed).float()

    def _attention(self, qkv: torch.Tensor, batch: int, tokens: int, heads: int, dim: int,
                   bias: torch.Tensor | None = None) -> torch.Tensor:
        """(rows, 3 dim) products -> (rows, dim) attended values, in the projection's input dtype.

        ``bias``: an additive key mask (batch, 1, 1, tokens) in the attention's dtype, or None."""
        head_dim = dim // heads
        if self.attention == "sdpa":
            if self._bf16_attention:
                qkv = qkv.to(torch.bfloat16)
            q, k, v = qkv.reshape(batch, tokens, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias).transpose(1, 2).reshape(-1, dim)
            return out.float() if self.precision == "int8" else out  # int8's projection takes float32
        # One pass casts and regroups the products head-major, so q, k and v are contiguous
        # (batch * heads, tokens, head_dim) blocks; the softmax scale rides on the first product.
        grouped = torch.empty((3, batch * heads, tokens, head_dim), dtype=torch.bfloat16)
        grouped.view(3, batch, heads, tokens, head_dim).copy_(
            qkv.view(batch, tokens, 3, heads, head_dim).permute(2, 0, 3, 1, 4))
        q, k, v = grouped.unbind(0)
        scores = torch.empty((batch * heads, tokens, tokens), dtype=torch.bfloat16)  # beta=0: never read
        scores = torch.baddbmm(scores, q, k.transpose(1, 2), beta=0.0, alpha=head_dim**-0.5)
        if bias is not None:
            scores.view(batch, heads, tokens, tokens).add_(bias)
        out = torch.bmm(torch.softmax(scores, dim=-1), v)
        # Back to (rows, dim) token-major, in the dtype the projection takes, again in one pass.
        rows = torch.empty((batch, tokens, heads, head_dim), dtype=torch.bfloat16 if self.precision == "bf16"
                           else torch.float32)
        rows.copy_(out.view(batch, heads, tokens, head_dim).transpose(1, 2))
        return rows.view(-1, dim)

    @torch.inference_mode()
    def forward_features(self, pieces: torch.Tensor, keys: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised mel pieces (n, 1, n_mels, frames) -> float32 tokens (n, patches, dim).

        ``keys`` (n,): each piece's count of tokens keys may attend to (Dasheng's padded batches); None: all.
        """
        network = self.network
        x = network.patch_embed(pieces)
        x = x + network.time_pos_embed[:, :, :, : x.shape[-1]]
        x = x + network.freq_pos_embed
        batch, dim = x.shape[0], x.shape[1]
        x = x.flatten(2).transpose(1, 2).reshape(-1, dim)  # one contiguous (tokens, dim) matrix
        tokens = x.shape[0] // batch
        bias = None if keys is None else key_bias(keys, tokens, torch.bfloat16 if self._bf16_attention
                                                  else torch.float32)
        for block, packed in zip(network.blocks, self._packed_blocks()):
            h = F.layer_norm(x, (dim,), block.norm1.weight, block.norm1.bias, block.norm1.eps)
            attended = self._attention(self._linear(h, packed.qkv), batch, tokens, block.attn.num_heads, dim, bias)
            x = self._residual(x, attended, packed.proj)
            h = F.layer_norm(x, (dim,), block.norm2.weight, block.norm2.bias, block.norm2.eps)
            x = self._residual(x, self._linear(h, packed.fc1, "gelu"), packed.fc2)
        return network.norm(x.reshape(batch, tokens, dim).float())
