"""Which files a command works on: files, folders (with their sub-folders) and glob patterns -> a list of files.

Apart from :mod:`auricle.audio` (decoding) because listing needs neither numpy nor a decoder;
``auricle.audio`` re-exports :func:`list_audio_files` and :data:`AUDIO_EXTENSIONS` under their old path.
"""

from __future__ import annotations

import fnmatch
import glob
import os
from collections.abc import Iterable, Sequence

from auricle.errors import AudioError

AUDIO_EXTENSIONS = frozenset(
    {
        ".wav", ".flac", ".ogg", ".oga", ".mp3", ".m4a", ".aac", ".opus", ".webm", ".mp4",
        ".mka", ".mkv", ".aiff", ".aif", ".au", ".caf", ".wma", ".amr", ".3gp", ".mov",
    }
)
"""Extensions picked up when a folder (or a glob ending in a wildcard) is expanded."""

_GLOB_CHARS = frozenset("*?[")


def list_audio_files(paths: Sequence[str | os.PathLike], recursive: bool = False) -> list[str]:
    """Expand files, folders and glob patterns into a list of files to decode.

    - A named file is kept whatever its extension (the decoder then reports the
      real problem); a named path that does not exist is kept too (the decoder
      reports "file not found").
    - A folder contributes the files with a known audio extension
      (:data:`AUDIO_EXTENSIONS`, any case) directly inside it, or in its whole
      tree with ``recursive=True``; hidden files and folders (".name", such as
      macOS "._x.wav" resource forks) are skipped.
    - A glob pattern (``*.wav``, ``clips/**/*.flac``; ``**`` always recurses, as
      ``recursive=True`` does, without entering linked folders)
      contributes its matches; matched folders are expanded as above, and when
      the pattern ends in a wildcard (``clips/*``) only known audio extensions
      are kept. A pattern matching nothing raises ``AudioError("<pattern>: no
      files match")``.

    Each argument's expansion is sorted; arguments keep their order; a file
    reached twice (also through a link) is listed once, where first reached.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    found: list[str] = []
    seen: set[str] = set()

    def add(candidates: Iterable[str]) -> None:
        for candidate in candidates:
            key = os.path.normcase(os.path.realpath(candidate))  # one file through two links is one file
            if key not in seen:
                seen.add(key)
                found.append(candidate)

    for entry in paths:
        path = os.fsdecode(os.fspath(entry))
        if os.path.isdir(path):
            add(_folder_files(path, recursive))
        elif os.path.exists(path) or not _GLOB_CHARS & set(path):
            add([path])
        else:
            add(_glob_files(path, recursive))
    return found


def _is_audio_name(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in AUDIO_EXTENSIONS


def _folder_files(folder: str, recursive: bool) -> list[str]:
    if not recursive:
        with os.scandir(folder) as entries:
            names = [
                entry.name
                for entry in entries
                if not entry.name.startswith(".") and entry.is_file() and _is_audio_name(entry.name)
            ]
        return [os.path.join(folder, name) for name in sorted(names)]
    files = []
    for root, folders, names in os.walk(folder):
        folders[:] = [sub for sub in folders if not sub.startswith(".")]
        files.extend(
            os.path.join(root, name) for name in names if not name.startswith(".") and _is_audio_name(name)
        )
    return sorted(files)


def _match_parts(pattern: Sequence[str], parts: Sequence[str]) -> bool:
    """Whether path components match pattern components (``**``: any number of them), as glob matches."""
    if not pattern:
        return not parts
    head, tail = pattern[0], pattern[1:]
    if head == "**":
        return any(_match_parts(tail, parts[start:]) for start in range(len(parts) + 1))
    return (bool(parts) and fnmatch.fnmatchcase(parts[0], head)
            and (head.startswith(".") or not parts[0].startswith("."))  # as glob: * skips hidden names
            and _match_parts(tail, parts[1:]))


def _recursive_glob(pattern: str) -> list[str]:
    """``glob(pattern, recursive=True)`` without entering linked folders.

    glob's ``**`` follows symbolic links to folders, so a link to a parent folder repeats
    every file under it, level after level, until paths get too long (minutes, for a few
    loops). Here ``**`` walks the tree as ``tag -r`` does: a linked folder can be matched,
    never entered.
    """
    parts = pattern.split(os.sep)
    literal = 0
    while literal < len(parts) - 1 and not _GLOB_CHARS & set(parts[literal]):
        literal += 1
    root = os.sep.join(parts[:literal]) if literal else ""
    if root == "" and pattern.startswith(os.sep):
        root = os.sep
    wanted = [part for part in parts[literal:] if part != ""]
    matches = []
    for folder, folders, names in os.walk(root or os.curdir):
        folders[:] = sorted(name for name in folders if not name.startswith("."))
        relative = os.path.relpath(folder, root or os.curdir)
        inside = [] if relative == os.curdir else relative.split(os.sep)
        for name in folders + names:
            if _match_parts(wanted, [*inside, name]):
                matches.append(os.path.join(root, *inside, name) if root else os.path.join(*inside, name))
    return matches


def _glob_files(pattern: str, recursive: bool) -> list[str]:
    extension = os.path.splitext(os.path.basename(pattern))[1]
    any_extension = bool(extension) and not _GLOB_CHARS & set(extension)
    files = []
    found = _recursive_glob(pattern) if "**" in pattern.split(os.sep) else glob.glob(pattern)
    for match in sorted(found):
        if os.path.isdir(match):
            files.extend(_folder_files(match, recursive))
        elif any_extension or _is_audio_name(match):
            files.append(match)
    if not files:
        raise AudioError(f"{pattern}: no files match")
    return files
