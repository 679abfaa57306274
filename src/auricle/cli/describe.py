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
from auricle.language.prompts import PRESETS
from auricle.io.writers import (
    FORMATS, RESUMABLE_FORMATS, completed_files, format_for, not_done, open_writer, record_settings,
    settings_differences,
)

DEFAULT_LANGUAGE_MODEL = "midashenglm-7b"
DEFAULT_TAGGER = "ced-mini"


def _options(command):
    """The options ``describe`` and ``ask`` share."""
    for option in reversed([
        click.option("--model", "-m", "model_name", default=DEFAULT_LANGUAGE_MODEL, show_default=True,
                     help="Registered audio-language model (downloaded once into the Hugging Face cache)."),
        click.option("--checkpoint", type=click.Path(file_okay=False), default=None,
                     help="A local MiDashengLM folder (config.json, safetensors shards and index, tokenizer.json) "
                          "instead of --model."),
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
        click.option("--segments", "segmentation", type=click.Choice(["fixed", "events"]), default="fixed",
                     show_default=True, help="fixed: the whole recording in consecutive segments; events: only where "
                                             "--tagger hears something (close events merged, each at most --segment "
                                             "seconds), a timestamped diary."),
        click.option("--tagger", "tagger_name", default=DEFAULT_TAGGER, show_default=True,
                     help="With --segments events: the CED or Dasheng tagger that finds the events."),
        click.option("--tagger-checkpoint", type=click.Path(), default=None,
                     help="With --segments events: a local tagger checkpoint or exported file instead of --tagger."),
        click.option("--event-threshold", type=click.FloatRange(0, 1), default=None,
                     help="With --segments events: the tagger's event threshold [default: 0.5]."),
        click.option("--summary", is_flag=True, help="One more decoder pass: a paragraph over the segment texts "
                                                     "and times (after the segments; a row with empty start and end "
                                                     "in csv; a \"summary\" field in json and jsonl)."),
        click.option("--server", "server_url", default=None, metavar="URL",
                     help="Send the work to an OpenAI-compatible server (vLLM, `auricle serve`) instead of loading "
                          "the model here, e.g. http://localhost:8000/v1."),
        click.option("--server-model", default=None,
                     help="With --server: the model name to ask for [default: the first the server lists]."),
        click.option("--api-key-env", default="OPENAI_API_KEY", show_default=True, metavar="NAME",
                     help="With --server: the environment variable holding the API key (unset: no key sent)."),
        click.option("--server-timeout", type=click.FloatRange(0, min_open=True), default=600.0, show_default=True,
                     help="With --server: seconds to wait for one segment's answer."),
        click.option("--retries", type=click.IntRange(0), default=4, show_default=True,
                     help="With --server: tries again after 429, 503 or a failed connection, waiting 1, 2, 4... s "
                          "(or the server's Retry-After)."),
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


def load_language_or_exit(model_name: str, checkpoint: str | None):
    """The audio-language model the options name, or one error line and exit (a tagger is refused unread)."""
    import auricle
    from auricle.models.registry import model_info

    not_language = f"{checkpoint or model_name}: not an audio-language model (describe and ask need MiDashengLM)"
    try:
        if checkpoint is None and model_info(model_name).family != "midashenglm":
            fail(not_language)
        model = auricle.load_model(model_name, checkpoint=checkpoint)
    except AuricleError as error:
        fail(str(error))
    if not hasattr(model, "describe"):
        fail(not_language)
    return model


def _terminal() -> bool:
    return sys.stdout.isatty()


def load_tagger_or_exit(name: str, checkpoint: str | None):
    """The tagger that chooses segments (``--segments events``), or one error line and exit."""
    import auricle
    from auricle.language_model import is_language_checkpoint
    from auricle.models.registry import model_info

    not_a_tagger = (f"{checkpoint or name}: not a tagger (--segments events needs a model with classes, "
                    "such as ced-mini)")
    try:
        # An audio-language model is refused before its weights (16 GB for the 7B) are read.
        if is_language_checkpoint(checkpoint) or (checkpoint is None and model_info(name).family == "midashenglm"):
            fail(not_a_tagger)
        tagger = auricle.load_model(name, checkpoint=checkpoint)
    except AuricleError as error:
        fail(str(error))
    if getattr(tagger, "labels", None) is None or not hasattr(tagger, "tag"):
        fail(not_a_tagger)
    return tagger


def remote_or_exit(url: str, model_name: str | None, api_key_env: str, timeout: float, retries: int):
    """The OpenAI-compatible server ``--server`` names, its model found, or one error line and exit."""
    import os

    from auricle.language.remote import RemoteLanguageModel

    try:
        return RemoteLanguageModel(url, model_name, os.environ.get(api_key_env) or None, timeout, retries)
    except AuricleError as error:
        fail(str(error))


def run(paths, prompt: str, literal: bool, model_name: str, checkpoint: str | None, max_new_tokens: int,
        segment_seconds: float, output_format: str | None, output: str | None, recursive: bool,
        resume: bool, segmentation: str = "fixed", tagger_name: str = DEFAULT_TAGGER,
        tagger_checkpoint: str | None = None, event_threshold: float | None = None, summary: bool = False,
        server_url: str | None = None, server_model: str | None = None, api_key_env: str = "OPENAI_API_KEY",
        server_timeout: float = 600.0, retries: int = 4) -> None:
    from auricle.inference.results import Failure

    output_format = output_format or format_for(output)
    if resume and (output is None or output == "-" or output_format not in RESUMABLE_FORMATS):
        fail(f"--resume needs --output FILE with --format {' or '.join(RESUMABLE_FORMATS)}")
    if not prompt.strip():
        fail("the question is empty" if literal else "the prompt is empty; give a preset or a question")
    if server_url is not None and checkpoint is not None:
        fail("--server and --checkpoint do not combine: the server holds the model")
    files = files_or_exit(paths, recursive, output, "describe")
    done = completed_files(output, output_format) if resume else {}
    todo = not_done(files, done)

    if not todo:  # everything is in --output already: no model to load (16 GB for the 7B)
        report_batch("described", files, todo, 0, resume, output)
        return
    # The tagger first: it is small, and a wrong one is refused before the 7B is read.
    tagger = load_tagger_or_exit(tagger_name, tagger_checkpoint) if segmentation == "events" else None
    if server_url is not None:
        model = remote_or_exit(server_url, server_model, api_key_env, server_timeout, retries)
    else:
        model = load_language_or_exit(model_name, checkpoint)
    if output_format in RESUMABLE_FORMATS and output not in (None, "-"):
        # The diary's settings are null when unused: an output begun before they existed resumes as it was.
        events = tagger is not None
        settings = {"model": model.name, "prompt": prompt, "literal": literal, "max_new_tokens": max_new_tokens,
                    "segment": segment_seconds, "segments": "events" if events else None,
                    "tagger": tagger.name if events else None, "event_threshold": event_threshold if events else None,
                    "summary": True if summary else None}
        differences = settings_differences(output, settings) if resume else []
        if differences:
            fail(f"{output}: written with other settings ({'; '.join(differences)}); resume with the same "
                 "model and options, or write to another file")
        record_settings(output, json.loads(json.dumps(settings)))

    def describe(file, on_text=None):
        if tagger is not None:
            from auricle.language.diary import EventSegmentation

            return model.diary(file, tagger, prompt, max_new_tokens=max_new_tokens, segment_seconds=segment_seconds,
                               options=EventSegmentation(threshold=event_threshold), summary=summary,
                               on_text=on_text, literal=literal)
        ask = model.ask if literal else model.describe
        return ask(file, prompt, max_new_tokens=max_new_tokens, segment_seconds=segment_seconds, on_text=on_text,
                   summary=summary)

    streaming = len(todo) == 1 and output in (None, "-") and output_format == "table" and _terminal()
    stream, writer = open_writer(output, output_format, resume, descriptions=True)
    failures = 0
    try:
        for file in todo:
            try:
                if streaming:
                    click.echo(f"{file}", err=True)
                    result = describe(file, on_text=lambda piece: (stream.write(piece), stream.flush()))
                    stream.write("\n")
                    if result.summary is not None:
                        stream.write(f"summary: {result.summary.text}\n")
                    continue
                result = describe(file)
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
