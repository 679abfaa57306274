"""The hand-written ONNX Runtime encoder graph computes the module's tokens."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from encoder_support import normalised_pieces, perturbed_network

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from auricle.inference import ort_graph  # noqa: E402


def session(model):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "standard-ops"])
@pytest.mark.parametrize("overrides", [{}, {"qkv_bias": False}])
def test_fp32_graph_matches_the_module(overrides, fused):
    net = perturbed_network(num_heads=4, **overrides)
    graph = ort_graph.encoder_graph(net, fused=fused)
    assert any(node.domain == ort_graph.CONTRIB_DOMAIN for node in graph.graph.node) == fused
    run = session(graph)
    # full pieces, a split long clip, and short pieces (fewer time patches: the position table is cut)
    for samples, batch in [(160000, 2), (400000, 1), (20000, 3), (2400, 1)]:
        x = normalised_pieces(net, samples, batch)
        with torch.inference_mode():
            expected = net.forward_features(x).numpy()
        (got,) = run.run(None, {"pieces": x.numpy()})
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, atol=2e-5, rtol=1e-4)


def test_int8_graph_uses_quantised_fused_operators_and_stays_close(tmp_path):
    net = perturbed_network(num_heads=4)
    model = ort_graph.quantize_encoder(ort_graph.encoder_graph(net), tmp_path)
    kinds = {node.op_type for node in model.graph.node}
    assert {"QAttention", "BiasGelu"} <= kinds and "Attention" not in kinds
    x = normalised_pieces(net, 160000, 2)
    with torch.inference_mode():
        expected = net.forward_features(x).numpy()
    (got,) = session(model).run(None, {"pieces": x.numpy()})
    error = np.abs(got - expected).max()
    assert 0 < error < 0.2  # int8 really ran; LayerNorm-scaled tokens are O(1)
