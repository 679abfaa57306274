"""``auricle probe``: a linear or MLP probe on frozen embeddings, saved as a head `auricle tag` can use."""

from __future__ import annotations

import json

import click

from auricle.cli.common import error_line, fail, load_model_or_exit, model_options, writable
from auricle.cli.datasets import dataset_options, read_dataset_or_exit
from auricle.errors import AuricleError


@click.command("probe")
@click.argument("dataset", type=click.Path(exists=True))
@model_options
@dataset_options
@click.option("--output", "-o", type=click.Path(), default=None, callback=writable(),
              help="Save encoder + probe head as this .safetensors checkpoint for `auricle tag` (one file: config and classes in its metadata).")
@click.option("--head", type=click.Choice(["linear", "mlp"]), default="linear", show_default=True,
              help="linear: LayerNorm+Linear (the CED head); mlp: LayerNorm+Linear+GELU+Linear.")
@click.option("--hidden", type=click.IntRange(1), default=256, show_default=True, help="Hidden width of --head mlp.")
@click.option("--epochs", type=click.IntRange(1), default=200, show_default=True)
@click.option("--lr", "learning_rate", type=click.FloatRange(0, min_open=True), default=1e-3, show_default=True)
@click.option("--weight-decay", type=click.FloatRange(0), default=1e-4, show_default=True)
@click.option("--batch-size", "-b", type=click.IntRange(1), default=256, show_default=True)
@click.option("--folds", "-k", type=click.IntRange(0), default=0, show_default=True,
              help="Also report K-fold cross-validation on the training data (K >= 2).")
@click.option("--train-split", default="train", show_default=True)
@click.option("--test-split", default="test", show_default=True, help="Scored if present.")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="Embedding cache [default: $XDG_CACHE_HOME/auricle/embeddings].")
@click.option("--no-cache", is_flag=True, help="Do not read or write the embedding cache.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--result", type=click.Path(), default=None, callback=writable(),
              help="Also write the scores as JSON here.")
@click.option("--progress/--no-progress", default=None, help="Progress bar [default: on a terminal].")
def probe_command(dataset, model_name, checkpoint, device, threads, audio_dir, file_column, label_column,
                  split_column, output, head, hidden, epochs, learning_rate, weight_decay, batch_size, folds,
                  train_split, test_split, cache_dir, no_cache, seed, result, progress) -> None:
    """Train a probe on frozen encoder embeddings of DATASET (a folder per class, or a CSV/TSV manifest).

    Single-label data gets a softmax probe, multi-label data a sigmoid one.
    Reports accuracy, macro F1, mAP and d' on the test split and/or per fold.
    Files that cannot be read are reported and left out; the exit status is then 1.
    """
    import sys

    from auricle.downstream.probe import ProbeConfig, default_cache_dir, run_probe

    if folds == 1:
        fail("--folds needs at least 2 (or 0 for none)")
    labelled = read_dataset_or_exit(dataset, audio_dir, file_column, label_column, split_column)
    splits = f"splits: {', '.join(labelled.splits)}" if labelled.splits else "it has no splits"
    if labelled.splits:
        if train_split not in labelled.splits:
            fail(f"{dataset}: no split {train_split!r} ({splits})")
        train, test = labelled.split(train_split), (labelled.split(test_split) if test_split in labelled.splits else None)
    else:
        train, test = labelled, None
    asked_for_test = click.get_current_context().get_parameter_source("test_split") == click.core.ParameterSource.COMMANDLINE
    if test is None and (asked_for_test or (folds < 2 and output is None)):
        # Nothing to score and nothing to save would train for nothing.
        fail(f"{dataset}: no split {test_split!r} to score ({splits}); name one with --test-split, "
             "cross-validate with --folds K, or save the probe with --output FILE")
    if labelled.multi_label:  # one empty label field makes it so: sigmoid heads and mAP, so say why
        click.echo(f"auricle: multi-label data ({labelled.multi_label_because}): a sigmoid probe, scored by mAP",
                   err=True)
    model = load_model_or_exit(model_name, checkpoint, device, threads)
    config = ProbeConfig(head=head, hidden=hidden, epochs=epochs, batch_size=batch_size,
                         learning_rate=learning_rate, weight_decay=weight_decay, seed=seed)
    show = sys.stderr.isatty() if progress is None else progress
    try:
        outcome = run_probe(model, train, test, config, folds=folds,
                            cache_dir=None if no_cache else (cache_dir or default_cache_dir()),
                            output=output, progress=show,
                            log=lambda line: click.echo(f"auricle: {line}", err=True))
    except (AuricleError, ValueError) as error:
        fail(str(error))
    for failure in outcome.failures:
        click.echo(error_line(failure['error']), err=True)
    summary = outcome.to_dict()
    summary.pop("failures")
    text = json.dumps(summary, indent=2)
    if result is not None:
        from auricle.io import atomic

        atomic.write_text(result, text + "\n")
    click.echo(text)
    if outcome.failures:
        click.echo(f"auricle: {len(outcome.failures)} files failed and were left out", err=True)
        raise SystemExit(1)
