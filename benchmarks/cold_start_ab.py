"""Cold start of `auricle tag one.wav`, two source trees in turns: did a change make starting slower?

Each case runs, in a fresh process, with ``PYTHONPATH`` set to the baseline tree, then the
candidate tree, ``--repeats`` times in turns (so a busy phase of a shared machine hits both);
the median wall time per tree is reported. Cases: the weights file (``--checkpoint W``), the
model by name from a Hugging Face cache built here (``--model ced-mini``), an exported ``.onnx``
file (no torch), and ``--engine onnx`` (the prepared graph, prepared once per tree beforehand).

    git archive ad60b34 src | tar -x -C /tmp/base
    python benchmarks/cold_start_ab.py --baseline /tmp/base/src --candidate src --repeats 7 \
        --json benchmarks/results/cold_start_ab.json
    python benchmarks/cold_start_ab.py ... --cases "exported file" "--engine onnx" --repeats 15
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from synthetic import REFERENCE_CHECKPOINT, run_measured, write_recording

HUB_CACHE = """
import sys
from pathlib import Path
import auricle
from auricle.models.checkpoints import save_checkpoint
from auricle.models.registry import model_info
root, name, checkpoint = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
folder = root / f"models--{model_info(name).hf_repo.replace('/', '--')}"
save_checkpoint(auricle.load_model(checkpoint=checkpoint).network,
                folder / "snapshots" / "benchmark" / "model.safetensors", name=name)
(folder / "refs").mkdir()
(folder / "refs" / "main").write_text("benchmark")
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, required=True, help="the baseline's src folder")
    parser.add_argument("--candidate", type=Path, required=True, help="the candidate's src folder")
    parser.add_argument("--checkpoint", type=Path, default=REFERENCE_CHECKPOINT)
    parser.add_argument("--name", default="ced-mini", help="the name the checkpoint's weights are cached under")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--cases", nargs="+", default=None,
                        help="only these cases (weights, 'by name', 'exported file', '--engine onnx')")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    trees = {"baseline": args.baseline.resolve(), "candidate": args.candidate.resolve()}
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        clip = write_recording(work / "one.wav", 5.0)
        hub = work / "hub"
        subprocess.run([sys.executable, "-c", HUB_CACHE, str(hub), args.name, str(args.checkpoint)], check=True,
                       env={**os.environ, "PYTHONPATH": str(trees["candidate"])})
        exported = work / "model.onnx"
        subprocess.run([sys.executable, "-m", "auricle", "export", "--checkpoint", str(args.checkpoint),
                        "--runtime", "onnxruntime", "--piece-embeddings", "-o", str(exported)], check=True,
                       capture_output=True, env={**os.environ, "PYTHONPATH": str(trees["candidate"])})
        cases = {
            "weights": ["--checkpoint", str(args.checkpoint)],
            "by name": ["--model", args.name],
            "exported file": ["--checkpoint", str(exported)],
            "--engine onnx": ["--checkpoint", str(args.checkpoint), "--engine", "onnx"],
        }
        cases = {case: options for case, options in cases.items() if args.cases is None or case in args.cases}
        envs = {tree: {"PYTHONPATH": str(src), "HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1",
                       "AURICLE_CACHE": str(work / f"cache-{tree}")} for tree, src in trees.items()}
        for tree in trees:  # the graph is prepared once per tree, untimed
            run_measured([sys.executable, "-m", "auricle", "tag", str(clip), "--checkpoint", str(args.checkpoint),
                          "--engine", "onnx"], envs[tree])
        times: dict[str, dict[str, list[float]]] = {case: {tree: [] for tree in trees} for case in cases}
        for _ in range(args.repeats):
            for case, options in cases.items():
                for tree in trees:
                    seconds, _, result = run_measured([sys.executable, "-m", "auricle", "tag", str(clip), *options],
                                                      envs[tree])
                    if result.returncode != 0:
                        raise SystemExit(f"{tree} {case}: exit {result.returncode}: {result.stderr}")
                    times[case][tree].append(seconds)
    summary = {case: {tree: round(statistics.median(values), 3) for tree, values in per_tree.items()}
               for case, per_tree in times.items()}
    for case, medians in summary.items():
        print(f"{case:15s} baseline {medians['baseline']:.2f} s   candidate {medians['candidate']:.2f} s")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"repeats": args.repeats, "trees": {k: str(v) for k, v in trees.items()},
                                         "median_s": summary, "runs_s": times}, indent=2) + "\n")


if __name__ == "__main__":
    main()
