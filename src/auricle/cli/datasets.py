"""Options that describe a labelled dataset, shared by the commands that train or score on one."""

from __future__ import annotations

from collections.abc import Callable

import click

from auricle.cli.common import fail
from auricle.errors import AuricleError


def column_options(command: Callable) -> Callable:
    """--file-column, --label-column, --split-column: the manifest's columns."""
    for option in reversed((
        click.option("--file-column", default="file", show_default=True, help="Manifest column with the audio file."),
        click.option("--label-column", default="labels", show_default=True,
                     help="Manifest column with the classes (';'-separated names or AudioSet MIDs)."),
        click.option("--split-column", default="split", show_default=True, help="Manifest column with the split name."),
    )):
        command = option(command)
    return command


def dataset_options(command: Callable) -> Callable:
    """--audio-dir, --file-column, --label-column, --split-column."""
    command = column_options(command)
    return click.option("--audio-dir", type=click.Path(file_okay=False), default=None,
                        help="Folder that relative paths in the manifest are under [default: the manifest's folder].")(
        command)


def read_dataset_or_exit(path: str, audio_dir: str | None, file_column: str, label_column: str, split_column: str):
    from auricle.io.datasets import read_dataset

    try:
        return read_dataset(path, audio_dir=audio_dir, file_column=file_column,
                            label_column=label_column, split_column=split_column)
    except AuricleError as error:
        fail(str(error))
