"""Typed results of describing audio with MiDashengLM, with their JSON form (``to_dict``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from auricle.inference.results import SCHEMA_VERSION


@dataclass(frozen=True)
class Segment:
    """One stretch of a recording and what the model said about it.

    ``skipped``: why no text was generated (``"silent"``: every sample was zero), else None.
    ``labels``: what a tagger heard in this stretch, when a tagger chose it (``segments="events"``).
    ``generated``: how many tokens were generated when their ids are unknown (a remote server's
    ``usage.completion_tokens``; ``tokens`` is then empty). ``prompt_tokens``: the prompt's length.
    """

    start: float
    end: float
    text: str
    tokens: tuple[int, ...] = ()
    skipped: str | None = None
    labels: tuple[str, ...] = ()
    generated: int | None = None
    prompt_tokens: int = 0

    @property
    def token_count(self) -> int:
        """Tokens generated for this segment."""
        return self.generated if self.generated is not None else len(self.tokens)

    def to_dict(self) -> dict:
        values = {"start": round(self.start, 3), "end": round(self.end, 3), "text": self.text,
                  "tokens": list(self.tokens)}
        if self.labels:
            values["labels"] = list(self.labels)
        if self.skipped is not None:
            values["skipped"] = self.skipped
        return values


@dataclass(frozen=True)
class Summary:
    """One paragraph over a recording's segment texts (``--summary``), from one more decoder pass."""

    text: str
    tokens: tuple[int, ...] = ()
    generated: int | None = None
    prompt_tokens: int = 0

    @property
    def token_count(self) -> int:
        return self.generated if self.generated is not None else len(self.tokens)

    def to_dict(self) -> dict:
        return {"text": self.text, "tokens": list(self.tokens)}


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
    #: How the segments were chosen: ``"fixed"`` (consecutive pieces), ``"events"`` (a tagger's events,
    #: :meth:`~auricle.language_model.LanguageModelBase.diary`) or ``"given"`` (the caller's ``segments``).
    segmentation: str = "fixed"
    summary: Summary | None = None

    @property
    def text(self) -> str:
        """The segments' texts, one line each (a single segment's text as it is)."""
        return "\n".join(segment.text for segment in self.segments if segment.skipped is None)

    @property
    def tokens(self) -> int:
        """How many tokens were generated, all segments together (the summary not counted)."""
        return sum(segment.token_count for segment in self.segments)

    @property
    def prompt_tokens(self) -> int:
        """How many prompt tokens were read, all segments together (the summary not counted)."""
        return sum(segment.prompt_tokens for segment in self.segments)

    def to_dict(self) -> dict:
        values = {
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
        if self.segmentation != "fixed":
            values["segmentation"] = self.segmentation
        if self.summary is not None:  # in the file's own record: --resume keeps one record per file
            values["summary"] = self.summary.to_dict()
        return values
