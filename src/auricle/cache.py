"""Where auricle keeps what it derives from weights (ONNX graphs), apart from the Hugging Face cache."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(explicit: str | os.PathLike | None = None) -> Path:
    """``explicit`` if given, else ``$AURICLE_CACHE``, else ``$XDG_CACHE_HOME/auricle`` (``~/.cache/auricle``)."""
    if explicit is not None:
        return Path(explicit)
    if os.environ.get("AURICLE_CACHE"):
        return Path(os.environ["AURICLE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "auricle"
