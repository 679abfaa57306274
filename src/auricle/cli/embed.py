"""``auricle embed``: clip and per-window embeddings, saved as .npz/.npy (the layout: :mod:`auricle.io.embeddings`)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from auricle.cli.common import (
    audio_warnings, error_line, fail, file_selection_options, gather_files_or_exit, load_model_or_exit, model_options,
    say_audio_warnings, strict_option, writable,
)
from auricle.errors import OutputError, WriteError


def _output(ctx: click.Context, param: click.Parameter, value: str) -> str:
    from auricle.io.embeddings import is_single_file, output_problem

    problem = output_problem(value)
    if problem is not None:
        fail(problem)
    return writable(folder=not is_single_file(value))(ctx, param, value)


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

    from auricle.io.embeddings import is_single_file, write_embeddings

    say_audio_warnings()
    files = gather_files_or_exit(paths, files_from, shard, recursive, "embed")
    target = Path(output)
    single_file = is_single_file(target)
    if resume and single_file:
        fail("--resume needs --output FOLDER (one .npz per file); a single .npz or .npy is written at the end")
    model = load_model_or_exit(model_name, checkpoint, device, threads, exported=True)
    if not getattr(model, "can_embed", True):
        fail(f"{checkpoint}: this exported file has no per-piece embeddings; export it with --piece-embeddings, "
             f"or give the model's weights")

    bar = None
    flagged = 0

    def start(todo, done) -> None:
        nonlocal bar
        bar = tqdm(total=len(todo), unit="file", disable=len(todo) < 2 or None, file=sys.stderr)

    def said(result) -> None:
        nonlocal flagged
        bar.update(1)
        if hasattr(result, "error"):
            bar.write(error_line(result.error), file=sys.stderr)
            return
        lines = audio_warnings(result)
        flagged += bool(lines)
        for line in lines:
            bar.write(line, file=sys.stderr)

    try:
        report = write_embeddings(model, files, target, resume=resume, batch_size=batch_size, on_start=start,
                                  on_result=said)
    except KeyboardInterrupt:
        if not single_file and bar is not None:  # each .npz is saved whole, so none is lost
            click.echo(f"\nauricle: interrupted; the files done are in {target}: run the same command with --resume "
                       "to embed the rest", err=True)
        raise
    except WriteError as error:  # a full disk: what was saved before stays, whole
        fail(str(error), code=1)
    except OutputError as error:
        fail(str(error))
    finally:
        if bar is not None:
            bar.close()
    failures = len(report.failures)
    skipped = f", {report.already_done} already done" if resume else ""
    message = f"embedded {report.embedded} of {report.todo} files into {target}{skipped}"
    if not report.written:
        message = f"embedded none of {report.todo} files; {target} not written"
    if failures:
        click.echo(f"auricle: {message}; {failures} failed", err=True)
        raise SystemExit(1)
    if strict and flagged:
        click.echo(f"auricle: {message}; {flagged} truncated or too short (--strict)", err=True)
        raise SystemExit(1)
    click.echo(f"auricle: {message}", err=True)
