"""The CED encoder written directly as ONNX nodes, in two spellings.

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
(:class:`GraphBuilder` is shared with :mod:`auricle.export_graph`).
"""

from __future__ import annotations

import math
import numpy as np
import torch

from auricle.models.ced import CED

OPSET = 17
CONTRIB_DOMAIN = "com.microsoft"


class GraphBuilder:
    """Collects the nodes and initializers of one ONNX graph; every value and node gets a unique name."""

    def __init__(self, prefix: str = "", int8: bool = False) -> None:
        self.nodes: list = []
        self.initializers: list = []
        #: Prefix of the names made from here on (one per part of the graph).
        self.prefix = prefix
        #: Whether the weight products written from here on are int8 (see :meth:`product`).
        self.int8 = int8
        self._names: set[str] = set()

    def _unique(self, name: str) -> str:
        name = f"{self.prefix}{name}"
        candidate, number = name, 1
        while candidate in self._names:
            candidate, number = f"{name}_{number}", number + 1
        self._names.add(candidate)
        return candidate

    def constant(self, name: str, value: np.ndarray | torch.Tensor | float | int | list) -> str:
        """An initializer: tensors as float32, Python ints (and lists of them) as int64; numpy integer
        arrays (int64, int8, uint8) keep their type."""
        from onnx import numpy_helper

        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().float().numpy()
        elif isinstance(value, (int, list, tuple)) and not isinstance(value, bool):
            value = np.array(value, dtype=np.int64)
        value = np.asarray(value)
        if value.dtype not in (np.int64, np.int8, np.uint8):
            value = value.astype(np.float32)
        name = self._unique(name)
        self.initializers.append(numpy_helper.from_array(value.copy(order="C"), name))  # 0-d stays 0-d
        return name

    def node(self, op: str, inputs: list[str], output: str | None = None, domain: str | None = None,
             outputs: int = 1, **attributes) -> str | list[str]:
        """Add a node; its output name (a list of ``outputs`` names when more than one)."""
        from onnx import helper

        if output is not None and outputs == 1:
            self._names.add(output)  # graph outputs keep their exact name
            names = [output]
        else:
            names = [self._unique(f"{output or op}_{len(self.nodes)}" + (f"_{i}" if outputs > 1 else ""))
                     for i in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, names, name=names[0], domain=domain, **attributes))
        return names if outputs > 1 else names[0]

    # -- pieces several graphs share ------------------------------------------------------------
    def product(self, name: str, weight: torch.Tensor, value: str) -> str:
        """``value`` (any rank) times ``weight`` (in, out): a MatMul, or with :attr:`int8` its dynamic
        int8 spelling: the activations quantised per call (DynamicQuantizeLinear, uint8), the weights
        ahead of time (:func:`quantize_columns`), MatMulInteger, and both scales applied to the int32
        sums. ONNX Runtime fuses that chain into one DynamicQuantizeMatMul when it loads the graph."""
        from onnx import TensorProto

        if not self.int8:
            return self.node("MatMul", [value, self.constant(f"{name}.weight", weight)])
        quantized, scale, zero_point = quantize_columns(weight)
        codes, value_scale, value_zero_point = self.node("DynamicQuantizeLinear", [value], outputs=3)
        sums = self.node("MatMulInteger", [codes, self.constant(f"{name}.weight_quantized", quantized),
                                           value_zero_point, self.constant(f"{name}.weight_zero_point", zero_point)])
        scales = self.node("Mul", [value_scale, self.constant(f"{name}.weight_scale", scale)])
        return self.node("Mul", [self.node("Cast", [sums], to=TensorProto.FLOAT), scales])

    def linear(self, name: str, layer: torch.nn.Linear, value: str) -> str:
        """``layer`` over the last axis of ``value`` (any rank): the :meth:`product`, then Add of the bias."""
        product = self.product(name, layer.weight.T, value)
        if layer.bias is None:
            return product
        return self.node("Add", [product, self.constant(f"{name}.bias", layer.bias)])

    def layer_norm(self, name: str, norm: torch.nn.LayerNorm, value: str, output: str | None = None) -> str:
        return self.node("LayerNormalization", [value, self.constant(f"{name}.weight", norm.weight),
                                                self.constant(f"{name}.bias", norm.bias)],
                         output, axis=-1, epsilon=norm.eps)

    def gelu(self, value: str) -> str:
        """Exact (erf) GELU in standard operators: x * 0.5 * (1 + erf(x / sqrt 2))."""
        scaled = self.node("Div", [value, self.constant("sqrt2", math.sqrt(2.0))])
        shifted = self.node("Add", [self.node("Erf", [scaled]), self.constant("one", 1.0)])
        return self.node("Mul", [self.node("Mul", [value, shifted]), self.constant("half", 0.5)])


def quantize_columns(weight: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(in, out) float weights -> (int8 weights, float32 scale per output column, int8 zero points (all 0)).

    Symmetric, one scale per output column, 7 bits (codes in [-64, 64]). On CPUs without
    VNNI (AVX2 only), ONNX Runtime multiplies uint8 activations by int8 weights with
    ``vpmaddubsw``, whose int16 pair sums saturate for 8-bit weights: on an AMD Zen 3 that
    moved a small model's probabilities by 0.39 (0.11 through QAttention). 7-bit weights
    cannot saturate, and per-column scales win back the lost bit (worst difference 0.008).
    A file made on one CPU runs on any other, so this is done everywhere. Same codes and
    scales as ``onnxruntime.quantization.quantize_dynamic(per_channel=True, reduce_range=True)``.
    """
    values = weight.detach().cpu().float().numpy()
    largest = np.abs(values).max(axis=0)
    scale = np.where(largest > 0, largest / np.float32(64), np.float32(1)).astype(np.float32)
    codes = np.clip(np.rint(values / scale), -64, 64).astype(np.int8)
    return codes, scale, np.zeros(values.shape[1], dtype=np.int8)


def encoder_nodes(g: GraphBuilder, network: CED, pieces: str, fused: bool, output: str | None = None) -> str:
    """Nodes from normalised mel pieces (n, 1, n_mels, <=1012 frames) to tokens (n, patches, dim)."""
    config = network.config
    dim = config.embed_dim
    proj = network.patch_embed.proj
    x = g.node("Conv", [pieces, g.constant("patch.weight", proj.weight), g.constant("patch.bias", proj.bias)],
               kernel_shape=[config.patch_size] * 2, strides=[config.patch_size] * 2)
    # The time position table is cut to the piece's patch count (short pieces have fewer).
    time_patches = g.node("Slice", [g.node("Shape", [x]), g.constant("i3", [3]), g.constant("i4", [4])])
    time_pos = g.node("Slice", [g.constant("time_pos", network.time_pos_embed), g.constant("i0", [0]),
                                time_patches, g.constant("axis3", [3])])
    x = g.node("Add", [x, time_pos])
    x = g.node("Add", [x, g.constant("freq_pos", network.freq_pos_embed)])
    x = g.node("Reshape", [x, g.constant("flat", [0, dim, -1])])
    x = g.node("Transpose", [x], perm=[0, 2, 1])  # (n, patches, dim), frequency-major as in the module

    for number, block in enumerate(network.blocks):
        name = f"blocks.{number}"
        h = g.layer_norm(f"{name}.norm1", block.norm1, x)
        h = (_fused_attention if fused else _attention)(g, name, block.attn, h, dim)
        x = g.node("Add", [x, g.linear(f"{name}.proj", block.attn.proj, h)])
        h = g.layer_norm(f"{name}.norm2", block.norm2, x)
        if fused:
            h = g.product(f"{name}.fc1", block.mlp.fc1.weight.T, h)
            h = g.node("BiasGelu", [h, g.constant(f"{name}.fc1.bias", block.mlp.fc1.bias)], domain=CONTRIB_DOMAIN)
        else:
            h = g.gelu(g.linear(f"{name}.fc1", block.mlp.fc1, h))
        x = g.node("Add", [x, g.linear(f"{name}.fc2", block.mlp.fc2, h)])
    return g.layer_norm("norm", network.norm, x, output=output)


def _fused_attention(g: GraphBuilder, name: str, attention, h: str, dim: int) -> str:
    qkv = attention.qkv
    bias = g.constant(f"{name}.qkv.bias", qkv.bias if qkv.bias is not None else torch.zeros(qkv.out_features))
    # Attention's weight is (dim, 3 * dim) with q, k, v column blocks, each head-major: qkv.weight.T exactly.
    if not g.int8:
        return g.node("Attention", [h, g.constant(f"{name}.qkv.weight", qkv.weight.T), bias],
                      domain=CONTRIB_DOMAIN, num_heads=attention.num_heads)
    quantized, scale, zero_point = quantize_columns(qkv.weight.T)
    codes, value_scale, value_zero_point = g.node("DynamicQuantizeLinear", [h], outputs=3)
    # inputs: input, weight, bias, input scale, weight scale, mask index (none), input and weight zero points
    return g.node("QAttention", [codes, g.constant(f"{name}.qkv.weight_quantized", quantized), bias, value_scale,
                                 g.constant(f"{name}.qkv.weight_scale", scale), "", value_zero_point,
                                 g.constant(f"{name}.qkv.weight_zero_point", zero_point)],
                  domain=CONTRIB_DOMAIN, num_heads=attention.num_heads)


def _attention(g: GraphBuilder, name: str, attention, h: str, dim: int) -> str:
    """Multi-head attention in standard operators: one qkv product, softmax(q k^T / sqrt(d)) v per head."""
    heads = attention.num_heads
    qkv = g.linear(f"{name}.qkv", attention.qkv, h)  # (n, tokens, 3 dim)
    grouped = g.node("Transpose", [g.node("Reshape", [qkv, g.constant("qkv_shape", [0, 0, 3, heads, -1])])],
                     perm=[2, 0, 3, 1, 4])  # (3, n, heads, tokens, head_dim)
    q, k, v = (g.node("Gather", [grouped, g.constant(f"index{i}", np.array(i, dtype=np.int64))], axis=0)
               for i in range(3))
    scores = g.node("MatMul", [q, g.node("Transpose", [k], perm=[0, 1, 3, 2])])
    scores = g.node("Mul", [scores, g.constant("attention_scale", (dim // heads) ** -0.5)])
    attended = g.node("MatMul", [g.node("Softmax", [scores], axis=-1), v])  # (n, heads, tokens, head_dim)
    return g.node("Reshape", [g.node("Transpose", [attended], perm=[0, 2, 1, 3]),
                              g.constant("rows_shape", [0, 0, dim])])


def encoder_graph(network: CED, fused: bool = True, int8: bool = False):
    """ModelProto: normalised mel pieces (n, 1, n_mels, <=1012 frames) -> tokens (n, patches, dim).

    ``int8``: every weight product dynamic int8 (:meth:`GraphBuilder.product`; with ``fused``,
    QAttention for the attention).
    """
    from onnx import TensorProto, helper

    config = network.config
    g = GraphBuilder(int8=int8)
    encoder_nodes(g, network, "pieces", fused, output="tokens")
    graph = helper.make_graph(
        g.nodes, "ced_encoder",
        [helper.make_tensor_value_info("pieces", TensorProto.FLOAT, ["pieces", 1, config.n_mels, "frames"])],
        [helper.make_tensor_value_info("tokens", TensorProto.FLOAT, ["pieces", "patches", config.embed_dim])],
        g.initializers,
    )
    opsets = [helper.make_opsetid("", OPSET)] + ([helper.make_opsetid(CONTRIB_DOMAIN, 1)] if fused else [])
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8  # readable by every onnxruntime this project supports
    return model
