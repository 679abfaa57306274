"""auricle: general audio understanding with small, fast CED transformer encoders.

    import auricle
    model = auricle.load_model("ced-mini")
    result = model.tag("recording.wav", top_k=5, events=True)
    print(result.tags, result.events)
    embeddings = model.embed("recording.wav")
    probabilities = model.probabilities(waveforms)  # (batch, samples) at 16 kHz

Heavy modules load lazily: importing auricle does no work.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Every type a user receives or passes, by the module that defines it; loaded on first use
#: (``auricle.ClipTags``), so ``import auricle`` stays free of torch and numpy.
_LAZY = {
    "AudioModel": "auricle.model",
    "DashengModel": "auricle.dasheng_model",
    "ExportedModel": "auricle.onnx.exported",
    "ModelInfo": "auricle.models.registry",
    "ClipTags": "auricle.inference.results",
    "Tag": "auricle.inference.results",
    "WindowScores": "auricle.inference.results",
    "Event": "auricle.inference.results",
    "Embeddings": "auricle.inference.results",
    "Failure": "auricle.inference.results",
    "TagOptions": "auricle.inference.tagging",
    "EventOptions": "auricle.inference.events",
    "AuricleError": "auricle.errors",
    "OptionError": "auricle.errors",
    "AudioError": "auricle.errors",
    "AudioWarning": "auricle.errors",
    "CheckpointError": "auricle.errors",
    "LabelError": "auricle.errors",
    "DatasetError": "auricle.errors",
    "ExportError": "auricle.errors",
    "OutputError": "auricle.errors",
    "WriteError": "auricle.errors",
    "RunOptions": "auricle.loading",  # how a model runs (device, engine, precision, threads, streams)
    "Index": "auricle.search",  # search over indexed recordings (docs/search.md)
    "SearchHit": "auricle.search.query",
    "AddReport": "auricle.search.index",
    # MiDashengLM: describe, ask, diaries (docs/language.md)
    "AudioLanguageModel": "auricle.language_model",
    "RemoteLanguageModel": "auricle.language.remote",
    "Description": "auricle.language.results",
    "Summary": "auricle.language.results",
    "Span": "auricle.language.diary",
    "EventSegmentation": "auricle.language.diary",
    # `auricle embed`'s output layout and its resume (docs/output-format.md)
    "write_embeddings": "auricle.io.embeddings",
    "EmbeddingsReport": "auricle.io.embeddings",
}

__all__ = ["available_models", "load_model", "tag", "embed", "__version__", *_LAZY]

if TYPE_CHECKING:
    from auricle.dasheng_model import DashengModel
    from auricle.errors import (AudioError, AudioWarning, AuricleError, CheckpointError, DatasetError, ExportError,
                                LabelError, OptionError, OutputError, WriteError)
    from auricle.io.embeddings import EmbeddingsReport, write_embeddings
    from auricle.onnx.exported import ExportedModel
    from auricle.inference.events import EventOptions
    from auricle.inference.results import ClipTags, Embeddings, Event, Failure, Tag, WindowScores
    from auricle.inference.tagging import TagOptions
    from auricle.loading import RunOptions
    from auricle.model import AudioModel
    from auricle.models.registry import ModelInfo
    from auricle.language.diary import EventSegmentation, Span
    from auricle.language.remote import RemoteLanguageModel
    from auricle.language.results import Description, Summary
    from auricle.language_model import AudioLanguageModel
    from auricle.search import Index
    from auricle.search.index import AddReport
    from auricle.search.query import SearchHit


def available_models() -> list["ModelInfo"]:
    """The published CED models (name, size, AudioSet mAP, weight sources)."""
    from auricle.models.registry import available_models as _available

    return _available()


def load_model(name: str = "ced-mini", checkpoint: Any = None, device: Any = "cpu", cache_dir: Any = None,
               engine: str | None = None, precision: str | None = None, threads: int | None = None,
               streams: int | None = None) -> "AudioModel | DashengModel | ExportedModel | AudioLanguageModel":
    """Load a model by name or checkpoint: :func:`auricle.loading.load_model`, the one loading path.

    ``engine=``, ``precision=``, ``threads=`` and ``streams=`` choose how the encoder runs. A
    ``checkpoint`` ending in ``.onnx`` (an ``auricle export`` file) gives an
    :class:`auricle.onnx.exported.ExportedModel`: tagging, probabilities and (files exported with
    ``--piece-embeddings``) embeddings through ONNX Runtime, without importing torch.
    """
    from auricle.loading import load_model as _load

    return _load(name, checkpoint, device, cache_dir, engine, precision, threads, streams)


def tag(source: Any, sample_rate: int | None = None, *, model: str = "ced-mini", checkpoint: Any = None, **options: Any):
    """One-call tagging: ``auricle.tag("file.wav", top_k=5)``. Loads the model each call."""
    return load_model(model, checkpoint).tag(source, sample_rate, **options)


def embed(source: Any, sample_rate: int | None = None, *, model: str = "ced-mini", checkpoint: Any = None):
    """One-call embeddings; loads the model each call."""
    return load_model(model, checkpoint).embed(source, sample_rate)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'auricle' has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(module), name)
