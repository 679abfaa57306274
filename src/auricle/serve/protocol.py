"""uvicorn's h11 HTTP protocol with the limits a hostile client needs: header timeout, connections per client.

uvicorn closes an idle keep-alive connection, but a connection that sends a
few bytes of headers and then nothing is held forever, and one address may
open as many as it likes. This protocol (``uvicorn.run(http=GuardedH11Protocol)``)

- closes a connection whose request headers are not complete within
  ``header_timeout`` seconds (from the connection, or from the previous
  response), with a 408 answer;
- answers 429 and closes a connection beyond ``max_connections_per_client``
  open ones from the same address (counted per server process);
- on shutdown, drops connections whose upload is still arriving, so a
  stalled client cannot hold the server's exit for the whole body timeout.

Its settings are the :class:`~auricle.serve.config.ServeConfig` of the app it serves.
"""

from __future__ import annotations

import json
from collections import Counter

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from auricle.serve.config import ServeConfig


def served_config(app) -> ServeConfig:
    """The ServeConfig of the auricle app inside uvicorn's middleware wrappers (defaults if there is none)."""
    for _ in range(16):
        state = getattr(app, "state", None)
        config = getattr(state, "config", None)
        if isinstance(config, ServeConfig):
            return config
        app = getattr(app, "app", None)
        if app is None:
            break
    return ServeConfig()


def _answer(status: int, reason: str, detail: str) -> bytes:
    body = json.dumps({"detail": detail}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n").encode() + body


class GuardedH11Protocol(H11Protocol):
    #: Open connections per client address in this process (the event loop is single-threaded).
    open_per_client: Counter = Counter()

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        limits = getattr(self.config, "_auricle_limits", None)
        if limits is None:  # once per server: the app is loaded by now
            limits = self.config._auricle_limits = served_config(self.app)
        self.limits = limits
        self.address = self.client[0] if self.client else None
        self.header_timer = None
        self.counted = False
        if self.address is not None:
            if self.open_per_client[self.address] >= limits.max_connections_per_client:
                transport.write(_answer(429, "Too Many Requests",
                                        f"too many connections from {self.address} (limit "
                                        f"{limits.max_connections_per_client})"))
                transport.close()
                return
            self.open_per_client[self.address] += 1
            self.counted = True
        self._arm_header_timer()

    def _arm_header_timer(self) -> None:
        self._disarm_header_timer()
        self.header_timer = self.loop.call_later(self.limits.header_timeout, self._headers_too_slow)

    def _disarm_header_timer(self) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None

    def _headers_too_slow(self) -> None:
        self.header_timer = None
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self.transport.write(_answer(408, "Request Timeout",
                                         f"request headers not received within {self.limits.header_timeout:g} s"))
            self.transport.close()

    def _uncount(self) -> None:
        if self.counted:
            self.counted = False
            self.open_per_client[self.address] -= 1
            if self.open_per_client[self.address] <= 0:
                del self.open_per_client[self.address]

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:  # the headers are in (or the connection is done)
            self._disarm_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._arm_header_timer()  # the next request's headers, after uvicorn's keep-alive wait

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        # The socket now belongs to the WebSocket protocol, which never tells this one it closed;
        # streams have their own limit (max_streams) and idle timeout.
        self._disarm_header_timer()
        self._uncount()
        super().handle_websocket_upgrade(event)

    def connection_lost(self, exc) -> None:
        self._disarm_header_timer()
        self._uncount()
        super().connection_lost(exc)

    def shutdown(self) -> None:
        if self.cycle is not None and not self.cycle.response_complete and self.cycle.more_body:
            # An upload still arriving: its request could not finish before the body timeout anyway.
            self.transport.close()
            return
        super().shutdown()
