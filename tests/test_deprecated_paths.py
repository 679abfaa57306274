"""The module paths auricle had before auricle.onnx and auricle.engines still import the same objects."""

from __future__ import annotations

import importlib

import pytest

MOVED = {
    "auricle.export": ("auricle.onnx.export", ["export_onnx", "ExportReport", "ParityError", "top_k_overlap",
                                               "read_metadata"]),
    "auricle.export_graph": ("auricle.onnx.graph", ["model_graph", "log_mel_graph", "log_mel_nodes"]),
    "auricle.exported": ("auricle.onnx.exported", ["ExportedModel", "load_exported", "is_exported_file",
                                                   "not_weights", "read_metadata"]),
    "auricle.prepared": ("auricle.onnx.prepared", ["PrepareError", "prepared_path", "prepared_graphs", "_prepare"]),
    "auricle.inference.ort_sessions": ("auricle.onnx.sessions", ["stream_sessions", "ONNXRUNTIME_MISSING"]),
    "auricle.inference.piece_rows": ("auricle.onnx.rows", ["Framing", "MelPeaks", "rows", "_mel_bank"]),
    "auricle.inference.ort_graph": ("auricle.onnx.encoder", ["encoder_graph", "encoder_nodes", "GraphBuilder",
                                                             "quantize_columns", "CONTRIB_DOMAIN"]),
    "auricle.inference.fused": ("auricle.engines.fused", ["FusedEncoder", "fused_supported", "PRECISIONS",
                                                          "_PackedBlock"]),
    "auricle.inference.engines": ("auricle.engines", ["ENGINES", "PRECISIONS", "EngineConfig", "EngineError",
                                                      "EngineWarning", "make_engine", "resolve_precision"]),
}


@pytest.mark.parametrize("old", sorted(MOVED))
def test_an_old_path_names_the_moved_objects(old):
    new, names = MOVED[old]
    before, after = importlib.import_module(old), importlib.import_module(new)
    for name in names:
        assert getattr(before, name) is getattr(after, name), f"{old}.{name}"


def test_the_prepared_graph_loader_moved_on_into_the_loading_path():
    """Finding the weights and building the model to prepare are the loading path's now; the old path keeps them."""
    from auricle import loading, model, prepared

    assert prepared.load_prepared is loading.load_prepared and prepared.weights_file is loading.weights_file
    assert model.load_model.__doc__ and "auricle.loading.load_model" in model.load_model.__doc__


def test_the_old_engine_module_keeps_its_engines_caches_and_opsets():
    from auricle import export_graph
    from auricle.engines.onnx import OnnxEngine
    from auricle.engines.torch import TorchEngine, torch_encoder_path
    from auricle.inference import engines, ort_graph
    from auricle.onnx import builder, cache

    assert engines.OnnxEngine is OnnxEngine and engines.TorchEngine is TorchEngine
    assert engines.torch_encoder_path is torch_encoder_path
    assert engines.encoder_model is cache.encoder_model and engines.ONNX_CACHE_VERSION == cache.ONNX_CACHE_VERSION
    assert ort_graph.OPSET == builder.ENCODER_OPSET == 17 and export_graph.OPSET == builder.EXPORT_OPSET == 18
