"""``auricle finetune``: train a CED or Dasheng encoder with a new head on your own labelled clips."""

from __future__ import annotations

import json

import click

from auricle.cli.common import (
    accepts, fail, given_on_command_line, known_model, training_precision_option, writable,
)
from auricle.cli.datasets import dataset_options, read_dataset_or_exit
from auricle.errors import AuricleError
from auricle.models.registry import DEFAULT_MODEL


@click.command("finetune")
@click.argument("dataset", type=click.Path(exists=True))
@click.option("--output", "-o", required=True, type=click.Path(), callback=writable(folder=True),
              help="Folder for model.safetensors (one file: config and classes in its metadata), last.pt (resume point) and result.json.")
@click.option("--model", "model_name", default=DEFAULT_MODEL, show_default=True, callback=known_model,
              help="Encoder to start from (see `auricle models`); with --from-scratch only its size is used.")
@click.option("--checkpoint", type=click.Path(exists=True), default=None, help="Start from these weights instead.")
@click.option("--from-scratch", is_flag=True, help="Random initialisation of the --model size.")
@dataset_options
@click.option("--train-split", default="train", show_default=True)
@click.option("--valid-split", default=None,
              help="Validation split [default: valid/validation/val/dev if present, else --valid-fraction of train].")
@click.option("--valid-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.1,
              show_default=True)
@click.option("--test-split", default="test", show_default=True, help="Scored once with the best weights, if present.")
@click.option("--epochs", type=click.IntRange(1), default=30, show_default=True)
@click.option("--batch-size", "-b", type=click.IntRange(1), default=32, show_default=True)
@click.option("--lr", "learning_rate", type=click.FloatRange(0, min_open=True), default=5e-4, show_default=True)
@click.option("--weight-decay", type=click.FloatRange(0), default=0.05, show_default=True)
@click.option("--warmup", "warmup_epochs", type=click.FloatRange(0), default=1.0, show_default=True,
              help="Epochs of linear learning-rate warm-up before the cosine decay.")
@click.option("--train-blocks", type=click.IntRange(0), default=None,
              help="Fine-tune only the last N blocks (0: the head only) [default: everything].")
@click.option("--time-masks", type=click.IntRange(0), default=2, show_default=True, help="SpecAugment time masks.")
@click.option("--time-mask-fraction", type=click.FloatRange(0, 1), default=0.15, show_default=True,
              help="Longest time mask as a fraction of the clip.")
@click.option("--freq-masks", type=click.IntRange(0), default=2, show_default=True, help="SpecAugment frequency masks.")
@click.option("--freq-mask-bands", type=click.IntRange(0), default=8, show_default=True,
              help="Widest frequency mask in mel bands.")
@click.option("--mixup", "mixup_alpha", type=click.FloatRange(0), default=0.0, show_default=True,
              help="Mixup Beta(a, a) parameter; 0 turns mixup off.")
@click.option("--balanced/--no-balanced", default=False, show_default=True, help="Class-balanced sampling.")
@click.option("--patience", type=click.IntRange(1), default=8, show_default=True,
              help="Stop after this many epochs without a better validation metric.")
@click.option("--metric", type=click.Choice(["auto", "accuracy", "map"]), default="auto", show_default=True,
              help="Validation metric (auto: accuracy for single-label, mAP for multi-label).")
@click.option("--max-seconds", type=click.FloatRange(0.15), default=10.0, show_default=True,
              help="Training crop length (evaluation sees whole clips).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--name", default=None, help="Model name stored in the checkpoint [default: the output folder's name].")
@click.option("--resume", is_flag=True, help="Continue from OUTPUT/last.pt.")
@click.option("--stop-after", type=click.IntRange(1), default=None,
              help="End after N epochs of this call (resume later with --resume), e.g. for time-limited jobs.")
@training_precision_option
@click.option("--device", default="cpu", show_default=True, help="torch device; under torchrun, cuda uses LOCAL_RANK.")
@click.option("--threads", type=click.IntRange(1), default=None, help="CPU threads.")
@click.option("--progress/--no-progress", default=None, help="Progress bars [default: on a terminal].")
def finetune_command(dataset, output, model_name, checkpoint, from_scratch, audio_dir, file_column, label_column,
                     split_column, train_split, valid_split, valid_fraction, test_split, epochs, batch_size,
                     learning_rate, weight_decay, warmup_epochs, train_blocks, time_masks, time_mask_fraction,
                     freq_masks, freq_mask_bands, mixup_alpha, balanced, patience, metric, max_seconds, seed, name,
                     resume, stop_after, precision, device, threads, progress) -> None:
    """Fine-tune an encoder with a new head on DATASET (a folder per class, or a CSV/TSV manifest).

    The best weights (by validation metric) go to OUTPUT/model.safetensors,
    which `auricle tag --checkpoint` loads. Under `torchrun` each process
    trains on its share of every epoch.
    """
    import sys
    from pathlib import Path

    from auricle.loading import load_network, precheck

    ctx = click.get_current_context()
    try:  # an exported file or an audio-language model: refused before reading the dataset and importing torch
        precheck(model_name, checkpoint, accepts(ctx, exported=False))
    except AuricleError as error:
        fail(str(error))

    import torch

    from auricle.downstream.finetune import FinetuneConfig, finetune
    from auricle.io.datasets import training_splits

    if threads is not None:
        torch.set_num_threads(threads)
    labelled = read_dataset_or_exit(dataset, audio_dir, file_column, label_column, split_column)
    config = FinetuneConfig(
        epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, weight_decay=weight_decay,
        warmup_epochs=warmup_epochs, train_blocks=train_blocks, time_masks=time_masks,
        time_mask_fraction=time_mask_fraction, freq_masks=freq_masks, freq_mask_bands=freq_mask_bands,
        mixup_alpha=mixup_alpha, balanced=balanced, patience=patience, metric=metric, max_seconds=max_seconds,
        seed=seed, precision=precision,
    )
    show = sys.stderr.isatty() if progress is None else progress
    say = lambda line: click.echo(f"auricle: {line}", err=True)  # noqa: E731
    try:
        splits = training_splits(labelled, train_split, valid_split, test_split, valid_fraction, seed)
        encoder, origin = load_network(model_name, checkpoint, from_scratch=from_scratch, seed=seed,
                                       name_given=given_on_command_line(ctx, "model_name"),
                                       accepts=accepts(ctx, exported=False))
        if train_blocks is not None and train_blocks > len(encoder.blocks):
            fail(f"--train-blocks {train_blocks}: the encoder has only {len(encoder.blocks)} blocks")
        say(f"encoder {origin}; {len(splits.train)} training clips, {len(splits.validation)} validation "
            f"({splits.validation_origin}), {len(splits.test) if splits.test else 0} test; "
            f"{len(labelled.classes)} class{'' if len(labelled.classes) == 1 else 'es'}"
            f"{f' (multi-label: {labelled.multi_label_because})' if labelled.multi_label else ''}")
        result = finetune(encoder, splits.train, splits.validation, output, config, test=splits.test,
                          name=name or Path(output).name, resume=resume, stop_after=stop_after, device=device, progress=show, log=say)
    except AuricleError as error:
        fail(str(error))
    except ValueError as error:
        fail(str(error))
    summary = {"checkpoint": result.checkpoint, "best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
               "validation": result.validation, "test": result.test}
    click.echo(json.dumps(summary, indent=2))
    if result.failures:
        say(f"{len(result.failures)} files could not be decoded and were left out (listed in result.json)")
        raise SystemExit(1)
