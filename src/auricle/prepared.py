"""Whole models prepared once as ONNX Runtime graphs, so ``--engine onnx`` starts without torch.

With ``--engine onnx``, the commands that tag and embed (tag, evaluate, serve, listen, embed) run
the model as an ``auricle export --runtime onnxruntime --piece-embeddings`` file runs: log-mel,
encoder and head in one graph, loaded by :class:`~auricle.exported.ExportedModel` with numpy and
onnxruntime only. The first run exports that graph from the weights (with torch; ~7 s for
ced-mini on 2 cores, most of it importing torch and the export's parity check) and keeps it in the cache (``$AURICLE_CACHE/prepared``, see
:func:`auricle.cache.cache_dir`). Later runs find it by the identity of the weights files (path,
size, modification time; the Hugging Face cache keeps each file under its content hash) and never
import torch, which alone takes about 2 s on the development VMs.

An export that fails its parity check is remembered (a ``.failed`` file where the graph would
be), so later runs go straight to the fallback, the ``onnx`` engine over the weights, instead of
exporting again.

    model = load_prepared("ced-mini", precision="int8")
    result = model.tag("recording.wav", top_k=5)
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

from auricle.cache import cache_dir
from auricle.errors import AuricleError, CheckpointError
from auricle.exported import ExportedModel
from auricle.inference.ort_sessions import ONNXRUNTIME_MISSING
from auricle.inference.tuning import fastest_precision
from auricle.io import atomic
from auricle.models.files import config_candidates, weights_in_folder
from auricle.models.registry import DEFAULT_MODEL, model_info

#: Part of every key: bump it when what a prepared graph computes or carries changes.
PREPARED_FORMAT = 1
PRECISIONS = ("fp32", "int8")


class PrepareError(AuricleError):
    """The model cannot run as one ONNX graph (its export failed its check); run the weights instead."""


def weights_file(name: str = DEFAULT_MODEL, checkpoint: str | os.PathLike | None = None,
                 hub_cache: str | os.PathLike | None = None) -> Path:
    """The file holding the weights ``checkpoint`` (or else the model ``name``) denotes; downloaded if need be."""
    if checkpoint is None:
        from auricle.models.hub import fetch_weights

        return fetch_weights(model_info(name), cache_dir=hub_cache)
    path = Path(checkpoint)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    return weights_in_folder(path) if path.is_dir() else path


def prepared_path(weights: Path, name: str | None, precision: str,
                  cache: str | os.PathLike | None = None) -> Path:
    """Where the graph of ``weights`` at ``precision`` is kept; ``name``: the model name they were fetched for.

    The key covers the weights file and any JSON config beside it (which may name the model and
    its labels): replacing either gives a new key, so a stale graph is never used.
    """
    from auricle import __version__

    files = [weights, *(candidate for candidate in config_candidates(weights) if candidate.is_file())]
    stamp = {"format": PREPARED_FORMAT, "auricle": __version__, "name": name, "precision": precision,
             "files": [_identity(path) for path in files]}
    key = hashlib.sha256(json.dumps(stamp, sort_keys=True).encode()).hexdigest()[:20]
    label = re.sub(r"[^A-Za-z0-9._-]+", "_", name or weights.stem)
    return cache_dir(cache) / "prepared" / f"{label}-{key}-{precision}.onnx"


def _identity(path: Path) -> list:
    status = path.stat()
    return [str(path.resolve()), status.st_size, status.st_mtime_ns]


def load_prepared(name: str = DEFAULT_MODEL, checkpoint: str | os.PathLike | None = None, *,
                  precision: str = "fp32", threads: int | None = None, streams: int | None = None,
                  cache: str | os.PathLike | None = None, hub_cache: str | os.PathLike | None = None,
                  announce: Callable[[str], None] | None = None) -> ExportedModel:
    """The model as one ONNX Runtime graph: from the cache, else exported from the weights first.

    ``precision``: fp32, int8 or auto (the fastest ONNX Runtime has on this CPU).
    ``announce`` is told, in one line, when an export is about to take a while.
    Raises :class:`PrepareError` when the graph cannot reproduce the weights, its export breaks or
    the cache cannot keep it (the caller may run the weights with ``load_model(engine="onnx")``),
    :class:`~auricle.errors.CheckpointError` for weights that cannot be found or read.
    """
    if importlib.util.find_spec("onnxruntime") is None:
        raise AuricleError(ONNXRUNTIME_MISSING)
    precision = fastest_precision(engine="onnx") if precision == "auto" else precision
    if precision not in PRECISIONS:
        raise AuricleError(f"a prepared ONNX graph runs fp32 or int8, not {precision}")
    weights = weights_file(name, checkpoint, hub_cache)
    path = prepared_path(weights, name if checkpoint is None else None, precision, cache)
    failed = path.with_suffix(".failed")
    if failed.is_file():
        raise PrepareError(failed.read_text().strip())
    if path.is_file():
        try:
            return ExportedModel(path, threads=threads, streams=streams)
        except CheckpointError:  # damaged (a full disk, a killed copy): prepare it again
            with contextlib.suppress(OSError):  # a read-only cache fails the export below, which says so
                path.unlink()
    _prepare(name, checkpoint, hub_cache, precision, path, announce)
    return ExportedModel(path, threads=threads, streams=streams)


def _prepare(name: str, checkpoint: str | os.PathLike | None, hub_cache: str | os.PathLike | None,
             precision: str, path: Path, announce: Callable[[str], None] | None) -> None:
    from auricle.export import ExportError, ParityError, export_onnx
    from auricle.model import load_model

    model = load_model(name, checkpoint=checkpoint, cache_dir=hub_cache)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_partials(path.parent)
        if announce is not None:
            announce(f"preparing {model.name} ({precision}) for ONNX Runtime, once: later runs load {path} "
                     "without torch")
        # The export is written under a name of this process's own, then renamed: two first runs
        # at once each export, and the last rename wins, intact.
        export_onnx(model, path, int8=precision == "int8", runtime="onnxruntime", piece_embeddings=True)
    except ExportError as error:
        if isinstance(error, ParityError):  # the same weights would fail the same way: remember it
            path.with_suffix(".failed").write_text(f"{error}\n")
        raise PrepareError(str(error)) from error
    except OSError as error:  # a read-only or full cache: run without a graph, as the onnx engine does
        raise PrepareError(f"{path.parent}: cannot keep a prepared graph there ({error.strerror or error})") from None


def _remove_stale_partials(folder: Path, age_seconds: float = 86400.0) -> None:
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
    return sorted((cache_dir(cache) / "prepared").glob("*.onnx"))
