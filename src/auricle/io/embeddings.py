"""The layout ``auricle embed`` writes embeddings in, and its resume.

Three layouts, chosen by the output's suffix (docs/output-format.md has every field):

* a folder: one ``STEM.npz`` per file (``clip``, ``windows``, ``starts``, ``ends``, ``path``, ``model``,
  ``weights``, ``duration``, ``truncated``) and ``index.csv`` (``file,npz,duration,windows,truncated``),
  which lists every file embedded into the folder, by earlier runs too. Resumable: a file whose
  ``.npz`` is there (by its stored ``path``, however spelt) is not embedded again.
* ``FILE.npz``: all files in one archive, written at the end.
* ``FILE.npy``: the clip embeddings only, row i for input i (NaN for a file that failed).

Every file is written atomically (:mod:`auricle.io.atomic`), so an ``.npz`` in the folder is whole.
:func:`write_embeddings` is the whole of ``auricle embed`` after the model is loaded;
:class:`EmbeddingsWriter` is its steps, for a caller that runs the model itself.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from auricle.errors import OutputError, WriteError
from auricle.inference.results import Embeddings, Failure
from auricle.io import atomic
from auricle.io.writers import same_file

#: What np.load raises for an .npz that is absent, empty (EOFError), cut short (BadZipFile) or not ours.
UNREADABLE_NPZ = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)

#: An output with one of these suffixes is one file for all inputs; anything else is a folder.
SINGLE_FILE_SUFFIXES = (".npz", ".npy")

#: Suffixes of files other tools write: as an output they surely mean a file, not a folder to create.
FOREIGN_FILE_SUFFIXES = (".txt", ".csv", ".tsv", ".json", ".jsonl", ".h5", ".hdf5", ".pt", ".pth", ".pkl",
                         ".parquet", ".safetensors")

#: The columns of a folder's ``index.csv``.
INDEX_HEADER = ("file", "npz", "duration", "windows", "truncated")

#: One row of ``index.csv``: file, npz name, duration ("%.3f"), windows, truncated ("true"/"false"/"").
IndexRow = list


def is_single_file(output: str | os.PathLike) -> bool:
    """Whether ``output`` names one file for all inputs (``.npz``, ``.npy``) rather than a folder."""
    return Path(output).suffix.lower() in SINGLE_FILE_SUFFIXES


def output_problem(output: str | os.PathLike) -> str | None:
    """Why ``output`` cannot take embeddings (a ``.csv``, ``.json``, ... that is no folder), or None."""
    suffix = Path(output).suffix.lower()
    if suffix in FOREIGN_FILE_SUFFIXES and not Path(output).is_dir():
        return (f"{output}: embeddings are written to a folder (one .npz per file), a .npz or a .npy file, "
                f"not a {suffix} file")
    return None


def npz_name(file: str, used: set[str], folder: Path) -> str:
    """``STEM.npz``, or ``STEM-HASH.npz`` (a hash of the path) when that name is taken.

    Taken means given to another file of this run (``used``, which this adds to), or already
    holding another file's embeddings in ``folder``: so a run over fewer or other files never
    overwrites them, and a resumed run finds each file under the name it had.
    """
    stem = Path(file).stem or "audio"
    name = f"{stem}.npz"
    if name in used or _holds_another_file(folder / name, file):  # same stem in different folders
        name = f"{stem}-{hashlib.sha1(file.encode()).hexdigest()[:8]}.npz"
    used.add(name)
    return name


def _holds_another_file(path: Path, file: str) -> bool:
    try:
        with np.load(path, allow_pickle=False) as saved:
            return not same_file(str(saved["path"]), file)
    except UNREADABLE_NPZ:  # nothing there, or nothing whole: free to write
        return False


def embedded_files(folder: str | os.PathLike, names: dict[str, str], model: str, weights: str) -> dict[str, IndexRow]:
    """The files whose .npz by ``model`` (with these ``weights``) is already in ``folder`` -> their index row.

    Saves are atomic, so an .npz there is whole. The name alone would not do: a fine-tuning
    run written again to the same folder keeps its name, so the weights are compared too.
    Raises :class:`OutputError` when the folder holds another model's embeddings.
    """
    folder = Path(folder)
    done = {}
    for file, name in names.items():
        try:
            with np.load(folder / name, allow_pickle=False) as saved:
                if not same_file(str(saved["path"]), file):
                    continue
                if (str(saved["model"]), str(saved["weights"])) != (model, weights):
                    # Embedding the rest with this model would leave the folder holding two models' vectors.
                    raise OutputError(
                        f"{folder}: holds embeddings by {saved['model']} (weights {saved['weights']}), not {model} "
                        f"(weights {weights}); resume with the same model or write to another folder")
                truncated = bool(saved["truncated"]) if "truncated" in saved.files else False  # older saves: unknown
                done[file] = [file, name, f"{float(saved['duration']):.3f}", len(saved["starts"]),
                              str(truncated).lower()]
        except UNREADABLE_NPZ:  # missing or not whole (a copy cut short): embedded again
            continue
    return done


def index_rows(folder: str | os.PathLike) -> dict[str, IndexRow]:
    """The rows of an earlier run's ``index.csv`` whose .npz is still there, by file."""
    folder = Path(folder)
    try:
        with open(folder / "index.csv", newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))[1:]
    except OSError:
        return {}
    # Four columns: written before the ``truncated`` one (not known then, so not said).
    return {row[0]: row + [""] * (5 - len(row)) for row in rows if len(row) in (4, 5) and (folder / row[1]).is_file()}


def _atomic_save(path: Path, save: Callable) -> None:
    try:
        with atomic.replacing(path) as temporary, open(temporary, "wb") as handle:
            save(handle)
    except OSError as error:  # a full disk: what was saved before stays, whole
        raise WriteError(f"{path}: cannot write ({error.strerror or error})") from error


class EmbeddingsWriter:
    """Writes :class:`~auricle.inference.results.Embeddings` into one of the three layouts as they come.

    The steps, in order: construct (chooses each file's ``.npz`` name; reads, never writes),
    :meth:`resume` (optional: the files already there), :meth:`open` (makes the folder, removes a
    killed run's temporaries), :meth:`write` per result, :meth:`close` (the single file, or the
    folder's ``index.csv``).
    """

    def __init__(self, output: str | os.PathLike, files: Sequence[str]) -> None:
        self.target = Path(output)
        self.files = list(files)
        self.single_file = is_single_file(self.target)
        used: set[str] = set()
        #: Each input's ``.npz`` name in the folder (empty for a single-file output).
        self.names: dict[str, str] = {} if self.single_file else {
            file: npz_name(file, used, self.target) for file in self.files}
        self.model = ""
        self.weights = ""
        self._todo: list[str] = []
        self._rows: dict[str, IndexRow] = {}
        self._collected: list[Embeddings] = []

    @property
    def stores_weights(self) -> bool:
        """Whether the output records the weights' digest (all but ``.npy``: hashing them costs a read)."""
        return self.target.suffix.lower() != ".npy"

    def resume(self, model: str, weights: str) -> dict[str, IndexRow]:
        """The inputs already embedded into the folder by this model and weights (see :func:`embedded_files`)."""
        if self.single_file:
            raise OutputError("resuming needs an output folder (one .npz per file); a single .npz or .npy is "
                              "written at the end")
        return embedded_files(self.target, self.names, model, weights)

    def open(self, model: str, weights: str, todo: Sequence[str], done: dict[str, IndexRow] | None = None) -> None:
        """Get ready to write ``todo`` by ``model``: make the folder (or the file's folder), clear leftovers."""
        self.model, self.weights, self._todo = model, weights, list(todo)
        if self.single_file:
            self.target.parent.mkdir(parents=True, exist_ok=True)
        else:
            self.target.mkdir(parents=True, exist_ok=True)
        self._remove_stale_temporaries()
        # The index describes the folder: files an earlier run over other inputs embedded stay listed.
        owner = {name: file for file, name in self.names.items()}
        earlier = {file: row for file, row in index_rows(self.target).items()
                   if file not in self.names and owner.get(row[1], file) == file}
        self._rows = {**earlier, **(done or {})}

    def _remove_stale_temporaries(self) -> None:
        """Remove what a killed run was writing for these outputs (``x.npz.PID.tmp``), unless that run still goes.

        A run writing into the same folder at the same time keeps its temporaries (their PID is alive).
        """
        folder, outputs = ((self.target.parent, {self.target.name}) if self.single_file
                           else (self.target, {*self.names.values(), "index.csv"}))
        try:
            atomic.remove_leftovers(folder, of=outputs, live_too=False)
        except OSError:  # not ours to remove (permissions): they stay, as they did
            pass

    def write(self, result: Embeddings) -> None:
        """Save one file's embeddings (in a folder: now, whole; in a single file: at :meth:`close`)."""
        if self.single_file:
            self._collected.append(result)
            return
        name = self.names[result.file]
        # numpy's savez reserves the keyword `file`, so the source path is stored as `path`.
        arrays = dict(clip=result.clip, windows=result.windows, starts=result.starts, ends=result.ends,
                      path=np.array(result.file), model=np.array(result.model), weights=np.array(self.weights),
                      duration=np.array(result.duration), truncated=np.array(result.truncated))
        _atomic_save(self.target / name, lambda handle: np.savez(handle, **arrays))
        self._rows[result.file] = [result.file, name, f"{result.duration:.3f}", len(result.starts),
                                   str(result.truncated).lower()]

    def close(self) -> bool:
        """Write the single file, or the folder's ``index.csv``; whether anything was written.

        A single file is not written when no input was embedded.
        """
        if self.single_file:
            if not self._collected:
                return False
            self._write_single_file(self._collected)
            return True
        if self._rows:
            table = io.StringIO()
            writer = csv.writer(table, lineterminator="\n")
            writer.writerow(INDEX_HEADER)
            order = [*self.files, *sorted(self._rows.keys() - set(self.files))]
            writer.writerows(self._rows[file] for file in order if file in self._rows)
            _atomic_save(self.target / "index.csv", lambda handle: handle.write(table.getvalue().encode()))
        return True

    def _write_single_file(self, collected: list[Embeddings]) -> None:
        clips = np.stack([r.clip for r in collected])
        if self.target.suffix.lower() == ".npy":
            # Row i is input i, as documented: nothing else in the file says which row is whose.
            by_file = {result.file: result.clip for result in collected}
            missing = np.full_like(clips[0], np.nan)
            rows = np.stack([by_file.get(file, missing) for file in self._todo])
            _atomic_save(self.target, lambda handle: np.save(handle, rows))
            return
        arrays = dict(
            files=np.array([r.file for r in collected]),
            clip=clips,
            durations=np.array([r.duration for r in collected]),
            truncated=np.array([r.truncated for r in collected]),
            windows=np.concatenate([r.windows for r in collected]),
            window_file=np.concatenate([np.full(len(r.starts), i) for i, r in enumerate(collected)]),
            starts=np.concatenate([r.starts for r in collected]),
            ends=np.concatenate([r.ends for r in collected]),
            model=np.array(self.model),
            weights=np.array(self.weights),
        )
        _atomic_save(self.target, lambda handle: np.savez(handle, **arrays))


@dataclass(frozen=True)
class EmbeddingsReport:
    """What :func:`write_embeddings` did: ``embedded`` of ``todo`` files written to ``output``."""

    output: str
    #: Files this run tried (the inputs less those already there).
    todo: int
    #: Files written this run.
    embedded: int
    #: Inputs a resumed run found already embedded.
    already_done: int
    #: One per file that could not be embedded, in the order they failed.
    failures: tuple[Failure, ...] = field(default=())
    #: False only for a single-file output when no file was embedded (nothing was written).
    written: bool = True

    def to_dict(self) -> dict:
        return {"output": self.output, "todo": self.todo, "embedded": self.embedded,
                "already_done": self.already_done,
                "failures": [{"file": f.file, "error": f.error} for f in self.failures],
                "written": self.written}


def weights_digest(model) -> str:
    """The first 16 hex digits of what computes ``model``'s embeddings (its weights and engine)."""
    from auricle.fingerprints import tagger_key

    return tagger_key(model)[:16]


def write_embeddings(
    model,
    files: Sequence[str],
    output: str | os.PathLike,
    *,
    resume: bool = False,
    batch_size: int | None = None,
    on_start: Callable[[list[str], dict[str, IndexRow]], None] | None = None,
    on_result: Callable[[Embeddings | Failure], None] | None = None,
) -> EmbeddingsReport:
    """Embed ``files`` with ``model`` into ``output`` (a folder, a ``.npz`` or a ``.npy``), as ``auricle embed``.

    With ``resume`` (a folder only) the files already embedded there by the same model and weights
    are kept. ``on_start(todo, done)`` is called once the files to embed are known, ``on_result``
    with each result or failure as it comes. Raises :class:`~auricle.errors.OutputError` for an
    output that cannot be used (another model's folder, a model without per-piece embeddings) and
    :class:`~auricle.errors.WriteError` when a file cannot be written; a failed audio file is a
    :class:`~auricle.inference.results.Failure` in the report, and the rest are still embedded.
    """
    writer = EmbeddingsWriter(output, files)
    if not getattr(model, "can_embed", True):
        raise OutputError(f"{getattr(model, 'path', model.name)}: this exported file has no per-piece embeddings; "
                          "export it with --piece-embeddings, or give the model's weights")
    # Hashing the weights costs a read of them: only for outputs that store it (not .npy).
    weights = weights_digest(model) if writer.stores_weights else ""
    done = writer.resume(model.name, weights) if resume else {}
    todo = [file for file in files if file not in done]
    writer.open(model.name, weights, todo, done)
    if on_start is not None:
        on_start(todo, done)
    failures: list[Failure] = []
    for result in model.iter_embed(todo, batch_size=batch_size):
        if on_result is not None:
            on_result(result)
        if hasattr(result, "error"):
            failures.append(result)
            continue
        writer.write(result)
    written = writer.close()
    return EmbeddingsReport(str(output), len(todo), len(todo) - len(failures), len(done), tuple(failures), written)
