"""Cold start: wall time of `auricle tag one.wav` with the model already on disk.

Times, each in a fresh process and as the median of --repeats runs:
  * `python -c "import auricle.cli"`       (interpreter and CLI imports)
  * `python -c "import torch"`             (what the weights path pays before any work)
  * `auricle tag one.wav --checkpoint W`   (the whole command, what a user waits for)
  * the same with AURICLE_CLEAN_EXIT=1: with Python's own shutdown at the end, which
    `auricle` otherwise skips (measured in turns with the command, as its baseline)
  * `auricle tag one.wav --checkpoint W.onnx` with --exported: the same model written
    by `auricle export` (no torch import), measured in turns with the weights command
  * `auricle tag one.wav --checkpoint W --engine onnx` with --prepared: the graph prepared
    from the weights on a first run (timed once, apart), then loaded from the cache without
    torch; in turns with the weights command
  * `auricle tag one.wav --model NAME [--engine onnx]` with --by-name NAME: the issue's "model
    cached", W's weights stored as NAME in a Hugging Face cache the script builds; in turns too
  * with --baseline-src DIR: `import auricle.cli` and the weights command again from another source
    tree (PYTHONPATH=DIR, e.g. `git worktree add /tmp/base COMMIT` and DIR=/tmp/base/src), each run
    in turns with this tree's, so a before/after comparison shares the machine's phases
and, inside one process, the parts: importing torch and auricle.model, loading
the weights, tagging the clip. The target is under 2 s, most of it model load.

    python benchmarks/cold_start.py --repeats 5 --exported onnxruntime --prepared --by-name ced-mini --json benchmarks/results/cold_start.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from auricle.inference.tuning import cpu_model
from synthetic import REFERENCE_CHECKPOINT, auricle_command, report, run_measured, write_recording

PARTS = """
import json, sys, time
start = time.perf_counter()
import torch
from auricle.model import load_model
imported = time.perf_counter()
model = load_model(checkpoint=sys.argv[1], engine=sys.argv[3], precision=sys.argv[4])
loaded = time.perf_counter()
model.tag(sys.argv[2], top_k=5)
tagged = time.perf_counter()
print(json.dumps(dict(import_s=imported - start, load_s=loaded - imported, tag_s=tagged - loaded)))
"""


HUB_CACHE = """
import sys
from pathlib import Path
import auricle
from auricle.models.checkpoints import save_checkpoint
from auricle.models.registry import model_info
root, name, checkpoint = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
info = model_info(name)
folder = root / f"models--{info.hf_repo.replace('/', '--')}"
save_checkpoint(auricle.load_model(checkpoint=checkpoint).network,
                folder / "snapshots" / "benchmark" / "model.safetensors", name=info.name)
(folder / "refs").mkdir()
(folder / "refs" / "main").write_text("benchmark")
"""


def hub_cache(root: Path, name: str, checkpoint: Path) -> None:
    """``checkpoint``'s weights as model ``name``'s main revision in a Hugging Face cache at ``root``.

    In a child process: this one must stay small, because a child's peak RSS starts from its
    parent's at fork (Linux keeps the high-water mark across exec).
    """
    subprocess.run([sys.executable, "-c", HUB_CACHE, str(root), name, str(checkpoint)], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=REFERENCE_CHECKPOINT)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the clip to tag")
    parser.add_argument("--engine", default="torch")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--exported", choices=["portable", "onnxruntime"], default=None,
                        help="also time the command on the checkpoint exported with this --runtime (fp32, "
                             "or int8 with --precision int8)")
    parser.add_argument("--prepared", action="store_true",
                        help="also time --engine onnx on the weights (fp32, or int8 with --precision int8): "
                             "the prepared graph, in a cache of its own")
    parser.add_argument("--by-name", default=None, metavar="MODEL",
                        help="also time `auricle tag one.wav --model MODEL`, with and without --engine onnx, the "
                             "checkpoint's weights cached as MODEL's in a Hugging Face cache of the script's own")
    parser.add_argument("--baseline-src", type=Path, default=None, metavar="DIR",
                        help="also time `import auricle.cli` and the weights command with PYTHONPATH=DIR (another "
                             "tree's src), in turns with this tree's")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    baseline_env = None if args.baseline_src is None else {"PYTHONPATH": str(args.baseline_src.resolve())}

    with tempfile.TemporaryDirectory() as folder:
        clip = write_recording(Path(folder) / "one.wav", args.seconds)
        engine = ["--engine", args.engine, "--precision", args.precision]
        weights_command = auricle_command("tag", clip, "--checkpoint", args.checkpoint, *engine)
        exported_command = None
        if args.exported:
            exported = Path(folder) / "model.onnx"
            subprocess.run(auricle_command("export", "--checkpoint", args.checkpoint, "--runtime", args.exported,
                                           *(["--int8"] if args.precision == "int8" else []), "--out", exported),
                           check=True, capture_output=True)
            exported_command = auricle_command("tag", clip, "--checkpoint", exported)
        prepared_command, prepared_env, preparing_s = None, {"AURICLE_CACHE": str(Path(folder) / "cache")}, None
        if args.prepared:
            precision = args.precision if args.precision == "int8" else "fp32"
            prepared_command = auricle_command("tag", clip, "--checkpoint", args.checkpoint, "--engine", "onnx",
                                               "--precision", precision)
            preparing_s = run_measured(prepared_command, env=prepared_env)[0]  # the first run exports the graph
        named_commands, named_env, named_preparing_s = {}, {}, None
        if args.by_name:
            hub = Path(folder) / "hub"
            hub_cache(hub, args.by_name, args.checkpoint)
            named_env = {"HF_HUB_CACHE": str(hub), "AURICLE_CACHE": str(Path(folder) / "named-cache")}
            named_commands = {"weights": auricle_command("tag", clip, "--model", args.by_name),
                              "onnx": auricle_command("tag", clip, "--model", args.by_name, "--engine", "onnx")}
            named_preparing_s = run_measured(named_commands["onnx"], env=named_env)[0]
            run_measured(named_commands["weights"], env=named_env)
        # One untimed run each warms the OS file cache (and the onnx engine's export cache).
        for command in filter(None, (weights_command, exported_command)):
            run_measured(command)
        if baseline_env:
            run_measured(weights_command, env=baseline_env)
        imports, baseline_imports = [], []
        for _ in range(args.repeats):
            imports.append(run_measured([sys.executable, "-c", "import auricle.cli"])[0])
            if baseline_env:
                baseline_imports.append(run_measured([sys.executable, "-c", "import auricle.cli"], env=baseline_env)[0])
        torch_imports = [run_measured([sys.executable, "-c", "import torch"])[0] for _ in range(args.repeats)]
        commands, clean_exits, exported_runs, prepared_runs, baseline_runs = [], [], [], [], []
        named_runs: dict[str, list] = {kind: [] for kind in named_commands}
        for _ in range(args.repeats):  # in turns, so a slow phase of the machine hits all alike
            commands.append(run_measured(weights_command))
            if baseline_env:
                baseline_runs.append(run_measured(weights_command, env=baseline_env))
            clean_exits.append(run_measured(weights_command, env={"AURICLE_CLEAN_EXIT": "1"}))
            if exported_command:
                exported_runs.append(run_measured(exported_command))
            if prepared_command:
                prepared_runs.append(run_measured(prepared_command, env=prepared_env))
            for kind, command in named_commands.items():
                named_runs[kind].append(run_measured(command, env=named_env))
        parts = [json.loads(subprocess.run([sys.executable, "-c", PARTS, str(args.checkpoint), str(clip),
                                            args.engine, args.precision],
                                           capture_output=True, check=True, text=True).stdout)
                 for _ in range(args.repeats)]
    result = dict(
        date=time.strftime("%Y-%m-%d"), time_utc=time.strftime("%H:%M", time.gmtime()), checkpoint=str(args.checkpoint), clip_seconds=args.seconds,
        engine=args.engine, precision=args.precision,
        cpu_model=cpu_model(),
        cli_import_s=statistics.median(imports),
        torch_import_s=statistics.median(torch_imports),
        tag_command_wall_s=statistics.median(wall for wall, _, _ in commands),
        tag_command_peak_rss_mb=statistics.median(peak for _, peak, _ in commands),
        clean_exit_tag_command_wall_s=statistics.median(wall for wall, _, _ in clean_exits),
        clean_exit_tag_command_walls_s=[round(wall, 3) for wall, _, _ in clean_exits],
        **({} if not exported_runs else dict(
            exported_runtime=args.exported,
            exported_tag_command_wall_s=statistics.median(wall for wall, _, _ in exported_runs),
            exported_tag_command_walls_s=[round(wall, 3) for wall, _, _ in exported_runs],
            exported_tag_command_peak_rss_mb=statistics.median(peak for _, peak, _ in exported_runs))),
        **({} if not prepared_runs else dict(
            prepared_first_run_s=preparing_s,
            prepared_tag_command_wall_s=statistics.median(wall for wall, _, _ in prepared_runs),
            prepared_tag_command_walls_s=[round(wall, 3) for wall, _, _ in prepared_runs],
            prepared_tag_command_peak_rss_mb=statistics.median(peak for _, peak, _ in prepared_runs))),
        **({} if not named_commands else dict(
            by_name=args.by_name, by_name_onnx_first_run_s=named_preparing_s,
            **{f"by_name_{kind}_wall_s": statistics.median(wall for wall, _, _ in runs)
               for kind, runs in named_runs.items()},
            **{f"by_name_{kind}_walls_s": [round(wall, 3) for wall, _, _ in runs] for kind, runs in named_runs.items()})),
        tag_command_walls_s=[round(wall, 3) for wall, _, _ in commands],
        **({} if not baseline_env else dict(
            baseline_src=str(args.baseline_src),
            baseline_cli_import_s=statistics.median(baseline_imports),
            cli_import_walls_s=[round(wall, 3) for wall in imports],
            baseline_cli_import_walls_s=[round(wall, 3) for wall in baseline_imports],
            baseline_tag_command_wall_s=statistics.median(wall for wall, _, _ in baseline_runs),
            baseline_tag_command_walls_s=[round(wall, 3) for wall, _, _ in baseline_runs],
            baseline_tag_command_peak_rss_mb=statistics.median(peak for _, peak, _ in baseline_runs))),
        **{key: statistics.median(p[key] for p in parts) for key in ("import_s", "load_s", "tag_s")},
    )
    report(result, args.json)


if __name__ == "__main__":
    main()
