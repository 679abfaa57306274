"""Deprecated import path: moved to auricle.engines (see docs/deploy.md, "Deprecated import paths")."""

from auricle.engines import *  # noqa: F401,F403  deprecated: moved to auricle.engines
from auricle.engines.base import *  # noqa: F401,F403  deprecated: moved to auricle.engines.base
from auricle.engines.config import *  # noqa: F401,F403  deprecated: moved to auricle.engines.config
from auricle.engines.onnx import *  # noqa: F401,F403  deprecated: moved to auricle.engines.onnx
from auricle.engines.torch import *  # noqa: F401,F403  deprecated: moved to auricle.engines.torch
from auricle.onnx.cache import ONNX_CACHE_VERSION, encoder_model, weights_digest  # noqa: F401  moved to auricle.onnx.cache
