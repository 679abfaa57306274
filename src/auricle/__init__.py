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
__all__ = ["available_models", "load_model", "tag", "embed", "AudioModel", "Index", "__version__"]

if TYPE_CHECKING:
    from auricle.exported import ExportedModel
    from auricle.model import AudioModel
    from auricle.models.registry import ModelInfo
    from auricle.search import Index


def available_models() -> list["ModelInfo"]:
    """The published CED models (name, size, AudioSet mAP, weight sources)."""
    from auricle.models.registry import available_models as _available

    return _available()


def load_model(name: str = "ced-mini", checkpoint: Any = None, device: Any = "cpu", cache_dir: Any = None,
               **engine: Any) -> "AudioModel | ExportedModel":
    """Load a model by name or checkpoint; see :func:`auricle.model.load_model`
    (``engine=``, ``precision=``, ``threads=`` choose how the encoder runs).

    A ``checkpoint`` ending in ``.onnx`` (an ``auricle export`` file) gives an
    :class:`auricle.exported.ExportedModel`: tagging, probabilities and (files
    exported with ``--piece-embeddings``) embeddings through ONNX Runtime, without
    importing torch.
    """
    from auricle.exported import is_exported_file

    if is_exported_file(checkpoint):
        from auricle.exported import load_exported

        return load_exported(checkpoint, device=device, **engine)
    from auricle.model import load_model as _load

    return _load(name, checkpoint=checkpoint, device=device, cache_dir=cache_dir, **engine)


def tag(source: Any, sample_rate: int | None = None, *, model: str = "ced-mini", checkpoint: Any = None, **options: Any):
    """One-call tagging: ``auricle.tag("file.wav", top_k=5)``. Loads the model each call."""
    return load_model(model, checkpoint).tag(source, sample_rate, **options)


def embed(source: Any, sample_rate: int | None = None, *, model: str = "ced-mini", checkpoint: Any = None):
    """One-call embeddings; loads the model each call."""
    return load_model(model, checkpoint).embed(source, sample_rate)


def __getattr__(name: str) -> Any:
    if name == "AudioModel":
        from auricle.model import AudioModel

        return AudioModel
    if name == "Index":  # search over indexed recordings (docs/search.md)
        from auricle.search import Index

        return Index
    raise AttributeError(f"module 'auricle' has no attribute {name!r}")
