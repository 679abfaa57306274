"""Class labels, the AudioSet ontology, and selecting classes by name.

The CED models output 527 AudioSet class probabilities; :func:`audioset_labels`
gives those classes in output order and :func:`audioset_ontology` the AudioSet
ontology (632 nodes, a DAG: some nodes have several parents, e.g. ``Hiss`` sits
under ``Cat``, ``Snake``, ``Steam`` and ``Onomatopoeia``).

Class selection (:func:`resolve_classes`) accepts, for each spec:

* a class display name, case-insensitive, surrounding whitespace ignored
  (``"male speech, man speaking"``);
* a MID (``/m/09x0r``, ``/t/dd00002``), exact;
* an ontology node, by name or MID: every class of the label set in its subtree
  is selected (``Animal`` -> the 65 labelled classes under Animal, Animal
  included). A class that is also an ontology node with children selects its
  whole subtree too (``Dog`` -> Dog, Bark, Yip, Howl, ...); prefix the spec with
  ``=`` to select that one class only (``=Dog``);
* several of the above separated by ``;`` in one string (``"Dog; Cat"``).
  Commas are *not* separators: class names contain them.

Label sets without MIDs (custom heads, :meth:`LabelSet.from_names`) are
resolved by name only; the ontology does not apply to them.

The ontology itself is :mod:`auricle.ontology`, name lookup and close matches
:mod:`auricle.label_names`; their public names are re-exported here.
"""

from __future__ import annotations

import csv
import functools
import io
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from importlib.resources.abc import Traversable
from typing import Any

from auricle.errors import LabelError
from auricle.label_names import _key, _unknown, close_matches
from auricle.ontology import Ontology, OntologyNode, audioset_ontology

__all__ = [
    "AudioClass",
    "LabelSet",
    "OntologyNode",
    "Ontology",
    "audioset_labels",
    "audioset_ontology",
    "resolve_classes",
    "describe_spec",
    "close_matches",
    "split_specs",
    "SEPARATOR",
    "EXACT_PREFIX",
]

#: Separates several specs inside one string (commas cannot: names contain them).
SEPARATOR = ";"
#: Prefix that selects a class itself, never its ontology subtree.
EXACT_PREFIX = "="


# --------------------------------------------------------------------------- labels


@dataclass(frozen=True)
class AudioClass:
    """One output class of a model: its output index, AudioSet MID ("" if none) and display name."""

    index: int
    mid: str
    name: str


@dataclass(frozen=True)
class LabelSet:
    """The classes of a model head, in output order (``classes[i].index == i``).

    Immutable. Names are unique case-insensitively; MIDs, where given, are unique.
    """

    classes: tuple[AudioClass, ...]
    _by_name: Mapping[str, int] = field(init=False, repr=False, compare=False)
    _by_mid: Mapping[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        classes = tuple(self.classes)
        object.__setattr__(self, "classes", classes)
        if not classes:
            raise LabelError("a label set needs at least one class")
        by_name: dict[str, int] = {}
        by_mid: dict[str, int] = {}
        for position, item in enumerate(classes):
            if not isinstance(item, AudioClass):
                raise LabelError(f"class {position}: expected an AudioClass, got {type(item).__name__}")
            if item.index != position:
                raise LabelError(f"class {item.name!r}: index {item.index} at position {position}")
            if not isinstance(item.name, str) or not item.name.strip():
                raise LabelError(f"class {position}: empty name")
            key = _key(item.name)
            if key in by_name:
                raise LabelError(f"class {item.name!r} appears twice (indices {by_name[key]} and {position})")
            by_name[key] = position
            if item.mid:
                if item.mid in by_mid:
                    raise LabelError(f"MID {item.mid!r} appears twice (indices {by_mid[item.mid]} and {position})")
                by_mid[item.mid] = position
        object.__setattr__(self, "_by_name", by_name)
        object.__setattr__(self, "_by_mid", by_mid)

    @classmethod
    def from_names(cls, names: Sequence[str]) -> "LabelSet":
        """A label set for a custom head: classes named in output order, with no MIDs."""
        if isinstance(names, str):
            raise LabelError("class names must be a sequence of strings, not one string")
        return cls(tuple(AudioClass(i, "", str(name)) for i, name in enumerate(names)))

    @classmethod
    def from_csv(cls, source: str | os.PathLike[str] | Traversable) -> "LabelSet":
        """Read an AudioSet-style ``index,mid,display_name`` CSV (quoted names may hold commas)."""
        where = str(source.name if isinstance(source, Traversable) else os.fspath(source))
        try:
            if isinstance(source, Traversable):
                text = source.read_text(encoding="utf-8")
            else:
                with open(source, encoding="utf-8", newline="") as handle:
                    text = handle.read()
        except OSError as error:
            raise LabelError(f"{where}: cannot read ({error.strerror or error})") from None
        reader = csv.DictReader(io.StringIO(text))
        if reader.fieldnames is None or not {"index", "mid", "display_name"} <= set(reader.fieldnames):
            raise LabelError(f"{where}: expected the header index,mid,display_name")
        classes = []
        for line, row in enumerate(reader, start=2):
            try:
                index = int(row["index"])
            except (TypeError, ValueError):
                raise LabelError(f"{where}: line {line}: index {row['index']!r} is not an integer") from None
            classes.append(AudioClass(index, (row["mid"] or "").strip(), (row["display_name"] or "").strip()))
        try:
            return cls(tuple(classes))
        except LabelError as error:
            raise LabelError(f"{where}: {error}") from None

    # -- sequence protocol

    def __len__(self) -> int:
        return len(self.classes)

    def __getitem__(self, index: int) -> AudioClass:
        return self.classes[index]

    def __iter__(self) -> Iterator[AudioClass]:
        return iter(self.classes)

    # -- views

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.classes)

    @property
    def mids(self) -> tuple[str, ...]:
        return tuple(c.mid for c in self.classes)

    @property
    def has_mids(self) -> bool:
        """True when every class has a MID (AudioSet classes); the ontology then applies."""
        return len(self._by_mid) == len(self.classes)

    def index_of_mid(self, mid: str) -> int:
        """Output index of the class with this MID; :class:`LabelError` if none."""
        try:
            return self._by_mid[mid.strip()]
        except KeyError:
            raise LabelError(f"unknown class MID {mid!r}") from None

    def index_of_name(self, name: str) -> int:
        """Output index of the class with this name (case-insensitive); :class:`LabelError` with suggestions if none."""
        try:
            return self._by_name[_key(name)]
        except KeyError:
            raise _unknown("class", name.strip(), self.names) from None

    def find(self, name_or_mid: str) -> int | None:
        """Output index of a class by exact MID or case-insensitive name, or None."""
        text = name_or_mid.strip()
        if text in self._by_mid:
            return self._by_mid[text]
        return self._by_name.get(_key(text))

    def contains_mid(self, mid: str) -> bool:
        return mid in self._by_mid

    def to_list(self) -> list[dict[str, Any]]:
        """JSON-ready ``[{"index": 0, "mid": "/m/09x0r", "name": "Speech"}, ...]``."""
        return [{"index": c.index, "mid": c.mid, "name": c.name} for c in self.classes]


@functools.lru_cache(maxsize=1)
def audioset_labels() -> LabelSet:
    """The 527 AudioSet classes in model output order (index 0 ``Speech`` ... 526 ``Field recording``)."""
    return LabelSet.from_csv(files("auricle") / "data" / "class_labels_indices.csv")


# --------------------------------------------------------------------------- selection


def split_specs(specs: Sequence[str] | str) -> list[str]:
    """Flatten specs, splitting each on ``;`` and dropping blank parts."""
    if isinstance(specs, str):
        specs = [specs]
    parts: list[str] = []
    for spec in specs:
        if not isinstance(spec, str):
            raise LabelError(f"class spec must be a string, got {type(spec).__name__} {spec!r}")
        parts.extend(p.strip() for p in spec.split(SEPARATOR) if p.strip())
    return parts


def _resolve_one(part: str, labels: LabelSet, ontology: Ontology | None) -> list[int]:
    exact = part.startswith(EXACT_PREFIX)
    text = part[len(EXACT_PREFIX):].strip() if exact else part
    if not text:
        raise LabelError(f"empty class spec {part!r}")
    index = labels.find(text)
    node = ontology.find(text) if ontology is not None else None
    if node is not None and not exact:
        members = sorted(
            labels.index_of_mid(mid) for mid in ontology.descendants(node.mid) if labels.contains_mid(mid)
        )
        if not members:
            marks = f", marked {'/'.join(node.restrictions)}" if node.restrictions else ""
            raise LabelError(
                f"ontology node {node.name!r} ({node.mid}{marks}) has none of the model's "
                f"{len(labels)} classes in its subtree"
            )
        return members
    if index is not None:
        return [index]
    if node is not None:  # exact selection of a node that is no class
        raise LabelError(
            f"{node.name!r} is an ontology node but not one of the model's classes; "
            f"drop the {EXACT_PREFIX!r} to select the classes under it"
        )
    candidates = list(labels.names)
    if ontology is not None:
        candidates += [n.name for n in ontology if not labels.contains_mid(n.mid)]
    raise _unknown("class", text, candidates)


def resolve_classes(
    specs: Sequence[str] | str,
    labels: LabelSet | None = None,
    ontology: Ontology | None = None,
) -> list[int]:
    """Output indices selected by ``specs``, sorted and unique (rules in the module docstring).

    ``labels`` defaults to :func:`audioset_labels`; ``ontology`` defaults to
    :func:`audioset_ontology` for label sets with MIDs and is ignored for label
    sets without (custom heads are matched by name only).
    Raises :class:`LabelError` for an unknown spec (with close matches), a spec
    selecting none of the classes, or no specs at all.
    """
    labels = audioset_labels() if labels is None else labels
    if labels.has_mids:
        ontology = audioset_ontology() if ontology is None else ontology
    else:
        ontology = None
    parts = split_specs(specs)
    if not parts:
        raise LabelError("no classes given")
    selected: set[int] = set()
    for part in parts:
        selected.update(_resolve_one(part, labels, ontology))
    return sorted(selected)


def describe_spec(spec: str, labels: LabelSet | None = None, ontology: Ontology | None = None) -> str:
    """Canonical display name of one spec: the class or ontology node it names (``"animal"`` -> ``"Animal"``)."""
    labels = audioset_labels() if labels is None else labels
    if labels.has_mids:
        ontology = audioset_ontology() if ontology is None else ontology
    else:
        ontology = None
    text = spec.strip()
    if text.startswith(EXACT_PREFIX):
        text = text[len(EXACT_PREFIX):].strip()
    index = labels.find(text)
    if index is not None:
        return labels[index].name
    if ontology is not None and (node := ontology.find(text)) is not None:
        return node.name
    return text
