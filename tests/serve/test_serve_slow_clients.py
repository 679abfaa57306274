"""Slow and stalled clients against a real `auricle serve` process, over raw sockets on loopback.

The server runs with short limits (header timeout 1 s, body timeout 3 s, two
request slots, four connections per address). Stalled clients connect from
127.0.0.2 (all of 127/8 is loopback on Linux), the good client from 127.0.0.1.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

httpx = pytest.importorskip("httpx", reason="httpx is not installed")
pytest.importorskip("uvicorn", reason="the serve extra (uvicorn) is not installed")

from serve_support import noise, tiny_random_checkpoint, write_wav  # noqa: E402
from test_serve_process import free_port  # noqa: E402

pytestmark = pytest.mark.integration  # starts auricle (or a benchmark) in other processes

HOSTILE = "127.0.0.2"
#: Server process ids by port, to read their memory.
PIDS: dict[int, int] = {}


def start_server(folder, *flags: str) -> tuple[subprocess.Popen, int]:
    checkpoint = tiny_random_checkpoint(folder / "tiny.safetensors")
    port = free_port()
    log = open(folder / "server.log", "w+")
    process = subprocess.Popen(
        [sys.executable, "-m", "auricle", "serve", "--checkpoint", str(checkpoint), "--port", str(port),
         "--threads", "1", "--log-level", "warning", *flags],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return process, port
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            log.seek(0)
            process.kill()
            pytest.fail(f"auricle serve did not start:\n{log.read()}")
        time.sleep(0.2)


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    process, port = start_server(tmp_path_factory.mktemp("server"), "--header-timeout", "1", "--body-timeout", "3",
                                 "--max-pending", "2", "--max-connections-per-client", "4")
    PIDS[port] = process.pid
    try:
        yield port
    finally:
        stop(process)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_wav(tmp_path_factory.mktemp("audio") / "clip.wav", noise(1.0, 0.1, 0)).read_bytes()


def connect(port: int, source: str = HOSTILE) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=20, source_address=(source, 0))
    return sock


def answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the socket (a 20 s socket timeout fails the test)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def upload_head(port: int, length: int) -> bytes:
    return (f"POST /v1/tag HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


def test_a_connection_stalled_inside_its_headers_is_answered_408_and_closed(server):
    with connect(server) as sock:
        sock.sendall(f"POST /v1/tag HTTP/1.1\r\nHost: 127.0.0.1:{server}\r\n".encode())  # and nothing more
        reply = answer(sock)
    assert reply.startswith(b"HTTP/1.1 408 ") and b'"request headers not received within 1 s"' in reply


def test_stalled_uploads_take_no_request_slot_and_end_with_408(server, clip):
    stalled = [connect(server) for _ in range(3)]  # more than the two request slots
    try:
        for sock in stalled:
            sock.sendall(upload_head(server, 100_000) + b"RIFF")
        time.sleep(0.5)  # let the server read them
        good = httpx.post(f"http://127.0.0.1:{server}/v1/tag", content=clip, timeout=30)
        assert good.status_code == 200, good.text
        replies = [answer(sock) for sock in stalled]
    finally:
        for sock in stalled:
            sock.close()
    for reply in replies:
        assert reply.startswith(b"HTTP/1.1 408 ") and b'"upload not finished within 3 s"' in reply


def test_connections_from_one_address_are_capped_and_others_still_served(server, clip):
    held = [connect(server) for _ in range(4)]
    try:
        for sock in held:
            sock.sendall(b"GET /healthz HTTP/1.1\r\n")  # stalled in the headers
        time.sleep(0.3)
        with connect(server) as extra:
            reply = answer(extra)
        assert reply.startswith(b"HTTP/1.1 429 ") and f"too many connections from {HOSTILE}".encode() in reply
        good = httpx.post(f"http://127.0.0.1:{server}/v1/tag", content=clip, timeout=30)
        assert good.status_code == 200
    finally:
        for sock in held:
            sock.close()


def test_sigterm_does_not_wait_for_a_stalled_upload(tmp_path):
    process, port = start_server(tmp_path, "--body-timeout", "120", "--shutdown-timeout", "60")
    try:
        with connect(port) as sock:
            sock.sendall(upload_head(port, 100_000) + b"RIFF")
            time.sleep(0.5)
            process.send_signal(signal.SIGTERM)
            # Without dropping the upload the server waits for it (up to the body timeout, or the
            # graceful-shutdown timeout); it should close it and exit now.
            assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()


def peak_rss_mb(pid: int) -> float:
    status = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status").read().splitlines())
    return int(status["VmHWM"].split()[0]) / 1024


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the server's peak memory from /proc")
def test_concurrent_large_uploads_are_not_held_in_memory(server):
    """Four 45 MB uploads at once (not audio: refused once read) leave the server's peak memory where it was."""
    import threading

    body = os.urandom(45 * 1024 * 1024)
    before = peak_rss_mb(PIDS[server])
    statuses: list = []

    def post() -> None:
        statuses.append(httpx.post(f"http://127.0.0.1:{server}/v1/tag", content=body, timeout=60).status_code)

    threads = [threading.Thread(target=post) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    assert len(statuses) == 4 and set(statuses) <= {400, 503}  # 503: both request slots were busy
    # Held in memory, the bodies alone were 180 MB (and twice that while copied).
    assert peak_rss_mb(PIDS[server]) - before < 100
