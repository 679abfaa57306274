"""The CED encoder written directly as an ONNX Runtime graph, with ORT's fused contrib operators.

The ``onnx`` engine runs this graph instead of the exporter's trace of
:meth:`~auricle.models.ced.CED.forward_features`. The trace spells attention
as ~15 generic nodes per block (slices of the qkv product, transposes,
MatMul, Softmax, MatMul, transposes) and GELU as five element-wise nodes;
ONNX Runtime's own graph optimiser fuses neither on this graph. Here each block is

    LayerNormalization -> Attention (com.microsoft: qkv projection + multi-head attention)
    -> MatMul + Add (projection) -> Add (residual)
    -> LayerNormalization -> MatMul -> BiasGelu (com.microsoft, exact erf GELU)
    -> MatMul + Add -> Add (residual)

which is the same float32 arithmetic in fewer, fused kernels, and which
ONNX Runtime's dynamic quantiser turns into ``QAttention`` and
``DynamicQuantizeMatMul`` for int8. The contrib operators exist only in ONNX
Runtime: the engine caches this graph, and ``auricle export --runtime
onnxruntime`` joins it with the traced frontend and head; the default export
stays the portable standard-operator graph.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from auricle.models.ced import CED

OPSET = 17
CONTRIB_DOMAIN = "com.microsoft"


class _GraphBuilder:
    def __init__(self) -> None:
        self.nodes: list = []
        self.initializers: list = []

    def constant(self, name: str, value: np.ndarray | torch.Tensor) -> str:
        from onnx import numpy_helper

        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
        if value.dtype != np.int64:
            value = value.astype(np.float32)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], output: str | None = None, domain: str | None = None,
             **attributes) -> str:
        from onnx import helper

        output = output or f"{op}_{len(self.nodes)}"
        self.nodes.append(helper.make_node(op, inputs, [output], domain=domain, **attributes))
        return output


def encoder_graph(network: CED):
    """ModelProto: normalised mel pieces (n, 1, n_mels, <=1012 frames) -> tokens (n, patches, dim)."""
    from onnx import TensorProto, helper

    config = network.config
    dim = config.embed_dim
    g = _GraphBuilder()
    index = lambda *values: np.array(values, dtype=np.int64)  # noqa: E731

    proj = network.patch_embed.proj
    x = g.node("Conv", ["pieces", g.constant("patch.weight", proj.weight), g.constant("patch.bias", proj.bias)],
               kernel_shape=[config.patch_size] * 2, strides=[config.patch_size] * 2)
    # The time position table is cut to the piece's patch count (short pieces have fewer).
    time_patches = g.node("Slice", [g.node("Shape", [x]), g.constant("i3", index(3)), g.constant("i4", index(4))])
    time_pos = g.node("Slice", [g.constant("time_pos", network.time_pos_embed), g.constant("i0", index(0)),
                                time_patches, g.constant("axis3", index(3))])
    x = g.node("Add", [x, time_pos])
    x = g.node("Add", [x, g.constant("freq_pos", network.freq_pos_embed)])
    x = g.node("Reshape", [x, g.constant("flat", index(0, dim, -1))])
    x = g.node("Transpose", [x], perm=[0, 2, 1])  # (n, patches, dim), frequency-major as in the module

    def layer_norm(name: str, norm: torch.nn.LayerNorm, value: str, output: str | None = None) -> str:
        return g.node("LayerNormalization", [value, g.constant(f"{name}.weight", norm.weight),
                                             g.constant(f"{name}.bias", norm.bias)],
                      output, axis=-1, epsilon=norm.eps)

    def linear(name: str, layer: torch.nn.Linear, value: str) -> str:
        product = g.node("MatMul", [value, g.constant(f"{name}.weight", layer.weight.T)])
        return g.node("Add", [product, g.constant(f"{name}.bias", layer.bias)])

    for number, block in enumerate(network.blocks):
        name = f"blocks.{number}"
        qkv = block.attn.qkv
        qkv_bias = qkv.bias if qkv.bias is not None else torch.zeros(qkv.out_features)
        h = layer_norm(f"{name}.norm1", block.norm1, x)
        # Attention's weight is (dim, 3 * dim) with q, k, v column blocks, each head-major: qkv.weight.T exactly.
        h = g.node("Attention", [h, g.constant(f"{name}.qkv.weight", qkv.weight.T),
                                 g.constant(f"{name}.qkv.bias", qkv_bias)],
                   domain=CONTRIB_DOMAIN, num_heads=block.attn.num_heads)
        x = g.node("Add", [x, linear(f"{name}.proj", block.attn.proj, h)])
        h = layer_norm(f"{name}.norm2", block.norm2, x)
        h = g.node("MatMul", [h, g.constant(f"{name}.fc1.weight", block.mlp.fc1.weight.T)])
        h = g.node("BiasGelu", [h, g.constant(f"{name}.fc1.bias", block.mlp.fc1.bias)], domain=CONTRIB_DOMAIN)
        x = g.node("Add", [x, linear(f"{name}.fc2", block.mlp.fc2, h)])
    layer_norm("norm", network.norm, x, output="tokens")

    graph = helper.make_graph(
        g.nodes, "ced_encoder",
        [helper.make_tensor_value_info("pieces", TensorProto.FLOAT, ["pieces", 1, config.n_mels, "frames"])],
        [helper.make_tensor_value_info("tokens", TensorProto.FLOAT, ["pieces", "patches", dim])],
        g.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                    helper.make_opsetid(CONTRIB_DOMAIN, 1)])
    model.ir_version = 8  # readable by every onnxruntime this project supports
    return model


def quantize_encoder(model_proto, work_dir: Path):
    """Dynamic int8: weights of MatMul and Attention to int8, activations quantised per call."""
    from onnx import TensorProto

    from auricle.export import quantize_int8

    # shape inference cannot type the contrib ops' outputs; everything here is float32
    return quantize_int8(model_proto, work_dir, op_types=("MatMul", "Attention"),
                         extra_options={"DefaultTensorType": TensorProto.FLOAT})
