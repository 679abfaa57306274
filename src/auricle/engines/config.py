"""The engine and precision vocabulary: which names exist, which pairs are valid. No torch.

What the names mean, and where each runs, is the table in :mod:`auricle.engines`. The CLI's
``--engine`` and ``--precision`` choices come from here, so ``auricle --help`` never imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from auricle.errors import EngineError, EngineWarning  # noqa: F401  (raised by every engine; named here)
from auricle.inference.tuning import fastest_precision

if TYPE_CHECKING:
    import torch

    from auricle.inference.tuning import CpuFeatures

ENGINES = ("torch", "onnx")
#: What every engine can run at (the onnx engine: fp32 and int8 only).
PRECISIONS = ("fp32", "bf16", "int8")
#: What ``--precision`` accepts: a precision, or ``auto`` for the fastest here (:func:`resolve_precision`).
PRECISION_CHOICES = (*PRECISIONS, "auto")


@dataclass(frozen=True)
class EngineConfig:
    """Which engine runs the encoder, at what precision, on how many threads and streams.

    ``threads=None`` means one per usable core for ONNX Runtime and PyTorch's
    own default for torch (also one per core); torch's thread count is
    process-wide, so setting it here sets it for the whole process.
    ``streams`` is how many parts of a batch run at once on a CPU, each on
    ``threads // streams`` threads; ``None``: one per thread. ``streams=1`` runs
    a batch as one call on all threads (the lowest latency for a single clip
    with the onnx engine).
    """

    engine: str = "torch"
    precision: str = "fp32"
    threads: int | None = None
    streams: int | None = None

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise EngineError(f"unknown engine {self.engine!r} (choose from {', '.join(ENGINES)})")
        if self.precision not in PRECISIONS:
            raise EngineError(f"unknown precision {self.precision!r} (choose from {', '.join(PRECISIONS)})")
        if self.engine == "onnx" and self.precision == "bf16":
            raise EngineError("the onnx engine runs fp32 or int8; use --engine torch for bf16")
        if self.threads is not None and self.threads < 1:
            raise EngineError(f"threads must be at least 1, got {self.threads}")
        if self.streams is not None and self.streams < 1:
            raise EngineError(f"streams must be at least 1, got {self.streams}")
        if self.streams is not None and self.threads is not None and self.streams > self.threads:
            raise EngineError(f"{self.streams} streams need at least as many threads, got {self.threads}")

    @property
    def label(self) -> str:
        return f"{self.engine}-{self.precision}"


def resolve_precision(engine: str, precision: str, device: str | torch.device = "cpu",
                      features: CpuFeatures | None = None) -> str:
    """``"auto"`` -> the precision expected to run fastest for ``engine`` here; other values unchanged.

    On the CPU: int8 with VNNI, else bf16 with native bfloat16 (torch only), else
    int8 with AVX2, else fp32 (see :func:`~auricle.inference.tuning.fastest_precision`). Off the CPU: fp32.
    """
    if precision != "auto":
        return precision
    import torch  # only for "auto": the vocabulary itself stays importable without torch

    if torch.device(device).type != "cpu":
        return "fp32"
    return fastest_precision(features, engine)
