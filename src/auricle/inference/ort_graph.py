"""Deprecated import path: moved to auricle.onnx.builder (see docs/deploy.md, "Deprecated import paths")."""

from auricle.onnx.builder import *  # noqa: F401,F403  deprecated: moved to auricle.onnx.builder
from auricle.onnx.builder import ENCODER_OPSET as OPSET  # noqa: F401  (its old name)
from auricle.onnx.encoder import *  # noqa: F401,F403  deprecated: moved to auricle.onnx.encoder
from auricle.onnx.encoder import _attention, _fused_attention  # noqa: F401
