"""Deprecated import path: moved to auricle.onnx.exported (see docs/deploy.md, "Deprecated import paths")."""

from auricle.onnx.exported import *  # noqa: F401,F403  deprecated: moved to auricle.onnx.exported
