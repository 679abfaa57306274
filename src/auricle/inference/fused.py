"""Deprecated import path: moved to auricle.engines.fused (see docs/deploy.md, "Deprecated import paths")."""

from auricle.engines.fused import *  # noqa: F401,F403  deprecated: moved to auricle.engines.fused
from auricle.engines.fused import _ROWS_HINT, _gelu_in_place, _PackedBlock  # noqa: F401
