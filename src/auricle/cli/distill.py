"""``auricle distill``: shards, teacher pass, store checks (and ``train`` when installed).

Each subcommand is a thin wrapper over :mod:`auricle.distill`. ``train`` lives in
``auricle.cli.distill_train`` (module attribute ``train_command``) and is listed
only when that module exists.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys

import click

from auricle.cli.common import fail, writable
from auricle.distill import DistillUsageError
from auricle.engines.config import PRECISIONS
from auricle.errors import AuricleError, CheckpointError

# Subcommands in other modules: name -> "module:attribute"; listed only when importable.
EXTERNAL_SUBCOMMANDS = {"train": "auricle.cli.distill_train:train_command"}


class _DistillGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        external = [name for name, target in EXTERNAL_SUBCOMMANDS.items()
                    if importlib.util.find_spec(target.split(":")[0]) is not None]
        return sorted(set(super().list_commands(ctx)) | set(external))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name)
        if command is not None or name not in EXTERNAL_SUBCOMMANDS:
            return command
        module, attribute = EXTERNAL_SUBCOMMANDS[name].split(":")
        if importlib.util.find_spec(module) is None:
            return None
        return getattr(importlib.import_module(module), attribute)


@click.group("distill", cls=_DistillGroup)
def distill_command() -> None:
    """Consistent ensemble distillation: shard audio, run teachers, train a student.

    \b
    auricle distill shards recordings/ --out shards/
    auricle distill teach --shards shards/ --teacher ced-mini --teacher ced-base@2 --epochs 10 --out targets/
    auricle distill verify targets/ --sample 32
    """


def count_noun(count: int, noun: str) -> str:
    """``1 shard``, ``2 shards``: report lines read as sentences."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _human_bytes(count: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(count) < 1000 or unit == "GB":
            return f"{count:.1f} {unit}" if unit != "B" else f"{count:.0f} B"
        count /= 1000
    return f"{count:.1f} TB"


@distill_command.command("shards")
@click.argument("sources", nargs=-1)
@click.option("--out", "-o", "out_dir", required=True, type=click.Path(),
              callback=writable(folder=True), help="Shard folder to write.")
@click.option("--files-from", type=click.File("r"), default=None,
              help="Read more sources (files, folders or globs) from FILE, one per line ('-' = stdin).")
@click.option("--chunk-seconds", type=click.FloatRange(0.15), default=10.0, show_default=True,
              help="Chunk length in seconds.")
@click.option("--min-seconds", type=click.FloatRange(0), default=0.15, show_default=True,
              help="Drop chunks (tails, short files) shorter than this; longer tails keep their true length.")
@click.option("--chunks-per-shard", type=click.IntRange(1), default=1000, show_default=True)
@click.option("--subtype", type=click.Choice(["PCM_16", "PCM_24"]), default="PCM_16", show_default=True,
              help="FLAC sample format.")
@click.option("--recursive/--no-recursive", "-r/-R", default=True, show_default=True,
              help="Search named folders through all sub-folders.")
@click.option("--resume", is_flag=True, help="Continue a killed run in --out (same sources and options).")
@click.option("--progress/--no-progress", default=None, help="Progress bar [default: on a terminal].")
def shards_command(sources, out_dir, files_from, chunk_seconds, min_seconds, chunks_per_shard, subtype, recursive,
                   resume, progress) -> None:
    """Cut audio files, folders or globs into 16 kHz chunks in tar shards (WebDataset layout).

    Unreadable sources are reported on stderr and skipped; the exit status is
    then 1. The folder gets index.csv (key, shard, source, start, end,
    num_samples) and manifest.json (options, per-shard sha256, failures).
    """
    from auricle.audio import list_audio_files
    from auricle.distill.shards import ShardConfig, write_shards

    entries = list(sources)
    if files_from is not None:
        entries += [line.strip() for line in files_from if line.strip() and not line.startswith("#")]
    if not entries:
        fail("no sources given (pass files, folders or globs, or --files-from FILE)")
    try:
        config = ShardConfig(chunk_seconds, min_seconds, chunks_per_shard, subtype)
        files = list_audio_files(entries, recursive=recursive)
    except AuricleError as error:
        fail(str(error))
    if not files:
        fail("no audio files found in " + " ".join(entries))
    from tqdm import tqdm

    show = progress if progress is not None else sys.stderr.isatty()
    told: list[str] = []

    def tell(detail: str) -> None:  # as it happens, above the progress bar
        told.append(detail)
        tqdm.write(f"auricle: error: {detail}", file=sys.stderr)

    try:
        report = write_shards(files, out_dir, config, resume=resume, progress=show, on_failure=tell)
    except DistillUsageError as error:  # refused before any work: a usage error, as in every command
        fail(str(error))
    except AuricleError as error:
        fail(str(error), 1)
    for failure in report.failures[:len(report.failures) - len(told)]:  # those of the run this one resumed
        click.echo(f"auricle: error: {failure['error']}", err=True)
    click.echo(f"{count_noun(report.chunks, 'chunk')} ({report.seconds / 3600:.2f} h) in "
               f"{count_noun(report.shards, 'shard')} in {out_dir}; "
               f"{len(report.failures)} of {count_noun(report.sources, 'source')} failed; "
               f"{count_noun(report.dropped_short, 'chunk')} under {min_seconds:g} s dropped", err=True)
    if report.failures:
        sys.exit(1)


def _augment_options(command):
    options = [
        click.option("--shift", type=click.FloatRange(0, 1), default=0.5, show_default=True,
                     help="Largest roll, as a fraction of the chunk length."),
        click.option("--shift-prob", type=click.FloatRange(0, 1), default=0.5, show_default=True),
        click.option("--gain-db", type=click.FloatRange(0, 60), default=0.0, show_default=True,
                     help="Largest gain change in dB (uniform in +-gain)."),
        click.option("--time-mask", type=click.IntRange(0), default=192, show_default=True,
                     help="Largest time mask in frames (0: none)."),
        click.option("--time-masks", type=click.IntRange(0), default=1, show_default=True),
        click.option("--freq-mask", type=click.IntRange(0), default=24, show_default=True,
                     help="Largest frequency mask in mel bands (0: none)."),
        click.option("--freq-masks", type=click.IntRange(0), default=1, show_default=True),
        click.option("--mask-value", type=float, default=0.0, show_default=True, help="Masked log-mel value (dB)."),
        click.option("--mixup-prob", type=click.FloatRange(0, 1), default=0.0, show_default=True,
                     help="Probability of mixing a view with a partner chunk of its shard."),
        click.option("--mixup-alpha", type=click.FloatRange(0, min_open=True), default=1.0, show_default=True,
                     help="Mixup weight ~ Beta(alpha, alpha)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@distill_command.command("teach")
@click.option("--shards", "shards_dir", required=True, type=click.Path(file_okay=False, exists=True),
              help="Shard folder from `auricle distill shards`.")
@click.option("--teacher", "teachers", multiple=True, required=True,
              help="Model name, checkpoint path or module:function, optionally @WEIGHT (repeatable).")
@click.option("--out", "-o", "out_dir", required=True, type=click.Path(),
              callback=writable(folder=True), help="Target store folder.")
@click.option("--epochs", type=click.IntRange(1), default=1, show_default=True, help="Augmented views per chunk.")
@click.option("--top-k", type=click.IntRange(1), default=20, show_default=True, help="Classes kept per view.")
@click.option("--seed", type=int, default=0, show_default=True, help="Run seed of the augmentation.")
@click.option("--codec", type=click.Choice(["sqrt-u8", "u16", "f16", "f32"]), default="sqrt-u8", show_default=True,
              help="How stored probabilities are quantised.")
@click.option("--batch-size", "-b", type=click.IntRange(1), default=16, show_default=True)
@_augment_options
@click.option("--device", default="cpu", show_default=True, help="torch device; under torchrun, cuda uses LOCAL_RANK.")
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True,
              help="What CED teachers run in: bf16 is ~4x faster for ced-base on CPUs with AMX "
                   "(see `auricle system`); the store records it.")
@click.option("--threads", type=click.IntRange(1), default=None, help="CPU threads per process.")
@click.option("--resume", is_flag=True, help="Continue a killed run: finished units are kept, the rest are done.")
@click.option("--progress/--no-progress", default=None, help="Progress bar [default: on a terminal].")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
def teach_command(shards_dir, teachers, out_dir, epochs, top_k, seed, codec, batch_size, shift, shift_prob, gain_db,
                  time_mask, time_masks, freq_mask, freq_masks, mask_value, mixup_prob, mixup_alpha, device, precision,
                  threads, resume, progress, as_json) -> None:
    """Score augmented views of every chunk with the teachers; store their top-k outputs.

    Run it under `torchrun --nproc_per_node N` to split the (shard, epoch)
    units over N processes.
    """
    import os

    import torch

    from auricle.distill.augment import AugmentConfig
    from auricle.distill.teach import TeachConfig, teach
    from auricle.distill.teachers import TeacherSpec

    if threads is not None:
        torch.set_num_threads(threads)
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        device = f"cuda:{os.environ['LOCAL_RANK']}"
    try:
        augment = AugmentConfig(shift, shift_prob, gain_db, time_mask, time_masks, freq_mask, freq_masks,
                                mask_value, mixup_prob, mixup_alpha)
        config = TeachConfig(epochs, top_k, seed, batch_size, codec, augment)
        specs = [TeacherSpec.parse(text) for text in teachers]
    except AuricleError as error:
        fail(str(error))
    show = progress if progress is not None else sys.stderr.isatty()
    try:
        report = teach(shards_dir, out_dir, specs, config, resume=resume, device=device, progress=show,
                       on_failure=lambda line: click.echo(f"auricle: error: {line}", err=True), precision=precision)
    except (CheckpointError, DistillUsageError) as error:  # bad input or options, as for `auricle tag`
        fail(str(error))
    except AuricleError as error:
        fail(str(error), 1)
    for problem in report.redone:
        click.echo(f"auricle: warning: {problem}; done again", err=True)
    if report.rank != 0:
        click.echo(f"rank {report.rank} of {report.world_size}: {count_noun(report.views_written, 'view')} in "
                   f"{count_noun(report.units_written, 'unit')} ({report.units_skipped} already done)", err=True)
        if report.failures:
            sys.exit(1)
        return
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=1))
    click.echo(
        f"teacher pass: {count_noun(report.views_written, 'view')} in {count_noun(report.units_written, 'unit')} "
        f"({report.units_skipped} already done) in {report.seconds:.1f} s ({report.views_per_second:.1f} views/s "
        f"on rank 0 of {report.world_size})", err=True)
    click.echo(
        f"store: {count_noun(report.views_total, 'view')}, {_human_bytes(report.store_bytes)} = {report.bytes_per_view:.1f} B/view "
        f"(top-{top_k} payload {report.payload_bytes_per_view} B/view; official 84 B/view); "
        f"{100 * report.store_fraction_of_shards:.3f}% of the shards' audio "
        f"({100 * report.store_fraction_of_pcm16:.3f}% of 16-bit PCM)", err=True)
    if not report.complete:
        click.echo("store is incomplete (other ranks or a later --resume must finish it)", err=True)
    if report.failures:
        click.echo(f"auricle: {count_noun(len(report.failures), 'unit')} failed; repair their shards and run again with "
                   "--resume", err=True)
        sys.exit(1)


@distill_command.command("verify")
@click.argument("store", type=click.Path(file_okay=False, exists=True))
@click.option("--sample", "-n", type=click.IntRange(1), default=16, show_default=True, help="Views to recompute.")
@click.option("--seed", type=int, default=0, show_default=True, help="Which views are drawn.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--threads", type=click.IntRange(1), default=None)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@click.option("--shards", "shards_dir", type=click.Path(file_okay=False, exists=True), default=None,
              help="Where the shard set is now [default: where it was when the targets were made].")
@click.option("--teacher", "callables", multiple=True,
              help="A module:function teacher the store names that may be imported (repeatable); "
                   "no other code named by the store is run.")
def verify_command(store, sample, seed, device, threads, as_json, shards_dir, callables) -> None:
    """Recompute random stored views with the teachers and check the stored top-k.

    Exits with status 1 if any view differs by more than one quantisation step, or if
    the store lacks units (a teacher pass that did not finish). A module:function
    teacher is imported only when given again with --teacher (auricle's own YAMNet
    teacher excepted), and only if its source still has the recorded sha256.
    """
    import torch

    from auricle.distill.verify import verify

    if threads is not None:
        torch.set_num_threads(threads)
    try:
        report = verify(store, sample=sample, seed=seed, device=device, shards_dir=shards_dir, callables=callables)
    except DistillUsageError as error:
        fail(str(error))
    except AuricleError as error:
        fail(str(error), 1)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=1))
    steps = report.max_code_distance
    closeness = ("the stored codes" if steps == 0
                 else f"at most {count_noun(steps, 'quantisation step')} from the stored codes")
    click.echo(f"verified {count_noun(report.sampled, 'view')}: {report.passed} passed; recomputed and encoded "
               f"again, the targets are {closeness}; decoded, the stored values are within "
               f"{report.max_abs_error:.2e} of the recomputed probabilities (the codec's rounding); "
               f"{report.index_mismatches} with another class order", err=True)
    for failure in report.failures:
        how = ("not finite" if failure["max_abs_error"] is None
               else f"{count_noun(failure['code_distance'], 'step')}, same classes: {failure['same_classes']}")
        click.echo(f"auricle: error: {failure['shard']} epoch {failure['epoch']} {failure['key']}: stored targets "
                   f"differ ({how})", err=True)
    for damage in report.damaged:
        click.echo(f"auricle: error: {damage}", err=True)
    if report.missing_units:
        shown = ", ".join(report.missing_units[:3]) + (", ..." if len(report.missing_units) > 3 else "")
        click.echo(f"auricle: error: {store}: {count_noun(len(report.missing_units), 'unit')} missing ({shown}); "
                   "the teacher pass did not finish: continue it with distill teach --resume", err=True)
    if not report.ok:
        sys.exit(1)
