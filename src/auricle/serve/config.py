"""Settings of the service, each limit with its default."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ServeConfig:
    """Limits and batching of one service process.

    ``max_upload_bytes``: larger request bodies get 413 (checked on the
    Content-Length header and while reading). ``max_duration``: seconds of
    decoded audio beyond which a request gets 413. ``max_windows``: analysis
    windows one request may ask for (a tiny hop on a long file), else 413.
    ``max_pending``: requests admitted at once (reading, decoding, waiting for
    or on the model); one more gets 503 with ``Retry-After: retry_after``.
    ``request_timeout``: seconds a request may take once admitted, else 503.
    ``max_batch_size`` / ``max_wait``: the batcher runs the model on up to
    this many windows of equal length, waiting at most ``max_wait`` seconds
    for a batch to fill. ``max_streams``: concurrent ``/v1/stream`` sockets.
    """

    max_upload_bytes: int = 50 * 1024 * 1024
    max_duration: float = 600.0
    max_windows: int = 1000
    max_pending: int = 64
    retry_after: int = 1
    request_timeout: float = 60.0
    max_batch_size: int = 16
    max_wait: float = 0.005
    max_streams: int = 8

    def __post_init__(self) -> None:
        for name in ("max_upload_bytes", "max_windows", "max_pending", "max_batch_size", "max_streams"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("max_duration", "request_timeout"):
            if not 0 < getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be a positive number, got {getattr(self, name)}")
        if not (0 <= self.max_wait < math.inf and 0 <= self.retry_after < math.inf):  # NaN passed a plain `< 0`
            raise ValueError(f"max_wait and retry_after must be numbers >= 0, got {self.max_wait}, {self.retry_after}")
