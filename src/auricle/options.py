"""The tagging options every front end offers, declared once.

``auricle tag`` and ``auricle listen`` build their flags from these
declarations (:func:`auricle.cli.common.tag_option_flags`), the service builds
the query parameters of ``POST /v1/tag`` and the defaults of ``/v1/stream``
settings from them, so a name, default, bound or choice cannot differ between
them. Each name is a keyword of :meth:`auricle.model.AudioModel.tag_options`
or a field of :class:`auricle.inference.events.EventOptions`, with the same
default (tests/test_options.py checks all of this).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, replace

from auricle.errors import OptionError
from auricle.inference.events import MAX_MEDIAN_FILTER

#: The longest window or hop in seconds (an hour). Beyond some bound the sample counts overflow
#: (``window=1e308`` was an OverflowError and a 500); an hour is more than any model input needs.
MAX_WINDOW_SECONDS = 3600.0
#: The longest event duration or gap in seconds (a day): finite, and longer than any recording tagged at once.
MAX_EVENT_SECONDS = 86400.0


@dataclass(frozen=True)
class OptionSpec:
    """One tagging option: its keyword, value type, default, bounds and help.

    ``name`` is the keyword and the query parameter; the CLI flag is
    ``--name-with-dashes`` plus ``short`` when given. ``kind`` is ``int``,
    ``float``, ``str`` or ``bool`` (a bool is an on/off flag). ``minimum`` and
    ``maximum`` are inclusive bounds; ``choices`` the allowed strings;
    ``multiple`` marks a repeatable option whose default is a tuple.
    """

    name: str
    kind: type
    default: object = None
    help: str = ""
    short: str | None = None
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    multiple: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def check(self, value: object) -> object:
        """A value parsed from JSON as this option takes it, or a ValueError naming the option and the value.

        ``1.5`` for an int, ``true`` for a number or ``["home"]`` for a name would otherwise fail deep inside.
        """
        def refuse(why: str) -> ValueError:
            return ValueError(f"{self.name}: {why}, got {value!r}")

        if self.kind is bool:
            if not isinstance(value, bool):
                raise refuse("expected true or false")
            return value
        if self.kind is str:
            if not isinstance(value, str):
                raise refuse("expected a string")
            if self.choices and value not in self.choices:
                raise refuse(f"expected one of {', '.join(self.choices)}")
            return value
        if isinstance(value, bool) or not isinstance(value, numbers.Real):  # numpy numbers are numbers too
            raise refuse("expected a number")
        if self.kind is int and not (isinstance(value, numbers.Integral) or float(value).is_integer()):
            raise refuse("expected a whole number")
        if not math.isfinite(value):
            raise refuse("expected a finite number")
        if self.minimum is not None and value < self.minimum:
            raise refuse(f"expected at least {self.minimum:g}")
        if self.maximum is not None and value > self.maximum:
            raise refuse(f"expected at most {self.maximum:g}")
        return self.kind(value)


def check_numbers(specs: Mapping[str, OptionSpec], values: Mapping[str, object]) -> None:
    """An OptionError for the first number in ``values`` outside its declared range (``None`` is a default).

    The CLI's flags and the service's parameters have these bounds already; this gives the Python API
    (``model.tag(window=1e308)``) the same refusal from the same declaration.
    """
    for name, value in values.items():
        spec = specs[name]
        if value is not None and spec.kind in (int, float):
            try:
                spec.check(value)
            except ValueError as error:
                raise OptionError(str(error)) from None


def _by_name(*specs: OptionSpec) -> dict[str, OptionSpec]:
    return {spec.name: spec for spec in specs}


#: Options of tagging recordings (``auricle tag``, ``POST /v1/tag``), in the order the help lists them.
TAG_OPTIONS: dict[str, OptionSpec] = _by_name(
    OptionSpec("top_k", int, None, "Report the K best classes (default 5 unless a threshold is given).",
               short="-k", minimum=1),
    OptionSpec("threshold", float, None, "Report classes scoring at least this (and use it for events; default 0.5; not with a profile, "
               "which sets its own).",
               short="-t", minimum=0, maximum=1),
    OptionSpec("classes", str, (), "Restrict output to classes by name, MID or ontology subtree "
               "(repeatable; ';' separates).", short="-c", multiple=True),
    OptionSpec("profile", str, None, "Event profile: bundled name (e.g. home) or a TOML file.", short="-p"),
    OptionSpec("events", bool, False, "Detect time-stamped events."),
    OptionSpec("window", float, 10.0, "Window length in seconds.", minimum=0.15, maximum=MAX_WINDOW_SECONDS),
    OptionSpec("hop", float, None, "Hop between windows in seconds [default: the window].", minimum=0.01,
               maximum=MAX_WINDOW_SECONDS),
    OptionSpec("pool", str, "max", "How window scores become clip scores.", choices=("max", "mean")),
    OptionSpec("median_filter", int, 1, "Events: median filter length over window segments (odd).", minimum=1,
               maximum=MAX_MEDIAN_FILTER),
    OptionSpec("min_duration", float, 0.0, "Events: drop events shorter than this (seconds).", minimum=0,
               maximum=MAX_EVENT_SECONDS),
    OptionSpec("min_gap", float, 0.0, "Events: merge events of a class closer than this (seconds).", minimum=0,
               maximum=MAX_EVENT_SECONDS),
)

#: Live tagging reports every hop, so its hop has a default of its own (the report interval).
LIVE_HOP = 1.0

#: Options of live tagging (``auricle listen``, ``/v1/stream`` settings): the tagging options a
#: rolling window uses, with the live hop and help that says what each means there.
LIVE_TAG_OPTIONS: dict[str, OptionSpec] = _by_name(
    TAG_OPTIONS["window"],
    replace(TAG_OPTIONS["hop"], default=LIVE_HOP, help="Seconds between reports (and the onset time resolution)."),
    replace(TAG_OPTIONS["top_k"], help="Tags per window with --windows (default 5)."),
    replace(TAG_OPTIONS["threshold"], help="Score at which an event starts (default 0.5; not with a profile, which sets its own)."),
    replace(TAG_OPTIONS["classes"],
            help="Watch only these classes by name, MID or ontology subtree (repeatable; ';' separates)."),
    TAG_OPTIONS["profile"],
)
