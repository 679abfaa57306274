"""The two ONNX caches, their folders and their keys, in one place.

Both live under :func:`auricle.cache.cache_dir` (``$AURICLE_CACHE``, else ``~/.cache/auricle``):

``onnx/encoder-v{ONNX_CACHE_VERSION}-torch{version}-{weights_digest}-{fp32|int8}.onnx``
    The encoder alone, written by :func:`encoder_model` for the ``onnx`` engine
    (:mod:`auricle.engines.onnx`). Keyed by the *content* of the weights
    (:func:`weights_digest`), the torch version and :data:`ONNX_CACHE_VERSION`.
``prepared/{name}-{key}-{fp32|int8}.onnx``
    The whole model (log-mel, encoder, head), written by :mod:`auricle.onnx.prepared` for the
    CLI's ``--engine onnx``. Keyed by the *identity* of the weights file and its config
    (:func:`prepared_path`: path, size, modification time), the auricle version and
    :data:`PREPARED_FORMAT`, so that finding it needs no torch.

No torch at import: prepared graphs are found and run without it.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import os
import re
import time
from pathlib import Path

from auricle.cache import cache_dir as cache_root
from auricle.errors import EngineError
from auricle.fingerprints import model_key
from auricle.io import atomic
from auricle.models.files import config_candidates
from auricle.onnx.sessions import ONNX_MISSING

#: Bump when the exported encoder graph changes, so stale cache files are not reused.
ONNX_CACHE_VERSION = 4
#: Part of every prepared graph's key: bump it when what a prepared graph computes or carries changes.
PREPARED_FORMAT = 1


def weights_digest(network) -> str:
    """A digest of the weights, their names and the encoder config: equal digests, equal functions."""
    return model_key(network)[:20]


def encoder_model(network, int8: bool, cache_dir: str | os.PathLike | None = None) -> bytes:
    """The serialized ONNX encoder for ``network``: from the cache, else written (and cached)."""
    import torch

    from auricle.onnx import encoder

    key = f"v{ONNX_CACHE_VERSION}-torch{torch.__version__}-{weights_digest(network)}"
    folder = cache_root(cache_dir) / "onnx"
    path = folder / f"encoder-{key}-{'int8' if int8 else 'fp32'}.onnx"
    if path.is_file():
        return path.read_bytes()
    if importlib.util.find_spec("onnx") is None:  # only writing the graph needs it
        raise EngineError(ONNX_MISSING)
    refuse_oversized(network, int8, "the onnx engine")
    payload = encoder.encoder_graph(copy.deepcopy(network).float().eval(), int8=int8).SerializeToString()
    try:  # a cache that cannot be written only costs the export next time
        folder.mkdir(parents=True, exist_ok=True)
        atomic.write_bytes(path, payload)
    except OSError:
        pass
    return payload


#: ONNX keeps a graph and its weights in one protobuf message, which cannot pass 2 GiB.
PROTOBUF_LIMIT = 2**31


def refuse_oversized(network, int8: bool, what: str) -> None:
    """Raise :class:`EngineError` before building a graph whose weights alone pass ONNX's 2 GiB single-file limit
    (dasheng-0.6b and 1.2b in fp32; in int8 their weights take a quarter)."""
    weights = sum(parameter.numel() for parameter in network.parameters()) * (1 if int8 else 4)
    if weights >= PROTOBUF_LIMIT:
        raise EngineError(f"{what}: the {'int8' if int8 else 'fp32'} graph of this {weights / 2**30:.1f} GiB encoder "
                          "passes ONNX's 2 GiB single-file limit; use int8, or the torch engine")


def prepared_path(weights: Path, name: str | None, precision: str,
                  cache: str | os.PathLike | None = None) -> Path:
    """Where the graph of ``weights`` at ``precision`` is kept; ``name``: the model name they were fetched for.

    The key covers the weights file and any JSON config beside it (which may name the model and
    its labels): replacing either gives a new key, so a stale graph is never used.
    """
    from auricle.version import __version__

    files = [weights, *(candidate for candidate in config_candidates(weights) if candidate.is_file())]
    stamp = {"format": PREPARED_FORMAT, "auricle": __version__, "name": name, "precision": precision,
             "files": [_identity(path) for path in files]}
    key = hashlib.sha256(json.dumps(stamp, sort_keys=True).encode()).hexdigest()[:20]
    label = re.sub(r"[^A-Za-z0-9._-]+", "_", name or weights.stem)
    return cache_root(cache) / "prepared" / f"{label}-{key}-{precision}.onnx"


def _identity(path: Path) -> list:
    status = path.stat()
    return [str(path.resolve()), status.st_size, status.st_mtime_ns]


def remove_stale_partials(folder: Path, age_seconds: float = 86400.0) -> None:
    """Exports a killed process left behind (tens to hundreds of MB each); a day old is surely no one's."""
    now = time.time()
    for partial in folder.glob(f"*{atomic.TEMPORARY_MARK}"):
        try:
            if now - partial.stat().st_mtime > age_seconds:
                partial.unlink()
        except OSError:
            continue


def prepared_graphs(cache: str | os.PathLike | None = None) -> list[Path]:
    """The graphs prepared in the cache (not exports under way)."""
    return sorted((cache_root(cache) / "prepared").glob("*.onnx"))
