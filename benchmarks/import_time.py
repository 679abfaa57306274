"""Import time of modules on auricle's start-up paths, each in a fresh process, environments in turns.

For every --python interpreter (default: this one) and every --module, runs
``python -c "import MODULE"`` in a fresh process, timing the import alone inside it,
--repeats times; interpreters and modules take turns in each repeat so that drift
on a shared machine hits them alike. Prints the median and range per pair.

    python benchmarks/import_time.py --module onnx --module torch
    # two versions of a dependency side by side, each in a venv of its own:
    python benchmarks/import_time.py --python /tmp/a/bin/python --python /tmp/b/bin/python --module ml_dtypes
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

PROBE = ("import time, importlib, importlib.metadata as m; start = time.perf_counter(); "
         "importlib.import_module({module!r}); elapsed = time.perf_counter() - start; "
         "top = {module!r}.split('.')[0]\n"
         "try: version = m.version(top)\n"
         "except m.PackageNotFoundError: version = '?'\n"
         "print(elapsed, version)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python", action="append", default=[], help="interpreter of an environment to time")
    parser.add_argument("--module", action="append", default=[], help="module to import [default: onnx]")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    pythons, modules = args.python or [sys.executable], args.module or ["onnx"]

    times: dict[tuple[str, str], list[float]] = {(p, m): [] for p in pythons for m in modules}
    versions: dict[tuple[str, str], str] = {}
    for _ in range(args.repeats):
        for python in pythons:
            for module in modules:
                done = subprocess.run([python, "-c", PROBE.format(module=module)], capture_output=True, text=True)
                if done.returncode != 0:
                    raise SystemExit(f"{python}: import {module} failed: {done.stderr.strip().splitlines()[-1]}")
                elapsed, version = done.stdout.split()
                times[python, module].append(float(elapsed))
                versions[python, module] = version
    rows = []
    for (python, module), values in times.items():
        rows.append(dict(python=python, module=module, version=versions[python, module],
                         median_s=statistics.median(values), seconds=values))
        print(f"{module} {versions[python, module]:<10} {statistics.median(values):6.3f} s "
              f"({min(values):.3f}-{max(values):.3f})  {python}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"repeats": args.repeats, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
