"""``auricle tag``: sound classes per file and, with --events, a timeline of events."""

from __future__ import annotations

import os
import sys

import click

from auricle.cli.common import (
    audio_warnings, error_line, fail, file_selection_options, files_or_exit, load_model_or_exit, model_options,
    report_batch,
    say_audio_warnings, strict_option, tag_option_flags, writable,
)
from auricle.errors import AuricleError, OutputError
from auricle.io.tag_resume import (
    appended_csv_layout, effective_tag_settings, remove_stale_temporaries, tag_run_settings,
)
from auricle.io.writers import (
    FORMATS, RESUMABLE_FORMATS, completed_files, format_for, not_done, open_writer, record_settings,
    settings_differences,
)
from auricle.options import TAG_OPTIONS


@click.command("tag")
@click.argument("paths", nargs=-1)
@file_selection_options
@model_options
@tag_option_flags(TAG_OPTIONS)
@click.option("--format", "-f", "output_format", type=click.Choice(FORMATS), default=None,
              help="[default: what --output's suffix names (.csv, .json, .jsonl), else table]")
@click.option("--output", "-o", default=None, callback=writable(), help="Write results to FILE instead of stdout.")
@click.option("--recursive/--no-recursive", "-r/-R", default=True, show_default=True,
              help="Search named folders through all sub-folders.")
@click.option("--batch-size", "-b", type=click.IntRange(1), default=None,
              help="Windows per model call, across files [default: 2 per stream, at least 4, on a CPU; 32 on an accelerator].")
@click.option("--resume", is_flag=True,
              help="Skip files already in --output (jsonl or csv) and append; with csv, FILE.done lists the files "
                   "finished (a file without tags or events has no row).")
@click.option("--progress/--no-progress", default=None, help="Progress bar [default: on a terminal, for several files].")
@strict_option("tagged")
def tag_command(paths, model_name, checkpoint, device, threads, top_k, threshold, classes, profile, events,
                window, hop, pool, median_filter, min_duration, min_gap, output_format, output, recursive,
                batch_size, resume, progress, strict, files_from, shard) -> None:
    """Tag audio files, folders or globs (or --files-from a list) with AudioSet classes.

    Exits with status 1 if any file failed (each failure is reported on stderr;
    the other files are still tagged). A file cut short is tagged as far as it
    goes, with a warning (exit status 1 with --strict).
    """
    from tqdm import tqdm

    from auricle.inference.events import EventOptions
    from auricle.inference.results import Failure

    say_audio_warnings()
    output_format = output_format or format_for(output)  # `-o tags.csv` means CSV
    if resume and (output is None or output == "-" or output_format not in RESUMABLE_FORMATS):
        fail(f"--resume needs --output FILE with --format {' or '.join(RESUMABLE_FORMATS)}")
    try:
        event_options = EventOptions(median_filter, min_duration, min_gap) if events else None
    except (AuricleError, ValueError) as error:
        fail(str(error))
    files = files_or_exit(paths, recursive, output, "tag", files_from, shard)
    csv_truncated = True
    if resume and output_format == "csv":
        try:
            csv_truncated = appended_csv_layout(output, events)
        except OutputError as error:
            fail(str(error))
    done = completed_files(output, output_format) if resume else {}
    todo = not_done(files, done)

    if todo and not any(os.path.exists(file) for file in todo):
        # Nothing to decode, so no model to load (a download, maybe): each file fails as it would.
        results = iter([Failure(file, f"{file}: file not found") for file in todo])
    else:
        model = load_model_or_exit(model_name, checkpoint, device, threads, exported=True)
        others = sorted({name for name in done.values() if name is not None and name != model.name})
        if others:
            fail(f"{output}: holds results of {', '.join(others)}, not {model.name}; resume with the same model "
                 f"or write to another file")
        try:
            options = model.tag_options(top_k=top_k, threshold=threshold, classes=classes, profile=profile,
                                        pool=pool, events=event_options or False, window=window, hop=hop)
        except (AuricleError, ValueError) as error:
            fail(str(error))
        if output_format in RESUMABLE_FORMATS and output not in (None, "-"):
            # Rows computed otherwise would mix silently with the earlier ones.
            settings = tag_run_settings(model, options)
            differences = settings_differences(output, settings, effective_tag_settings) if resume else []
            if differences:
                fail(f"{output}: written with other settings ({'; '.join(differences)}); resume with the same "
                     "model and options, or write to another file")
            record_settings(output, settings)
        results = model.iter_tag(todo, options, batch_size=batch_size)

    if output not in (None, "-"):
        remove_stale_temporaries(output)
    stream, writer = open_writer(output, output_format, resume, events=events, csv_truncated=csv_truncated)
    show = progress if progress is not None else None
    bar = tqdm(total=len(todo), unit="file", disable=(not show) if show is not None else (len(todo) < 2 or None),
               file=sys.stderr)
    failures = flagged = 0
    try:
        try:
            for result in results:
                if hasattr(result, "error"):
                    failures += 1
                    bar.write(error_line(result.error), file=sys.stderr)
                else:
                    lines = audio_warnings(result)
                    flagged += bool(lines)
                    for line in lines:
                        bar.write(line, file=sys.stderr)
                writer.write(result)
                bar.update(1)
        finally:
            bar.close()
            writer.close()
            if stream is not sys.stdout:
                stream.close()
    except KeyboardInterrupt:
        if output_format in RESUMABLE_FORMATS and output not in (None, "-"):
            click.echo(f"\nauricle: interrupted; the files done are in {output}: run the same command with --resume "
                       "to tag the rest", err=True)
        raise
    except OSError as error:
        if error.filename is not None or isinstance(error, BrokenPipeError):  # named, or `| head`: as it comes
            raise
        target = "standard output" if stream is sys.stdout else output
        fail(f"{target}: cannot write ({error.strerror or error})", code=1)
    report_batch("tagged", files, todo, failures, resume, output, flagged if strict else 0)
