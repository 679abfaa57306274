"""Deprecated import path: moved to auricle.onnx.sessions (see docs/deploy.md, "Deprecated import paths")."""

from auricle.onnx.sessions import *  # noqa: F401,F403  deprecated: moved to auricle.onnx.sessions
