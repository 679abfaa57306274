"""Writing ONNX graphs node by node: :class:`GraphBuilder`, the int8 weight codes, and the opsets.

Both graphs auricle writes are built here: the encoder alone (:mod:`auricle.onnx.encoder`,
what the ``onnx`` engine runs) and whole models (:mod:`auricle.onnx.graph`, what ``auricle
export`` and prepared graphs hold). Written node by node rather than traced: the exporter took
4-25 s per graph and the quantiser 2-4 s more for ced-mini; this takes a fraction of a second.
"""

from __future__ import annotations

import math
import numpy as np
import torch

#: The opset of the encoder-only graph the ``onnx`` engine caches (auricle.onnx.encoder).
ENCODER_OPSET = 17
#: The opset of whole-model exports and prepared graphs (auricle.onnx.graph).
EXPORT_OPSET = 18
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
