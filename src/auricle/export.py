"""Deprecated import path: moved to auricle.onnx.export (see docs/deploy.md, "Deprecated import paths")."""

from auricle.onnx.export import *  # noqa: F401,F403  deprecated: moved to auricle.onnx.export
