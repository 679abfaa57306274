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
    """--model, --checkpoint, --device, --threads."""
    command = click.option("--threads", type=click.IntRange(1), default=None,
                           help="CPU threads for the model (default: PyTorch's choice).")(command)
    command = click.option("--device", default="cpu", show_default=True, help="torch device, e.g. cpu or cuda.")(command)
    command = click.option("--checkpoint", type=click.Path(dir_okay=True), default=None,
                           help="Weights file or folder (Zenodo .pt, Hugging Face folder, auricle .safetensors).")(command)
    command = click.option("--model", "model_name", default=DEFAULT_MODEL, show_default=True,
                           help="Model name (see `auricle models`).")(command)
    return command


def load_model_or_exit(model_name: str, checkpoint: str | None, device: str, threads: int | None):
    from auricle.model import load_model

    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return load_model(model_name, checkpoint=checkpoint, device=device)
    except AuricleError as error:
        fail(str(error))
