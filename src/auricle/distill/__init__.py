"""Consistent Ensemble Distillation: shards, replayable augmentation, teachers, target store.

The pipeline (see docs/distill.md):

    audio files --shards--> tar shards (16 kHz chunks, index, checksums)
                --teach---> per (shard, epoch) top-k teacher targets of augmented views
                --train---> a student that replays exactly the views the teachers saw

Submodules are imported on use; importing this package does no work.
"""

from __future__ import annotations

from auricle.errors import AuricleError
from auricle.fingerprints import file_key as file_sha256  # the project's one file hash


class DistillError(AuricleError):
    """A shard set, target store, teacher or distillation option cannot be used."""


class DistillUsageError(DistillError):
    """Options or inputs refused before any work starts; the CLI exits 2 for these, as every command does."""


__all__ = ["DistillError", "DistillUsageError", "write_json_atomic", "read_manifest", "file_sha256"]


def write_json_atomic(path, payload: dict) -> None:
    """Write JSON to a temporary file beside ``path`` and rename it into place."""
    import json

    from auricle.io import atomic

    atomic.write_text(path, json.dumps(payload, indent=1, sort_keys=True))


def read_manifest(directory, name: str, format_name: str, what: str) -> dict:
    """Read ``directory/name`` and check its ``format``; one-line errors naming the file."""
    import json
    from pathlib import Path

    path = Path(directory) / name
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise DistillError(f"{directory}: not {what} (no {name})") from None
    except (OSError, json.JSONDecodeError) as error:
        raise DistillError(f"{path}: unreadable manifest ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != format_name:
        raise DistillError(f"{path}: not the manifest of {what}")
    return manifest
