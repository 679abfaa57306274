"""Peak memory and time of `auricle tag --events` (or `auricle embed`) on long recordings (default 1, 10, 60 minutes).

Each recording is synthetic (noise with a 1 kHz tone 3 s in every 20 s), written
in blocks to a temporary folder as FLAC, then tagged by a fresh `auricle tag`
process whose peak resident memory is read from the kernel (wait4). Memory
should stay flat with duration (the file is decoded in blocks and windows are
scored as they arrive) and time should grow linearly.

    python benchmarks/long_memory.py --minutes 1 10 60 --threads 2 --json benchmarks/results/long_memory.json
    python benchmarks/long_memory.py --command embed --json benchmarks/results/long_memory_embed.json

`--command embed` runs `auricle embed` instead (the whole recording's log-mel, one
embedding per 10.12 s piece); the last column is then the number of pieces.
`--model dasheng-base` embeds with random weights of that size instead (one embedding
per 40 ms frame; the last column counts frames):

    python benchmarks/long_memory.py --model dasheng-base --minutes 1 10 60 --json benchmarks/results/long_memory_dasheng.json
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from synthetic import REFERENCE_CHECKPOINT, auricle_command, random_checkpoint_apart, run_measured, write_recording


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, nargs="+", default=[1, 10, 60])
    parser.add_argument("--checkpoint", type=Path, default=REFERENCE_CHECKPOINT,
                        help="weights to tag with (default: the ced-mini reference checkpoint)")
    parser.add_argument("--hop", type=float, default=None, help="window hop in seconds (default: the window)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--engine", default="torch")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--command", choices=["tag", "embed"], default="tag")
    parser.add_argument("--model", default=None,
                        help="random weights of this size instead of --checkpoint (a Dasheng size implies embed)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    if args.model and args.model.startswith("dasheng"):
        args.command = "embed"  # a Dasheng encoder has no head to tag with
    rows = []
    counted = "events" if args.command == "tag" else "frames" if args.model and "dasheng" in args.model else "pieces"
    print(f"{'minutes':>8} {'wall s':>8} {'s per audio min':>16} {'peak RSS MB':>12} {counted:>7}")
    with tempfile.TemporaryDirectory() as folder:
        if args.model:
            # In a child: building the weights here would raise every measured child's peak to ours.
            args.checkpoint = random_checkpoint_apart(args.model, Path(folder))
        model = ["--checkpoint", args.checkpoint, "--threads", args.threads]
        if args.checkpoint.suffix != ".onnx":  # an exported file fixes engine and precision itself
            model += ["--engine", args.engine, "--precision", args.precision]
        for minutes in args.minutes:
            audio = write_recording(Path(folder) / f"long_{minutes:g}min.flac", minutes * 60)
            output = Path(folder) / "embeddings.npz"
            if args.command == "tag":
                command = auricle_command("tag", audio, "--events", "--format", "json", *model,
                                          *(["--hop", args.hop] if args.hop else []))
            else:
                command = auricle_command("embed", audio, "--output", output, *model)
            wall, peak_mb, result = run_measured(command)
            if args.command == "tag":
                count = len(json.loads(result.stdout)[0]["events"])
            else:
                with np.load(output) as saved:
                    count = len(next(saved[key] for key in saved.files if key.endswith("windows")))
            rows.append(dict(minutes=minutes, wall_s=wall, s_per_audio_minute=wall / minutes, peak_rss_mb=peak_mb,
                             **{counted: count}))
            print(f"{minutes:>8g} {wall:>8.1f} {wall / minutes:>16.2f} {peak_mb:>12.0f} {count:>7}")
            audio.unlink()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(dict(date=time.strftime("%Y-%m-%d"), machine=platform.machine(),
                                             command=args.command, model=args.model,
                                             checkpoint=None if args.model else str(args.checkpoint),
                                             threads=args.threads, engine=args.engine, precision=args.precision,
                                             hop=args.hop, results=rows), indent=2))


if __name__ == "__main__":
    main()
