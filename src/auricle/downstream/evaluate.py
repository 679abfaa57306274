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

Reading the labels and the predictions is :mod:`auricle.downstream.eval_inputs` (re-exported
here); the report's text table and CSV are :mod:`auricle.downstream.eval_tables`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

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
from auricle.downstream.eval_inputs import (  # re-exported: their old import path
    EvaluationError, FilePrediction, match_files, model_columns, predict, read_matched_predictions, read_predictions,
    read_strong_labels, relabel,
)
from auricle.inference.events import timeline
from auricle.inference.results import Failure

#: DCASE 2021-2024 task 4 PSDS scenarios (Bilen et al. 2020 parameters).
PSDS_SCENARIOS: dict[str, dict] = {
    "psds1": {"dtc_threshold": 0.7, "gtc_threshold": 0.7, "cttc_threshold": None,
              "alpha_ct": 0.0, "alpha_st": 1.0, "max_efpr": 100.0},
    "psds2": {"dtc_threshold": 0.1, "gtc_threshold": 0.1, "cttc_threshold": 0.3,
              "alpha_ct": 0.5, "alpha_st": 1.0, "max_efpr": 100.0},
}




# --------------------------------------------------------------------------- strong labels


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


__all__ = [
    "EvaluationError", "FilePrediction", "predict", "read_predictions", "match_files", "read_strong_labels",
    "model_columns", "TaggingReport", "TagClassResult", "tagging_report", "EventReport", "EventClassResult",
    "EventSettings", "event_report", "psds_values", "relabel", "PSDS_SCENARIOS", "read_matched_predictions",
    "dataset_tagging_report",
]
