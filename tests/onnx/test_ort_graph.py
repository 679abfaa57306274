"""The hand-written ONNX Runtime encoder graph computes the module's tokens."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from encoder_support import normalised_pieces, perturbed_network

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from auricle.onnx import builder, encoder  # noqa: E402


def session(model):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


@pytest.mark.integration
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "standard-ops"])
@pytest.mark.parametrize("overrides", [{}, {"qkv_bias": False}])
def test_fp32_graph_matches_the_module(overrides, fused):
    net = perturbed_network(num_heads=4, **overrides)
    graph = encoder.encoder_graph(net, fused=fused)
    assert any(node.domain == builder.CONTRIB_DOMAIN for node in graph.graph.node) == fused
    run = session(graph)
    # full pieces, a split long clip, and short pieces (fewer time patches: the position table is cut)
    for samples, batch in [(160000, 2), (400000, 1), (20000, 3), (2400, 1)]:
        x = normalised_pieces(net, samples, batch)
        with torch.inference_mode():
            expected = net.forward_features(x).numpy()
        (got,) = run.run(None, {"pieces": x.numpy()})
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, atol=2e-5, rtol=1e-4)


def test_int8_graph_uses_quantised_fused_operators_and_stays_close():
    net = perturbed_network(num_heads=4)
    model = encoder.encoder_graph(net, int8=True)
    kinds = {node.op_type for node in model.graph.node}
    assert {"QAttention", "BiasGelu"} <= kinds and "Attention" not in kinds
    x = normalised_pieces(net, 160000, 2)
    with torch.inference_mode():
        expected = net.forward_features(x).numpy()
    (got,) = session(model).run(None, {"pieces": x.numpy()})
    error = np.abs(got - expected).max()
    assert 0 < error < 0.2  # int8 really ran; LayerNorm-scaled tokens are O(1)


def test_int8_weights_are_what_onnxruntimes_quantiser_makes(tmp_path):
    """quantize_columns against quantize_dynamic(per_channel, reduce_range) on one MatMul: same codes and scales."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    weight = torch.randn(48, 20, generator=torch.Generator().manual_seed(0))
    weight[:, 3] = 0  # a dead output channel: scale 1, codes 0
    weight[5, 7] = 40.0  # one outlier sets its column's scale
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "one",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 48])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 20])],
        [numpy_helper.from_array(weight.numpy(), "w")])
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "f.onnx")
    quantize_dynamic(tmp_path / "f.onnx", tmp_path / "q.onnx", weight_type=QuantType.QInt8, per_channel=True,
                     reduce_range=True)
    theirs = {item.name: numpy_helper.to_array(item) for item in onnx.load_model(tmp_path / "q.onnx").graph.initializer}
    codes, scale, zero_point = builder.quantize_columns(weight)
    np.testing.assert_array_equal(codes, theirs["w_quantized"])
    np.testing.assert_allclose(scale, theirs["w_scale"], rtol=1e-6)
    np.testing.assert_array_equal(zero_point, theirs["w_zero_point"])
    assert np.abs(codes.astype(int)).max() == 64 and (codes[:, 3] == 0).all() and scale[3] == 1


def test_making_sessions_leaves_the_callers_subnormals_alone():
    """ONNX Runtime flushes subnormals on the thread that creates a session: auricle makes them on a thread of
    its own, so a caller's numpy and torch arithmetic is the same after loading an ONNX model as before."""
    from onnx import TensorProto, helper

    from auricle.onnx.sessions import stream_sessions

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    subnormal = np.float32(1e-39)
    for threads, streams in ((1, 1), (2, 1), (2, 2)):
        sessions = stream_sessions(model, threads, streams)
        assert float(np.multiply(subnormal, np.float32(1.0))) != 0.0, (threads, streams)  # not flushed
        assert sessions[0].run(None, {"x": np.ones(1, np.float32)})[0][0] == 1.0
    with pytest.raises(Exception):  # a bad model still fails in the caller
        stream_sessions(b"not a model", 1, 1)
