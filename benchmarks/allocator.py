"""Model calls with glibc's default malloc settings and with auricle's (auricle.allocator), side by side.

Each round starts one fresh process per setting, in alternating order: "default" (glibc as
it comes) and "kept" (`keep_freed_memory()`, what the `auricle` command sets at start). Each
process builds the same random-weight model and runs every --engines entry on a batch of
10 s clips (the engine's default batch, over its default streams) for --seconds, and
reports clips/s, minor page faults per call and kernel (system) CPU time per call. The
figures are medians over rounds; the setting can only be chosen at process start, hence
the fresh processes.

    python benchmarks/allocator.py --model ced-mini --engines torch-fp32 torch-int8 torch-bf16 onnx-int8 --rounds 6 --json benchmarks/results/allocator.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from auricle.allocator import USER_SETTINGS
from auricle.inference.tuning import cpu_model

SETTINGS = ("default", "kept")
CLIP_SAMPLES = 160000


def measure(model: str, engines: list[str], seconds: float, threads: int) -> dict:
    """In this process: clips/s, faults and kernel ms per call of each engine."""
    import torch

    from auricle.inference.engines import EngineConfig, make_engine
    from auricle.models.ced import CED
    from auricle.models.registry import model_info

    torch.manual_seed(0)
    network = CED(model_info(model).config).eval()
    rows = {}
    for label in engines:
        engine_name, precision = label.split("-")
        engine = make_engine(network, EngineConfig(engine_name, precision, threads, None))
        clips = torch.randn(engine.batch_size, CLIP_SAMPLES) * 0.1
        with torch.inference_mode():
            for _ in range(3):  # allocation patterns and weight packing settle
                engine.probabilities(clips)
            before, start, calls = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter(), 0
            while calls == 0 or time.perf_counter() - start < seconds:
                engine.probabilities(clips)
                calls += 1
            elapsed, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
        rows[label] = {"clips_per_s": calls * len(clips) / elapsed, "batch": len(clips),
                       "faults_per_call": (after.ru_minflt - before.ru_minflt) / calls,
                       "kernel_ms_per_call": (after.ru_stime - before.ru_stime) / calls * 1e3}
    return rows


def child(setting: str, model: str, engines: list[str], seconds: float, threads: int) -> None:
    if setting == "kept":
        from auricle.allocator import keep_freed_memory

        if not keep_freed_memory():
            sys.exit("keep_freed_memory() changed nothing here (not glibc's malloc on Linux)")
    print(json.dumps(measure(model, engines, seconds, threads)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ced-mini")
    parser.add_argument("--engines", nargs="+", default=["torch-fp32", "torch-int8", "torch-bf16"],
                        help="engine-precision labels, e.g. torch-fp32 onnx-int8")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=2.5, help="measuring time per engine per process")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--child", choices=SETTINGS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.model, args.engines, args.seconds, args.threads)
        return

    runs: dict[str, list[dict]] = {setting: [] for setting in SETTINGS}
    with tempfile.TemporaryDirectory() as cache:  # an onnx engine's graph is prepared once, then shared
        env = dict(os.environ, AURICLE_CACHE=cache)
        for name in (*USER_SETTINGS, "AURICLE_MALLOC"):  # both settings as glibc and auricle would pick them
            env.pop(name, None)
        for round_index in range(args.rounds):
            for setting in SETTINGS if round_index % 2 == 0 else SETTINGS[::-1]:
                done = subprocess.run(
                    [sys.executable, __file__, "--child", setting, "--model", args.model, "--engines", *args.engines,
                     "--seconds", str(args.seconds), "--threads", str(args.threads)],
                    env=env, capture_output=True, text=True)
                if done.returncode != 0:
                    sys.exit(f"{setting} process failed:\n{done.stderr}")
                runs[setting].append(json.loads(done.stdout.strip().splitlines()[-1]))
                print(f"round {round_index + 1}/{args.rounds} {setting}: " + ", ".join(
                    f"{label} {row['clips_per_s']:.1f}" for label, row in runs[setting][-1].items()), flush=True)

    rows = []
    for label in args.engines:
        for setting in SETTINGS:
            per_round = [run[label] for run in runs[setting]]
            rates = [row["clips_per_s"] for row in per_round]
            rows.append({"engine": label, "setting": setting, "clips_per_s": statistics.median(rates),
                         "clips_per_s_min": min(rates), "clips_per_s_max": max(rates),
                         "faults_per_call": statistics.median(row["faults_per_call"] for row in per_round),
                         "kernel_ms_per_call": statistics.median(row["kernel_ms_per_call"] for row in per_round),
                         "batch": per_round[0]["batch"], "rounds": rates})
    print(f"\n{args.model}, {args.threads} threads, {args.rounds} rounds of fresh processes, {cpu_model()}")
    print(f"{'engine':<12} {'setting':<8} {'clips/s':>8} {'(min-max)':>13} {'faults/call':>12} {'kernel ms/call':>15} {'gain':>6}")
    for row in rows:
        base = next(r for r in rows if r["engine"] == row["engine"] and r["setting"] == "default")
        gain = f"{row['clips_per_s'] / base['clips_per_s'] - 1:+.1%}" if row is not base else ""
        print(f"{row['engine']:<12} {row['setting']:<8} {row['clips_per_s']:8.1f} "
              f"{row['clips_per_s_min']:6.1f}-{row['clips_per_s_max']:<6.1f} {row['faults_per_call']:12.0f} "
              f"{row['kernel_ms_per_call']:15.1f} {gain:>6}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu_model": cpu_model(),
            "model": args.model, "threads": args.threads, "rounds": args.rounds, "seconds": args.seconds,
            "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
