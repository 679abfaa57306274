"""A timestamped diary of a long recording: a tagger chooses where something happens.

Describing an hour in consecutive 30 s segments asks the decoder 120 times, mostly about nothing.
Here a CED or Dasheng tagger (``auricle tag --events``) marks the stretches where some class is
above its threshold; close events merge into one stretch, a stretch longer than the longest segment
is cut into equal pieces, and only those pieces are described, each with its start, end and the
labels the tagger heard there. An optional summary pass asks the decoder for one paragraph over the
segment texts with their times (:func:`summary_question`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from auricle.errors import OptionError

#: Event labels that are not "something happening" (AudioSet's own class for silence).
IGNORED_LABELS = ("Silence",)


@dataclass(frozen=True)
class Span:
    """A stretch of a recording to describe, in seconds, with what the tagger heard in it."""

    start: float
    end: float
    labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class EventSegmentation:
    """How a tagger's events become segments to describe.

    ``threshold``: the tagger's event threshold (None: its default, 0.5). ``window``/``hop``: the
    tagger's analysis windows in seconds (a hop shorter than the window places events more finely).
    ``merge_gap``: events closer than this (seconds, any classes) become one stretch. ``ignore``:
    event labels that never make a segment.
    """

    threshold: float | None = None
    window: float = 10.0
    hop: float = 2.0
    merge_gap: float = 2.0
    ignore: tuple[str, ...] = IGNORED_LABELS

    def __post_init__(self) -> None:
        if not 0 <= self.merge_gap < math.inf:
            raise OptionError(f"merge_gap must be a number of seconds >= 0, got {self.merge_gap}")


def merge_events(events: Iterable, duration: float, max_seconds: float, min_seconds: float,
                 merge_gap: float = 2.0, ignore: Sequence[str] = IGNORED_LABELS) -> list[Span]:
    """Spans from events (anything with ``label``, ``onset``, ``offset``): merged when closer than
    ``merge_gap``, cut into equal pieces of at most ``max_seconds``, widened to ``min_seconds``."""
    if not 0 < min_seconds <= max_seconds:
        raise OptionError(f"the segment length must be at least {min_seconds:g} s, got {max_seconds:g}")
    kept = sorted(((max(0.0, float(e.onset)), min(duration, float(e.offset)), e.label) for e in events
                   if e.label not in ignore), key=lambda item: item[:2])
    stretches: list[list] = []
    for onset, offset, label in kept:
        if offset <= onset:
            continue
        if stretches and onset - stretches[-1][1] <= merge_gap:
            stretches[-1][1] = max(stretches[-1][1], offset)
        else:
            stretches.append([onset, offset])
    spans = [piece for start, end in stretches for piece in cut(start, end, max_seconds, min_seconds, duration)]
    return [Span(start, end, _labels_in(kept, start, end)) for start, end in spans]


def cut(start: float, end: float, max_seconds: float, min_seconds: float, duration: float) -> list[tuple[float, float]]:
    """``[start, end]`` in equal pieces of at most ``max_seconds`` (equal: no sliver of a last piece),
    each widened to ``min_seconds`` inside ``[0, duration]``."""
    pieces = max(1, math.ceil((end - start) / max_seconds - 1e-9))
    step = (end - start) / pieces
    return [_widened(start + index * step, start + (index + 1) * step, min_seconds, duration)
            for index in range(pieces)]


def _widened(start: float, end: float, min_seconds: float, duration: float) -> tuple[float, float]:
    """``[start, end]`` grown about its middle to ``min_seconds``, kept inside the recording."""
    if end - start >= min_seconds:
        return start, end
    middle = (start + end) / 2
    start = min(max(0.0, middle - min_seconds / 2), max(0.0, duration - min_seconds))
    return start, min(duration, start + min_seconds)


def _labels_in(events: Sequence[tuple[float, float, str]], start: float, end: float) -> tuple[str, ...]:
    """Labels of the events overlapping ``[start, end]``, each once, in order of onset."""
    labels: list[str] = []
    for onset, offset, label in events:
        if onset < end and offset > start and label not in labels:
            labels.append(label)
    return tuple(labels)


def event_spans(tagger, audio, duration: float, max_seconds: float, min_seconds: float,
                options: EventSegmentation = EventSegmentation()) -> list[Span]:
    """Where ``tagger`` (an auricle tagger: CED, Dasheng with a head, an exported file) hears something
    in ``audio`` (a path, or 16 kHz samples), as spans to describe."""
    from auricle.audio import SAMPLE_RATE
    from auricle.inference.events import EventOptions

    tag = getattr(tagger, "tag", None)
    if tag is None or getattr(tagger, "labels", None) is None:
        raise OptionError(f"{getattr(tagger, 'name', tagger)}: not a tagger (events need a model with classes)")
    settings = {"events": EventOptions(), "threshold": options.threshold, "window": options.window,
                "hop": options.hop, "top_k": 1}
    tags = tag(audio, **settings) if isinstance(audio, (str, os.PathLike)) else tag(audio, SAMPLE_RATE, **settings)
    return merge_events(tags.events or (), duration, max_seconds, min_seconds, options.merge_gap, options.ignore)


def clock(seconds: float) -> str:
    """``H:MM:SS`` (``M:SS`` under an hour), as a diary shows times."""
    whole = int(round(seconds))
    hours, rest = divmod(whole, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def summary_question(segments: Sequence) -> str:
    """The summary pass's question: the segment texts with their times, then what to write."""
    lines = [f"[{clock(segment.start)}-{clock(segment.end)}] {segment.text.strip()}" for segment in segments
             if segment.skipped is None and segment.text.strip()]
    return ("These are descriptions of consecutive stretches of one audio recording, with their times:\n"
            + "\n".join(lines)
            + "\nWrite one paragraph that summarises what happens in the recording, in order, with the times.")
