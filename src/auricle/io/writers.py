"""Writers of tagging and describing results: table for people, JSON/JSONL/CSV for programs.

Every writer takes results one at a time as they finish (so ``jsonl`` streams)
and is closed at the end. ``jsonl`` and ``csv`` can append to an earlier run's
output; :func:`completed_files` reads which files that run finished, and with
which model. A ``jsonl`` line names its file and model; a CSV has no row for a
file without tags above the threshold (or without events), so a resumable CSV
run also lists each finished file in a ledger beside it (:func:`ledger_path`).
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import IO, Protocol

from auricle.inference.results import SCHEMA_VERSION, ClipTags, Failure
from auricle.io import atomic

FORMATS = ("table", "json", "jsonl", "csv")
RESUMABLE_FORMATS = ("jsonl", "csv")


def format_for(output: str | os.PathLike | None) -> str:
    """The format an output file's suffix names (``.csv``, ``.json``, ``.jsonl``, any case), else ``table``."""
    suffix = Path(output).suffix.lower().lstrip(".") if output not in (None, "-") else ""
    return suffix if suffix in FORMATS and suffix != "table" else "table"
EVENT_CSV_HEADER = ["filename", "onset", "offset", "event_label"]
TAG_CSV_HEADER = ["file", "rank", "index", "mid", "label", "score", "truncated"]
#: The clip-tag header before the ``truncated`` column: a CSV begun with it is resumed in it.
TAG_CSV_HEADER_V1 = TAG_CSV_HEADER[:-1]
DESCRIPTION_CSV_HEADER = ["file", "start", "end", "text"]


class ResultWriter(Protocol):
    def write(self, result: ClipTags | Failure) -> None: ...

    def close(self) -> None: ...


def _format_seconds(value: float) -> str:
    return f"{value:.3f}"


class TableWriter:
    """Human-readable blocks: clip tags, and events when present."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def write(self, result: ClipTags | Failure) -> None:
        if isinstance(result, Failure):
            return  # failures are reported on stderr
        out = self.stream
        windows = f", {len(result.windows)} windows, {result.pool}-pooled" if len(result.windows) > 1 else ""
        out.write(f"{result.file}  ({result.duration:.2f} s, {result.model}{windows})\n")
        if not result.tags:
            out.write("  (no tag above threshold)\n")
        width = max((len(tag.label) for tag in result.tags), default=0)
        for tag in result.tags:
            out.write(f"  {tag.label:<{width}}  {tag.score:.3f}\n")
        if result.events is not None:
            out.write(f"  events ({len(result.events)}):\n")
            width = max((len(event.label) for event in result.events), default=0)
            for event in result.events:
                out.write(
                    f"    {event.onset:8.2f} - {event.offset:8.2f} s  {event.label:<{width}}  "
                    f"max {event.max_score:.3f}  mean {event.mean_score:.3f}\n"
                )
        out.write("\n")
        out.flush()

    def close(self) -> None:
        self.stream.flush()


class JsonWriter:
    """One JSON array of all results, written at the end."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.results: list[dict] = []

    def write(self, result) -> None:
        if not isinstance(result, Failure):
            self.results.append(result.to_dict())

    def close(self) -> None:
        json.dump(self.results, self.stream, indent=2)
        self.stream.write("\n")
        self.stream.flush()


class JsonlWriter:
    """One line per file as soon as it finishes; failures as ``{"file", "error"}`` lines."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def write(self, result: ClipTags | Failure) -> None:
        if isinstance(result, Failure):
            line = {"schema_version": SCHEMA_VERSION, "file": result.file, "error": result.error}
        else:
            line = result.to_dict()
        self.stream.write(json.dumps(line) + "\n")
        self.stream.flush()

    def close(self) -> None:
        self.stream.flush()


class CsvWriter:
    """Clip tags (``file,rank,index,mid,label,score,truncated``) or, with events, DCASE event rows.

    ``ledger``: where each finished file is also recorded, as a JSON line with its model.
    ``truncated_column``: False to append to a CSV an earlier version began without it.
    """

    def __init__(self, stream: IO[str], events: bool, write_header: bool = True,
                 ledger: IO[str] | None = None, truncated_column: bool = True) -> None:
        self.stream = stream
        self.events = events
        self.ledger = ledger
        self.truncated_column = truncated_column
        self.csv = csv.writer(stream, lineterminator="\n")
        if write_header:
            self.csv.writerow(self.header())

    def header(self) -> list[str]:
        return EVENT_CSV_HEADER if self.events else TAG_CSV_HEADER

    def rows(self, result) -> Iterable[list]:
        if self.events:
            for event in result.events or ():
                yield [result.file, _format_seconds(event.onset), _format_seconds(event.offset), event.label]
        else:
            truncated = [str(result.truncated).lower()] if self.truncated_column else []
            for rank, tag in enumerate(result.tags, start=1):
                yield [result.file, rank, tag.index, tag.mid, tag.label, f"{tag.score:.6f}", *truncated]

    def write(self, result) -> None:
        if isinstance(result, Failure):
            return
        self.csv.writerows(self.rows(result))
        self.stream.flush()
        if self.ledger is not None:  # after the rows: a file in the ledger has all its rows in the CSV
            try:
                self.ledger.write(json.dumps({"file": result.file, "model": result.model}) + "\n")
                self.ledger.flush()
            except OSError as error:  # name the ledger, not the CSV, in the one-line error
                raise OSError(error.errno, error.strerror, self.ledger.name) from error

    def close(self) -> None:
        self.stream.flush()
        if self.ledger is not None:
            self.ledger.close()


class DescriptionTableWriter:
    """Human-readable blocks of descriptions: the file, then each segment's time span (and, when a tagger
    chose it, what the tagger heard) and text, then the summary if one was asked for."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def write(self, result) -> None:
        if isinstance(result, Failure):
            return  # failures are reported on stderr
        self.stream.write(f"{result.file}  ({result.duration:.2f} s, {result.model})\n")
        spans = len(result.segments) > 1 or result.segmentation != "fixed"
        for segment in result.segments:
            text = segment.text if segment.skipped is None else f"({segment.skipped})"
            span = f"{segment.start:8.2f} - {segment.end:8.2f} s  " if spans else ""
            heard = f"[{', '.join(segment.labels)}]  " if segment.labels else ""
            self.stream.write(f"  {span}{heard}{text}\n")
        if not result.segments:
            self.stream.write("  (nothing detected)\n")
        if result.summary is not None:
            self.stream.write(f"  summary: {result.summary.text}\n")
        self.stream.write("\n")
        self.stream.flush()

    def close(self) -> None:
        self.stream.flush()


class DescriptionCsvWriter(CsvWriter):
    """One row per segment: ``file,start,end,text`` (a silent segment's text is empty); a summary
    (``--summary``) is one more row with empty ``start`` and ``end``."""

    def __init__(self, stream: IO[str], write_header: bool = True, ledger: IO[str] | None = None) -> None:
        super().__init__(stream, events=False, write_header=write_header, ledger=ledger)

    def header(self) -> list[str]:
        return DESCRIPTION_CSV_HEADER

    def rows(self, result) -> Iterable[list]:
        for segment in result.segments:
            yield [result.file, _format_seconds(segment.start), _format_seconds(segment.end), segment.text]
        if result.summary is not None:
            yield [result.file, "", "", result.summary.text]


def make_writer(format: str, stream: IO[str], events: bool, appending: bool = False,
                ledger: IO[str] | None = None, csv_truncated: bool = True,
                descriptions: bool = False) -> ResultWriter:
    """A writer of ``format``; ``descriptions``: of :class:`~auricle.language.results.Description` results;
    ``csv_truncated``: clip-tag CSV rows end in the ``truncated`` column (not in a CSV begun without it)."""
    if format == "table":
        return DescriptionTableWriter(stream) if descriptions else TableWriter(stream)
    if format == "json":
        return JsonWriter(stream)
    if format == "jsonl":
        return JsonlWriter(stream)
    if format == "csv":
        if descriptions:
            return DescriptionCsvWriter(stream, write_header=not appending, ledger=ledger)
        return CsvWriter(stream, events, write_header=not appending, ledger=ledger, truncated_column=csv_truncated)
    raise ValueError(f"unknown format {format!r}; choose from {', '.join(FORMATS)}")


def ledger_path(path: str | os.PathLike) -> Path:
    """The list of files a resumable CSV run finished: ``FILE.csv.done``, one JSON line each."""
    return Path(f"{path}.done")


def settings_path(path: str | os.PathLike) -> Path:
    """What computed a resumable output: ``FILE.settings.json`` (model, weights and tagging options)."""
    return Path(f"{path}.settings.json")


def settings_differences(path: str | os.PathLike, settings: dict,
                         shown: Callable[[dict], dict] | None = None) -> list[str]:
    """How ``settings`` differ from those recorded beside ``path`` (``key old -> new``); none if not recorded.

    ``shown`` gives the values to print for a settings dict (a default's effective value for its
    ``null``); the comparison is of the values as recorded.
    """
    try:
        saved = json.loads(settings_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []  # an output from before settings were recorded, or none yet: nothing to compare
    if not isinstance(saved, dict):
        return []
    old, new = (shown(saved), shown(settings)) if shown else (saved, settings)
    return [f"{key} {json.dumps(old.get(key))} -> {json.dumps(new[key])}"
            for key, value in settings.items() if saved.get(key) != value]


def record_settings(path: str | os.PathLike, settings: dict) -> None:
    atomic.write_text(settings_path(path), json.dumps(settings, indent=2) + "\n")


def same_file(stored: str, file: str) -> bool:
    """Whether two spellings of a path (``set/a.wav``, ``./set/a.wav``, absolute) name one file."""
    return stored == file or os.path.realpath(stored) == os.path.realpath(file)


def not_done(files: Sequence[str], done: Iterable[str]) -> list[str]:
    """``files`` less those in ``done``, however either path is spelt (``set/a.wav``, ``./set/a.wav``, absolute)."""
    done_paths = {os.path.realpath(file) for file in done}
    return [file for file in files if os.path.realpath(file) not in done_paths]


def completed_files(path: str | os.PathLike, format: str) -> dict[str, str | None]:
    """Files an earlier run already finished in ``path`` -> the model that tagged them (None: not recorded).

    A run killed mid-write can leave half a line; it is cut off here (and in a
    CSV's ledger) so that appending continues on a clean line.
    """
    if format not in RESUMABLE_FORMATS:
        raise ValueError(f"--resume works with {', '.join(RESUMABLE_FORMATS)} output, not {format}")
    if format == "jsonl":
        return _finished_records(_whole_lines(Path(path)))
    text = _whole_lines(Path(path))
    rows = list(csv.reader(io.StringIO(text)))
    ledger = ledger_path(path)
    if not rows:  # no CSV yet (or an empty one): nothing is done, and a ledger left beside it is stale
        ledger.unlink(missing_ok=True)
        return {}
    if not ledger.exists():  # written without --resume: a file with rows is done (by a model not recorded)
        done: dict[str, str | None] = {row[0]: None for row in rows[1:] if row}
        if done:
            # Without a ledger nothing says whether the last file's rows are all there (a stop or a full
            # disk may have cut them): it is tagged again, its rows dropped.
            last = next(reversed(done))
            del done[last]
            table = io.StringIO()
            csv.writer(table, lineterminator="\n").writerows(row for row in rows if not row or row[0] != last)
            atomic.write_text(path, table.getvalue())
        # From now on the ledger speaks for the CSV, so it starts with what the CSV holds.
        ledger.write_text("".join(json.dumps({"file": file}) + "\n" for file in done), encoding="utf-8")
        return done
    done = _finished_records(_whole_lines(ledger))
    # Rows of a file missing from the ledger were cut short by a stop: drop them, it is tagged again.
    kept = rows[:1] + [row for row in rows[1:] if row and row[0] in done]
    if len(kept) < len(rows):
        table = io.StringIO()
        csv.writer(table, lineterminator="\n").writerows(kept)
        atomic.write_text(path, table.getvalue())
    return done


def _finished_records(text: str) -> dict[str, str | None]:
    """JSON lines -> {file: model} of those that finished (a failure's line has an error and is tried again)."""
    done: dict[str, str | None] = {}
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "file" in record and "error" not in record:
            done[record["file"]] = record.get("model")
    return done


def _whole_lines(path: Path) -> str:
    """The text of ``path`` up to its last newline (cutting off a torn last line in the file too); '' if absent."""
    if not path.exists():
        return ""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        with open(path, "r+b") as handle:
            handle.truncate(keep)
        data = data[:keep]
    return data.decode("utf-8")


def open_output(path: str | None, append: bool, whole: bool = False) -> IO[str]:
    """Standard output, or the file ``path``.

    ``whole``: the output is only complete at the end (a JSON array, a table), so it is written
    under a temporary name and replaces ``path`` when closed: a run that is killed leaves an
    earlier ``path`` as it was. Line formats write in place, as they go, for ``--resume``.
    """
    if path is None or path == "-":
        return sys.stdout
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if whole and not append:
        return atomic.TextFile(path)  # type: ignore[return-value]
    return open(path, "a" if append else "w", encoding="utf-8", newline="")


def open_writer(output: str | None, format: str, resume: bool, events: bool = False,
                descriptions: bool = False, csv_truncated: bool = True) -> tuple[IO[str], ResultWriter]:
    """The output stream and its writer for a batch command (``tag``, ``describe``), with ``--resume``'s ledger."""
    appending = resume and output not in (None, "-") and os.path.isfile(output) and os.path.getsize(output) > 0
    if format == "csv" and output not in (None, "-") and not resume:
        ledger_path(output).unlink(missing_ok=True)  # the CSV is written anew: a ledger beside it would lie
    stream = open_output(output, append=resume, whole=format not in RESUMABLE_FORMATS)
    ledger = open(ledger_path(output), "a", encoding="utf-8") if resume and format == "csv" else None
    return stream, make_writer(format, stream, events=events, appending=appending, ledger=ledger,
                               csv_truncated=csv_truncated, descriptions=descriptions)
