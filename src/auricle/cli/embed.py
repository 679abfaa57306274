"""``auricle embed``: clip and per-window embeddings, saved as .npz/.npy."""

from __future__ import annotations

import csv
import hashlib
import io
import sys
import zipfile
from pathlib import Path

import click
import numpy as np

from auricle.cli.common import (
    audio_warnings, error_line, fail, file_selection_options, gather_files_or_exit, load_model_or_exit, model_options,
    say_audio_warnings, strict_option, writable,
)
from auricle.fingerprints import tagger_key
from auricle.io import atomic
from auricle.io.writers import same_file


def _atomic_save(path: Path, save) -> None:
    try:
        with atomic.replacing(path) as temporary, open(temporary, "wb") as handle:
            save(handle)
    except OSError as error:  # a full disk: what was saved before stays, whole
        fail(f"{path}: cannot write ({error.strerror or error})", code=1)


def _embedded(folder: Path, names: dict[str, str], model: str, weights: str) -> dict[str, list]:
    """The files whose .npz by ``model`` (with these ``weights``) is already in ``folder`` -> their index row.

    Saves are atomic, so an .npz there is whole. The name alone would not do: a
    fine-tuning run written again to the same folder keeps its name.
    """
    done = {}
    for file, name in names.items():
        try:
            with np.load(folder / name, allow_pickle=False) as saved:
                if not same_file(str(saved["path"]), file):
                    continue
                if (str(saved["model"]), str(saved["weights"])) != (model, weights):
                    # Embedding the rest with this model would leave the folder holding two models' vectors.
                    fail(f"{folder}: holds embeddings by {saved['model']} (weights {saved['weights']}), not {model} "
                         f"(weights {weights}); resume with the same model or write to another folder")
                truncated = bool(saved["truncated"]) if "truncated" in saved.files else False  # older saves: unknown
                done[file] = [file, name, f"{float(saved['duration']):.3f}", len(saved["starts"]),
                              str(truncated).lower()]
        except UNREADABLE_NPZ:  # missing or not whole (a copy cut short): embedded again
            continue
    return done


#: What np.load raises for an .npz that is absent, empty (EOFError), cut short (BadZipFile) or not ours.
UNREADABLE_NPZ = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)

#: An --output with one of these suffixes is one file for all inputs; anything else is a folder.
SINGLE_FILE_SUFFIXES = (".npz", ".npy")


#: Suffixes of files other tools write: as --output they surely mean a file, not a folder to create.
FOREIGN_FILE_SUFFIXES = (".txt", ".csv", ".tsv", ".json", ".jsonl", ".h5", ".hdf5", ".pt", ".pth", ".pkl",
                         ".parquet", ".safetensors")


def _output(ctx: click.Context, param: click.Parameter, value: str) -> str:
    suffix = Path(value).suffix.lower()
    if suffix in FOREIGN_FILE_SUFFIXES and not Path(value).is_dir():
        fail(f"{value}: embeddings are written to a folder (one .npz per file), a .npz or a .npy file, "
             f"not a {suffix} file")
    return writable(folder=suffix not in SINGLE_FILE_SUFFIXES)(ctx, param, value)


def _npz_name(file: str, used: set[str], folder: Path) -> str:
    """``STEM.npz``, or ``STEM-HASH.npz`` (a hash of the path) when that name is taken.

    Taken means given to another file of this run, or already holding another file's
    embeddings in ``folder``: so a run over fewer or other files never overwrites them,
    and a resumed run finds each file under the name it had.
    """
    stem = Path(file).stem or "audio"
    name = f"{stem}.npz"
    if name in used or _holds_another_file(folder / name, file):  # same stem in different folders
        name = f"{stem}-{hashlib.sha1(file.encode()).hexdigest()[:8]}.npz"
    used.add(name)
    return name


def _hint_on_interrupt(results, hint: str):
    """``results``, saying on Ctrl-C how to go on (each .npz is saved whole, so none is lost)."""
    try:
        yield from results
    except KeyboardInterrupt:
        click.echo(f"\nauricle: interrupted; {hint}", err=True)
        raise


def _holds_another_file(path: Path, file: str) -> bool:
    try:
        with np.load(path, allow_pickle=False) as saved:
            return not same_file(str(saved["path"]), file)
    except UNREADABLE_NPZ:  # nothing there, or nothing whole: free to write
        return False


def _remove_stale_temporaries(target: Path, single_file: bool, names: dict[str, str]) -> None:
    """Remove what a killed run was writing for these outputs (``x.npz.PID.tmp``), unless that run still goes.

    A run writing into the same folder at the same time keeps its temporaries (their PID is alive).
    """
    folder, outputs = (target.parent, {target.name}) if single_file else (target, {*names.values(), "index.csv"})
    try:
        atomic.remove_leftovers(folder, of=outputs, live_too=False)
    except OSError:  # not ours to remove (permissions): they stay, as they did
        pass


def _index_rows(folder: Path) -> dict[str, list]:
    """The rows of an earlier run's ``index.csv`` whose .npz is still there."""
    try:
        with open(folder / "index.csv", newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))[1:]
    except OSError:
        return {}
    # Four columns: written before the ``truncated`` one (not known then, so not said).
    return {row[0]: row + [""] * (5 - len(row)) for row in rows if len(row) in (4, 5) and (folder / row[1]).is_file()}


@click.command("embed")
@click.argument("paths", nargs=-1)
@file_selection_options
@model_options
@click.option("--output", "-o", required=True, callback=_output,
              help="A folder (one .npz per file plus index.csv), a .npz file (all files), or a .npy file (clip embeddings).")
@click.option("--recursive/--no-recursive", "-r/-R", default=True, show_default=True,
              help="Search named folders through all sub-folders.")
@click.option("--batch-size", "-b", type=click.IntRange(1), default=None,
              help="Pieces per model call [default: 2 per stream, at least 4, on a CPU; 32 on an accelerator]; "
                   "several files run at once, one per stream, each with its share of the calls' pieces.")
@click.option("--resume", is_flag=True,
              help="With an output folder: keep the files already embedded there and embed the rest.")
@strict_option("embedded")
def embed_command(paths, model_name, checkpoint, device, threads, output, recursive, batch_size, resume,
                  strict, files_from, shard) -> None:
    """Compute embeddings: the clip embedding (mean of all tokens, as the official
    HEAR submission) and one per 10.12 s piece with start/end times.

    Exits with status 1 if any file failed (each failure is reported on stderr;
    the other files are still embedded). A file cut short is embedded as far as
    it goes, with a warning (exit status 1 with --strict).
    """
    from tqdm import tqdm


    say_audio_warnings()
    files = gather_files_or_exit(paths, files_from, shard, recursive, "embed")
    target = Path(output)
    single_file = target.suffix.lower() in SINGLE_FILE_SUFFIXES
    if resume and single_file:
        fail("--resume needs --output FOLDER (one .npz per file); a single .npz or .npy is written at the end")
    used: set[str] = set()
    names = {} if single_file else {file: _npz_name(file, used, target) for file in files}
    model = load_model_or_exit(model_name, checkpoint, device, threads, exported=True)
    # Hashing the weights costs a read of them: only for outputs that store it (not .npy).
    weights = "" if target.suffix.lower() == ".npy" else tagger_key(model)[:16]
    done = _embedded(target, names, model.name, weights) if resume else {}
    todo = [file for file in files if file not in done]
    if not getattr(model, "can_embed", True):
        fail(f"{checkpoint}: this exported file has no per-piece embeddings; export it with --piece-embeddings, "
             f"or give the model's weights")
    if single_file:
        target.parent.mkdir(parents=True, exist_ok=True)
    else:
        target.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(target, single_file, names)

    collected = []
    # The index describes the folder: files an earlier run over other inputs embedded stay listed.
    owner = {name: file for file, name in names.items()}
    earlier = {file: row for file, row in _index_rows(target).items()
               if file not in names and owner.get(row[1], file) == file}
    index_rows = {**earlier, **done}
    failures = flagged = 0
    bar = tqdm(total=len(todo), unit="file", disable=len(todo) < 2 or None, file=sys.stderr)
    results = model.iter_embed(todo, batch_size=batch_size)
    if not single_file:
        results = _hint_on_interrupt(results, f"the files done are in {target}: run the same command with --resume "
                                              "to embed the rest")
    for result in results:
        bar.update(1)
        if hasattr(result, "error"):
            failures += 1
            bar.write(error_line(result.error), file=sys.stderr)
            continue
        lines = audio_warnings(result)
        flagged += bool(lines)
        for line in lines:
            bar.write(line, file=sys.stderr)
        if single_file:
            collected.append(result)
            continue
        name = names[result.file]
        # numpy's savez reserves the keyword `file`, so the source path is stored as `path`.
        arrays = dict(clip=result.clip, windows=result.windows, starts=result.starts, ends=result.ends,
                      path=np.array(result.file), model=np.array(result.model), weights=np.array(weights),
                      duration=np.array(result.duration), truncated=np.array(result.truncated))
        _atomic_save(target / name, lambda handle: np.savez(handle, **arrays))
        index_rows[result.file] = [result.file, name, f"{result.duration:.3f}", len(result.starts),
                                   str(result.truncated).lower()]
    bar.close()

    if single_file and collected:
        clips = np.stack([r.clip for r in collected])
        if target.suffix.lower() == ".npy":
            # Row i is input i, as documented: nothing else in the file says which row is whose.
            by_file = {result.file: result.clip for result in collected}
            missing = np.full_like(clips[0], np.nan)
            rows = np.stack([by_file.get(file, missing) for file in todo])
            _atomic_save(target, lambda handle: np.save(handle, rows))
        else:
            arrays = dict(
                files=np.array([r.file for r in collected]),
                clip=clips,
                durations=np.array([r.duration for r in collected]),
                truncated=np.array([r.truncated for r in collected]),
                # One file's frames as they are: a copy would be a second hour of Dasheng frames (276 MB).
                windows=collected[0].windows if len(collected) == 1 else np.concatenate([r.windows for r in collected]),
                window_file=np.concatenate([np.full(len(r.starts), i) for i, r in enumerate(collected)]),
                starts=np.concatenate([r.starts for r in collected]),
                ends=np.concatenate([r.ends for r in collected]),
                model=np.array(model.name),
                weights=np.array(weights),
            )
            _atomic_save(target, lambda handle: np.savez(handle, **arrays))
    if not single_file and index_rows:
        table = io.StringIO()
        writer = csv.writer(table, lineterminator="\n")
        writer.writerow(["file", "npz", "duration", "windows", "truncated"])
        order = [*files, *sorted(index_rows.keys() - set(files))]
        writer.writerows(index_rows[file] for file in order if file in index_rows)
        _atomic_save(target / "index.csv", lambda handle: handle.write(table.getvalue().encode()))
    skipped = f", {len(done)} already done" if resume else ""
    message = f"embedded {len(todo) - failures} of {len(todo)} files into {target}{skipped}"
    if single_file and not collected:
        message = f"embedded none of {len(todo)} files; {target} not written"
    if failures:
        click.echo(f"auricle: {message}; {failures} failed", err=True)
        raise SystemExit(1)
    if strict and flagged:
        click.echo(f"auricle: {message}; {flagged} truncated or too short (--strict)", err=True)
        raise SystemExit(1)
    click.echo(f"auricle: {message}", err=True)
