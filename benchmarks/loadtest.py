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


async def run(args, url: str, process: subprocess.Popen | None) -> dict:
    import httpx

    rng = random.Random(args.seed)
    pool = payloads(args.lengths, args.seed)
    good = [p for p in pool if p.kind == "good"]
    bad = [p for p in pool if p.kind == "bad"]
    plan = [rng.choice(bad) if rng.random() < args.bad_share else rng.choice(good) for _ in range(args.requests)]
    records: list[tuple[Payload, int | str, float]] = []
    queue: asyncio.Queue[Payload] = asyncio.Queue()
    for payload in plan:
        queue.put_nowait(payload)
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
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
                records.append((payload, status, time.perf_counter() - began))

        before = (await client.get(f"{url}/healthz")).json().get("batching", {})
        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        elapsed = time.perf_counter() - began
        after = (await client.get(f"{url}/healthz")).json().get("batching", {})
    summary = summarize(records, elapsed, args)
    if before and after:
        calls = after["model_calls"] - before["model_calls"]
        windows = after["windows"] - before["windows"]
        summary["batching"] = {"model_calls": calls, "windows": windows,
                               "mean_batch": round(windows / calls, 2) if calls else None,
                               "largest_batch": after["largest_batch"]}
    return summary


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


if __name__ == "__main__":
    main()
