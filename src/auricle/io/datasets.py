"""Labelled datasets: which recordings carry which classes, and in which split.

Two layouts are read by :func:`read_dataset`:

* **a folder per class**: ``root/<class name>/**/*.wav`` (any audio extension
  :func:`auricle.audio.list_audio_files` knows). Single-label; no split.
* **a CSV or TSV manifest** with a header row and at least the columns
  ``file`` and ``labels`` (names configurable), plus an optional ``split``.
  TSV is chosen by the ``.tsv`` extension or a tab in the header line.
  ``labels`` holds one or more classes separated by ``;`` (commas cannot
  separate: AudioSet names contain them), each a class name or an AudioSet MID
  (``/m/0bt9lr``), which is turned into its AudioSet display name. Relative
  paths are resolved against ``audio_dir`` (default: the manifest's folder).

Class names are matched case-insensitively (the first spelling seen is kept;
AudioSet names keep the AudioSet spelling) and sorted in natural order
(``2`` before ``10``), so a dataset's class order never depends on row order.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from auricle.errors import DatasetError

LABEL_SEPARATOR = ";"
_MID_PATTERN = re.compile(r"^/[a-z]/\S+$")
_SHOW = 5  # how many offending entries an error message lists


@dataclass(frozen=True)
class LabelledItem:
    """One recording and its classes; ``split`` is None when the dataset has no splits."""

    file: str
    labels: tuple[str, ...]
    split: str | None = None

    def to_dict(self) -> dict:
        return {"file": self.file, "labels": list(self.labels), "split": self.split}


@dataclass(frozen=True)
class LabelledDataset:
    """Recordings with labels over a fixed, ordered class list.

    ``multi_label`` is True when some recording has other than exactly one
    class; then targets are multi-hot, otherwise one-hot.
    """

    items: tuple[LabelledItem, ...]
    classes: tuple[str, ...]
    multi_label: bool
    source: str = "<dataset>"
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "items", tuple(self.items))
        object.__setattr__(self, "classes", tuple(self.classes))
        object.__setattr__(self, "_index", {name: i for i, name in enumerate(self.classes)})
        for item in self.items:
            for label in item.labels:
                if label not in self._index:
                    raise DatasetError(f"{self.source}: {item.file}: label {label!r} is not one of the classes")

    def __len__(self) -> int:
        return len(self.items)

    @property
    def files(self) -> list[str]:
        return [item.file for item in self.items]

    @property
    def splits(self) -> tuple[str, ...]:
        """Split names present, in order of first appearance."""
        return tuple(dict.fromkeys(item.split for item in self.items if item.split is not None))

    def split(self, name: str) -> "LabelledDataset":
        """The items of one split, over the same classes (so targets stay aligned)."""
        if name not in self.splits:
            known = ", ".join(self.splits) or "none"
            raise DatasetError(f"{self.source}: unknown split {name!r} (splits: {known})")
        items = tuple(item for item in self.items if item.split == name)
        return LabelledDataset(items, self.classes, self.multi_label, f"{self.source}[{name}]")

    def subset(self, indices: Sequence[int]) -> "LabelledDataset":
        """The items at ``indices`` (e.g. one fold), over the same classes."""
        return LabelledDataset(tuple(self.items[i] for i in indices), self.classes, self.multi_label, self.source)

    def targets(self) -> np.ndarray:
        """(N, C) float32 matrix, 1 where a recording carries a class."""
        targets = np.zeros((len(self.items), len(self.classes)), dtype=np.float32)
        for row, item in enumerate(self.items):
            for label in item.labels:
                targets[row, self._index[label]] = 1.0
        return targets

    def class_indices(self) -> np.ndarray:
        """(N,) int64 class index of each recording; single-label datasets only."""
        if self.multi_label:
            raise DatasetError(f"{self.source}: multi-label dataset has no single class per recording")
        return np.array([self._index[item.labels[0]] for item in self.items], dtype=np.int64)

    def class_counts(self) -> np.ndarray:
        return self.targets().sum(axis=0).astype(np.int64)

    @property
    def multi_label_because(self) -> str | None:
        """The first recording that makes the data multi-label (one empty label field is enough), or None."""
        for item in self.items:
            if len(item.labels) != 1:
                return f"{item.file} has {len(item.labels) or 'no'} class{'' if len(item.labels) == 1 else 'es'}"
        return None

    def require_something_to_tell_apart(self, multi_label: bool) -> None:
        """Raise for single-label data of one class: its head would score 1 for any sound (accuracy 1.0, useless)."""
        if len(self.classes) < 2 and not multi_label:
            only = f" ({self.classes[0]!r})" if self.classes else ""
            raise DatasetError(
                f"{self.source}: one class{only}, every clip labelled with it: a head has nothing to tell apart; "
                "add clips of other classes, or leave the clips without the class unlabelled (multi-label: a "
                "detector of it)"
            )

    def require_examples(self, what: str = "") -> None:
        """Raise if some class has no example here (a head cannot learn it)."""
        empty = [name for name, count in zip(self.classes, self.class_counts()) if count == 0]
        if empty:
            where = f" in {what}" if what else ""
            raise DatasetError(
                f"{self.source}: {len(empty)} classes have no examples{where}: {listing(empty, quoted=True)}"
            )


# --------------------------------------------------------------------------- reading


def read_dataset(
    path: str | os.PathLike,
    split: str | None = None,
    *,
    audio_dir: str | os.PathLike | None = None,
    file_column: str = "file",
    label_column: str = "labels",
    split_column: str = "split",
    check_files: bool = True,
) -> LabelledDataset:
    """Read a class-per-folder tree or a CSV/TSV manifest; return one split if ``split`` is given.

    Raises :class:`DatasetError` with one line naming the source and the
    problem: missing files (count and the first few), duplicate rows, unknown
    split, a class folder with no audio, a row with no file.
    """
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: dataset not found")
    if path.is_dir():
        dataset = _read_folders(path)
    else:
        dataset = _read_manifest(
            path, Path(audio_dir) if audio_dir is not None else path.parent,
            file_column, label_column, split_column, check_files,
        )
    return dataset.split(split) if split is not None else dataset


def _read_folders(root: Path) -> LabelledDataset:
    from auricle.audio import list_audio_files

    folders = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                     key=lambda p: _natural_key(p.name))
    if not folders:
        raise DatasetError(f"{root}: no class folders (expected <root>/<class>/<audio files>)")
    items: list[LabelledItem] = []
    empty: list[str] = []
    for folder in folders:
        files = list_audio_files([folder], recursive=True)
        if not files:
            empty.append(folder.name)
        items.extend(LabelledItem(file, (folder.name,)) for file in files)
    if empty:
        raise DatasetError(f"{root}: {len(empty)} class folders have no audio files: {listing(empty, quoted=True)}")
    return LabelledDataset(tuple(items), tuple(f.name for f in folders), False, str(root))


def _read_manifest(
    path: Path, audio_dir: Path, file_column: str, label_column: str, split_column: str, check_files: bool
) -> LabelledDataset:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetError(f"{path}: cannot read ({getattr(error, 'strerror', None) or error})") from None
    lines = text.splitlines()
    if not lines:
        raise DatasetError(f"{path}: empty manifest")
    delimiter = "\t" if path.suffix.lower() == ".tsv" or "\t" in lines[0] else ","
    reader = csv.DictReader(lines, delimiter=delimiter)
    header = [name.strip() for name in reader.fieldnames or []]
    reader.fieldnames = header
    for column in (file_column, label_column):
        if column not in header:
            raise DatasetError(
                f"{path}: no column {column!r} in the header ({', '.join(header) or 'empty'})"
            )
    has_split = split_column in header
    names = _NameTable()
    items: list[LabelledItem] = []
    first_line: dict[str, int] = {}
    missing: list[str] = []
    for line, row in enumerate(reader, start=2):
        if None in row:  # fields past the header's: surely a label with an unquoted comma
            raise DatasetError(f"{path}: line {line}: {len(header) + len(row[None])} fields, but the header has "
                               f"{len(header)}; quote a field that holds {delimiter!r}")
        if not any((value or "").strip() for value in row.values() if isinstance(value, str)):
            continue  # blank line
        file_text = (row.get(file_column) or "").strip()
        if not file_text:
            raise DatasetError(f"{path}: line {line}: no file")
        file = str(Path(file_text) if Path(file_text).is_absolute() else audio_dir / file_text)
        key = os.path.normcase(os.path.abspath(file))
        if key in first_line:
            raise DatasetError(f"{path}: line {line}: {file_text} is listed twice (first on line {first_line[key]})")
        first_line[key] = line
        try:
            labels = tuple(dict.fromkeys(
                names.canonical(part.strip())
                for part in (row.get(label_column) or "").split(LABEL_SEPARATOR) if part.strip()
            ))
        except DatasetError as error:
            raise DatasetError(f"{path}: line {line}: {error}") from None
        split = (row.get(split_column) or "").strip() or None if has_split else None
        if check_files and not os.path.isfile(file):
            missing.append(file_text)
        items.append(LabelledItem(file, labels, split))
    if not items:
        raise DatasetError(f"{path}: no rows")
    if missing:
        hint = _folder_holding(audio_dir, missing)
        raise DatasetError(f"{path}: {len(missing)} of {len(items)} files missing under {audio_dir}: {listing(missing)}"
                           + (f" (they are under {hint}: give that as the audio folder)" if hint else ""))
    if has_split and any(item.split is None for item in items):
        blank = next(first_line[os.path.normcase(os.path.abspath(i.file))] for i in items if i.split is None)
        raise DatasetError(f"{path}: line {blank}: empty split (fill every row's {split_column!r} or none)")
    classes = tuple(sorted(names.used(), key=_natural_key))
    multi_label = any(len(item.labels) != 1 for item in items)
    return LabelledDataset(tuple(items), classes, multi_label, str(path))


def _folder_holding(audio_dir: Path, missing: Sequence[str]) -> Path | None:
    """A sub-folder of ``audio_dir`` (one or two levels down) that holds the first few missing files, if any.

    The common mistake: a manifest beside an ``audio/`` folder that its names are relative to.
    """
    sample = [name for name in missing[:3] if not Path(name).is_absolute()]
    if not sample or not audio_dir.is_dir():
        return None

    def folders(parent: Path) -> list[Path]:  # sub-folders only: a folder of a million clips is not listed twice
        with os.scandir(parent) as entries:
            return sorted(Path(entry.path) for entry in entries if entry.is_dir())

    children = folders(audio_dir)
    for folder in children + [grandchild for child in children for grandchild in folders(child)]:
        if all((folder / name).is_file() for name in sample):
            return folder
    return None


class _NameTable:
    """Canonical spelling of class names: MIDs -> AudioSet names, case-insensitive merging."""

    def __init__(self) -> None:
        self._by_key: dict[str, str] = {}
        self._audioset = None

    def canonical(self, text: str) -> str:
        if _MID_PATTERN.match(text):
            labels = self._labels()
            if not labels.contains_mid(text):
                raise DatasetError(f"unknown AudioSet MID {text!r}")
            text = labels[labels.index_of_mid(text)].name
        else:
            index = self._labels().find(text)
            if index is not None:
                text = self._labels()[index].name
        return self._by_key.setdefault(text.casefold(), text)

    def used(self) -> list[str]:
        return list(self._by_key.values())

    def _labels(self):
        if self._audioset is None:
            from auricle.labels import audioset_labels

            self._audioset = audioset_labels()
        return self._audioset


def _natural_key(name: str) -> list:
    """Sort key putting ``2`` before ``10`` and ignoring case."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part.casefold()) for part in re.split(r"(\d+)", name)]


def listing(entries: Sequence[str], quoted: bool = False) -> str:
    """The first few entries, comma-separated; ``quoted`` for class names, which may hold commas themselves."""
    shown = ", ".join(repr(entry) if quoted else entry for entry in entries[:_SHOW])
    return shown + (f", ... ({len(entries) - _SHOW} more)" if len(entries) > _SHOW else "")


# --------------------------------------------------------------------------- training splits

#: Split names taken as validation data when present.
VALIDATION_NAMES = ("valid", "validation", "val", "dev")


def carve_validation(dataset: LabelledDataset, fraction: float, seed: int) -> tuple[LabelledDataset, LabelledDataset]:
    """Hold out ``fraction`` of each class (by first label) as validation data, seeded."""
    generator = np.random.default_rng(seed)
    by_class: dict[str, list[int]] = {}
    for position, item in enumerate(dataset.items):
        by_class.setdefault(item.labels[0] if item.labels else "", []).append(position)
    held: set[int] = set()
    for positions in by_class.values():
        take = int(round(len(positions) * fraction))
        held.update(generator.permutation(positions)[:take].tolist())
    rest = [i for i in range(len(dataset)) if i not in held]
    if not held or not rest:
        raise DatasetError(f"{dataset.source}: too few clips ({len(dataset)}) to hold out {fraction:.0%} of each class "
                           "for validation: raise --valid-fraction or name a validation split (--valid-split)")
    return dataset.subset(rest), dataset.subset(sorted(held))


@dataclass(frozen=True)
class TrainingSplits:
    train: LabelledDataset
    validation: LabelledDataset
    test: LabelledDataset | None
    #: How validation data was chosen, for logs and reports.
    validation_origin: str


def training_splits(
    dataset: LabelledDataset,
    train: str = "train",
    validation: str | None = None,
    test: str | None = "test",
    validation_fraction: float = 0.1,
    seed: int = 0,
) -> TrainingSplits:
    """Train/validation/test parts of a dataset.

    Without splits everything is training data. Validation is the named split,
    else the first of :data:`VALIDATION_NAMES` present, else ``validation_fraction``
    of the training data held out per class. Test is the named split when present.
    """
    if not dataset.splits:
        train_part, test_part = dataset, None
    else:
        train_part = dataset.split(train)
        test_part = dataset.split(test) if test is not None and test in dataset.splits else None
    if validation is None:
        validation = next((name for name in VALIDATION_NAMES if name in dataset.splits), None)
    if validation is not None:
        return TrainingSplits(train_part, dataset.split(validation), test_part, f"split {validation!r}")
    train_part, held = carve_validation(train_part, validation_fraction, seed)
    return TrainingSplits(train_part, held, test_part,
                          f"{validation_fraction:.0%} of {train if dataset.splits else 'the data'} per class (seed {seed})")


__all__ = [
    "LabelledItem", "LabelledDataset", "read_dataset", "LABEL_SEPARATOR", "carve_validation",
    "training_splits", "TrainingSplits", "VALIDATION_NAMES",
]
