"""Files that appear whole or not at all: written beside their final name, then renamed over it.

A reader (or a resumed run) therefore sees the old file or the new one, never half of one,
whatever stops the writer: a crash, ``kill -9``, a full disk.

Only regular files are replaced. A name that is a symbolic link is followed, so the file it
points to is replaced and the link kept; a device, pipe or socket (``/dev/stdout``,
``/dev/null``, a FIFO) is written in place, since renaming over it would remove it.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

#: Marks a temporary name; resumable jobs remove leftovers of a killed run by it.
TEMPORARY_MARK = ".tmp"


def temporary_sibling(path: str | os.PathLike) -> Path:
    """A name beside ``path`` for writing it, unique to this process: ``NAME.PID.tmp``.

    Unique, so two processes writing one file never share a temporary. The final suffix is
    hidden on purpose: whatever looks for ``*.safetensors`` or ``*.pt`` in a folder must not
    take a half-written leftover of a killed run for the real thing. Writers that choose a
    format by the suffix need to be told it (``savefig(format=...)``, ``np.save`` to a handle).
    """
    path = Path(path)
    return path.with_name(f"{path.name}.{os.getpid()}{TEMPORARY_MARK}")


def _parts(name: str) -> tuple[str, int] | None:
    """(final name, writer's PID) of a temporary named ``name``, or None when it is no temporary of ours."""
    stem, mark, rest = name.rpartition(".")
    if f".{rest}" != TEMPORARY_MARK or not mark:
        return None
    final, dot, pid = stem.rpartition(".")
    return (final, int(pid)) if dot and final and pid.isdigit() else None


def written_name(name: str) -> str | None:
    """The final name a temporary named ``name`` was being written for (``a.json`` for
    ``a.json.123.tmp``), or None when ``name`` is no temporary of ours."""
    parts = _parts(name)
    return None if parts is None else parts[0]


def _alive(pid: int) -> bool:
    """Whether a process ``pid`` runs (another than this one): its temporary may be in use."""
    if pid == os.getpid():
        return False  # ours, from before: nothing of ours is writing it now
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError, OverflowError):
        return True  # someone else's process, or not ours to judge: keep its file
    return True


def remove_leftovers(folder: str | os.PathLike, of: Collection[str] | None = None, live_too: bool = True) -> None:
    """Remove the temporaries a killed writer left in ``folder``: all of them, or with ``of``
    only those that were being written for one of these names.

    With ``live_too`` (for a folder the caller owns alone: a resumed job's output) a live
    writer's temporary goes too; without, one whose writer (by the PID in its name) still
    runs is kept, for outputs two commands may write at once. A PID reused since keeps a
    leftover, never removes a live file.
    """
    for path in Path(folder).glob(f"*{TEMPORARY_MARK}"):
        parts = _parts(path.name)
        if of is not None and (parts is None or parts[0] not in of):
            continue
        if live_too or parts is None or not _alive(parts[1]):
            path.unlink(missing_ok=True)


def in_place(path: str | os.PathLike) -> bool:
    """Whether ``path`` names something other than a regular file (a device, a pipe), to write as it is."""
    return os.path.exists(path) and not os.path.isfile(path)


def _target(path: str | os.PathLike) -> Path:
    """The regular file to replace: a symbolic link's target (the link stays), else ``path``."""
    path = Path(path)
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def commit(temporary: str | os.PathLike, path: str | os.PathLike, durable: bool = False) -> None:
    """Rename a finished ``temporary`` over ``path``.

    ``durable``: flush the data and the rename to disk first, for files a resumed job trusts
    after a power cut as well as after a crash (costs a disk sync each).
    """
    if durable:
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
    os.replace(temporary, path)
    if durable and hasattr(os, "O_DIRECTORY"):
        folder = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


@contextmanager
def replacing(path: str | os.PathLike, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write; when the block ends normally it replaces ``path``.

    If the block raises, the temporary is removed and ``path`` is left as it was. A device or
    pipe is yielded itself, to be written in place.
    """
    if in_place(path):
        yield Path(path)
        return
    path = _target(path)
    temporary = temporary_sibling(path)
    try:
        yield temporary
        commit(temporary, path, durable)
    except BaseException as error:
        with suppress(OSError):
            temporary.unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise _naming(error, temporary, path) from None
        raise


def _naming(error: OSError, temporary: Path, path: Path) -> OSError:
    """``error`` about ``path`` where it names our ``temporary``: the user knows the file, not the temporary."""
    if error.filename is not None and os.fspath(error.filename) == os.fspath(temporary):
        return OSError(error.errno, error.strerror, os.fspath(path))  # the errno's own subclass
    return error


class TextFile:
    """A text file that replaces ``path`` when closed, for output that is whole only at the end.

    Until then the old ``path`` (if any) stays as it was; a write or close that fails removes
    the temporary and leaves ``path`` alone.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        #: None when ``path`` is a device or pipe, written in place.
        self.temporary: Path | None = None if in_place(path) else temporary_sibling(_target(path))
        try:
            self._handle = open(self.temporary or path, "w", encoding="utf-8", newline="")
        except OSError as error:
            raise _naming(error, self.temporary, self.path) if self.temporary else error from None

    @property
    def name(self) -> str:
        return str(self.path)

    @property
    def closed(self) -> bool:
        return self._handle.closed

    def write(self, text: str) -> int:
        return self._guard(self._handle.write, text)

    def flush(self) -> None:
        if not self._handle.closed:  # after a failed write: the failure is what the caller reports
            self._guard(self._handle.flush)

    def close(self) -> None:
        if not self._handle.closed:
            self._guard(self._handle.close)
            if self.temporary is not None:
                commit(self.temporary, _target(self.path))

    def _guard(self, call, *args):
        try:
            return call(*args)
        except OSError:
            with suppress(OSError):
                self._handle.close()
            if self.temporary is not None:
                with suppress(OSError):
                    self.temporary.unlink(missing_ok=True)
            raise


def write_bytes(path: str | os.PathLike, data: bytes, durable: bool = False) -> None:
    with replacing(path, durable) as temporary:
        temporary.write_bytes(data)


def write_text(path: str | os.PathLike, text: str, durable: bool = False) -> None:
    with replacing(path, durable) as temporary:
        temporary.write_text(text, encoding="utf-8")


__all__ = ["TEMPORARY_MARK", "TextFile", "commit", "in_place", "remove_leftovers", "replacing", "temporary_sibling",
           "write_bytes", "write_text", "written_name"]
