"""A MiDashengLM model folder before its weights are read: is it one, and does it fit in memory.

Torch-free and numpy-free, so the loading path can recognise a folder and refuse one that cannot fit
without importing either (:mod:`auricle.models.families` names :func:`is_language_checkpoint`).
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

from auricle.errors import CheckpointError

#: Memory kept free beyond the weights (activations, KV cache, the interpreter), as a fraction of them.
MEMORY_HEADROOM = 0.1


def is_language_checkpoint(path: str | os.PathLike | None) -> bool:
    """Whether ``path`` is a MiDashengLM folder (its config.json names the model)."""
    if path is None or not Path(path).is_dir():
        return False
    try:
        values = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(values, dict) and (values.get("model_type") == "midashenglm"
                                         or "MiDashengLMModel" in (values.get("architectures") or []))


def _safetensors_bytes(path: Path) -> int:
    """Bytes of a safetensors file's tensors, from its header alone."""
    with open(path, "rb") as handle:
        header = json.loads(handle.read(struct.unpack("<Q", handle.read(8))[0]))
    return max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)


def checkpoint_bytes(folder: Path) -> int | None:
    """Bytes of a model folder's tensors (the index's total_size, else the shards' headers); None if unknown."""
    index = folder / "model.safetensors.index.json"
    try:
        if index.is_file():
            values = json.loads(index.read_text())
            total = (values.get("metadata") or {}).get("total_size")
            if total is not None:
                return int(total)
            shards = sorted(set(values["weight_map"].values()))
            return sum(_safetensors_bytes(folder / shard) for shard in shards)
        if (folder / "model.safetensors").is_file():
            return _safetensors_bytes(folder / "model.safetensors")
    except (OSError, ValueError, KeyError, TypeError, AttributeError, struct.error):
        return None  # unreadable: the checkpoint reader names the problem
    return None


def available_memory() -> int:
    """Bytes of memory available for new allocations (Linux's MemAvailable, else free physical pages)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_fits(folder: Path, source: str, precision: str | None = None) -> None:
    """Refuse, before reading any weights, a checkpoint bigger than the memory available (int8: about
    0.6 of a bf16 checkpoint's size, :data:`auricle.language.precision.INT8_MEMORY_FRACTION`)."""
    from auricle.language.precision import INT8_MEMORY_FRACTION

    size = checkpoint_bytes(folder)
    if size is None:
        return
    if precision == "int8":
        size = int(size * INT8_MEMORY_FRACTION)
    free = available_memory()
    if size * (1 + MEMORY_HEADROOM) > free:
        smaller = "" if precision == "int8" else "precision=\"int8\" (--precision int8, about 9.5 GB), "
        raise CheckpointError(
            f"{source}: the weights need {size / 1e9:.1f} GB of memory (plus about {MEMORY_HEADROOM:.0%}) but "
            f"{free / 1e9:.1f} GB is available; use a machine with more memory or a smaller precision "
            f"({smaller}the bf16 release, mispeech/midashenglm-7b-1021-bf16, needs 16.6 GB)")
