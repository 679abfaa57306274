"""Cold start of a Dasheng encoder: `auricle embed one.wav --model NAME --checkpoint W` (issue 25: under
2.5 s for dasheng-base).

Random full-size weights of NAME, saved by a child process (this one stays small: a child's
reported peak RSS starts at its parent's) in auricle's .safetensors and in the Zenodo .pt
layout. Each command runs once untimed (the OS file cache), then --repeats times in turns
(medians), in a fresh process each: wall seconds, CPU seconds (user + system: on a shared
machine the wall time grows with the others' load, the CPU time much less; with --threads 1 no
thread waits for a descheduled other, so the CPU time is what a quiet machine would take), and
peak RSS. With --baseline-src SRC the same commands run on the auricle package under SRC (e.g. a
`git archive` of an earlier commit), in the same turns. The CED commands are in cold_start.py.

    python benchmarks/dasheng_cold_start.py --threads 1 --baseline-src /tmp/base/src --json benchmarks/results/cold_start_dasheng.json
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

from auricle.inference.tuning import cpu_model
from synthetic import auricle_command, random_checkpoint_apart, report, run_measured, write_recording


def children_cpu_s() -> float:
    """User + system seconds of every child waited for so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def dasheng_cold_start(args: argparse.Namespace) -> dict:
    """Wall and CPU seconds of `auricle embed one.wav --model NAME --checkpoint W` per layout and source tree."""
    variants = {"this": {}}
    if args.baseline_src:
        variants["baseline"] = {"PYTHONPATH": str(args.baseline_src.resolve())}
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        clip = write_recording(folder / "one.wav", args.seconds)
        weights = {layout: random_checkpoint_apart(args.model, folder, layout) for layout in ("auricle", "zenodo")}
        threads = ["--threads", str(args.threads)] if args.threads else []
        commands = {f"{variant}/{layout}": (auricle_command("embed", clip, "--model", args.model, "--checkpoint",
                                                            path, "--output", folder / "out.npz", *threads), env)
                    for layout, path in weights.items() for variant, env in variants.items()}
        for command, env in commands.values():  # one untimed run each warms the OS file cache
            run_measured(command, env=env)
        runs: dict[str, list] = {name: [] for name in commands}
        for _ in range(args.repeats):  # in turns, so a slow phase of the machine hits all alike
            for name, (command, env) in commands.items():
                before = children_cpu_s()
                wall, peak, _ = run_measured(command, env=env)
                runs[name].append((wall, children_cpu_s() - before, peak))
    result = dict(date=time.strftime("%Y-%m-%d"), time_utc=time.strftime("%H:%M", time.gmtime()),
                  cpu_model=cpu_model(), model=args.model, clip_seconds=args.seconds, repeats=args.repeats,
                  threads=args.threads,
                  baseline=str(args.baseline_src) if args.baseline_src else None, load_average=os.getloadavg())
    for name, values in runs.items():
        key = name.replace("/", "_")
        result[f"{key}_wall_s"] = statistics.median(wall for wall, _, _ in values)
        result[f"{key}_cpu_s"] = statistics.median(cpu for _, cpu, _ in values)
        result[f"{key}_peak_rss_mb"] = statistics.median(peak for _, _, peak in values)
        result[f"{key}_walls_s"] = [round(wall, 2) for wall, _, _ in values]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="dasheng-base")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the clip to embed")
    parser.add_argument("--threads", type=int, default=None, help="pass --threads to the command")
    parser.add_argument("--baseline-src", type=Path, default=None, metavar="SRC",
                        help="also time the auricle package under SRC (put on PYTHONPATH), in turns")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    report(dasheng_cold_start(args), args.json)


if __name__ == "__main__":
    main()
