"""`auricle distill train`: train a student on the teachers' stored targets."""

from __future__ import annotations

import sys

import click

from auricle.cli.common import training_precision_option, writable
from auricle.distill.fill import DEFAULT_FILL, FILL_MODES


@click.command("train")
@click.option("--shards", type=click.Path(exists=True, file_okay=False), required=True,
              help="Shard folder written by `auricle distill shards`.")
@click.option("--targets", "targets", type=click.Path(exists=True, file_okay=False), required=True,
              help="Target store written by `auricle distill teach` on those shards.")
@click.option("--out", type=click.Path(file_okay=False), required=True, callback=writable(folder=True),
              help="Run folder: logs, states, best weights and the final student.safetensors.")
@click.option("--student", default="ced-tiny", show_default=True,
              help="Student size (ced-tiny ... ced-base) or a JSON file of CEDConfig fields; initialised at random.")
@click.option("--epochs", type=click.IntRange(1), default=1, show_default=True,
              help="Passes over the chunks; the stored teacher epochs are cycled.")
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True, help="Views per process and step.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-3, show_default=True,
              help="Peak learning rate (AdamW).")
@click.option("--weight-decay", type=click.FloatRange(min=0), default=0.01, show_default=True)
@click.option("--warmup-steps", type=click.IntRange(0), default=None, help="Linear warm-up steps [default: 5% of all].")
@click.option("--final-lr-fraction", type=click.FloatRange(0, 1), default=0.1, show_default=True,
              help="Cosine decay ends at this fraction of the peak.")
@click.option("--clip-grad", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Clip the gradient norm to this; 0 disables.")
@click.option("--fill", type=click.Choice(FILL_MODES), default=DEFAULT_FILL, show_default=True,
              help="Target value of the classes outside the stored top-k.")
@click.option("--mixup-alpha", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Student-side mixup within the batch, Beta(alpha, alpha), between views of equal length "
                   "(a warning says if most have none); 0 disables.")
@click.option("--inconsistent", is_flag=True,
              help="Draw fresh augmentations for the student instead of replaying the teacher's (ablation).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of initialisation, order and mixup.")
@training_precision_option
@click.option("--shuffle-shards", type=click.IntRange(1), default=4, show_default=True,
              help="Shards shuffled together (and held decoded in memory) at a time.")
@click.option("--holdout-fraction", type=click.FloatRange(0, 1, max_open=True), default=0.01, show_default=True,
              help="Chunks kept out of training to measure agreement with the teachers.")
@click.option("--holdout-max", type=click.IntRange(0), default=128, show_default=True,
              help="At most this many held-out chunks.")
@click.option("--eval-csv", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Labelled CSV/TSV (file, labels[, split]) to score mAP (and accuracy) during training.")
@click.option("--eval-split", default=None, help="Only this split of --eval-csv.")
@click.option("--eval-label-column", default="labels", show_default=True, help="Label column of --eval-csv.")
@click.option("--eval-audio-dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="Folder the CSV's file names are relative to [default: the CSV's folder].")
@click.option("--head-prior/--no-head-prior", default=True, show_default=True,
              help="Start the output biases at the log-odds of the classes' mean stored targets.")
@click.option("--checkpoint-every", type=click.IntRange(1), default=500, show_default=True,
              help="Save a full resume point every N steps.")
@click.option("--eval-every", type=click.IntRange(1), default=None, help="Evaluate every N steps [default: with checkpoints].")
@click.option("--average-best", type=click.IntRange(0), default=4, show_default=True,
              help="The final student averages this many best evaluated weights; 0: the last weights.")
@click.option("--keep-states", type=click.IntRange(1), default=2, show_default=True, help="Resume points kept on disk.")
@click.option("--log-every", type=click.IntRange(1), default=10, show_default=True, help="Steps between train.csv rows.")
@click.option("--device", default="auto", show_default=True, help="auto (cuda:LOCAL_RANK if available), cpu or cuda.")
@click.option("--threads", type=click.IntRange(1), default=None, help="CPU threads per process.")
@click.option("--stop-after-steps", type=click.IntRange(1), default=None,
              help="Stop after this many steps in all (e.g. to fit a job's time limit), keeping a resume point there; continue with --resume.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its newest resume point.")
@click.option("--quiet", is_flag=True, help="No progress bar (there is none when stderr is not a terminal).")
def train_command(threads, quiet, **options):
    """Train a student on the teachers' top-k targets, replaying the views they scored.

    Runs on one process, or under torchrun with DistributedDataParallel (gloo on
    CPU, nccl on GPU):

    \b
      torchrun --standalone --nproc-per-node 2 -m auricle distill train ...

    The final student (`OUT/student.safetensors`) loads with `auricle tag --checkpoint`.
    """
    import json

    import torch

    from auricle.cli.common import fail
    from auricle.cli.distill import count_noun
    from auricle.distill.train import TrainConfig, train
    from auricle.errors import AuricleError

    if threads is not None:
        torch.set_num_threads(threads)
    try:
        # A bar only on a terminal: in a log file it is thousands of carriage-return frames (as teach does).
        result = train(TrainConfig(progress=not quiet and sys.stderr.isatty(), **options))
    except AuricleError as error:
        fail(str(error))
    if result.final_checkpoint is not None:
        scores = ", ".join(f"{key} {value:.4f}" for key, value in sorted(result.final_scores.items()))
        click.echo(f"student: {result.final_checkpoint} ({count_noun(result.steps, 'step')}; "
                   f"{scores or 'no evaluation'})")
        if result.averaged_steps:
            click.echo(f"averaged the weights of steps {json.dumps(result.averaged_steps)}")
    elif not result.finished and result.main:  # once, not once per process under torchrun
        click.echo(f"stopped after step {result.steps} of {result.total_steps}; continue with --resume", err=True)
