"""Evaluate a model, or predictions written earlier by ``auricle tag``, against labels.

* Tagging: clip scores of every recording of a labelled manifest (see
  :mod:`auricle.io.datasets`) -> per-class AP, ROC AUC and d', their means.
* Events: strong labels (``file,onset,offset,label`` or DCASE
  ``filename,onset,offset,event_label``) -> segment-based and event-based F1
  (:mod:`auricle.downstream.eval_metrics`) and PSDS (``sed_scores_eval``) from
  the per-window scores.

Predictions are either computed here (``AudioModel.iter_tag``) or read from an
``auricle tag --format json/jsonl`` file. Such a file holds only the reported
tags of each window and clip: a class missing from them counts as score 0, so
write it with ``--threshold 0`` (every class) for exact AP, AUC and PSDS.
"""

from __future__ import annotations

import csv
import json
import math
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from auricle.downstream.eval_metrics import (
    Counts,
    LabelledEvent,
    average_precision,
    d_prime,
    event_counts,
    finite_or_none,
    micro_and_macro_f1,
    roc_auc,
    segment_counts,
)
from auricle.errors import AuricleError, DatasetError, LabelError
from auricle.inference.events import timeline
from auricle.inference.results import ClipTags, Failure
from auricle.inference.tagging import TagOptions
from auricle.labels import LabelSet, close_matches

#: DCASE 2021-2024 task 4 PSDS scenarios (Bilen et al. 2020 parameters).
PSDS_SCENARIOS: dict[str, dict] = {
    "psds1": {"dtc_threshold": 0.7, "gtc_threshold": 0.7, "cttc_threshold": None,
              "alpha_ct": 0.0, "alpha_st": 1.0, "max_efpr": 100.0},
    "psds2": {"dtc_threshold": 0.1, "gtc_threshold": 0.1, "cttc_threshold": 0.3,
              "alpha_ct": 0.5, "alpha_st": 1.0, "max_efpr": 100.0},
}
_FILE_COLUMNS = ("file", "filename")
_LABEL_COLUMNS = ("label", "event_label")


class EvaluationError(AuricleError):
    """Labels and predictions cannot be evaluated together (unknown classes, missing files, ...)."""


# --------------------------------------------------------------------------- predictions
@dataclass(frozen=True)
class FilePrediction:
    """What a model said about one recording, over the evaluated classes (columns)."""

    file: str
    duration: float
    window_bounds: np.ndarray  # (windows, 2) seconds
    window_scores: np.ndarray  # (windows, classes)
    clip_scores: np.ndarray  # (classes,)
    events: tuple[LabelledEvent, ...] = ()


def model_columns(labels: LabelSet, classes: Sequence[str], source: str) -> list[int]:
    """Model output index of each evaluated class (by name, case-insensitive, or MID)."""
    columns, unknown = [], []
    for name in classes:
        index = labels.find(name)
        (unknown.append(name) if index is None else columns.append(index))
    if unknown:
        shown = ", ".join(_with_suggestions(name, labels) for name in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        what = "1 class is not an output" if len(unknown) == 1 else f"{len(unknown)} classes are not outputs"
        raise LabelError(f"{source}: {what} of the model: {shown}")
    return columns


def _with_suggestions(name: str, labels: LabelSet) -> str:
    near = close_matches(name, labels.names, limit=2)
    return repr(name) + (f" (did you mean {' or '.join(repr(n) for n in near)}?)" if near else "")


def predict(
    model,
    files: Sequence[str],
    classes: Sequence[str],
    options: TagOptions,
    batch_size: int | None = None,
    source: str = "<labels>",
) -> Iterator[FilePrediction | Failure]:
    """Run ``model`` over ``files``; yields one prediction (or failure) per file, in order."""
    columns = model_columns(model.labels, classes, source)
    position = {index: column for column, index in enumerate(columns)}
    for result in model.iter_tag(list(files), options, batch_size=batch_size):
        if isinstance(result, Failure):
            yield result
            continue
        yield _from_clip_tags(result, columns, position, classes, options.pool)


def _from_clip_tags(result: ClipTags, columns, position, classes, pool: str) -> FilePrediction:
    # The result's columns are all model classes (tag options without --classes).
    window_scores = result.scores[:, columns]
    events = tuple(
        LabelledEvent(result.file, event.onset, event.offset, classes[position[event.index]])
        for event in result.events or () if event.index in position
    )
    return FilePrediction(
        file=result.file,
        duration=result.duration,
        window_bounds=np.asarray(result.window_bounds, dtype=float),
        window_scores=window_scores,
        clip_scores=window_scores.max(axis=0) if pool == "max" else window_scores.mean(axis=0),
        events=events,
    )


def read_predictions(path: str | os.PathLike, classes: Sequence[str]) -> tuple[dict[str, FilePrediction], list[Failure]]:
    """Predictions from ``auricle tag --format json`` or ``jsonl`` output, over ``classes``.

    Scores of classes a window or clip did not report are 0.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise EvaluationError(f"{path}: cannot read ({getattr(error, 'strerror', None) or error})") from None
    try:
        stripped = text.lstrip()
        records = json.loads(text) if stripped.startswith("[") else [
            json.loads(line) for line in text.splitlines() if line.strip()
        ]
    except json.JSONDecodeError as error:
        raise EvaluationError(f"{path}: not auricle tag JSON or JSONL output ({error.msg}, line {error.lineno})") from None
    keys = {name.casefold(): column for column, name in enumerate(classes)}
    predictions: dict[str, FilePrediction] = {}
    failures: list[Failure] = []
    for number, record in enumerate(records, start=1):
        if not isinstance(record, dict) or "file" not in record:
            raise EvaluationError(f"{path}: record {number} is not an auricle tag result")
        if "error" in record:
            failures.append(Failure(record["file"], record["error"]))
            continue
        try:
            predictions[record["file"]] = _from_record(record, classes, keys)
        except (KeyError, TypeError, ValueError) as error:
            raise EvaluationError(f"{path}: record {number} ({record['file']}): malformed ({error})") from None
    return predictions, failures


def _column(tag: dict, keys: dict[str, int]) -> int | None:
    for key in (tag.get("label", ""), tag.get("mid", "")):
        if key and key.casefold() in keys:
            return keys[key.casefold()]
    return None


def _score_row(tags: Iterable[dict], keys: dict[str, int], size: int) -> np.ndarray:
    row = np.zeros(size)
    for tag in tags:
        column = _column(tag, keys)
        if column is not None:
            row[column] = float(tag["score"])
    return row


def _from_record(record: dict, classes: Sequence[str], keys: dict[str, int]) -> FilePrediction:
    windows = record.get("windows") or []
    duration = float(record["duration"])
    bounds = np.array([[w["start"], w["end"]] for w in windows], dtype=float).reshape(-1, 2)
    window_scores = np.stack([_score_row(w["tags"], keys, len(classes)) for w in windows]) if windows else np.zeros((0, len(classes)))
    if not windows:  # a record without windows: the clip tags cover the whole file
        bounds = np.array([[0.0, duration]])
        window_scores = _score_row(record["tags"], keys, len(classes))[None]
    events = tuple(
        LabelledEvent(record["file"], float(e["onset"]), float(e["offset"]), classes[column])
        for e in record.get("events") or () if (column := _column(e, keys)) is not None
    )
    return FilePrediction(record["file"], duration, bounds, window_scores,
                          _score_row(record["tags"], keys, len(classes)), events)


def match_files(wanted: Sequence[str], available: Iterable[str], source: str) -> dict[str, str]:
    """Map each labelled file to its prediction: same path, else the same unique file name."""
    available = list(available)
    by_path = {os.path.normcase(os.path.abspath(name)): name for name in available}
    by_name: dict[str, list[str]] = {}
    for name in available:
        by_name.setdefault(os.path.basename(name), []).append(name)
    found, missing = {}, []
    for file in wanted:
        match = by_path.get(os.path.normcase(os.path.abspath(file)))
        if match is None and len(by_name.get(os.path.basename(file), [])) == 1:
            match = by_name[os.path.basename(file)][0]
        (missing.append(file) if match is None else found.__setitem__(file, match))
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise EvaluationError(f"{source}: {len(missing)} of {len(wanted)} labelled files have no prediction: {shown}")
    return found


# --------------------------------------------------------------------------- strong labels
def read_strong_labels(
    path: str | os.PathLike, audio_dir: str | os.PathLike | None = None,
    warn: Callable[[str], None] | None = None,
) -> tuple[list[LabelledEvent], list[str], tuple[str, ...]]:
    """Events of a ``file,onset,offset,label`` (or DCASE ``filename,...,event_label``) CSV/TSV.

    A row with the file alone (``file,,,``) names a file without events, as DCASE lists them. Returns (events, files in order of appearance, classes sorted by name);
    event files are resolved against ``audio_dir`` (default: the CSV's folder).
    A zero-length event (onset = offset) is refused. An event listed again (same file, onset,
    offset and label) is counted once: as two reference events, one would always be a miss;
    ``warn`` gets one line saying how many were dropped.
    """
    path = Path(path)
    base = Path(audio_dir) if audio_dir is not None else path.parent
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetError(f"{path}: cannot read ({getattr(error, 'strerror', None) or error})") from None
    if not lines:
        raise DatasetError(f"{path}: empty strong-label file")
    reader = csv.DictReader(lines, delimiter="\t" if "\t" in lines[0] else ",")
    header = [name.strip() for name in reader.fieldnames or []]
    reader.fieldnames = header
    file_column = next((c for c in _FILE_COLUMNS if c in header), None)
    label_column = next((c for c in _LABEL_COLUMNS if c in header), None)
    if file_column is None or label_column is None or not {"onset", "offset"} <= set(header):
        raise DatasetError(
            f"{path}: strong labels need columns file,onset,offset,label (or filename,onset,offset,event_label);"
            f" found {','.join(header) or 'none'}"
        )
    events: list[LabelledEvent] = []
    first_line: dict[LabelledEvent, int] = {}
    repeated: list[tuple[int, int]] = []  # (line, line of the first listing)
    seen: list[str] = []  # files in order of appearance, those without events (`file,,,`) included
    for line, row in enumerate(reader, start=2):
        if None in row:  # fields past the header: a label with an unquoted comma, or a shifted row
            raise DatasetError(f"{path}: line {line}: {len(header) + len(row[None])} fields, but the header has "
                               f"{len(header)} (quote a label that holds a comma)")
        if not any((value or "").strip() for value in row.values()):
            continue
        name, label = (row.get(file_column) or "").strip(), (row.get(label_column) or "").strip()
        if name and not label and not (row.get("onset") or "").strip() and not (row.get("offset") or "").strip():
            # DCASE's row of a file with no event: it is evaluated, and anything detected there is a false alarm.
            seen.append(name if Path(name).is_absolute() else str(base / name))
            continue
        try:
            onset, offset = float(row["onset"]), float(row["offset"])
        except (TypeError, ValueError):
            raise DatasetError(f"{path}: line {line}: onset and offset must be numbers") from None
        if not name or not label:
            raise DatasetError(f"{path}: line {line}: empty file or label")
        if not 0 <= onset <= offset or not math.isfinite(offset):
            raise DatasetError(f"{path}: line {line}: need 0 <= onset < offset, got {onset}, {offset}")
        if onset == offset:  # matches nothing and covers no segment: a typo, not an event
            raise DatasetError(f"{path}: line {line}: zero-length event ({name}, {label} at {onset:g} s); "
                               "offset must be after onset")
        file = name if Path(name).is_absolute() else str(base / name)
        event = LabelledEvent(file, onset, offset, label)
        seen.append(file)
        if event in first_line:
            repeated.append((line, first_line[event]))
            continue
        first_line[event] = line
        events.append(event)
    if not events:
        raise DatasetError(f"{path}: no events")
    if repeated and warn is not None:
        line, first = repeated[0]
        warn(f"{path}: {len(repeated)} events listed twice, counted once (the first: line {line} repeats line "
             f"{first})")
    files = list(dict.fromkeys(seen))
    return events, files, tuple(sorted({event.label for event in events}, key=str.casefold))


# --------------------------------------------------------------------------- reports
@dataclass(frozen=True)
class TagClassResult:
    label: str
    positives: int
    average_precision: float
    auc: float
    d_prime: float

    def to_dict(self) -> dict:
        return {
            "label": self.label,
            "positives": self.positives,
            "average_precision": finite_or_none(self.average_precision),
            "auc": finite_or_none(self.auc),
            "d_prime": finite_or_none(self.d_prime),
        }


@dataclass(frozen=True)
class TaggingReport:
    """Tagging metrics; means over the classes where each metric is defined, d' from the mean AUC."""

    model: str
    files: int
    classes: tuple[TagClassResult, ...]
    mean_average_precision: float
    mean_auc: float
    d_prime: float
    failures: tuple[Failure, ...] = ()

    def to_dict(self) -> dict:
        return {
            "task": "tagging",
            "model": self.model,
            "files": self.files,
            "mAP": finite_or_none(self.mean_average_precision),
            "mean_auc": finite_or_none(self.mean_auc),
            "d_prime": finite_or_none(self.d_prime),
            "classes": [c.to_dict() for c in self.classes],
            "failures": [{"file": f.file, "error": f.error} for f in self.failures],
        }


def _nanmean(values: Iterable[float]) -> float:
    defined = [v for v in values if not math.isnan(v)]
    return float(np.mean(defined)) if defined else math.nan


def tagging_report(
    targets: np.ndarray, scores: np.ndarray, classes: Sequence[str], model: str = "", failures: Sequence[Failure] = ()
) -> TaggingReport:
    """Metrics of (N, C) scores against (N, C) 0/1 targets."""
    targets, scores = np.asarray(targets), np.asarray(scores)
    if targets.shape != scores.shape or targets.ndim != 2:
        raise EvaluationError(f"targets {targets.shape} and scores {scores.shape} must both be (files, classes)")
    if targets.shape[1] != len(classes):
        raise EvaluationError(f"{len(classes)} class names for {targets.shape[1]} columns of scores")
    if not np.isfinite(scores).all():  # NaN sorted as a score gave AP and AUC that looked like results
        bad = int(np.flatnonzero(~np.isfinite(scores).all(axis=1))[0])
        raise EvaluationError(f"scores are not finite (row {bad} first): no metric can rank them")
    results = []
    for column, label in enumerate(classes):
        auc = roc_auc(targets[:, column], scores[:, column])
        results.append(TagClassResult(label, int(targets[:, column].sum()),
                                      average_precision(targets[:, column], scores[:, column]), auc, d_prime(auc)))
    mean_auc = _nanmean(r.auc for r in results)
    return TaggingReport(model, len(targets), tuple(results), _nanmean(r.average_precision for r in results),
                         mean_auc, d_prime(mean_auc), tuple(failures))


@dataclass(frozen=True)
class EventClassResult:
    label: str
    reference_events: int
    predicted_events: int
    segment: Counts
    event: Counts
    psds1: float = math.nan

    def to_dict(self) -> dict:
        return {
            "label": self.label,
            "reference_events": self.reference_events,
            "predicted_events": self.predicted_events,
            "segment": self.segment.to_dict(),
            "event": self.event.to_dict(),
            "psds1": finite_or_none(self.psds1),
        }


@dataclass(frozen=True)
class EventSettings:
    """How events are compared: segment length and collars (seconds), and whether PSDS is computed."""

    segment: float = 1.0
    onset_collar: float = 0.2
    offset_collar: float = 0.2
    offset_ratio: float = 0.2
    psds: bool = True

    def to_dict(self) -> dict:
        return {"segment_seconds": self.segment, "onset_collar": self.onset_collar,
                "offset_collar": self.offset_collar, "offset_collar_ratio": self.offset_ratio}


@dataclass(frozen=True)
class EventReport:
    model: str
    files: int
    classes: tuple[EventClassResult, ...]
    segment_f1: float
    segment_macro_f1: float
    event_f1: float
    event_macro_f1: float
    psds: dict[str, float] = field(default_factory=dict)
    settings: EventSettings = EventSettings()
    failures: tuple[Failure, ...] = ()

    def to_dict(self) -> dict:
        segment_total = sum((c.segment for c in self.classes), Counts())
        event_total = sum((c.event for c in self.classes), Counts())
        return {
            "task": "events",
            "model": self.model,
            "files": self.files,
            "settings": self.settings.to_dict(),
            "segment_based": {**segment_total.to_dict(), "macro_f1": finite_or_none(self.segment_macro_f1)},
            "event_based": {**event_total.to_dict(), "macro_f1": finite_or_none(self.event_macro_f1)},
            "psds": {name: finite_or_none(value) for name, value in self.psds.items()},
            "classes": [c.to_dict() for c in self.classes],
            "failures": [{"file": f.file, "error": f.error} for f in self.failures],
        }


def psds_values(
    reference: Sequence[LabelledEvent], predictions: Sequence[FilePrediction], classes: Sequence[str]
) -> tuple[dict[str, float], dict[str, float]]:
    """PSDS1 and PSDS2 over all files, and per-class PSDS1, from the window scores.

    Over the classes with at least one reference event in these files: PSDS is undefined
    for a class with none (sed_scores_eval refuses it), as when the only file holding a
    class's events could not be decoded. No such class: no PSDS at all.
    """
    present = {event.label for event in reference}
    columns = [index for index, label in enumerate(classes) if label in present]
    if not columns:
        return {}, {}
    classes = [classes[index] for index in columns]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dcase_util warns about pkg_resources on import
        from sed_scores_eval import intersection_based
        from sed_scores_eval.base_modules.scores import create_score_dataframe

    ids = {prediction.file: f"clip{number:05d}" for number, prediction in enumerate(predictions)}
    scores, durations = {}, {}
    ground_truth: dict[str, list] = {clip: [] for clip in ids.values()}
    for prediction in predictions:
        edges, segment_scores = timeline(prediction.window_bounds, prediction.window_scores)
        stamps = np.r_[edges[:, 0], edges[-1, 1]]
        frame = create_score_dataframe(segment_scores[:, columns], stamps, classes)
        scores[ids[prediction.file]] = _writable_frame(frame)
        durations[ids[prediction.file]] = max(prediction.duration, float(edges[-1, 1]))
    for event in reference:
        ground_truth[ids[event.file]].append((event.onset, min(event.offset, durations[ids[event.file]]), event.label))
    values, per_class = {}, {}
    for name, parameters in PSDS_SCENARIOS.items():
        if len(classes) == 1:
            # No other class to cross-trigger: the cross-trigger term is empty, and
            # sed_scores_eval 0.0.4 fails on it (an empty statistics dict) instead of skipping it.
            parameters = {**parameters, "cttc_threshold": None, "alpha_ct": 0.0}
        value, single, *_ = intersection_based.psds(
            scores=scores, ground_truth=ground_truth, audio_durations=durations, unit_of_time="hour", **parameters
        )
        values[name] = float(value)
        if name == "psds1":
            per_class = {label: float(v) for label, v in single.items()}
    return values, per_class


def _writable_frame(frame):
    """The frame as a DataFrame whose ``to_numpy`` copies.

    sed_scores_eval 0.0.4 hands ``frame[classes].to_numpy()`` to Cython code that
    needs a writable buffer; pandas >= 3 (copy-on-write) returns a read-only
    view there and the call fails with "buffer source array is read-only".
    """
    import pandas as pd

    class WritableFrame(pd.DataFrame):
        @property
        def _constructor(self):
            return WritableFrame

        def to_numpy(self, *args, **kwargs):
            kwargs["copy"] = True
            return super().to_numpy(*args, **kwargs)

    return WritableFrame(frame)


def event_report(
    reference: Sequence[LabelledEvent],
    predictions: Sequence[FilePrediction],
    classes: Sequence[str],
    settings: EventSettings = EventSettings(),
    model: str = "",
    failures: Sequence[Failure] = (),
) -> EventReport:
    """Segment-based and event-based F1 (and PSDS) of predicted events; ``reference`` files must match ``predictions``."""
    predicted = [event for prediction in predictions for event in prediction.events]
    evaluated = {prediction.file for prediction in predictions}
    reference = [event for event in reference if event.file in evaluated]  # failed files are left out
    segments = segment_counts(reference, predicted, classes, settings.segment)
    matched = event_counts(reference, predicted, classes, settings.onset_collar, settings.offset_collar,
                           settings.offset_ratio)
    psds, per_class_psds = psds_values(reference, predictions, classes) if settings.psds and predictions else ({}, {})
    results = tuple(
        EventClassResult(
            label,
            sum(e.label == label for e in reference),
            sum(e.label == label for e in predicted),
            segments[label],
            matched[label],
            per_class_psds.get(label, math.nan),
        )
        for label in classes
    )
    segment_f1, segment_macro = micro_and_macro_f1(segments)
    event_f1, event_macro = micro_and_macro_f1(matched)
    return EventReport(model, len(predictions), results, segment_f1, segment_macro, event_f1, event_macro,
                       psds, settings, tuple(failures))


def read_matched_predictions(
    path: str | os.PathLike, files: Sequence[str], classes: Sequence[str]
) -> tuple[list[FilePrediction], list[Failure]]:
    """The predictions an ``auricle tag`` output holds for each labelled file, in label order, and its failures.

    Each labelled file must have a prediction or a failure (however its path is spelt); a file of
    the tagging run that no label names is not part of the evaluation, failed or not.
    """
    found, failures = read_predictions(path, classes)
    failed = {f.file for f in failures}
    pairs = match_files(files, list(found) + list(failed), str(path))
    model_names = {p.file for p in found.values()}
    ordered = [relabel(found[pairs[f]], f) for f in files if pairs[f] in model_names]
    matched = set(pairs.values())
    return ordered, [failure for failure in failures if failure.file in matched]


def dataset_tagging_report(
    dataset, predictions: Sequence[FilePrediction], model: str = "", failures: Sequence[Failure] = ()
) -> TaggingReport:
    """Tagging metrics of ``predictions`` (in the order of ``dataset.files``) against a labelled dataset's
    targets; the files without a prediction (failed) are left out."""
    kept = {p.file for p in predictions}
    rows = [i for i, f in enumerate(dataset.files) if f in kept]
    scores = (np.stack([p.clip_scores for p in predictions]) if predictions
              else np.zeros((0, len(dataset.classes))))
    return tagging_report(dataset.targets()[rows], scores, dataset.classes, model, failures)


def relabel(prediction: FilePrediction, file: str) -> FilePrediction:
    """The same prediction under the labels' name of the file (so events pair up by file)."""
    events = tuple(LabelledEvent(file, e.onset, e.offset, e.label) for e in prediction.events)
    return FilePrediction(file, prediction.duration, prediction.window_bounds, prediction.window_scores,
                          prediction.clip_scores, events)


__all__ = [
    "EvaluationError", "FilePrediction", "predict", "read_predictions", "match_files", "read_strong_labels",
    "model_columns", "TaggingReport", "TagClassResult", "tagging_report", "EventReport", "EventClassResult",
    "EventSettings", "event_report", "psds_values", "relabel", "PSDS_SCENARIOS", "read_matched_predictions",
    "dataset_tagging_report",
]
