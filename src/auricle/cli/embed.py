"""``auricle embed``: clip and per-window embeddings, saved as .npz/.npy."""

from __future__ import annotations

import sys

import csv
import hashlib
import os
from pathlib import Path

import click
import numpy as np

from auricle.cli.common import fail, load_model_or_exit, model_options
from auricle.errors import AuricleError


def _atomic_save(path: Path, save) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        save(handle)
    os.replace(tmp, path)


def _npz_name(file: str, used: set[str]) -> str:
    stem = Path(file).stem or "audio"
    name = f"{stem}.npz"
    if name in used:  # same stem in different folders
        name = f"{stem}-{hashlib.sha1(file.encode()).hexdigest()[:8]}.npz"
    used.add(name)
    return name


@click.command("embed")
@click.argument("paths", nargs=-1, required=True)
@model_options
@click.option("--output", "-o", required=True,
              help="A folder (one .npz per file plus index.csv), a .npz file (all files), or a .npy file (clip embeddings).")
@click.option("--recursive/--no-recursive", "-r/-R", default=True, show_default=True,
              help="Search named folders through all sub-folders.")
@click.option("--batch-size", "-b", type=click.IntRange(1), default=None,
              help="Pieces per model call [default: 2 per stream, at least 4, on a CPU; 32 on an accelerator].")
def embed_command(paths, model_name, checkpoint, device, threads, output, recursive, batch_size) -> None:
    """Compute embeddings: the clip embedding (mean of all tokens, as the official
    HEAR submission) and one per 10.12 s piece with start/end times."""
    from tqdm import tqdm

    from auricle.audio import list_audio_files

    try:
        files = list_audio_files(list(paths), recursive=recursive)
    except AuricleError as error:
        fail(str(error))
    if not files:
        fail("no audio files found in " + " ".join(paths))
    model = load_model_or_exit(model_name, checkpoint, device, threads, exported=True)
    if not getattr(model, "can_embed", True):
        fail(f"{checkpoint}: this exported file has no per-piece embeddings; export it with --piece-embeddings, "
             f"or give the model's weights")
    target = Path(output)
    single_file = target.suffix in (".npz", ".npy")
    if single_file:
        target.parent.mkdir(parents=True, exist_ok=True)
    else:
        target.mkdir(parents=True, exist_ok=True)

    collected = []
    index_rows = []
    used: set[str] = set()
    failures = 0
    bar = tqdm(total=len(files), unit="file", disable=len(files) < 2 or None, file=sys.stderr)
    for result in model.iter_embed(files, batch_size=batch_size):
        bar.update(1)
        if hasattr(result, "error"):
            failures += 1
            bar.write(f"auricle: error: {result.error}", file=sys.stderr)
            continue
        if single_file:
            collected.append(result)
            continue
        name = _npz_name(result.file, used)
        # numpy's savez reserves the keyword `file`, so the source path is stored as `path`.
        arrays = dict(clip=result.clip, windows=result.windows, starts=result.starts, ends=result.ends,
                      path=np.array(result.file), model=np.array(result.model), duration=np.array(result.duration))
        _atomic_save(target / name, lambda handle: np.savez(handle, **arrays))
        index_rows.append([result.file, name, f"{result.duration:.3f}", len(result.starts)])
    bar.close()

    if single_file and collected:
        clips = np.stack([r.clip for r in collected])
        if target.suffix == ".npy":
            _atomic_save(target, lambda handle: np.save(handle, clips))
        else:
            arrays = dict(
                files=np.array([r.file for r in collected]),
                clip=clips,
                durations=np.array([r.duration for r in collected]),
                windows=np.concatenate([r.windows for r in collected]),
                window_file=np.concatenate([np.full(len(r.starts), i) for i, r in enumerate(collected)]),
                starts=np.concatenate([r.starts for r in collected]),
                ends=np.concatenate([r.ends for r in collected]),
                model=np.array(model.name),
            )
            _atomic_save(target, lambda handle: np.savez(handle, **arrays))
    if not single_file and index_rows:
        with open(target / "index.csv", "w", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(["file", "npz", "duration", "windows"])
            writer.writerows(index_rows)
    done = len(files) - failures
    message = f"embedded {done} of {len(files)} files into {target}"
    if failures:
        click.echo(f"auricle: {message}; {failures} failed", err=True)
        raise SystemExit(1)
    click.echo(f"auricle: {message}", err=True)
