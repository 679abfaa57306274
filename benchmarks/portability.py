"""Exported files in other runtimes: another onnxruntime version, OpenVINO.

Exports one model (the reference ced-mini checkpoint by default) in every kind `auricle export`
writes (portable and onnxruntime runtime, fp32 and int8, waveform and --mel-input, with piece
embeddings), scores 0.1 s, 10 s and 25.3 s clips with the installed onnxruntime, then runs every
file in each --python interpreter (a virtual environment of its own, holding the runtime to try)
and reports whether it loads, its largest probability difference from the installed onnxruntime,
and (with --speed) its clips/s on a batch of 4 x 10 s. The environments are timed one after
another, not in turns, so the speeds are rough figures, not a comparison.

    python3 -m venv /tmp/ort118 && /tmp/ort118/bin/pip install onnxruntime==1.18.0 'numpy<2'
    python3 -m venv /tmp/ov && /tmp/ov/bin/pip install openvino
    python benchmarks/portability.py --python /tmp/ort118/bin/python --python /tmp/ov/bin/python --speed

A file a runtime cannot load is reported with the last line of the runtime's error, not raised.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from synthetic import REFERENCE_CHECKPOINT

import auricle
from auricle.export import export_onnx

# Run by the other interpreter: argv[1] is a JSON job; prints one JSON line per file.
CHILD = r'''
import json, sys, time
import numpy as np
job = json.loads(sys.argv[1])
try:
    import openvino as ov
    core, runtime = ov.Core(), "openvino " + ov.__version__.split("-")[0]
except ImportError:
    core = None
    import onnxruntime as ort
    runtime = "onnxruntime " + ort.__version__

def loader(path):
    if core is not None:
        compiled = core.compile_model(core.read_model(path), "CPU", {"INFERENCE_NUM_THREADS": job["threads"]})
        return lambda name, feed: compiled([feed])[compiled.output("probabilities")]
    options = ort.SessionOptions()
    options.intra_op_num_threads = job["threads"]
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return lambda name, feed: session.run(["probabilities"], {name: feed})[0]

for item in job["files"]:
    row = {"file": item["file"], "runtime": runtime}
    try:
        run = loader(item["path"])
        worst = 0.0
        for clip in item["clips"]:
            got = run(item["input"], np.load(clip["feed"]))
            worst = max(worst, float(np.abs(got - np.load(clip["expected"])).max()))
        row["max_abs_diff"] = worst
        if job["speed"] and item["input"] == "waveforms":
            batch = np.load(job["batch"])
            run(item["input"], batch)
            start, calls = time.perf_counter(), 0
            while time.perf_counter() - start < job["seconds"]:
                run(item["input"], batch)
                calls += 1
            row["clips_per_s"] = len(batch) * calls / (time.perf_counter() - start)
    except Exception as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        row["error"] = (lines[-1] if lines else type(error).__name__)[:300]  # OpenVINO's cause is its last line
    print(json.dumps(row), flush=True)
'''


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=REFERENCE_CHECKPOINT)
    parser.add_argument("--python", action="append", default=[], help="interpreter of another environment")
    parser.add_argument("--speed", action="store_true", help="also time each waveform file, batch 4 x 10 s")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import onnxruntime as ort

    model = auricle.load_model(checkpoint=args.checkpoint)
    rng = np.random.default_rng(0)
    clips = {"0.1s": 0.1 * rng.standard_normal((2, 1600)), "10s": 0.1 * rng.standard_normal((2, 160000)),
             "25.3s": 0.1 * rng.standard_normal((1, 404800))}
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        batch = folder / "batch.npy"
        np.save(batch, (0.1 * rng.standard_normal((4, 160000))).astype(np.float32))
        files = []
        for runtime in ("portable", "onnxruntime"):
            for int8 in (False, True):
                for mel in (False, True):
                    label = f"{runtime}-{'int8' if int8 else 'fp32'}-{'mel' if mel else 'waveform'}"
                    path = folder / f"{label}.onnx"
                    export_onnx(model, path, int8=int8, runtime=runtime, mel_input=mel, piece_embeddings=True)
                    options = ort.SessionOptions()
                    options.intra_op_num_threads = args.threads
                    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                    name = "mel" if mel else "waveforms"
                    item = {"file": label, "path": str(path), "input": name, "clips": []}
                    for clip_name, wave in clips.items():
                        wave = torch.from_numpy(wave.astype(np.float32))
                        feed = (model.network.spectrogram(wave) if mel else wave).numpy()
                        np.save(folder / f"{label}-{clip_name}-feed.npy", feed)
                        np.save(folder / f"{label}-{clip_name}-expected.npy",
                                session.run(["probabilities"], {name: feed})[0])
                        item["clips"].append({"feed": str(folder / f"{label}-{clip_name}-feed.npy"),
                                              "expected": str(folder / f"{label}-{clip_name}-expected.npy")})
                    files.append(item)
        job = {"files": files, "threads": args.threads, "speed": args.speed, "seconds": args.seconds,
               "batch": str(batch)}
        for python in [None] + args.python:  # None: this environment, the reference
            command = [python or sys.executable, "-c", CHILD, json.dumps(job)]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                print(f"{python}: failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
                continue
            for line in done.stdout.splitlines():
                row = json.loads(line)
                row["python"] = python or "this environment"
                rows.append(row)
                figure = row.get("error") or f"max |diff| {row['max_abs_diff']:.1e}"
                speed = f", {row['clips_per_s']:.1f} clips/s" if "clips_per_s" in row else ""
                print(f"{row['runtime']:<20} {row['file']:<28} {figure}{speed}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"checkpoint": str(args.checkpoint), "threads": args.threads,
                                         "onnxruntime": ort.__version__, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
