"""Deprecated import path: moved to auricle.onnx.rows (see docs/deploy.md, "Deprecated import paths")."""

from auricle.onnx.rows import *  # noqa: F401,F403  deprecated: moved to auricle.onnx.rows
from auricle.onnx.rows import _check, _lead, _mel_bank  # noqa: F401
