"""Deprecated import path: moved to auricle.onnx.prepared (see docs/deploy.md, "Deprecated import paths")."""

from auricle.onnx.prepared import *  # noqa: F401,F403  deprecated: moved to auricle.onnx.prepared
from auricle.onnx.cache import _identity  # noqa: F401
from auricle.onnx.cache import remove_stale_partials as _remove_stale_partials  # noqa: F401  (its old name)
from auricle.onnx.prepared import _prepare  # noqa: F401
from auricle.loading import load_prepared, weights_file  # noqa: F401  deprecated: now in auricle.loading
