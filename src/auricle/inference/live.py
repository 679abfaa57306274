"""Rolling-window tagging of a live signal: windows every hop, tags, and events as they start and end.

Shared by ``auricle listen`` and the service's ``/v1/stream``; the caller
scores the windows (directly on the model, or through the service's batcher),
so this module holds only the causal bookkeeping.

Timing, for a window of W seconds reported every hop H (report times H, 2H, ...;
the window ending at t covers ``[max(0, t - W), t]``). A CED model tags what is
*present anywhere in its window*, so:

- an event **starts** at the first report t whose window scores at or above the
  class threshold; the sound began after the previous report, so its onset is
  given as ``t - H`` (an error of at most one hop);
- it **ends** at the first report t whose window no longer does; the sound left
  the window, so it ended in ``(t - H - W, t - W]`` and its offset is given as
  ``t - W``, but never before the report that started the event (``t_start``):
  that report's window saw the sound after the onset, so every event lasts at
  least from its onset to ``t_start`` (one hop; more for an event seen in the
  first report, whose onset is 0). A real model's score can drop while a short
  sound is still in a long window, and ``t - W`` alone would then give an event
  of no length, or one ending before it was seen. The end is known W seconds
  after the sound stops: use a short window for prompt ends;
- at the end of the stream a last report covers the tail, and events still
  active end at the end of the stream.

No window shorter than :data:`MIN_WINDOW_SAMPLES` (0.15 s, or the whole window
if that is shorter) is scored: the model zero-pads a shorter clip, and its
scores for a few samples are noise, not tags. So reports start once 0.15 s of
audio has arrived (a hop report before that is skipped), and a stream shorter
than that has no report at all (:meth:`RollingWindow.nothing_reported` says why).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from auricle.audio import SAMPLE_RATE
from auricle.errors import NOT_FINITE, AudioError
from auricle.inference.results import PATCH_SAMPLES, Event, Tag, _round
from auricle.inference.tagging import DEFAULT_EVENT_THRESHOLD, ClassSpace, TagOptions, select_tags
from auricle.inference.windows import WindowConfig

#: The shortest window scored: one 16-frame patch of log-mel, CED's shortest clip (``MIN_SAMPLES`` of
#: :mod:`auricle.models.ced`, not imported so that live tagging of an exported model needs no torch);
#: ``tag`` and ``embed`` score a shorter recording zero-padded and flag it ``too_short`` by the same length.
MIN_WINDOW_SAMPLES = PATCH_SAMPLES


@dataclass(frozen=True)
class LiveWindow:
    """One window to score: sample positions in the stream and its samples."""

    start: int
    end: int
    samples: np.ndarray

    def not_finite(self) -> AudioError:
        """The error of a window whose scores overflow made NaN, naming the window's times."""
        return AudioError(f"window {self.start / SAMPLE_RATE:.2f}-{self.end / SAMPLE_RATE:.2f} s: {NOT_FINITE}")


class RollingWindow:
    """Cuts a stream pushed in blocks of any size into the windows to report.

    A report falls every ``hop`` samples of stream; each covers the last
    ``window`` samples (fewer at the start), and none is shorter than
    ``minimum`` samples (:data:`MIN_WINDOW_SAMPLES`, capped at the window).
    Holds at most one window plus one block in memory.
    """

    def __init__(self, config: WindowConfig, min_samples: int = MIN_WINDOW_SAMPLES) -> None:
        self.window = config.window_samples
        self.hop = config.hop_samples
        self.minimum = min(min_samples, self.window)
        self._buffer = np.zeros(0, dtype=np.float32)
        self._buffer_start = 0
        self.total = 0
        self._next_report = self.hop
        self._last_report = 0

    def push(self, samples: np.ndarray) -> Iterator[LiveWindow]:
        """Add samples (float32 mono, 16 kHz); yield every window now complete."""
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        self._buffer = np.concatenate([self._buffer, samples])
        self.total += len(samples)
        while self._next_report <= self.total:
            if self._next_report >= self.minimum:
                yield self._cut(self._next_report)
            self._next_report += self.hop
        # Keep what any later window needs: the next report's, or the tail's if the stream ends now.
        keep_from = max(0, self.total - self.window)
        drop = keep_from - self._buffer_start
        if drop > 0:
            self._buffer = self._buffer[drop:]
            self._buffer_start = keep_from

    @property
    def buffered(self) -> int:
        """Samples held now (at most a window's, between pushes)."""
        return len(self._buffer)

    def finish(self) -> Iterator[LiveWindow]:
        """The last window, covering the tail after the last full hop (if any)."""
        if self.total > self._last_report and self.total >= self.minimum:
            yield self._cut(self.total)

    def nothing_reported(self) -> str | None:
        """Why no window was reported (no audio, or too little to score), or None if one was."""
        if self._last_report > 0:
            return None
        if self.total == 0:
            return "no audio received"
        samples = f"{self.total} sample{'s' if self.total != 1 else ''}"
        return (f"only {samples} ({self.total / SAMPLE_RATE:.4f} s) of audio received, "
                f"less than the {self.minimum / SAMPLE_RATE:g} s a report needs")

    def _cut(self, end: int) -> LiveWindow:
        start = max(0, end - self.window)
        self._last_report = end
        offset = start - self._buffer_start
        return LiveWindow(start, end, self._buffer[offset : offset + end - start].copy())


@dataclass(frozen=True)
class EventStart:
    """An event that has just started: its estimated onset and the score that started it."""

    label: str
    mid: str
    index: int
    onset: float
    score: float

    def to_dict(self) -> dict:
        return {
            "label": self.label,
            "mid": self.mid,
            "index": self.index,
            "onset": _round(self.onset, 3),
            "score": _round(self.score),
        }


@dataclass(frozen=True)
class LiveReport:
    """What one report says: the window (seconds), its tags, and events that started or ended."""

    start: float
    end: float
    tags: tuple[Tag, ...]
    started: tuple[EventStart, ...] = ()
    ended: tuple[Event, ...] = ()

    def to_dict(self) -> dict:
        return {
            "start": _round(self.start, 3),
            "end": _round(self.end, 3),
            "tags": [tag.to_dict() for tag in self.tags],
            "started": [event.to_dict() for event in self.started],
            "ended": [event.to_dict() for event in self.ended],
        }


@dataclass
class _Active:
    onset: float
    seen: float  # the report time that started the event: the earliest offset
    scores: list[float] = field(default_factory=list)


class LiveTagger:
    """Turns scored windows into reports: tags per window, events as they start and end."""

    def __init__(self, space: ClassSpace, options: TagOptions) -> None:
        self.space = space
        self.options = options
        self.window_seconds = options.window.window_samples / SAMPLE_RATE
        self.thresholds = options.column_thresholds(space, DEFAULT_EVENT_THRESHOLD)
        self._active: dict[int, _Active] = {}
        self._previous_end = 0.0

    def report(self, window: LiveWindow, probabilities: np.ndarray) -> LiveReport:
        """The report of one window given its model probabilities (classes,); an AudioError if they are not finite."""
        if not np.isfinite(probabilities).all():  # NaN scores would pass for a report (and NaN is not JSON)
            raise window.not_finite()
        scores = self.space.project(np.asarray(probabilities, dtype=float))
        start, end = window.start / SAMPLE_RATE, window.end / SAMPLE_RATE
        started: list[EventStart] = []
        ended: list[Event] = []
        for column, score in enumerate(scores):
            active = self._active.get(column)
            if score >= self.thresholds[column]:
                if active is None:
                    active = self._active[column] = _Active(onset=self._previous_end, seen=end)
                    started.append(
                        EventStart(self.space.labels[column], self.space.mids[column], self.space.indices[column],
                                   active.onset, float(score))
                    )
                active.scores.append(float(score))
            elif active is not None:
                ended.append(self._end(column, max(end - self.window_seconds, active.seen)))
        self._previous_end = end
        return LiveReport(start, end, select_tags(scores, self.space, self.options), tuple(started), tuple(ended))

    def close(self, end_seconds: float) -> tuple[Event, ...]:
        """End every event still active when the stream stops at ``end_seconds``."""
        return tuple(self._end(column, end_seconds) for column in sorted(self._active))

    def _end(self, column: int, offset: float) -> Event:
        active = self._active.pop(column)
        return Event(
            label=self.space.labels[column],
            mid=self.space.mids[column],
            index=self.space.indices[column],
            onset=active.onset,
            offset=offset,
            max_score=max(active.scores),
            mean_score=float(np.mean(active.scores)),
        )
