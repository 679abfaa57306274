"""What an evaluation compares: the labels, and the predictions (computed by a model, or read from an
``auricle tag --format json/jsonl`` output) matched to the labelled files.

:mod:`auricle.downstream.evaluate` scores them and re-exports these names under their old path.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from auricle.downstream.eval_metrics import LabelledEvent
from auricle.errors import AuricleError, DatasetError, LabelError
from auricle.inference.results import ClipTags, Failure
from auricle.inference.tagging import TagOptions
from auricle.labels import LabelSet, close_matches

_FILE_COLUMNS = ("file", "filename")


_LABEL_COLUMNS = ("label", "event_label")


class EvaluationError(AuricleError):
    """Labels and predictions cannot be evaluated together (unknown classes, missing files, ...)."""


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


def relabel(prediction: FilePrediction, file: str) -> FilePrediction:
    """The same prediction under the labels' name of the file (so events pair up by file)."""
    events = tuple(LabelledEvent(file, e.onset, e.offset, e.label) for e in prediction.events)
    return FilePrediction(file, prediction.duration, prediction.window_bounds, prediction.window_scores,
                          prediction.clip_scores, events)


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
