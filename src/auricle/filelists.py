"""Which files a run works on: a list file (``--files-from``) and a shard of them (``--shard K/N``).

Scale-out runs on the engines users already have: a Slurm array, a Kubernetes indexed
job or Ray starts N workers, each with the same inputs and its own K; each takes its
shard, resumable as any run, and ``auricle index-merge`` joins the parts
(docs/search.md). A file's shard is a hash of its path as listed, so it depends neither
on the listing's order nor on the other files: adding files never moves the others
between shards, and a rerun of shard K finds its earlier work.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from auricle.errors import OptionError


@dataclass(frozen=True)
class Shard:
    """Shard ``k`` of ``n`` (1-based, as Slurm's array indices and ``--shard 1/4``)."""

    k: int
    n: int

    @classmethod
    def parse(cls, text: str) -> "Shard":
        """``"K/N"``, 1 <= K <= N; anything else is one :class:`OptionError` line."""
        k, slash, n = text.strip().partition("/")
        try:
            shard = cls(int(k), int(n)) if slash else None
        except ValueError:
            shard = None
        if shard is None or shard.n < 1 or not 1 <= shard.k <= shard.n:
            raise OptionError(f"--shard {text}: give K/N with 1 <= K <= N, such as 1/4")
        return shard

    def holds(self, path: str | os.PathLike) -> bool:
        return shard_of(path, self.n) == self.k

    def __str__(self) -> str:
        return f"{self.k}/{self.n}"


def shard_of(path: str | os.PathLike, n: int) -> int:
    """The 1-based shard of ``n`` that ``path`` falls in: sha1 of its normalized spelling, modulo ``n``.

    Normalized (``./a//b.wav`` is ``a/b.wav``) but not made absolute: workers whose
    current folders differ still agree on a list of relative paths.
    """
    key = os.path.normpath(os.fsdecode(os.fspath(path))).encode("utf-8", "surrogateescape")
    return int.from_bytes(hashlib.sha1(key).digest()[:8], "big") % n + 1


def select(files: Iterable[str], shard: Shard | None) -> list[str]:
    """``files`` in ``shard`` (all of them without one), in their order."""
    return [file for file in files if shard is None or shard.holds(file)]


def read_file_list(source: str) -> list[str]:
    """The paths listed in ``source`` (``-``: standard input), one a line.

    Blank lines and lines starting with ``#`` are skipped; surrounding spaces are kept
    only inside a name (a name's own leading ``#`` needs ``./#name``). Relative paths are
    relative to the current folder, as the command line's are (``find data -name '*.wav'``
    run where the workers run). Raises one :class:`OptionError` line for an unreadable list.
    """
    try:
        if source == "-":
            text = sys.stdin.read()
        else:
            with open(source, encoding="utf-8", errors="surrogateescape") as handle:
                text = handle.read()
    except OSError as error:
        raise OptionError(f"--files-from {source}: cannot read it ({error.strerror or error})") from None
    paths = []
    for line in text.splitlines():
        path = line.strip()
        if path and not path.startswith("#"):
            paths.append(path)
    return paths


def gather(paths: Sequence[str | os.PathLike], *, files_from: str | None = None, shard: Shard | None = None,
           recursive: bool = True) -> tuple[list[str], int]:
    """The files of ``paths`` (files, folders, globs) and of the ``files_from`` list, then ``shard``'s of them.

    Returns (the shard's files, how many files there were before sharding). A listed
    path is expanded as a PATHS argument is (a folder gives its audio files).
    """
    from auricle.audio import list_audio_files

    entries = [os.fspath(path) for path in paths]
    if files_from is not None:
        entries += read_file_list(files_from)
    files = list_audio_files(entries, recursive=recursive) if entries else []
    return select(files, shard), len(files)
