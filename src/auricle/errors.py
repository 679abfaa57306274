"""Error types shared by every layer.

Each layer raises its own subclass of :class:`AuricleError` whose message names
the file (or name) and the cause in one line, so the CLI can print it as is.
"""

from __future__ import annotations

#: Why a finite signal got NaN scores: its spectrogram's power overflowed float32 (samples beyond ~1e16).
NOT_FINITE = "the model's output is not finite: samples far beyond full scale (±1) overflow the spectrogram"


class AuricleError(Exception):
    """Base class of every error auricle raises on bad input."""


class OptionError(AuricleError, ValueError):
    """An option value that cannot be used (``top_k=0``, ``pool="median"``); a ValueError too, as it always was."""


class AudioError(AuricleError):
    """An audio file or array cannot be used: missing, corrupt, unsupported, ..."""


class AudioWarning(UserWarning):
    """A recording was used, but its decoder had to skip damaged data (the message names the file)."""


class CheckpointError(AuricleError):
    """A checkpoint cannot be found, read or matched to a model."""


class LabelError(AuricleError):
    """A class name, MID, ontology node or profile is unknown or malformed."""


class SearchIndexError(AuricleError):
    """A search index cannot be used: not an index, another schema version or model, locked, damaged."""


class DatasetError(AuricleError):
    """A labelled dataset (manifest or class folders) is malformed or incomplete."""


class OutputError(AuricleError):
    """An output cannot be used: it holds another model's results, another layout, or cannot take this one."""


class WriteError(OutputError):
    """An output could not be written (a full disk, no permission); what was written before stays whole."""


class ExportError(AuricleError):
    """A model cannot be exported, or the export does not reproduce the torch model."""


class EngineError(AuricleError):
    """An engine or precision cannot run here (missing package, unsupported device, ...)."""


class EngineWarning(UserWarning):
    """An engine runs as asked, but not the way it is meant to (e.g. emulated, far slower)."""
