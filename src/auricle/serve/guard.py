"""Refuses requests a browser was tricked into sending: a foreign ``Host`` (DNS rebinding) or ``Origin``.

A page on another site can make the user's browser POST a multipart form to
``http://127.0.0.1:8000/v1/tag`` (no CORS preflight for a simple form), open a
WebSocket to it, or, after rebinding its own name to 127.0.0.1, read the
answers. So every request's ``Host`` must be one the service was bound to (or
is configured for behind a proxy), and state-changing requests (``POST`` and
the like) and WebSockets that carry an ``Origin`` must come from the page's
own origin or a configured one. Clients that send no ``Origin`` (curl,
scripts) are not browsers on a foreign page, and pass.
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit

from auricle.serve.config import ServeConfig

#: Methods that only read; a cross-site GET cannot change anything and its answer is unreadable without CORS.
_SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


def host_name(host: str) -> str:
    """``Host`` header without its port: ``[::1]:8000`` -> ``::1``, ``Localhost:80`` -> ``localhost``."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class HostOriginGuard:
    """ASGI middleware: 400 for a ``Host`` not in ``allowed_hosts``, 403 for a foreign ``Origin``."""

    def __init__(self, app, config: ServeConfig) -> None:
        self.app = app
        self.any_host = "*" in config.allowed_hosts
        self.hosts = set(config.allowed_hosts)
        self.any_origin = "*" in config.allowed_origins
        self.origins = set(config.allowed_origins)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] in ("http", "websocket"):
            refusal = self.refusal(scope)
            if refusal is not None:
                await _refuse(scope, send, *refusal)
                return
        await self.app(scope, receive, send)

    def refusal(self, scope) -> tuple[int, str] | None:
        headers = {}
        for key, value in scope.get("headers", ()):
            headers.setdefault(key.decode("latin-1").lower(), value.decode("latin-1"))
        host = headers.get("host")
        if host is not None and not self.any_host and host_name(host) not in self.hosts:
            return 400, (f"host {host!r} is not served here (allowed: {', '.join(sorted(self.hosts))}; "
                         "see --allowed-host)")
        origin = headers.get("origin")
        if origin is None or self.any_origin:
            return None
        if scope["type"] == "http" and scope.get("method", "GET") in _SAFE_METHODS:
            return None
        origin = origin.strip().lower().rstrip("/")
        if origin in self.origins or (host is not None and _netloc(origin) == host.strip().lower()):
            return None
        return 403, f"origin {origin!r} may not use this service (see --allowed-origin)"


def _netloc(origin: str) -> str | None:
    """``http://localhost:8000`` -> ``localhost:8000`` (``null`` and other non-URLs: None)."""
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    default = {"http": ":80", "https": ":443"}[parts.scheme]
    return parts.netloc.removesuffix(default)


async def _refuse(scope, send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
    elif "websocket.http.response" in scope.get("extensions", {}):  # the handshake answered as HTTP
        await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body})
    else:  # a server without that extension answers a close before accept with 403
        await send({"type": "websocket.close", "code": 1008, "reason": detail[:120]})
