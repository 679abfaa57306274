"""Settings of the service, each limit with its default."""

from __future__ import annotations

import math
from dataclasses import dataclass

#: Longest window a stream may ask for: every report scores the whole window, so its cost grows with it.
MAX_STREAM_WINDOW = 60.0
#: Host names a service bound to loopback answers to (a browser's DNS-rebinding request carries another name).
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class ServeConfig:
    """Limits and batching of one service process.

    ``max_upload_bytes``: larger request bodies get 413 (checked on the
    Content-Length header and while reading). ``max_duration``: seconds of
    decoded audio beyond which a request gets 413. ``max_windows``: analysis
    windows one request may ask for (a tiny hop on a long file), else 413.
    ``max_pending``: requests admitted at once (their body fully received:
    decoding, waiting for or on the model); one more gets 503 with
    ``Retry-After: retry_after``. ``request_timeout``: seconds a request may
    take once admitted, else 503; ``generation_timeout``: the same for the
    audio-language routes, whose one-at-a-time answers take minutes on a CPU.
    ``max_batch_size`` / ``max_wait``: the
    batcher runs the model on up to this many windows of equal length, waiting
    at most ``max_wait`` seconds for a batch to fill. ``max_streams``:
    concurrent ``/v1/stream`` sockets.

    Hostile or broken clients: ``header_timeout``: seconds a connection may
    take to send a request's headers (else it is closed with 408);
    ``body_timeout``: seconds the whole body may take once the headers are in
    (else 408); ``max_connections_per_client``: open connections from one
    address (more are answered 429 and closed); ``shutdown_timeout``: seconds
    a stopping server waits for requests in progress (uploads still arriving
    are dropped at once). ``max_decoded_seconds``: decoded audio (16 kHz
    float) all requests may hold at once; a request waits for its share.
    ``max_stream_seconds``: audio a ``/v1/stream`` socket may hold at once
    (its window plus one message, counted after resampling to 16 kHz);
    ``stream_idle_timeout``: seconds a stream may stay silent.
    ``allowed_hosts``: names the ``Host`` header may carry (``"*"``: any);
    ``allowed_origins``: browser origins (``scheme://host[:port]``) besides
    the page's own that may POST or open a stream (``"*"``: any).
    ``search_index``: an ``auricle index`` file that ``GET /v1/search`` reads
    (None: that endpoint answers 404).
    """

    max_upload_bytes: int = 50 * 1024 * 1024
    max_duration: float = 600.0
    max_windows: int = 1000
    max_pending: int = 64
    retry_after: int = 1
    request_timeout: float = 60.0
    generation_timeout: float = 1800.0
    max_batch_size: int = 16
    max_wait: float = 0.005
    max_streams: int = 8
    header_timeout: float = 10.0
    body_timeout: float = 60.0
    max_connections_per_client: int = 32
    shutdown_timeout: float = 10.0
    max_decoded_seconds: float = 2400.0
    max_stream_seconds: float = 120.0
    stream_idle_timeout: float = 60.0
    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS
    allowed_origins: tuple[str, ...] = ()
    search_index: str | None = None

    def __post_init__(self) -> None:
        for name in ("max_upload_bytes", "max_windows", "max_pending", "max_batch_size", "max_streams",
                     "max_connections_per_client"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("max_duration", "request_timeout", "generation_timeout", "header_timeout", "body_timeout", "shutdown_timeout",
                     "max_decoded_seconds", "max_stream_seconds", "stream_idle_timeout"):
            if not 0 < getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be a positive number, got {getattr(self, name)}")
        if not (0 <= self.max_wait < math.inf and 0 <= self.retry_after < math.inf):  # NaN passed a plain `< 0`
            raise ValueError(f"max_wait and retry_after must be numbers >= 0, got {self.max_wait}, {self.retry_after}")
        if self.max_decoded_seconds < self.max_duration:  # one longest recording must fit, or it waits forever
            raise ValueError(f"max_decoded_seconds ({self.max_decoded_seconds:g}) must be at least max_duration "
                             f"({self.max_duration:g})")
        if self.max_stream_seconds <= MAX_STREAM_WINDOW:
            raise ValueError(f"max_stream_seconds must be over the longest stream window ({MAX_STREAM_WINDOW:g} s), "
                             f"got {self.max_stream_seconds:g}")
        # From JSON (AURICLE_SERVE) these arrive as lists; a frozen dataclass keeps tuples.
        object.__setattr__(self, "allowed_hosts", tuple(host.lower() for host in self.allowed_hosts))
        object.__setattr__(self, "allowed_origins", tuple(origin.lower().rstrip("/") for origin in self.allowed_origins))
