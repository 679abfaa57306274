"""Whole models prepared once as ONNX Runtime graphs, so ``--engine onnx`` starts without torch.

With ``--engine onnx``, the commands that tag and embed (tag, evaluate, serve, listen, embed) run
the model as an ``auricle export --runtime onnxruntime --piece-embeddings`` file runs: log-mel,
encoder and head in one graph, loaded by :class:`~auricle.onnx.exported.ExportedModel` with numpy and
onnxruntime only. The first run exports that graph from the weights (with torch; ~7 s for
ced-mini on 2 cores, most of it importing torch and the export's parity check) and keeps it in the cache (``$AURICLE_CACHE/prepared``, see
:mod:`auricle.onnx.cache`). Later runs find it by the identity of the weights files (path,
size, modification time; the Hugging Face cache keeps each file under its content hash) and never
import torch, which alone takes about 2 s on the development VMs.

An export that fails its parity check is remembered (a ``.failed`` file where the graph would
be), so later runs go straight to the fallback, the ``onnx`` engine over the weights, instead of
exporting again.

    model = auricle.loading.load_prepared("ced-mini", precision="int8")
    result = model.tag("recording.wav", top_k=5)

Finding the weights and building the model to export are the loading path's (:mod:`auricle.loading`):
it hands :func:`prepared_model` the weights file and a ``build`` callable, so this cache never climbs
back up to load a model itself.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from auricle.errors import AuricleError, CheckpointError
from auricle.inference.tuning import fastest_precision
from auricle.onnx.cache import PREPARED_FORMAT, prepared_graphs, prepared_path, remove_stale_partials  # noqa: F401
from auricle.onnx.exported import ExportedModel
from auricle.onnx.sessions import ONNXRUNTIME_MISSING

PRECISIONS = ("fp32", "int8")


class PrepareError(AuricleError):
    """The model cannot run as one ONNX graph (its export failed its check); run the weights instead."""


def graph_precision(precision: str) -> str:
    """``precision`` as a prepared graph runs it (fp32 or int8; auto: the fastest ONNX Runtime has here)."""
    if importlib.util.find_spec("onnxruntime") is None:
        raise AuricleError(ONNXRUNTIME_MISSING)
    precision = fastest_precision(engine="onnx") if precision == "auto" else precision
    if precision not in PRECISIONS:
        raise AuricleError(f"a prepared ONNX graph runs fp32 or int8, not {precision}")
    return precision


def prepared_model(weights: Path, name: str | None, *, precision: str, build: Callable[[], Any],
                   threads: int | None = None, streams: int | None = None, cache: str | os.PathLike | None = None,
                   announce: Callable[[str], None] | None = None) -> ExportedModel:
    """The model of the weights file ``weights`` as one ONNX Runtime graph: from the cache, else exported first.

    ``name``: the registered model the weights are (part of the cache key), None for a checkpoint.
    ``precision``: fp32 or int8 (see :func:`graph_precision`). ``build`` gives the torch model to
    export when the graph is not cached yet (:func:`auricle.loading.load_prepared` hands it; this
    module loads no model itself). ``announce`` is told, in one line, when an export is about to take
    a while. Raises :class:`PrepareError` when the graph cannot reproduce the weights, its export
    breaks or the cache cannot keep it.
    """
    path = prepared_path(weights, name, precision, cache)
    failed = path.with_suffix(".failed")
    if failed.is_file():
        raise PrepareError(failed.read_text().strip())
    if path.is_file():
        try:
            return ExportedModel(path, threads=threads, streams=streams)
        except CheckpointError:  # damaged (a full disk, a killed copy): prepare it again
            with contextlib.suppress(OSError):  # a read-only cache fails the export below, which says so
                path.unlink()
    _prepare(build, precision, path, announce)
    return ExportedModel(path, threads=threads, streams=streams)


def _prepare(build: Callable[[], Any], precision: str, path: Path, announce: Callable[[str], None] | None) -> None:
    from auricle.onnx.export import ExportError, ParityError, export_onnx

    model = build()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(path.parent)
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
