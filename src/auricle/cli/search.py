"""``auricle index`` and ``auricle search``: find recordings by what they sound like (docs/search.md)."""

from __future__ import annotations

import os
import sys

import click

from auricle.cli.common import (
    error_line, fail, file_selection_options, gather_files_or_exit, load_model_or_exit, model_options, tag_option_flags,
    writable,
)
from auricle.errors import AuricleError
from auricle.options import TAG_OPTIONS
from auricle.io.search_hits import SEARCH_FORMATS, write_hits  # noqa: F401 (write_hits: its old import path)

#: The MiDashengLM that ``--describe`` alone names (as `auricle describe`'s default).
DEFAULT_DESCRIBER = "midashenglm-7b"


@click.command("index")
@click.argument("paths", nargs=-1)
@file_selection_options
@click.option("--output", "-o", "index_path", required=True, callback=writable(), help="The index file (SQLite); made if absent, else updated.")
@model_options
@tag_option_flags(TAG_OPTIONS, "window", "hop")
@click.option("--recursive/--no-recursive", "-r/-R", default=True, show_default=True,
              help="Search named folders through all sub-folders.")
@click.option("--batch-size", "-b", type=click.IntRange(1), default=None, help="Windows per model call, across files.")
@click.option("--resume", is_flag=True,
              help="Go on after an interrupted run (what every run does: unchanged files are skipped).")
@click.option("--progress/--no-progress", default=None, help="Progress bar [default: on a terminal, for several files].")
@click.option("--describe", "describe_model", is_flag=False, flag_value=DEFAULT_DESCRIBER, default=None,
              metavar="[MODEL]", help=f"Also caption each segment with MiDashengLM (MODEL: {DEFAULT_DESCRIBER}); "
                                      "searches then match the captions too. Put it after PATHS, or write --describe=MODEL.")
@click.option("--describe-checkpoint", type=click.Path(file_okay=False), default=None,
              help="A local MiDashengLM folder for the captions (implies --describe).")
@click.option("--describe-segment", type=click.FloatRange(0, 30, min_open=True), default=None,
              help="Seconds per caption (at most 30) [default: --window].")
def index_command(paths, index_path, model_name, checkpoint, device, threads, window, hop, recursive, batch_size,
                  resume, progress, files_from, shard, describe_model, describe_checkpoint, describe_segment) -> None:
    """Index audio files, folders or globs (or --files-from a list) for `auricle search`.

    New and changed files (size or modification time) are tagged and embedded, unchanged
    ones skipped, indexed files under PATHS that no longer exist dropped. Files are committed in
    batches, so an interrupted run keeps what it finished. With --describe, the indexed files
    without captions are then captioned, one file at a time. Exits with status 1 if any
    file failed (each failure is reported on stderr; the others are still indexed).
    """
    from tqdm import tqdm

    from auricle.search import Index
    from auricle.search.index import check_model, model_meta, plan, scope, update

    if describe_model is not None and describe_checkpoint is None and os.path.exists(describe_model):
        from auricle.models.registry import available_models

        if describe_model not in {info.name for info in available_models()}:  # `--describe folder/ -o ...`
            fail(f"--describe took {describe_model!r} as the model's name; put --describe after the paths, or "
                 f"write --describe={DEFAULT_DESCRIBER}")

    def empty_part() -> None:  # the worker's part exists, so a merge of all N parts needs no exception for it
        Index.open(index_path, create=True).close()

    listed = gather_files_or_exit(paths, files_from, shard, recursive, "index", before_empty_shard=empty_part)
    files = [os.path.abspath(f) for f in listed]
    if os.path.abspath(index_path) in files:
        fail(f"{index_path}: is one of the files to index; write the index to another file")
    try:
        index = Index.open(index_path, create=True)
    except AuricleError as error:
        fail(str(error))
    describing = describe_model is not None or describe_checkpoint is not None
    segment = describe_segment if describe_segment is not None else min(window, 30.0)
    with index:
        if describing:  # refused before hours of tagging, not after
            _check_describing(index, describe_model or DEFAULT_DESCRIBER, describe_checkpoint, segment)
        model = load_model_or_exit(model_name, checkpoint, device, threads)
        try:
            check_model(index.store, model_meta(model, window, hop))
            covers = scope([*paths, *listed], recursive)
            todo = len(plan(index.store, files, covers).todo)
        except AuricleError as error:
            fail(str(error))
        bar = tqdm(total=todo, unit="file", file=sys.stderr,
                   disable=(not progress) if progress is not None else (todo < 2 or None))

        def on_result(file: str, error: str | None) -> None:
            if error is not None:
                bar.write(error_line(error), file=sys.stderr)
            bar.update(1)

        try:
            report = update(index.store, model, files, window=window, hop=hop, batch_size=batch_size,
                            on_result=on_result, covers=covers)
        except KeyboardInterrupt:
            bar.close()
            click.echo(f"\nauricle: interrupted; {index_path} keeps every file finished: run the same command to "
                       "index the rest", err=True)
            raise
        except AuricleError as error:
            bar.close()
            fail(str(error), code=1)
        bar.close()
        failures = len(report.failures)
        described = ""
        if describing:
            del model  # the tagger's memory back before the (larger) language model loads
            captions = _caption(index, files, describe_model or DEFAULT_DESCRIBER, describe_checkpoint, segment,
                                progress, index_path)
            failures += len(captions.failures)
            described = f"; captioned {captions.added} files, {captions.unchanged} unchanged"
        elif index.captioned:
            uncaptioned = len(index) - index.captioned
            described = f"; {uncaptioned} without captions (add --describe)" if uncaptioned else ""
        total = len(index)
    summary = (f"indexed {report.added} of {todo} files, {report.unchanged} unchanged, {report.removed} removed"
               f"{described}; {total} in {index_path}")
    if failures:
        click.echo(f"auricle: {summary}; {failures} failed", err=True)
        raise SystemExit(1)
    click.echo(f"auricle: {summary}", err=True)


def _check_describing(index, describe_model: str, checkpoint: str | None, segment: float) -> None:
    """One line and exit for what would stop the captions: no sentence encoder, a path taken for the model,
    an index captioned by another describer or with other segments."""
    from types import SimpleNamespace

    from auricle.search.captions import check_describer, describer_meta
    from auricle.search.text import encoder_folder, encoder_key

    try:
        key = encoder_key(encoder_folder())
        name = os.path.basename(os.path.normpath(checkpoint)) if checkpoint is not None else describe_model
        check_describer(index.store, describer_meta(SimpleNamespace(name=name), segment, key))
    except AuricleError as error:
        fail(str(error))


def _caption(index, files: list[str], describe_model: str, checkpoint: str | None, segment: float, progress,
             index_path: str):
    """Caption the files without captions; a CaptionReport (each failure reported on stderr as it happens)."""
    from tqdm import tqdm

    from auricle.cli.describe import load_language_or_exit
    from auricle.search.captions import CaptionReport, caption, uncaptioned
    from auricle.search.text import text_encoder

    todo, done = uncaptioned(index.store, files)
    if not todo:  # nothing to say: no language model to load (16 GB for the 7B)
        return CaptionReport(unchanged=done)
    describer = load_language_or_exit(describe_model, checkpoint)
    bar = tqdm(total=len(todo), unit="file", file=sys.stderr, desc="captions",
               disable=(not progress) if progress is not None else (len(todo) < 2 or None))

    def on_result(file: str, error: str | None) -> None:
        if error is not None:
            bar.write(error_line(error), file=sys.stderr)
        bar.update(1)

    try:
        return caption(index.store, describer, files, text_encoder(), segment=segment, on_result=on_result)
    except KeyboardInterrupt:
        click.echo(f"\nauricle: interrupted; {index_path} keeps every file captioned: run the same command to "
                   "caption the rest", err=True)
        raise
    except AuricleError as error:
        fail(str(error), code=1)
    finally:
        bar.close()


@click.command("index-merge")
@click.argument("parts", nargs=-1, required=True)
@click.option("--output", "-o", "index_path", required=True, callback=writable(),
              help="The merged index file, written whole (an existing one is replaced).")
def index_merge_command(parts, index_path) -> None:
    """Join the parts of a sharded index (`auricle index --shard K/N`) into one index.

    The parts must come from one model with one --window/--hop. A file in several parts
    keeps the row of its newest modification time (on a tie, the later part's). The output
    appears only when complete; it may be one of the parts.
    """
    from auricle.search.merge import merge

    try:
        report = merge(parts, index_path)
    except AuricleError as error:
        fail(str(error))
    click.echo(f"auricle: merged {report.parts} parts: {report.files} files in {index_path}"
               + (f" ({report.duplicates} in several parts: the newest row kept)" if report.duplicates else ""), err=True)


@click.command("index-export")
@click.argument("index_path")
@click.option("--output", "-o", required=True, callback=writable(folder=True),
              help="The folder for files.parquet, windows.parquet, pieces.parquet and classes.parquet.")
@click.option("--format", "-f", "output_format", type=click.Choice(["parquet"]), default="parquet",
              show_default=True)
def index_export_command(index_path, output, output_format) -> None:
    """Export an index as Parquet tables for DuckDB, Spark or a vector database (docs/search.md).

    Needs pyarrow: pip install 'auricle[export]'.
    """
    from auricle.search import Index
    from auricle.search.export import export_parquet

    try:
        with Index.open(index_path, readonly=True) as index:
            report = export_parquet(index, output)
    except AuricleError as error:
        fail(str(error))
    captions = f" and {report.captions} captions" if report.captions else ""
    click.echo(f"auricle: exported {report.files} files, {report.windows} windows, {report.pieces} pieces{captions} "
               f"to {output}", err=True)


@click.command("search")
@click.argument("query", required=False)
@click.option("--index", "-i", "index_path", required=True, help="The index file made by `auricle index`.")
@click.option("--like", default=None, help="Rank by similarity to this recording instead of a query.")
@click.option("--top", "-n", type=click.IntRange(1), default=10, show_default=True, help="Files to list.")
@click.option("--path", "path_glob", default=None,
              help="Only files matching this glob (on the file name, or on the full path if it has a /).")
@click.option("--min-duration", type=click.FloatRange(0), default=None, help="Only files at least this long (s).")
@click.option("--max-duration", type=click.FloatRange(0), default=None, help="Only files at most this long (s).")
@click.option("--since", default=None, metavar="DATE",
              help="Only files modified (recorded) at or after DATE: 2026-12-07 or 2026-12-07T22:30, local time.")
@click.option("--until", default=None, metavar="DATE",
              help="Only files modified before DATE (a date alone: up to the end of that day).")
@click.option("--format", "-f", "output_format", type=click.Choice(SEARCH_FORMATS), default="table", show_default=True)
@model_options
def search_command(query, index_path, like, top, path_glob, min_duration, max_duration, since, until, output_format,
                   model_name, checkpoint, device, threads) -> None:
    """Search an index in plain language ("a dog barking at night"), by exact class names, MIDs or
    ontology nodes ("Dog", "/m/0bt9lr", "Animal"), or --like a recording.

    --like embeds the recording with the index's model: give the same --model/--checkpoint.
    """
    from auricle.search import Index

    if (query is None) == (like is None):
        fail("give a QUERY or --like FILE" if query is None else "give a QUERY or --like FILE, not both")
    try:
        index = Index.open(index_path, readonly=True)
    except AuricleError as error:
        fail(str(error))
    with index:
        model = None
        if like is not None:
            if not os.path.isfile(like):
                fail(f"{like}: file not found")
            model_name = _the_index_model(index.model, model_name, checkpoint)
            model = load_model_or_exit(model_name, checkpoint, device, threads)
        try:
            hits = index.search(query, like=like, model=model, top=top, path=path_glob, min_duration=min_duration,
                                max_duration=max_duration, since=since, until=until,
                                warn=lambda message: click.echo(f"auricle: warning: {message}", err=True))
        except AuricleError as error:
            fail(str(error))
    if not hits:
        filtered = path_glob or min_duration is not None or max_duration is not None or since or until
        click.echo("auricle: no indexed file matches" + (" the filters" if filtered else ""), err=True)
    write_hits(hits, output_format, sys.stdout)


def _the_index_model(indexed: str | None, model_name: str, checkpoint: str | None) -> str:
    """--model, or the index's model when neither --model nor --checkpoint was given and it is a published one."""
    from auricle.cli.common import given_on_command_line
    from auricle.models.registry import available_models

    ctx = click.get_current_context(silent=True)
    if checkpoint is None and not given_on_command_line(ctx, "model_name") and indexed in {
            info.name for info in available_models()}:
        return indexed
    return model_name
