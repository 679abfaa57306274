"""Profiles: the events a product cares about, as a small TOML file.

A profile groups AudioSet classes into named events, each with its own
threshold. An event's score is the **max** over the probabilities of its
classes (a smoke alarm is heard if either ``Smoke detector, smoke alarm`` or
``Fire alarm`` is). Schema (every key other than ``event`` is optional)::

    name = "home"                       # defaults to the file name without .toml
    description = "Household safety and care events"
    default_threshold = 0.3             # for events without their own; defaults to 0.5

    [[event]]
    label = "Smoke alarm"               # shown in output; optional when `classes` has one entry
    classes = ["Smoke detector, smoke alarm", "Fire alarm"]
    threshold = 0.25                    # optional, in [0, 1]

``classes`` entries follow :func:`auricle.labels.resolve_classes`: class names
(case-insensitive), MIDs, ontology subtrees (``Dog`` selects Dog and everything
under it; ``=Dog`` the class alone), several per string separated by ``;``.
A single string is accepted in place of a one-entry list. Unknown keys,
unknown classes, thresholds outside [0, 1] and duplicate labels are errors
(:class:`LabelError`, one line naming the file).
"""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import numpy as np

from auricle.errors import LabelError
from auricle.labels import close_matches, audioset_labels, describe_spec, resolve_classes, split_specs

__all__ = [
    "ProfileEvent",
    "Profile",
    "load_profile",
    "parse_profile",
    "available_profiles",
    "DEFAULT_THRESHOLD",
]

#: Threshold of events when neither the event nor the profile gives one.
DEFAULT_THRESHOLD = 0.5

_TOP_KEYS = ("name", "description", "default_threshold", "event")
_EVENT_KEYS = ("label", "classes", "threshold")
_BUNDLED_PREFIX = "bundled:"


@dataclass(frozen=True)
class ProfileEvent:
    """One event: its display label, the AudioSet output indices it groups (sorted) and its threshold."""

    label: str
    class_indices: tuple[int, ...]
    threshold: float


@dataclass(frozen=True)
class Profile:
    """A named set of events. ``source`` is the TOML path, or ``bundled:<name>`` for bundled profiles."""

    name: str
    description: str
    events: tuple[ProfileEvent, ...]
    source: str

    @property
    def event_labels(self) -> tuple[str, ...]:
        return tuple(e.label for e in self.events)

    @property
    def event_thresholds(self) -> tuple[float, ...]:
        return tuple(e.threshold for e in self.events)

    def class_indices(self) -> tuple[int, ...]:
        """Sorted union of the output indices of all events."""
        return tuple(sorted({i for e in self.events for i in e.class_indices}))

    def thresholds_per_class(self) -> dict[int, float]:
        """Threshold of each class; a class in several events gets the smallest of their thresholds."""
        thresholds: dict[int, float] = {}
        for event in self.events:
            for index in event.class_indices:
                thresholds[index] = min(event.threshold, thresholds.get(index, math.inf))
        return dict(sorted(thresholds.items()))

    def event_scores(self, probabilities: Any) -> np.ndarray:
        """Map ``(..., 527)`` class probabilities to ``(..., n_events)`` event scores (max over each event's classes)."""
        array = np.asarray(probabilities)
        expected = len(audioset_labels())
        if array.ndim == 0 or array.shape[-1] != expected:
            raise ValueError(
                f"profile {self.name!r} scores AudioSet's {expected} classes; got an array of shape {array.shape}"
            )
        return np.stack([array[..., list(e.class_indices)].max(axis=-1) for e in self.events], axis=-1)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _did_you_mean(key: str, allowed: tuple[str, ...]) -> str:
    close = close_matches(key, allowed, limit=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (allowed: {', '.join(allowed)})"


def _threshold(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise LabelError(f"{where}: threshold must be a number in [0, 1], got {value!r}")
    value = float(value)
    if not 0.0 <= value <= 1.0:  # also rejects nan
        raise LabelError(f"{where}: threshold {value:g} is outside [0, 1]")
    return value


def _build_event(position: int, table: Any, default_threshold: float, where: str) -> ProfileEvent:
    here = f"event {position}"
    if not isinstance(table, dict):
        raise LabelError(f"{where}: {here} must be a table ([[event]]), got {type(table).__name__}")
    label = table.get("label")
    if label is not None:
        if not isinstance(label, str) or not label.strip():
            raise LabelError(f"{where}: {here}: label must be a non-empty string, got {label!r}")
        label = label.strip()
        here = f"event {position} ({label!r})"
    for key in table:
        if key not in _EVENT_KEYS:
            raise LabelError(f"{where}: {here}: unknown key {key!r}{_did_you_mean(key, _EVENT_KEYS)}")
    if "classes" not in table:
        raise LabelError(f"{where}: {here}: missing 'classes' (class names, MIDs or ontology nodes)")
    classes = table["classes"]
    if isinstance(classes, str):
        classes = [classes]
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise LabelError(f"{where}: {here}: classes must be a list of strings, got {classes!r}")
    specs = split_specs(classes)
    if not specs:
        raise LabelError(f"{where}: {here}: classes is empty")
    try:
        indices = resolve_classes(specs)
    except LabelError as error:
        raise LabelError(f"{where}: {here}: {_one_line(error)}") from None
    if label is None:
        if len(specs) != 1:
            raise LabelError(f"{where}: {here}: 'label' is required when an event lists several classes")
        label = describe_spec(specs[0])
    threshold = _threshold(table["threshold"], f"{where}: {here}") if "threshold" in table else default_threshold
    return ProfileEvent(label=label, class_indices=tuple(indices), threshold=threshold)


def _build_profile(data: dict[str, Any], where: str, source: str, default_name: str) -> Profile:
    for key in data:
        if key not in _TOP_KEYS:
            hint = " (events are [[event]] tables)" if key == "events" else _did_you_mean(key, _TOP_KEYS)
            raise LabelError(f"{where}: unknown key {key!r}{hint}")
    name = data.get("name", default_name)
    if not isinstance(name, str) or not name.strip():
        raise LabelError(f"{where}: name must be a non-empty string, got {name!r}")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise LabelError(f"{where}: description must be a string, got {description!r}")
    default_threshold = (
        _threshold(data["default_threshold"], f"{where}: default_threshold")
        if "default_threshold" in data
        else DEFAULT_THRESHOLD
    )
    tables = data.get("event")
    if tables is None:
        raise LabelError(f"{where}: no events (add [[event]] tables with 'classes')")
    if not isinstance(tables, list) or not tables:
        raise LabelError(f"{where}: 'event' must be a non-empty list of [[event]] tables")
    events: list[ProfileEvent] = []
    seen: dict[str, int] = {}
    for position, table in enumerate(tables, start=1):
        event = _build_event(position, table, default_threshold, where)
        key = event.label.casefold()
        if key in seen:
            raise LabelError(
                f"{where}: duplicate event label {event.label!r} (events {seen[key]} and {position})"
            )
        seen[key] = position
        events.append(event)
    return Profile(name=name.strip(), description=description.strip(), events=tuple(events), source=source)


def parse_profile(text: str, source: str = "<profile>") -> Profile:
    """Build a profile from TOML text; ``source`` names it in errors and in :attr:`Profile.source`."""
    name = Path(source).stem if not source.startswith(("<", _BUNDLED_PREFIX)) else source.strip("<>")
    return _parse(text, where=source, source=source, default_name=name)


def _parse(text: str, where: str, source: str, default_name: str) -> Profile:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise LabelError(f"{where}: invalid TOML: {_one_line(error)}") from None
    return _build_profile(data, where, source, default_name)


def _bundled_dir() -> Traversable:
    return files("auricle") / "data" / "profiles"


#: The end of the unknown-profile error that offers a file; the service, which reads no paths, drops it.
PATH_HINT = "; or give the path of a .toml file"


def available_profiles() -> list[str]:
    """Names of the bundled profiles, sorted."""
    return sorted(
        entry.name[: -len(".toml")]
        for entry in _bundled_dir().iterdir()
        if entry.name.endswith(".toml") and entry.is_file()
    )


@lru_cache(maxsize=None)
def _load_bundled(name: str) -> Profile:
    resource = _bundled_dir() / f"{name}.toml"
    return _parse(
        resource.read_text(encoding="utf-8"),
        where=f"{name}.toml (bundled)",
        source=f"{_BUNDLED_PREFIX}{name}",
        default_name=name,
    )


def _is_path(text: str) -> bool:
    return text.lower().endswith(".toml") or os.sep in text or (os.altsep is not None and os.altsep in text)


def load_profile(name_or_path: str | os.PathLike[str]) -> Profile:
    """Load a bundled profile by name (``home``, case-insensitive) or a ``.toml`` file.

    A value ending in ``.toml`` or containing a path separator is a file path;
    anything else is a bundled name.
    """
    if isinstance(name_or_path, os.PathLike) or _is_path(str(name_or_path)):
        where = str(name_or_path)
        return _parse(profile_text(name_or_path), where=where, source=where, default_name=Path(name_or_path).stem)
    return _load_bundled(_bundled_name(str(name_or_path)))


def profile_text(name_or_path: str | os.PathLike[str]) -> str:
    """The TOML text of a profile as :func:`load_profile` finds it: a copy of a bundled one to edit."""
    if not (isinstance(name_or_path, os.PathLike) or _is_path(str(name_or_path))):
        return (_bundled_dir() / f"{_bundled_name(str(name_or_path))}.toml").read_text(encoding="utf-8")
    where = str(name_or_path)
    try:
        return Path(name_or_path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LabelError(f"{where}: profile file not found") from None
    except IsADirectoryError:
        raise LabelError(f"{where}: is a folder, not a profile file") from None
    except (OSError, UnicodeDecodeError) as error:
        cause = error.strerror if isinstance(error, OSError) and error.strerror else error
        raise LabelError(f"{where}: cannot read profile ({_one_line(cause)})") from None


def _bundled_name(name: str) -> str:
    name = name.strip()
    bundled = available_profiles()
    match = next((b for b in bundled if b.casefold() == name.casefold()), None)
    if match is None:
        close = close_matches(name, bundled, limit=2)
        hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
        raise LabelError(f"unknown profile {name!r} ({hint}bundled: {', '.join(bundled) or 'none'}{PATH_HINT})")
    return match
