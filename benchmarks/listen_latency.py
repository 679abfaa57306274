"""Latency of `auricle listen`: from the moment audio is written to its stdin to the report that covers it.

Plays noise into `auricle listen -` in real time (20 ms writes of s16le PCM)
and timestamps every window report (`--windows -f jsonl`). For the window
ending at stream time t, the *delay* is the wall time of its report minus the
wall time at which the sample at t was written. A sound starting right after
a report is first reported one hop later, so sound-to-report latency is at
most hop + delay; both are printed. Weights are random (speed does not depend
on them).

    python benchmarks/listen_latency.py --random ced-mini --window 10 --hop 1 --seconds 30 --threads 2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from synthetic import random_checkpoint

SR = 16000
CHUNK_SECONDS = 0.02


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--random", default="ced-mini", help="Random weights of this CED size.")
    parser.add_argument("--checkpoint", help="Use this checkpoint instead.")
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--hop", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=30.0, help="Length of the played stream.")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", help="Write the summary here.")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="auricle-latency-") as folder:
        checkpoint = args.checkpoint or str(random_checkpoint(args.random, Path(folder)))
        command = [sys.executable, "-m", "auricle", "listen", "-", "--checkpoint", checkpoint, "--window",
                   str(args.window), "--hop", str(args.hop), "--windows", "-f", "jsonl"]
        if args.threads:
            command += ["--threads", str(args.threads)]
        process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        reports: list[tuple[float, dict]] = []

        def read() -> None:
            for line in process.stdout:
                reports.append((time.monotonic(), json.loads(line)))

        reader = threading.Thread(target=read)
        reader.start()
        time.sleep(5.0)  # let the model load before the clock starts
        signal = (np.random.default_rng(0).standard_normal(int(args.seconds * SR)) * 0.1 * 32767).astype("<i2")
        chunk = int(CHUNK_SECONDS * SR)
        written: list[tuple[int, float]] = []  # (samples written so far, wall time)
        began = time.monotonic()
        for first in range(0, len(signal), chunk):
            delay = began + first / SR - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            process.stdin.write(signal[first : first + chunk].tobytes())
            process.stdin.flush()
            written.append((min(first + chunk, len(signal)), time.monotonic()))
        process.stdin.close()
        reader.join()
        stderr = process.stderr.read().decode()
        process.wait()

    positions = np.array([p for p, _ in written])
    times = np.array([t for _, t in written])
    delays = []
    for seen, report in reports:
        if report.get("type") != "window":
            continue
        end = int(round(report["end"] * SR))
        index = int(np.searchsorted(positions, end))  # the write that completed this window
        if index < len(times):
            delays.append(seen - times[index])
    delays_ms = np.array(delays) * 1000
    summary = {
        "model": args.checkpoint or f"{args.random} (random weights)",
        "window": args.window,
        "hop": args.hop,
        "threads": args.threads,
        "reports": len(delays),
        "delay_ms": {q: round(float(np.percentile(delays_ms, int(q[1:]))), 1) for q in ("p50", "p95")}
        | {"max": round(float(delays_ms.max()), 1)},
        "sound_to_report_max_ms": round(args.hop * 1000 + float(delays_ms.max()), 1),
        "listen_summary": stderr.strip().splitlines()[-1] if stderr.strip() else "",
    }
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
