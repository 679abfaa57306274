"""Which torch device a ``--device`` string names, checked before any work."""

from __future__ import annotations

import torch

from auricle.errors import AuricleError
from auricle.inference.tuning import TRAINING_PRECISIONS, cpu_features, trains_faster_in_bf16


class DeviceError(AuricleError):
    """A device that does not exist, or that this PyTorch or machine cannot use."""


def torch_device(device: str | torch.device) -> torch.device:
    """``device`` as a :class:`torch.device`, or a one-line :class:`DeviceError` saying why it cannot be used.

    Torch's own errors come late (at the first tensor moved there) and speak of its
    internals: "Torch not compiled with CUDA enabled", or a list of twenty device kinds.
    """
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise DeviceError(f"--device {device}: not a device; use cpu, cuda, cuda:N or mps") from None
    if parsed.type == "cuda":
        if not torch.backends.cuda.is_built():
            raise DeviceError(f"--device {device}: this PyTorch is a CPU-only build (no CUDA); use --device cpu")
        count = torch.cuda.device_count()
        if count == 0:
            raise DeviceError(f"--device {device}: no CUDA device is visible on this machine; use --device cpu")
        if parsed.index is not None and parsed.index >= count:
            raise DeviceError(f"--device {device}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"--device {device}: MPS (Apple GPU) is not available here; use --device cpu")
    elif parsed.type not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"--device {device}: auricle runs on cpu, cuda or mps, not {parsed.type}")
    return parsed


def bf16_trains_faster(device: torch.device) -> bool:
    """What a training ``precision="auto"`` means: bf16 autocast on GPUs with bf16 and on CPUs with bf16 dot products.

    Training steps of ced-tiny and ced-mini (batch 16, 10 s clips; benchmarks/train_speed.py) ran 1.7-1.9x
    faster under autocast on a Xeon with AMX and 1.5x faster on a Zen 4 EPYC with avx512_bf16 but no AMX.
    Without bf16 instructions (AVX2 CPUs) autocast emulates bf16 and is several times slower, so they keep fp32.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and trains_faster_in_bf16(cpu_features())


def training_bf16(precision: str, device: torch.device) -> bool:
    """Whether a run asked to train in ``precision`` (one of :data:`TRAINING_PRECISIONS`) uses bf16 autocast."""
    if precision not in TRAINING_PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(TRAINING_PRECISIONS)}, got {precision!r}")
    return precision == "bf16" or (precision == "auto" and bf16_trains_faster(device))
