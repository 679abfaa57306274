"""The hand-written ONNX Runtime encoder graph computes the module's tokens."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from auricle.models.ced import CED, CEDConfig

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from auricle.inference import ort_graph  # noqa: E402


def network(seed: int = 0, **overrides) -> CED:
    torch.manual_seed(seed)
    net = CED(CEDConfig(embed_dim=64, num_heads=4, depth=2, **overrides))
    with torch.no_grad():  # off the init values (zero biases, unit norms) so every term is checked
        for parameter in net.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return net.eval()


def session(model):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def pieces(net: CED, samples: int, batch: int) -> torch.Tensor:
    waves = torch.randn(batch, samples, generator=torch.Generator().manual_seed(samples)) * 0.1
    with torch.inference_mode():
        return net.pieces(net.normalize(net.spectrogram(waves)))[0]


@pytest.mark.parametrize("overrides", [{}, {"qkv_bias": False}])
def test_fp32_graph_matches_the_module(overrides):
    net = network(**overrides)
    run = session(ort_graph.encoder_graph(net))
    # full pieces, a split long clip, and short pieces (fewer time patches: the position table is cut)
    for samples, batch in [(160000, 2), (400000, 1), (20000, 3), (2400, 1)]:
        x = pieces(net, samples, batch)
        with torch.inference_mode():
            expected = net.forward_features(x).numpy()
        (got,) = run.run(None, {"pieces": x.numpy()})
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, atol=2e-5, rtol=1e-4)


def test_int8_graph_uses_quantised_fused_operators_and_stays_close(tmp_path):
    net = network()
    model = ort_graph.quantize_encoder(ort_graph.encoder_graph(net), tmp_path)
    kinds = {node.op_type for node in model.graph.node}
    assert {"QAttention", "BiasGelu"} <= kinds and "Attention" not in kinds
    x = pieces(net, 160000, 2)
    with torch.inference_mode():
        expected = net.forward_features(x).numpy()
    (got,) = session(model).run(None, {"pieces": x.numpy()})
    error = np.abs(got - expected).max()
    assert 0 < error < 0.2  # int8 really ran; LayerNorm-scaled tokens are O(1)
