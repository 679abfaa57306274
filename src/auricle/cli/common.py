"""Options and helpers shared by the commands."""

from __future__ import annotations

import sys
from collections.abc import Callable

import click
import torch

from auricle.errors import AuricleError
from auricle.models.registry import DEFAULT_MODEL


def fail(message: str, code: int = 2) -> None:
    """Print one line on stderr and exit."""
    click.echo(f"auricle: error: {message}", err=True)
    sys.exit(code)


def model_options(command: Callable) -> Callable:
    """--model, --checkpoint, --device, --threads, --engine, --precision.

    --engine and --precision are not passed to the command: they are kept in the
    click context and read by :func:`load_model_or_exit`, so every command built
    on these options gets them without changing its signature.
    """
    command = click.option("--precision", type=click.Choice(["fp32", "bf16", "int8"]), default="fp32",
                           show_default=True, expose_value=False, callback=_remember,
                           help="Encoder arithmetic: bf16 is fast on CPUs with avx512_bf16/AMX, int8 with VNNI.")(command)
    command = click.option("--engine", type=click.Choice(["torch", "onnx"]), default="torch", show_default=True,
                           expose_value=False, callback=_remember,
                           help="Who runs the encoder: PyTorch, or ONNX Runtime (exported once, then cached).")(command)
    command = click.option("--threads", type=click.IntRange(1), default=None,
                           help="CPU threads for the model [default: one per usable core].")(command)
    command = click.option("--device", default="cpu", show_default=True, help="torch device, e.g. cpu or cuda.")(command)
    command = click.option("--checkpoint", type=click.Path(dir_okay=True), default=None,
                           help="Weights file or folder (Zenodo .pt, Hugging Face folder, auricle .safetensors).")(command)
    command = click.option("--model", "model_name", default=DEFAULT_MODEL, show_default=True,
                           help="Model name (see `auricle models`).")(command)
    return command


def _remember(ctx: click.Context, param: click.Parameter, value):
    ctx.meta[f"auricle.{param.name}"] = value
    return value


def load_model_or_exit(model_name: str, checkpoint: str | None, device: str, threads: int | None,
                       engine: str | None = None, precision: str | None = None):
    from auricle.inference.tuning import default_threads
    from auricle.model import load_model

    ctx = click.get_current_context(silent=True)
    meta = ctx.meta if ctx is not None else {}
    engine = engine or meta.get("auricle.engine", "torch")
    precision = precision or meta.get("auricle.precision", "fp32")
    threads = threads or default_threads()
    torch.set_num_threads(threads)
    try:
        return load_model(model_name, checkpoint=checkpoint, device=device, engine=engine, precision=precision,
                          threads=threads)
    except AuricleError as error:
        fail(str(error))
