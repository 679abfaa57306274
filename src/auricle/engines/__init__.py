"""Inference engines: who runs the CED encoder, and at what precision.

The vocabulary (engine and precision names, :class:`EngineConfig`) is :mod:`auricle.engines.config`,
importable without torch; the engines are :mod:`auricle.engines.torch` and :mod:`auricle.engines.onnx`.

Every engine runs the same pipeline around the encoder: the log-mel frontend,
the input BatchNorm, the split into 1012-frame pieces and the head always run
in float32 torch from the network itself, so all engines see identical inputs
and produce results of identical shape and meaning. Only the encoder (patch
embedding, transformer blocks, final norm: ~99% of the FLOPs) changes hands:

========  =========  ====================================================
engine    precision  encoder
========  =========  ====================================================
torch     fp32       on CPUs with oneDNN: :class:`~auricle.engines.fused.FusedEncoder`
                     (AVX-512: prepacked oneDNN weights, fused GELU/residual epilogues;
                     AVX2: BLAS products accumulating the residual; same float32
                     math, ~1e-7 from ``CED.forward`` in probabilities); elsewhere
                     the network as is
torch     bf16       the fused encoder with bfloat16 products and attention, float32
                     residuals (fast on CPUs with avx512_bf16/AMX); ``torch.autocast``
                     where oneDNN is missing
torch     int8       the fused encoder with FBGEMM dynamic int8 Linear layers and, on
                     CPUs with native bf16, bfloat16 attention; elsewhere the blocks'
                     Linear layers through ``quantize_dynamic``
onnx      fp32       ONNX Runtime running the encoder written with its fused
                     Attention/BiasGelu operators (:mod:`auricle.onnx.encoder`)
onnx      int8       the same graph dynamically quantised (QAttention, int8 MatMuls)
========  =========  ====================================================

The ``onnx`` engine builds the encoder graph once per set of weights and caches the
file (``$AURICLE_CACHE``, else ``~/.cache/auricle``; :mod:`auricle.onnx.cache`), so only the first use
pays the export (seconds).

What "onnx" runs, where
-----------------------

``torch`` means the same everywhere: the engine above, in the process. ``onnx`` (fp32 or
int8; ``auto`` picks one; bf16 is refused) means one of two things (docs/deploy.md has this table):

Python: ``load_model(engine="onnx")``, :func:`make_engine`
    the ``onnx`` engine above: only the encoder in ONNX Runtime (cache ``onnx/``);
    log-mel, pieces and head in float32 torch.
Python: :func:`auricle.loading.load_prepared`
    the whole model as one graph (cache ``prepared/``), an
    :class:`~auricle.onnx.exported.ExportedModel` that runs without torch.
CLI on a CPU: ``tag``, ``evaluate``, ``embed``, ``listen``, ``serve``
    the whole model, prepared once (:mod:`auricle.onnx.prepared`); where it cannot be
    prepared (the parity check failed, the cache cannot be written), a one-line
    warning and the encoder-only engine.
CLI: ``probe``, ``search``
    the encoder-only engine, as in Python (on the CPU only, there as everywhere).
``auricle serve --workers N``
    each worker loads the graph the parent prepared (without one: encoder only);
    ``uvicorn --factory`` with a hand-written ``AURICLE_SERVE`` naming weights: encoder only.
an ``auricle export`` file
    that file, anywhere: its precision and runtime were fixed at export (an explicit
    ``torch`` engine is refused).

The two ``onnx`` paths give the same labels and shapes, not the same numbers: the prepared
graph computes the log-mel in its own ONNX operators (within 1e-4 of the weights, against
~1e-7 for the encoder-only engine). Making Python's ``onnx`` load the prepared graph would
change its results, so the two stay distinct.

On a CPU every engine splits a batch over ``streams`` concurrent calls, each on
``threads // streams`` threads (:mod:`auricle.inference.streams`); by default one
stream per thread. Each clip is still computed on its own, so results do not
change (int8 aside, whose activation scale is taken per call: see docs/deploy.md).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

# The vocabulary only: importing auricle.engines (as the CLI's --help does) imports no torch.
from auricle.engines.config import (  # noqa: F401
    ENGINES,
    PRECISION_CHOICES,
    PRECISIONS,
    EngineConfig,
    EngineError,
    EngineWarning,
    resolve_precision,
)

if TYPE_CHECKING:
    from auricle.engines.base import Engine
    from auricle.models.ced import CED


def make_engine(network: CED, config: EngineConfig | None = None,
                cache_dir: str | os.PathLike | None = None) -> Engine:
    """The engine ``config`` names, running ``network``'s encoder."""
    config = config or EngineConfig()
    if config.engine == "onnx":
        from auricle.engines.onnx import OnnxEngine

        return OnnxEngine(network, config, cache_dir)
    from auricle.engines.torch import TorchEngine

    return TorchEngine(network, config)
