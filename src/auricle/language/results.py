"""Typed results of describing audio with MiDashengLM, with their JSON form (``to_dict``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from auricle.inference.results import SCHEMA_VERSION


@dataclass(frozen=True)
class Segment:
    """One stretch of a recording and what the model said about it.

    ``skipped``: why no text was generated (``"silent"``: every sample was zero), else None.
    """

    start: float
    end: float
    text: str
    tokens: tuple[int, ...] = ()
    skipped: str | None = None

    def to_dict(self) -> dict:
        values = {"start": round(self.start, 3), "end": round(self.end, 3), "text": self.text,
                  "tokens": list(self.tokens)}
        if self.skipped is not None:
            values["skipped"] = self.skipped
        return values


@dataclass(frozen=True)
class Description:
    """A file's (or array's) answer: the text of each segment, with the prompt, model and timing."""

    file: str
    model: str
    prompt: str
    duration: float
    segments: tuple[Segment, ...]
    #: Seconds spent: ``encode`` (audio encoder), ``generate`` (prefill and decoding), ``total``.
    timing: dict[str, float] = field(default_factory=dict)

    @property
    def text(self) -> str:
        """The segments' texts, one line each (a single segment's text as it is)."""
        return "\n".join(segment.text for segment in self.segments if segment.skipped is None)

    @property
    def tokens(self) -> int:
        """How many tokens were generated, all segments together."""
        return sum(len(segment.tokens) for segment in self.segments)

    def to_dict(self) -> dict:
        return {
            "schema_version": SCHEMA_VERSION,
            "file": self.file,
            "model": self.model,
            "prompt": self.prompt,
            "duration": round(self.duration, 3),
            "text": self.text,
            "segments": [segment.to_dict() for segment in self.segments],
            "tokens": self.tokens,
            "timing": {key: round(value, 3) for key, value in self.timing.items()},
        }
