"""``auricle evaluate``: tagging metrics on a labelled manifest, or event metrics against strong labels."""

from __future__ import annotations

import json
import sys

import click

from auricle.cli.common import (error_line, fail, load_model_or_exit, model_options, output_problem, tag_option_flags,
                                writable)
from auricle.cli.datasets import column_options
from auricle.errors import AuricleError
from auricle.inference.events import MAX_MEDIAN_FILTER
from auricle.io import atomic
from auricle.options import TAG_OPTIONS


@click.command("evaluate")
@click.argument("labels", type=click.Path(exists=True, dir_okay=True))
@click.option("--events", is_flag=True,
              help="LABELS are strong labels (file,onset,offset,label): score detected events, not clip tags.")
@click.option("--predictions", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Score this `auricle tag --format json/jsonl` output instead of running a model.")
@model_options
@click.option("--split", default=None, help="Tagging: evaluate only this split of the manifest.")
@click.option("--audio-dir", type=click.Path(file_okay=False), default=None,
              help="Folder that relative file names in LABELS are under [default: the folder of LABELS].")
@column_options
@tag_option_flags(TAG_OPTIONS, "window", "hop")
@click.option("--pool", type=click.Choice(["max", "mean"]), default="max", show_default=True,
              help="Tagging: how window scores become clip scores.")
@click.option("--threshold", "-t", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Events: score at which a class is active.")
@click.option("--median-filter", type=click.IntRange(1, MAX_MEDIAN_FILTER), default=1, show_default=True, help="Events: median filter length (odd).")
@tag_option_flags(TAG_OPTIONS, "min_duration", "min_gap")
@click.option("--segment", type=click.FloatRange(0.01), default=1.0, show_default=True,
              help="Events: segment length of the segment-based F1 (s).")
@click.option("--psds/--no-psds", default=True, show_default=True, help="Events: compute PSDS1 and PSDS2.")
@click.option("--json", "json_path", default=None, callback=writable(), help="Write the full report as JSON to FILE ('-': stdout, no table).")
@click.option("--csv", "csv_path", default=None, callback=writable(), help="Write the per-class table as CSV to FILE ('-': stdout, no table).")
@click.option("--plot", "plot_path", default=None, callback=writable(), help="Write per-class bars (AP, or event F1) to this PNG (or .svg, .pdf).")
@click.option("--timeline", "timeline_file", default=None,
              help="Events: plot true vs predicted events of this labelled file over its spectrogram.")
@click.option("--timeline-png", default="timeline.png", show_default=True, help="Where --timeline writes its PNG.")
@click.option("--batch-size", "-b", type=click.IntRange(1), default=None,
              help="Windows per model call [default: 2 per stream, at least 4, on a CPU; 32 on an accelerator].")
def evaluate_command(labels, events, predictions, model_name, checkpoint, device, threads, split, audio_dir,
                     file_column, label_column, split_column, window,
                     hop, pool, threshold, median_filter, min_duration, min_gap, segment, psds, json_path, csv_path,
                     plot_path, timeline_file, timeline_png, batch_size) -> None:
    """Score a model (or earlier predictions) against LABELS.

    \b
    Tagging (default): LABELS is a manifest `file,labels[,split]` (labels ';'-separated names
    or AudioSet MIDs) or a folder per class; reports per-class AP, ROC AUC and d', and mAP.
    Events (--events): LABELS is `file,onset,offset,label` (or DCASE filename,...,event_label);
    reports segment-based F1 (1 s), event-based F1 (collars 200 ms / max(200 ms, 20%)) and PSDS.

    Exits with status 1 if some file could not be processed (the others are scored).
    """
    from auricle.downstream import evaluate as ev
    from auricle.inference.events import EventOptions

    if timeline_file and not events:
        fail("--timeline needs --events (strong labels)")
    if timeline_file and (problem := output_problem(timeline_png)) is not None:  # only written with --timeline
        fail(problem)
    try:
        event_options = EventOptions(median_filter, min_duration, min_gap)
        if events:
            reference, files, classes = ev.read_strong_labels(
                labels, audio_dir, warn=lambda line: click.echo(f"auricle: warning: {line}", err=True))
        else:
            from auricle.io.datasets import read_dataset

            dataset = read_dataset(labels, split, audio_dir=audio_dir, check_files=predictions is None,
                                   file_column=file_column, label_column=label_column, split_column=split_column)
            files, classes = dataset.files, dataset.classes
    except (AuricleError, ValueError) as error:
        fail(str(error))
    if timeline_file:  # a typo should cost nothing, not a whole evaluation
        try:
            ev.match_files([timeline_file], files, "--timeline")
        except AuricleError:
            fail(f"--timeline {timeline_file}: not one of the files labelled in {labels}")

    try:
        found, failures, model_label = _predictions(
            ev, labels, files, classes, predictions, events, model_name, checkpoint, device, threads,
            dict(threshold=threshold if events else None, pool=pool, window=window, hop=hop,
                 events=event_options if events else False),
            batch_size,
        )
        for failure in failures:
            click.echo(error_line(failure.error), err=True)
        if events:
            settings = ev.EventSettings(segment=segment, psds=psds)
            report = ev.event_report(reference, found, classes, settings, model_label, failures)
        else:
            report = ev.dataset_tagging_report(dataset, found, model_label, failures)
    except (AuricleError, ValueError) as error:
        fail(str(error))

    from auricle.downstream.eval_tables import report_csv, report_table

    to_stdout = json_path == "-" or csv_path == "-"
    if not to_stdout:
        click.echo(report_table(report))
    if json_path:
        _write_text(json_path, json.dumps(report.to_dict(), indent=2) + "\n")
    if csv_path:
        _write_text(csv_path, report_csv(report))
    try:
        if plot_path or timeline_file:
            from auricle.downstream.plots import plot_file_timeline, plot_report
        if plot_path:
            plot_report(report, plot_path, labels)
        if timeline_file:
            plot_file_timeline(timeline_png, timeline_file, reference, found, classes, model_label)
    except AuricleError as error:
        fail(str(error))
    if failures:
        click.echo(f"auricle: evaluated {report.files} files; {len(failures)} failed", err=True)
        raise SystemExit(1)


def _predictions(ev, labels, files, classes, predictions, events, model_name, checkpoint, device, threads,
                 option_values, batch_size):
    """Predictions of every labelled file, in label order: read from a file or computed by the model."""
    if predictions is not None:
        found, failures = ev.read_matched_predictions(predictions, files, classes)
        return found, failures, f"predictions {predictions}"
    from tqdm import tqdm

    model = load_model_or_exit(model_name, checkpoint, device, threads, exported=True)
    options = model.tag_options(**option_values)
    ev.model_columns(model.labels, classes, labels)  # fail on unknown classes before decoding audio
    found, failures = [], []
    bar = tqdm(total=len(files), unit="file", disable=len(files) < 2 or None, file=sys.stderr)
    for result in ev.predict(model, files, classes, options, batch_size, source=labels):
        (failures if hasattr(result, "error") else found).append(result)
        bar.update(1)
    bar.close()
    return found, failures, model.name


def _write_text(path: str, text: str) -> None:
    from pathlib import Path

    if path == "-":
        click.echo(text, nl=False)
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(target, text)
