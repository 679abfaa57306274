"""Load test of `auricle serve` over loopback: throughput, latency percentiles, errors by status.

Sends a bounded number of requests at a fixed concurrency, with recordings
of mixed lengths and a share of bad files (garbage bytes, truncated WAVs,
empty bodies). Good files must get 200 (or an intended 503 when the queue
is full), bad files 400; anything else, above all any other 5xx, is a
failure and makes the exit status 1.

By default it starts its own server with random weights of a CED size (speed
does not depend on the weights), on a free loopback port:

    python benchmarks/loadtest.py --requests 2000 --concurrency 16 --random ced-mini \
        --threads 2 --json benchmarks/results/loadtest.json

or it loads a running server (loopback addresses only):

    python benchmarks/loadtest.py --url http://127.0.0.1:8000 --requests 200

``--hostile`` runs hostile clients alongside the good traffic, each kind from
its own loopback address (Linux answers on all of 127/8), as a real attacker
would be another host: uploads that stall after their headers and then
trickle a byte a second (127.0.0.2), connections that stall inside their
headers (127.0.0.3), 16 MiB WebSocket messages declared as 1 kHz 8-bit audio
(127.0.0.4) and 45 MB uploads of garbage (127.0.0.5). The summary then says how
the server answered them, and for the good requests how many got an unintended
5xx and the longest time a good request was refused (from its start until the
next good request succeeded).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import soundfile as sf

SR = 16000
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
#: Source addresses of the hostile clients, one per kind (the good client is 127.0.0.1).
HOSTILE_ADDRESSES = {"slow_uploads": "127.0.0.2", "stalled_headers": "127.0.0.3", "stream_floods": "127.0.0.4",
                     "large_uploads": "127.0.0.5"}


@dataclass(frozen=True)
class Payload:
    kind: str  # "good" or "bad"
    name: str
    data: bytes
    seconds: float


def wav_bytes(signal: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, signal, SR, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def payloads(lengths: list[float], seed: int) -> list[Payload]:
    """A few distinct good recordings per length and three kinds of bad file."""
    rng = np.random.default_rng(seed)
    good = []
    for seconds in lengths:
        for variant in range(3):
            t = np.arange(int(seconds * SR)) / SR
            signal = 0.05 * rng.standard_normal(len(t)) + 0.3 * np.sin(2 * np.pi * (220 + 110 * variant) * t)
            good.append(Payload("good", f"clip_{seconds:g}s_{variant}.wav", wav_bytes(signal.astype(np.float32)),
                                seconds))
    whole = wav_bytes(rng.standard_normal(SR).astype(np.float32) * 0.1)
    bad = [
        Payload("bad", "garbage.wav", rng.integers(0, 256, 5000, dtype=np.uint8).tobytes(), 0.0),
        Payload("bad", "truncated.wav", whole[:30], 0.0),
        Payload("bad", "empty.wav", b"", 0.0),
    ]
    return good + bad


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(args, folder: Path) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, "-m", "auricle", "serve", "--port", str(free_port()), "--log-level", "warning",
               "--max-pending", str(args.max_pending), "--max-batch-size", str(args.max_batch_size),
               "--max-wait-ms", str(args.max_wait_ms)]
    port = command[command.index("--port") + 1]
    if args.threads:
        command += ["--threads", str(args.threads)]
    if args.checkpoint:
        command += ["--checkpoint", args.checkpoint]
    elif args.random:
        command += ["--checkpoint", str(random_checkpoint(args.random, folder))]
    else:
        command += ["--model", args.model]
    command += args.server_flag
    log = open(folder / "server.log", "w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    return process, f"http://127.0.0.1:{port}"


def server_memory(pid: int) -> dict:
    """The started server's peak and current resident memory (MB) from /proc; empty where there is none."""
    try:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    except OSError:
        return {}
    return {"peak_rss": round(int(fields["VmHWM"].split()[0]) / 1024, 1),
            "rss_at_end": round(int(fields["VmRSS"].split()[0]) / 1024, 1)}


def random_checkpoint(name: str, folder: Path) -> Path:
    import torch

    from auricle.models.ced import CED
    from auricle.models.checkpoints import save_checkpoint
    from auricle.models.registry import model_info

    torch.manual_seed(0)
    return save_checkpoint(CED(model_info(name).config), folder / f"{name}-random.safetensors", name=f"{name}-random")


async def wait_ready(client, url: str, process: subprocess.Popen | None, seconds: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise SystemExit("the server exited; see its log")
        try:
            if (await client.get(f"{url}/healthz")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.2)
    raise SystemExit(f"{url} did not become ready")


async def _read_status(reader: asyncio.StreamReader) -> str:
    """The status code the server answered with before closing, or how the connection ended."""
    try:
        line = await reader.readline()
        status = line.split()[1].decode() if line.startswith(b"HTTP/") else "closed"
        while await reader.read(65536):  # until the server closes
            pass
        return status
    except (ConnectionError, OSError):
        return "reset"


async def slow_upload(host: str, port: int, outcomes: Counter, stop: asyncio.Event) -> None:
    """Headers of a 45 MB upload, four bytes, then one byte a second until the server gives up on it."""
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection(host, port, local_addr=(HOSTILE_ADDRESSES["slow_uploads"], 0))
        except OSError:
            outcomes["connect_failed"] += 1
            await asyncio.sleep(1)
            continue
        writer.write(f"POST /v1/tag HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/octet-stream\r\n"
                     f"Content-Length: {45 * 1024 * 1024}\r\n\r\nRIFF".encode())
        status = asyncio.ensure_future(_read_status(reader))
        while not status.done() and not stop.is_set():
            try:
                writer.write(b"\0")
                await writer.drain()
            except (ConnectionError, OSError):
                break
            await asyncio.wait({status}, timeout=1)
        if status.done():
            outcomes[status.result()] += 1
        status.cancel()
        writer.close()
        await asyncio.sleep(0.5)


async def stalled_headers(host: str, port: int, outcomes: Counter, stop: asyncio.Event) -> None:
    """Half a request line's headers, then nothing, until the server closes the connection; again."""
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection(host, port,
                                                           local_addr=(HOSTILE_ADDRESSES["stalled_headers"], 0))
        except OSError:
            outcomes["connect_failed"] += 1
            await asyncio.sleep(1)
            continue
        writer.write(f"POST /v1/tag HTTP/1.1\r\nHost: {host}:{port}\r\nX-Stall: ".encode())
        status = asyncio.ensure_future(_read_status(reader))
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait({status, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if status.done():
            outcomes[status.result()] += 1
        status.cancel()
        stopped.cancel()
        writer.close()
        await asyncio.sleep(1)


async def stream_flood(host: str, port: int, outcomes: Counter, stop: asyncio.Event) -> None:
    """A /v1/stream socket declaring 1 kHz 8-bit audio, then one 16 MiB message (1 GiB once resampled)."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import WebSocketException

    message = bytes(16 * 1024 * 1024 - 1024)  # under uvicorn's 16 MiB message limit
    while not stop.is_set():
        try:
            async with connect(f"ws://{host}:{port}/v1/stream", local_addr=(HOSTILE_ADDRESSES["stream_floods"], 0),
                               max_size=None, open_timeout=30) as socket:
                await socket.send(json.dumps({"sample_rate": 1000, "format": "u8"}))
                await socket.recv()
                await socket.send(message)
                reply = json.loads(await socket.recv())
                outcomes["refused" if reply.get("type") == "error" else f"accepted:{reply.get('type')}"] += 1
                await socket.wait_closed()
                outcomes[f"close:{socket.close_code}"] += 1
        except (WebSocketException, OSError, asyncio.TimeoutError) as error:
            outcomes[f"error:{type(error).__name__}"] += 1
        await asyncio.sleep(0.5)


async def large_upload(url: str, outcomes: Counter, stop: asyncio.Event) -> None:
    """45 MB of garbage posted as fast as loopback carries it (a 400 once read), again and again."""
    import httpx

    body = np.random.default_rng(1).integers(0, 256, 45 * 1024 * 1024, dtype=np.uint8).tobytes()
    transport = httpx.AsyncHTTPTransport(local_address=HOSTILE_ADDRESSES["large_uploads"])
    async with httpx.AsyncClient(transport=transport, timeout=120) as client:
        while not stop.is_set():
            try:
                response = await client.post(f"{url}/v1/tag", content=body, params={"filename": "big.wav"})
                outcomes[str(response.status_code)] += 1
            except httpx.HTTPError as error:
                outcomes[f"transport:{type(error).__name__}"] += 1
            await asyncio.sleep(0.2)


def hostile_clients(args, url: str, outcomes: dict[str, Counter], stop: asyncio.Event) -> list[asyncio.Future]:
    parts = urlparse(url)
    host, port = parts.hostname, parts.port
    tasks = []
    for kind, count, make in (("slow_uploads", args.slow_uploads, lambda o: slow_upload(host, port, o, stop)),
                              ("stalled_headers", args.stalled_headers, lambda o: stalled_headers(host, port, o, stop)),
                              ("stream_floods", args.stream_floods, lambda o: stream_flood(host, port, o, stop)),
                              ("large_uploads", args.large_uploads, lambda o: large_upload(url, o, stop))):
        outcomes[kind] = Counter()
        tasks += [asyncio.ensure_future(make(outcomes[kind])) for _ in range(count)]
    return tasks


async def run(args, url: str, process: subprocess.Popen | None) -> dict:
    import httpx

    rng = random.Random(args.seed)
    pool = payloads(args.lengths, args.seed)
    good = [p for p in pool if p.kind == "good"]
    bad = [p for p in pool if p.kind == "bad"]
    plan = [rng.choice(bad) if rng.random() < args.bad_share else rng.choice(good) for _ in range(args.requests)]
    records: list[tuple[Payload, int | str, float]] = []
    spans: list[tuple[float, float]] = []  # (start, end) of each request, in records' order
    queue: asyncio.Queue[Payload] = asyncio.Queue()
    for payload in plan:
        queue.put_nowait(payload)
    # Idle connections are dropped by the client before uvicorn's 5 s keep-alive timeout closes them: at
    # httpx's default of 5 s both close at once, and a request sent on a connection the server is closing
    # fails as a transport error (a race of keep-alive, not a refusal; browsers retry it silently).
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency,
                          keepalive_expiry=2.0)
    async with httpx.AsyncClient(timeout=args.timeout, limits=limits) as client:
        await wait_ready(client, url, process)

        async def worker() -> None:
            while True:
                try:
                    payload = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                began = time.perf_counter()
                try:
                    response = await client.post(f"{url}/v1/tag", params=args.params,
                                                 files={"file": (payload.name, payload.data, "audio/wav")})
                    status: int | str = response.status_code
                except httpx.HTTPError as error:
                    status = f"transport:{type(error).__name__}"
                ended = time.perf_counter()
                records.append((payload, status, ended - began))
                spans.append((began, ended))

        before = (await client.get(f"{url}/healthz")).json().get("batching", {})
        stop = asyncio.Event()
        hostile: dict[str, Counter] = {}
        tasks = hostile_clients(args, url, hostile, stop) if args.hostile else []
        if tasks:
            await asyncio.sleep(args.hostile_head_start)  # let them take what they can before the good traffic
        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        elapsed = time.perf_counter() - began
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        after = (await client.get(f"{url}/healthz")).json().get("batching", {})
    summary = summarize(records, elapsed, args)
    summary["longest_refusal_s"] = longest_refusal(records, spans)
    if args.hostile:
        summary["hostile"] = {kind: {"clients": getattr(args, kind), "from": HOSTILE_ADDRESSES[kind],
                                     "outcomes": dict(sorted(counts.items()))} for kind, counts in hostile.items()}
    if before and after:
        calls = after["model_calls"] - before["model_calls"]
        windows = after["windows"] - before["windows"]
        summary["batching"] = {"model_calls": calls, "windows": windows,
                               "mean_batch": round(windows / calls, 2) if calls else None,
                               "largest_batch": after["largest_batch"]}
    return summary


def longest_refusal(records, spans) -> float:
    """Longest time from the start of a good request that was not served (503, 429, a transport error)
    until a good request next succeeded (or the run ended)."""
    good = [(span, status) for (payload, status, _), span in zip(records, spans) if payload.kind == "good"]
    served = sorted(end for (_, end), status in good if status == 200)
    longest = 0.0
    for (start, end), status in good:
        if status != 200:
            later = [t for t in served if t >= end]
            until = later[0] if later else max(e for (_, e), _ in good)
            longest = max(longest, until - start)
    return round(longest, 2)


def percentiles(values: list[float]) -> dict:
    if not values:
        return {}
    array = np.array(values) * 1000
    return {f"p{q}": round(float(np.percentile(array, q)), 1) for q in (50, 95, 99)} | {
        "max": round(float(array.max()), 1)}


def summarize(records, elapsed: float, args) -> dict:
    statuses = Counter(str(status) for _, status, _ in records)
    unexpected = Counter()
    for payload, status, _ in records:
        expected = (200, 503) if payload.kind == "good" else (400, 503)
        if status not in expected:
            unexpected[f"{payload.kind}:{status}"] += 1
    ok = [latency for payload, status, latency in records if status == 200]
    audio_seconds = sum(payload.seconds for payload, status, _ in records if status == 200)
    other_5xx = sum(count for status, count in statuses.items() if status.startswith("5") and status != "503")
    return {
        "requests": len(records),
        "concurrency": args.concurrency,
        "bad_share": args.bad_share,
        "lengths_seconds": args.lengths,
        "params": dict(args.params),
        "seconds": round(elapsed, 2),
        "requests_per_second": round(len(records) / elapsed, 2),
        "audio_seconds_per_second": round(audio_seconds / elapsed, 1),
        "latency_ms_all": percentiles([latency for _, _, latency in records]),
        "latency_ms_200": percentiles(ok),
        "latency_ms_bad": percentiles([lat for p, s, lat in records if p.kind == "bad"]),
        "status_counts": dict(sorted(statuses.items())),
        "unexpected": dict(unexpected),
        "other_5xx": other_5xx,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="A running server (loopback only); default: start one.")
    parser.add_argument("--random", default="ced-mini", help="Serve random weights of this CED size (default).")
    parser.add_argument("--checkpoint", help="Serve this checkpoint instead.")
    parser.add_argument("--model", default=None, help="Serve this published model (downloads weights).")
    parser.add_argument("--threads", type=int, default=None, help="Model threads of the started server.")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--bad-share", type=float, default=0.1)
    parser.add_argument("--lengths", type=lambda text: [float(x) for x in text.split(",")], default=[1, 5, 10, 30],
                        help="Recording lengths in seconds, comma-separated (default 1,5,10,30).")
    parser.add_argument("--events", action="store_true", help="Ask for events (hop 1 s) too.")
    parser.add_argument("--max-pending", type=int, default=64)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--timeout", type=float, default=120.0, help="Client timeout per request (s).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hostile", action="store_true", help="Run hostile clients alongside (see above).")
    parser.add_argument("--slow-uploads", type=int, default=66, help="Stalled uploads (with --hostile).")
    parser.add_argument("--stalled-headers", type=int, default=1000, help="Stalled header sockets (with --hostile).")
    parser.add_argument("--stream-floods", type=int, default=2, help="16 MiB stream messages (with --hostile).")
    parser.add_argument("--large-uploads", type=int, default=4, help="45 MB garbage uploads (with --hostile).")
    parser.add_argument("--hostile-head-start", type=float, default=3.0,
                        help="Seconds the hostile clients run before the good traffic starts.")
    parser.add_argument("--max-refusal-s", type=float, default=None,
                        help="Fail (exit 1) when a good request was refused for longer than this (see above).")
    parser.add_argument("--server-flag", action="append", default=[], metavar="FLAG",
                        help="Extra flag for the started server, e.g. --server-flag=--body-timeout=5 (repeatable).")
    parser.add_argument("--json", help="Write the summary here (atomically).")
    args = parser.parse_args()
    if args.model:
        args.random = None
    args.params = {"events": "true", "hop": "1"} if args.events else {}
    if args.url and urlparse(args.url).hostname not in LOOPBACK:
        parser.error("--url must be a loopback address (127.0.0.1, localhost, ::1)")

    process = None
    with tempfile.TemporaryDirectory(prefix="auricle-loadtest-") as folder:
        url = args.url
        if url is None:
            process, url = start_server(args, Path(folder))
        try:
            summary = asyncio.run(run(args, url, process))
            if process is not None:
                summary["server_memory_mb"] = server_memory(process.pid)
        finally:
            if process is not None:
                process.terminate()
                process.wait(timeout=30)
        summary["server"] = url if args.url else f"started: {args.checkpoint or args.model or args.random + ' (random weights)'}"
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text + "\n")
        os.replace(tmp, path)
    if summary["unexpected"] or summary["other_5xx"]:
        print(f"FAIL: unexpected statuses {summary['unexpected']}", file=sys.stderr)
        raise SystemExit(1)
    if args.max_refusal_s is not None and summary["longest_refusal_s"] > args.max_refusal_s:
        print(f"FAIL: a good request was refused for {summary['longest_refusal_s']} s", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
