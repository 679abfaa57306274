"""Search hits as ``auricle search`` writes them: a table for people, JSON, JSON lines or CSV for programs.

In io/ with the other writers, not in search/: the command names its formats at import, and
importing the search package (SQLite, the query code) would slow every `--help`.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from auricle.search.query import SearchHit

SEARCH_FORMATS = ("table", "json", "jsonl", "csv")

#: The CSV's columns; ``matched`` and ``segments`` are ``;``-separated ``label=score`` and ``start-end=score``;
#: ``captions`` is a JSON list of the captions that matched (empty when none did).
HITS_CSV_HEADER = ("rank", "file", "score", "duration", "matched", "segments", "captions")


def write_hits(hits: Sequence[SearchHit], output_format: str, stream: IO[str]) -> None:
    """Write ``hits`` to ``stream`` in one of :data:`SEARCH_FORMATS`."""
    if output_format == "json":
        json.dump([hit.to_dict() for hit in hits], stream, indent=2)
        stream.write("\n")
    elif output_format == "jsonl":
        for hit in hits:
            stream.write(json.dumps(hit.to_dict()) + "\n")
    elif output_format == "csv":
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(HITS_CSV_HEADER)
        for hit in hits:
            writer.writerow([hit.rank, hit.file, f"{hit.score:.6f}", f"{hit.duration:.3f}",
                             ";".join(f"{m.label}={m.score:.4f}" for m in hit.matched),
                             ";".join(f"{s.start:.2f}-{s.end:.2f}={s.score:.4f}" for s in hit.segments),
                             json.dumps([c.to_dict() for c in hit.captions]) if hit.captions else ""])
    else:
        for hit in hits:
            stream.write(f"{hit.rank:3d}  {hit.score:.3f}  {hit.file}  ({hit.duration:.1f} s)\n")
            if hit.matched:
                stream.write("       why: " + ", ".join(f"{m.label} {m.score:.2f}" for m in hit.matched) + "\n")
            for segment in hit.segments:
                stream.write(f"       {segment.start:7.2f}-{segment.end:7.2f} s  {segment.score:.3f}  "
                             f"{', '.join(segment.labels)}\n")
            for said in hit.captions:
                stream.write(f"       {said.start:7.2f}-{said.end:7.2f} s  {said.score:.3f}  said: {said.text}\n")


__all__ = ["SEARCH_FORMATS", "HITS_CSV_HEADER", "write_hits"]
