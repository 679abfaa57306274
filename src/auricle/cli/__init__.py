"""Command-line interface: ``auricle tag``, ``auricle embed``, ``auricle models``, ``auricle labels``.

Each command is a thin wrapper over library functions; errors of auricle's own
types become one line on stderr.
"""

from __future__ import annotations

import click

from auricle.cli.embed import embed_command
from auricle.cli.info import labels_command, models_command
from auricle.cli.tag import tag_command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="auricle")
def cli() -> None:
    """auricle: sound tagging, event detection and embeddings with CED audio transformers."""


cli.add_command(tag_command)
cli.add_command(embed_command)
cli.add_command(models_command)
cli.add_command(labels_command)


def main() -> None:
    cli()
