"""Memory of embedding with a Dasheng encoder: where it goes, and `auricle embed` on long recordings.

Random full-size weights (default dasheng-base; the values do not matter), saved once per layout
by a child process (``--layouts``: auricle ``.safetensors`` and the Zenodo ``.pt``). Then, for
the code on ``PYTHONPATH`` and, with ``--baseline-src SRC``, for another source tree (e.g. a
``git archive`` of an earlier commit), in turns:

  * stages, inside one fresh process: the resident memory (VmRSS) and its high-water mark (VmHWM)
    after importing auricle and torch, after ``auricle.load_model(checkpoint=W)``, and after
    embedding one minute of audio;
  * `auricle embed long.wav --checkpoint W` on synthetic WAVs of ``--minutes`` (noise with a tone
    3 s in every 20 s, written in blocks to a temporary folder): wall time and peak RSS from the
    kernel (wait4).

This process never loads a model (it holds numpy and soundfile, ~40 MB): a child's peak RSS as wait4 reports it is at least the peak
its parent had reached when the child started (Linux keeps the high-water mark across fork
and exec), so a parent that built the weights itself would inflate every figure.

    python benchmarks/dasheng_memory.py --minutes 1 10 60 --baseline-src /tmp/base/src --json benchmarks/results/dasheng_memory.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from synthetic import auricle_command, random_checkpoint_apart, run_measured, write_recording

STAGES = """
import json, sys, time

def memory():
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return {key: round(int(fields[key].split()[0]) / 1024) for key in ("VmRSS", "VmHWM")}

stages = {}
start = time.perf_counter()
import torch
import auricle
stages["imported"] = memory()
model = auricle.load_model(checkpoint=sys.argv[1])
stages["loaded"] = dict(memory(), seconds=round(time.perf_counter() - start, 2))
model.embed(sys.argv[2])
stages["embedded_1_min"] = memory()
print(json.dumps(stages))
"""


def stages(checkpoint: Path, clip: Path, env: dict[str, str]) -> dict:
    done = subprocess.run([sys.executable, "-c", STAGES, str(checkpoint), str(clip)], env={**os.environ, **env},
                          check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="dasheng-base")
    parser.add_argument("--minutes", type=float, nargs="+", default=[1, 10, 60])
    parser.add_argument("--layouts", nargs="+", choices=["auricle", "zenodo"], default=["auricle", "zenodo"],
                        help="checkpoint layouts for the stages (the long runs use the first)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--baseline-src", type=Path, default=None, metavar="SRC",
                        help="also measure the auricle package under this folder (put on PYTHONPATH)")
    parser.add_argument("--folder", type=Path, default=None, help="for the recordings and weights (default: /tmp)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    variants = {"this": {}}
    if args.baseline_src:
        variants["baseline"] = {"PYTHONPATH": str(args.baseline_src.resolve())}
    result: dict = dict(date=time.strftime("%Y-%m-%d"), time_utc=time.strftime("%H:%M", time.gmtime()),
                        machine=platform.machine(), model=args.model, threads=args.threads,
                        baseline=str(args.baseline_src) if args.baseline_src else None, stages={}, runs=[])
    with tempfile.TemporaryDirectory(dir=args.folder) as folder:
        folder = Path(folder)
        weights = {layout: random_checkpoint_apart(args.model, folder, layout) for layout in args.layouts}
        # As a checkpoint downloaded earlier: on disk, its page-cache pages clean. Freshly written ones are
        # dirty for ~30 s, and the kernel cannot yet drop those that the fused encoder hands back once packed.
        os.sync()
        clip = write_recording(folder / "one_minute.wav", 60)
        for layout, checkpoint in weights.items():
            for name, env in variants.items():
                found = stages(checkpoint, clip, env)
                result["stages"][f"{name}/{layout}"] = found
                print(f"{name:>8} {layout:>8}: " + "; ".join(
                    f"{stage} RSS {values['VmRSS']} MB (peak {values['VmHWM']})" for stage, values in found.items()),
                    flush=True)
        checkpoint = weights[args.layouts[0]]
        print(f"{'variant':>8} {'minutes':>8} {'wall s':>8} {'s per audio min':>16} {'peak RSS MB':>12} {'frames':>7}")
        for minutes in args.minutes:
            audio = write_recording(folder / f"long_{minutes:g}min.wav", minutes * 60)
            for name, env in variants.items():
                output = folder / "embeddings.npz"
                command = auricle_command("embed", audio, "--checkpoint", checkpoint, "--threads", args.threads,
                                          "--output", output)
                wall, peak_mb, _ = run_measured(command, env=env)
                with np.load(output) as saved:
                    frames = len(next(saved[key] for key in saved.files if key.endswith("windows")))
                output.unlink()
                result["runs"].append(dict(variant=name, minutes=minutes, wall_s=round(wall, 2),
                                           s_per_audio_minute=round(wall / minutes, 3), peak_rss_mb=round(peak_mb),
                                           frames=frames))
                print(f"{name:>8} {minutes:>8g} {wall:>8.1f} {wall / minutes:>16.2f} {peak_mb:>12.0f} {frames:>7}",
                      flush=True)
            audio.unlink()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
