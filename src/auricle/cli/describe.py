"""``auricle describe`` and ``auricle ask``: what MiDashengLM says about each recording.

Thin commands over :class:`auricle.language_model.AudioLanguageModel`; output goes through the
writers and ``--resume`` bookkeeping of ``auricle tag`` (:mod:`auricle.io.writers`).
"""

from __future__ import annotations

import json
import sys

import click

from auricle.cli.common import error_line, fail, files_or_exit, report_batch, writable
from auricle.errors import AuricleError
from auricle.language.config import LANGUAGE_PRECISIONS
from auricle.language.prompts import PRESETS
from auricle.io.writers import (
    FORMATS, RESUMABLE_FORMATS, completed_files, format_for, not_done, open_writer, record_settings,
    settings_differences,
)

DEFAULT_LANGUAGE_MODEL = "midashenglm-7b"


def _options(command):
    """The options ``describe`` and ``ask`` share."""
    for option in reversed([
        click.option("--model", "-m", "model_name", default=DEFAULT_LANGUAGE_MODEL, show_default=True,
                     help="Registered audio-language model (downloaded once into the Hugging Face cache)."),
        click.option("--checkpoint", type=click.Path(file_okay=False), default=None,
                     help="A local MiDashengLM folder (config.json, safetensors shards and index, tokenizer.json) "
                          "instead of --model."),
        click.option("--precision", type=click.Choice(LANGUAGE_PRECISIONS), default=None,
                     help="bf16, or int8: weight-only int8 for the decoder's linear layers (about 9.5 GB instead "
                          "of 16.6 GB, faster decoding) [default: as stored, bf16 for the release]."),
        click.option("--max-new-tokens", type=click.IntRange(1), default=128, show_default=True,
                     help="Longest answer, in tokens, per segment."),
        click.option("--segment", "segment_seconds", type=click.FloatRange(0, 30, min_open=True), default=30.0,
                     show_default=True, help="Cut recordings into segments of SECONDS (at most 30), each described "
                                             "with its start and end."),
        click.option("--format", "-f", "output_format", type=click.Choice(FORMATS), default=None,
                     help="[default: what --output's suffix names (.csv, .json, .jsonl), else table]"),
        click.option("--output", "-o", default=None, callback=writable(), help="Write results to FILE instead of stdout."),
        click.option("--recursive/--no-recursive", "-r/-R", default=True, show_default=True,
                     help="Search named folders through all sub-folders."),
        click.option("--resume", is_flag=True, help="Skip files already in --output (jsonl or csv) and append."),
    ]):
        command = option(command)
    return command


@click.command("describe")
@click.argument("paths", nargs=-1, required=True)
@click.option("--prompt", "-p", default="caption", show_default=True,
              help=f"A preset ({', '.join(PRESETS)}) or any question.")
@_options
def describe_command(paths, prompt, **options) -> None:
    """Describe audio files, folders or globs in words with MiDashengLM (greedy decoding).

    Exits with status 1 if any file failed (each failure is reported on stderr; the other files are
    still described). With one file, on a terminal, the text appears as it is generated.
    """
    run(paths, prompt, literal=False, **options)


@click.command("ask")
@click.argument("paths", nargs=-1, required=True)
@click.argument("question")
@_options
def ask_command(paths, question, **options) -> None:
    """Ask QUESTION about each of the audio files, folders or globs (the question is the last argument)."""
    run(paths, question, literal=True, **options)


def load_language_or_exit(model_name: str, checkpoint: str | None, precision: str | None = None):
    """The audio-language model the options name, or one error line and exit (a tagger is refused unread)."""
    import auricle
    from auricle.models.registry import model_info

    not_language = f"{checkpoint or model_name}: not an audio-language model (describe and ask need MiDashengLM)"
    try:
        if checkpoint is None and model_info(model_name).family != "midashenglm":
            fail(not_language)
        model = auricle.load_model(model_name, checkpoint=checkpoint, precision=precision)
    except AuricleError as error:
        fail(str(error))
    if not hasattr(model, "describe"):
        fail(not_language)
    return model


def _terminal() -> bool:
    return sys.stdout.isatty()


def run(paths, prompt: str, literal: bool, model_name: str, checkpoint: str | None, precision: str | None,
        max_new_tokens: int,
        segment_seconds: float, output_format: str | None, output: str | None, recursive: bool,
        resume: bool) -> None:
    from auricle.inference.results import Failure

    output_format = output_format or format_for(output)
    if resume and (output is None or output == "-" or output_format not in RESUMABLE_FORMATS):
        fail(f"--resume needs --output FILE with --format {' or '.join(RESUMABLE_FORMATS)}")
    if not prompt.strip():
        fail("the prompt is empty; give a preset or a question")
    files = files_or_exit(paths, recursive, output, "describe")
    done = completed_files(output, output_format) if resume else {}
    todo = not_done(files, done)

    if not todo:  # everything is in --output already: no model to load (16 GB for the 7B)
        report_batch("described", files, todo, 0, resume, output)
        return
    model = load_language_or_exit(model_name, checkpoint, precision)
    if output_format in RESUMABLE_FORMATS and output not in (None, "-"):
        settings = {"model": model.name, "prompt": prompt, "literal": literal, "max_new_tokens": max_new_tokens,
                    "segment": segment_seconds, "precision": precision}
        differences = settings_differences(output, settings) if resume else []
        if differences:
            fail(f"{output}: written with other settings ({'; '.join(differences)}); resume with the same "
                 "model and options, or write to another file")
        record_settings(output, json.loads(json.dumps(settings)))

    streaming = len(todo) == 1 and output in (None, "-") and output_format == "table" and _terminal()
    stream, writer = open_writer(output, output_format, resume, descriptions=True)
    ask = model.ask if literal else model.describe
    failures = 0
    try:
        for file in todo:
            try:
                if streaming:
                    click.echo(f"{file}", err=True)
                    result = ask(file, prompt, max_new_tokens=max_new_tokens, segment_seconds=segment_seconds,
                                 on_text=lambda piece: (stream.write(piece), stream.flush()))
                    stream.write("\n")
                    continue
                result = ask(file, prompt, max_new_tokens=max_new_tokens, segment_seconds=segment_seconds)
            except AuricleError as error:
                failures += 1
                click.echo(error_line(str(error)), err=True)
                result = Failure(file, str(error))
            writer.write(result)
    except KeyboardInterrupt:
        if output_format in RESUMABLE_FORMATS and output not in (None, "-"):
            click.echo(f"\nauricle: interrupted; the files done are in {output}: run the same command with --resume "
                       "to describe the rest", err=True)
        raise
    finally:
        writer.close()
        if stream is not sys.stdout:
            stream.close()
    report_batch("described", files, todo, failures, resume, output)
