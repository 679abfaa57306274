"""Deprecated import path: moved to auricle.onnx.graph (see docs/deploy.md, "Deprecated import paths")."""

from auricle.onnx.graph import *  # noqa: F401,F403  deprecated: moved to auricle.onnx.graph
from auricle.onnx.builder import EXPORT_OPSET as OPSET  # noqa: F401  (its old name)
