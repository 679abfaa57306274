"""The CED and Dasheng encoders written directly as ONNX nodes, in two spellings.

Both are a patch convolution, position tables, pre-norm blocks and a final norm; Dasheng's
chunks may also carry a key mask (``keys``: per chunk, the count of leading tokens keys may
attend to), which the fused spelling hands to Attention as its ``mask_index`` and the standard
one adds to the scores as the module does.

``fused=True`` (what the ``onnx`` engine runs, and the encoder of ``auricle export
--runtime onnxruntime``) uses ONNX Runtime's fused contrib operators. A trace of
:meth:`~auricle.models.ced.CED.forward_features` spells attention as ~15 generic nodes
per block and GELU as five element-wise nodes, and ONNX Runtime's own graph optimiser
fuses neither; here each block is

    LayerNormalization -> Attention (com.microsoft: qkv projection + multi-head attention)
    -> MatMul + Add (projection) -> Add (residual)
    -> LayerNormalization -> MatMul -> BiasGelu (com.microsoft, exact erf GELU)
    -> MatMul + Add -> Add (residual)

which is the same float32 arithmetic in fewer, fused kernels. The contrib operators
exist only in ONNX Runtime.

``fused=False`` (the default ``portable`` export) writes the same blocks in standard
operators only (MatMul, Softmax, Erf, ...), for any ONNX runtime.

With ``int8`` every weight product is written in dynamic int8 (``QAttention`` for the
fused attention; ``DynamicQuantizeLinear`` -> ``MatMulInteger`` elsewhere, which ONNX
Runtime fuses into ``DynamicQuantizeMatMul``), with the weights ONNX Runtime's own
quantiser would make (:func:`quantize_columns`), without its pass over a float graph.

Written node by node rather than traced: the exporter took 4-25 s per graph and the
quantiser 2-4 s more for ced-mini; this takes a fraction of a second
(:class:`~auricle.onnx.builder.GraphBuilder` is shared with :mod:`auricle.onnx.graph`).
"""

from __future__ import annotations

import numpy as np
import torch

from auricle.models.ced import CED
from auricle.models.dasheng import Dasheng
from auricle.onnx.builder import CONTRIB_DOMAIN, ENCODER_OPSET, GraphBuilder, quantize_columns


def encoder_nodes(g: GraphBuilder, network: CED | Dasheng, pieces: str, fused: bool, output: str | None = None,
                  keys: str | None = None) -> str:
    """Nodes from normalised mel pieces (n, 1, n_mels, <=1012 frames; Dasheng <=1008) to tokens (n, patches, dim).

    ``keys``: an int32 (n,) value, each piece's count of tokens keys may attend to (Dasheng); None: all.
    """
    config = network.config
    dim = config.embed_dim
    proj = network.patch_embed.proj
    x = g.node("Conv", [pieces, g.constant("patch.weight", proj.weight), g.constant("patch.bias", proj.bias)],
               kernel_shape=list(proj.kernel_size), strides=list(proj.stride))
    # The time position table is cut to the piece's patch count (short pieces have fewer).
    time_patches = g.node("Slice", [g.node("Shape", [x]), g.constant("i3", [3]), g.constant("i4", [4])])
    time_pos = g.node("Slice", [g.constant("time_pos", network.time_pos_embed), g.constant("i0", [0]),
                                time_patches, g.constant("axis3", [3])])
    x = g.node("Add", [x, time_pos])
    x = g.node("Add", [x, g.constant("freq_pos", network.freq_pos_embed)])
    x = g.node("Reshape", [x, g.constant("flat", [0, dim, -1])])
    x = g.node("Transpose", [x], perm=[0, 2, 1])  # (n, patches, dim), frequency-major as in the module

    mask = None
    if keys is not None:  # fused: Attention's mask_index (key counts); standard: an additive bias, as the module
        mask = keys if fused else _key_bias(g, keys, x)
    for number, block in enumerate(network.blocks):
        name = f"blocks.{number}"
        h = g.layer_norm(f"{name}.norm1", block.norm1, x)
        h = (_fused_attention if fused else _attention)(g, name, block.attn, h, dim, mask)
        x = g.node("Add", [x, g.linear(f"{name}.proj", block.attn.proj, h)])
        h = g.layer_norm(f"{name}.norm2", block.norm2, x)
        if fused:
            h = g.product(f"{name}.fc1", block.mlp.fc1.weight.T, h)
            h = g.node("BiasGelu", [h, g.constant(f"{name}.fc1.bias", block.mlp.fc1.bias)], domain=CONTRIB_DOMAIN)
        else:
            h = g.gelu(g.linear(f"{name}.fc1", block.mlp.fc1, h))
        x = g.node("Add", [x, g.linear(f"{name}.fc2", block.mlp.fc2, h)])
    return g.layer_norm("norm", network.norm, x, output=output)


#: Masked keys get float32's lowest value, as the module's bias (Attention's default, -10000, would leave a
#: chunk whose keys are all masked attending by its scores, where the official code attends uniformly).
_MASK_FILTER = {"mask_filter_value": float(np.finfo(np.float32).min)}


def _key_bias(g: GraphBuilder, keys: str, x: str) -> str:
    """(n, 1, 1, tokens) float: 0 for keys before each row's count, float32's lowest value after (as ``key_bias``)."""
    tokens = g.node("Shape", [x], start=1, end=2)
    positions = g.node("Range", [g.constant("zero_scalar", 0), g.node("Squeeze", [tokens]), g.constant("one_scalar", 1)])
    counts = g.node("Unsqueeze", [g.node("Cast", [keys], to=7), g.constant("key_axes", [1])])  # int64 (n, 1)
    masked = g.node("GreaterOrEqual", [g.node("Unsqueeze", [positions, g.constant("row_axis", [0])]), counts])
    bias = g.node("Where", [masked, g.constant("lowest", np.float32(np.finfo(np.float32).min)),
                            g.constant("zero_float", np.float32(0))])
    return g.node("Unsqueeze", [bias, g.constant("head_query_axes", [1, 2])])


def _fused_attention(g: GraphBuilder, name: str, attention, h: str, dim: int, mask: str | None = None) -> str:
    qkv = attention.qkv
    bias = g.constant(f"{name}.qkv.bias", qkv.bias if qkv.bias is not None else torch.zeros(qkv.out_features))
    masking = _MASK_FILTER if mask else {}  # CED's graphs stay as they were
    # Attention's weight is (dim, 3 * dim) with q, k, v column blocks, each head-major: qkv.weight.T exactly.
    if not g.int8:
        return g.node("Attention", [h, g.constant(f"{name}.qkv.weight", qkv.weight.T), bias] + ([mask] if mask else []),
                      domain=CONTRIB_DOMAIN, num_heads=attention.num_heads, **masking)
    quantized, scale, zero_point = quantize_columns(qkv.weight.T)
    codes, value_scale, value_zero_point = g.node("DynamicQuantizeLinear", [h], outputs=3)
    # inputs: input, weight, bias, input scale, weight scale, mask index (Dasheng's keys), input and weight zero points
    return g.node("QAttention", [codes, g.constant(f"{name}.qkv.weight_quantized", quantized), bias, value_scale,
                                 g.constant(f"{name}.qkv.weight_scale", scale), mask or "", value_zero_point,
                                 g.constant(f"{name}.qkv.weight_zero_point", zero_point)],
                  domain=CONTRIB_DOMAIN, num_heads=attention.num_heads, **masking)


def _attention(g: GraphBuilder, name: str, attention, h: str, dim: int, bias: str | None = None) -> str:
    """Multi-head attention in standard operators: one qkv product, softmax(q k^T / sqrt(d)) v per head."""
    heads = attention.num_heads
    qkv = g.linear(f"{name}.qkv", attention.qkv, h)  # (n, tokens, 3 dim)
    grouped = g.node("Transpose", [g.node("Reshape", [qkv, g.constant("qkv_shape", [0, 0, 3, heads, -1])])],
                     perm=[2, 0, 3, 1, 4])  # (3, n, heads, tokens, head_dim)
    q, k, v = (g.node("Gather", [grouped, g.constant(f"index{i}", np.array(i, dtype=np.int64))], axis=0)
               for i in range(3))
    scores = g.node("MatMul", [q, g.node("Transpose", [k], perm=[0, 1, 3, 2])])
    scores = g.node("Mul", [scores, g.constant("attention_scale", (dim // heads) ** -0.5)])
    if bias is not None:
        scores = g.node("Add", [scores, bias])
    attended = g.node("MatMul", [g.node("Softmax", [scores], axis=-1), v])  # (n, heads, tokens, head_dim)
    return g.node("Reshape", [g.node("Transpose", [attended], perm=[0, 2, 1, 3]),
                              g.constant("rows_shape", [0, 0, dim])])


def encoder_graph(network: CED | Dasheng, fused: bool = True, int8: bool = False):
    """ModelProto: normalised mel pieces (n, 1, n_mels, <=1012 frames) -> tokens (n, patches, dim).

    ``int8``: every weight product dynamic int8 (:meth:`GraphBuilder.product`; with ``fused``,
    QAttention for the attention). A Dasheng graph has a second input, ``keys`` (int32 (n,)):
    each chunk's count of tokens keys may attend to (its token count where nothing is masked).
    """
    from onnx import TensorProto, helper

    config = network.config
    dasheng = getattr(network, "family", "ced") == "dasheng"
    g = GraphBuilder(int8=int8)
    encoder_nodes(g, network, "pieces", fused, output="tokens", keys="keys" if dasheng else None)
    inputs = [helper.make_tensor_value_info("pieces", TensorProto.FLOAT, ["pieces", 1, config.n_mels, "frames"])]
    if dasheng:
        inputs.append(helper.make_tensor_value_info("keys", TensorProto.INT32, ["pieces"]))
    graph = helper.make_graph(
        g.nodes, "dasheng_encoder" if dasheng else "ced_encoder",
        inputs,
        [helper.make_tensor_value_info("tokens", TensorProto.FLOAT, ["pieces", "patches", config.embed_dim])],
        g.initializers,
    )
    opsets = [helper.make_opsetid("", ENCODER_OPSET)] + ([helper.make_opsetid(CONTRIB_DOMAIN, 1)] if fused else [])
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8  # readable by every onnxruntime this project supports
    return model
