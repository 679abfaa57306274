"""What ``auricle listen`` prints as it tags live audio: events (and each window's tags) as text or JSON lines.

A line is written and flushed as soon as it is known, so a reader of the stream sees each event
when it starts and when it ends. :func:`latency_summary` is the closing line about how fast it kept up.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import IO

from auricle.inference.results import SCHEMA_VERSION, Event

#: The formats :class:`LiveLineWriter` writes.
LIVE_FORMATS = ("text", "jsonl")


class LiveLineWriter:
    """Events (and, with ``windows``, each window's tags) as text lines or JSON lines on ``stream``."""

    def __init__(self, stream: IO[str], output_format: str = "text", windows: bool = False) -> None:
        self.stream = stream
        self.json = output_format == "jsonl"
        self.windows = windows

    def _write(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def _line(self, record: dict) -> None:
        self._write(json.dumps({"schema_version": SCHEMA_VERSION, **record}))

    def report(self, timed) -> None:
        """One :class:`~auricle.listen.TimedReport`'s lines: its window (with ``windows``), then the events it
        ended, then those it started.

        Ends come before starts because an event ended here stopped before any event started here began.
        """
        report = timed.report
        timing = {"compute_ms": round(timed.compute_seconds * 1000, 1),
                  "delay_ms": round(timed.delay_seconds * 1000, 1)}
        if self.windows:
            if self.json:
                self._line({"type": "window", "start": round(report.start, 3), "end": round(report.end, 3),
                            "tags": [tag.to_dict() for tag in report.tags], **timing})
            else:
                tags = ", ".join(f"{tag.label} {tag.score:.2f}" for tag in report.tags) or "-"
                self._write(f"[{report.start:8.2f} - {report.end:8.2f}]  {tags}")
        for event in report.ended:
            self.end(event, report.end, timing)
        for event in report.started:
            if self.json:
                self._line({"type": "start", **event.to_dict(), "reported_at": round(report.end, 3), **timing})
            else:
                self._write(f"{event.onset:9.2f} s  start  {event.label}  (score {event.score:.2f})")

    def end(self, event: Event, reported_at: float, timing: dict | None = None) -> None:
        """The line of an event that ended (at the end of the stream too, reported at ``reported_at`` s)."""
        if self.json:
            self._line({"type": "end", **event.to_dict(), "reported_at": round(reported_at, 3), **(timing or {})})
        else:
            self._write(f"{event.offset:9.2f} s  end    {event.label}  ({event.onset:.2f}-{event.offset:.2f} s, "
                        f"max {event.max_score:.2f}, mean {event.mean_score:.2f})")


def _percentile_ms(values: Sequence[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(values, q)) * 1000 if values else float("nan")


def latency_summary(compute: Sequence[float], delays: Sequence[float], duration: float, hop: float) -> str:
    """The closing line: windows scored, model time per window and report delay (seconds in, milliseconds out)."""
    return (
        f"{len(compute)} windows over {duration:.2f} s; model time per window "
        f"p50 {_percentile_ms(compute, 50):.1f} ms, max {_percentile_ms(compute, 100):.1f} ms; "
        f"report delay after the audio arrived p50 {_percentile_ms(delays, 50):.1f} ms, "
        f"p95 {_percentile_ms(delays, 95):.1f} ms, max {_percentile_ms(delays, 100):.1f} ms "
        f"(sound-to-report latency is at most the hop, {hop:g} s, plus this delay)"
    )


__all__ = ["LIVE_FORMATS", "LiveLineWriter", "latency_summary"]
