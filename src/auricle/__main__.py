"""``python -m auricle`` runs the command-line interface."""

from auricle.cli import main

main()
