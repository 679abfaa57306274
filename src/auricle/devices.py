"""Which torch device a ``--device`` string names, checked before any work."""

from __future__ import annotations

import torch

from auricle.errors import AuricleError


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
