"""Clips per second of exported ONNX files in ONNX Runtime: ``--runtime portable`` vs ``onnxruntime``.

Exports one CED size (random weights, seed 0: speed does not depend on them)
with ``auricle.export.export_onnx`` in both runtimes, fp32 and int8, to a
temporary folder, then times each file in ONNX Runtime (CPU provider,
--threads intra-op threads) on a batch of 10 s clips. The files, the ``onnx``
engine (PyTorch frontend + the same fused encoder, for reference) and the
fp32 matmul peak take turns in --rounds rounds (``throughput.interleaved``);
figures are medians with min-max over rounds.

With --baseline-src, an older auricle (the ``src`` folder of another checkout) exports the
same weights in a subprocess too, and its files take turns with this version's: export
time and file speed side by side (e.g. the traced graphs before the node-by-node export).

    python benchmarks/export_speed.py --json benchmarks/results/export_speed.json
    python benchmarks/export_speed.py --model ced-tiny --rounds 3 --no-engine
    git worktree add ../auricle-traced d26d5f3    # the last commit with torch.onnx.export
    python benchmarks/export_speed.py --baseline-src ../auricle-traced/src --no-engine
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from throughput import interleaved

from auricle.export import export_onnx
from auricle.inference.engines import EngineConfig
from auricle.labels import audioset_labels
from auricle.model import AudioModel
from auricle.models.ced import CED
from auricle.models.checkpoints import save_checkpoint
from auricle.models.registry import model_info

# Run by the baseline's Python: export one checkpoint with that auricle, print the report as JSON.
BASELINE_EXPORT = """
import json, sys
import auricle
from auricle.export import export_onnx
model = auricle.load_model(checkpoint=sys.argv[1])
report = export_onnx(model, sys.argv[2], int8=sys.argv[3] == "int8", runtime=sys.argv[4])
print(json.dumps(report.to_dict()))
"""


class FileModel:
    """An exported file in an ONNX Runtime session, measured like a model."""

    def __init__(self, path: Path, threads: int) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def probabilities(self, waveforms: torch.Tensor) -> np.ndarray:
        return self.session.run(["probabilities"], {"waveforms": waveforms.numpy()})[0]


def baseline_export(src: Path, network: CED, name: str, folder: Path, label: str, int8: bool, runtime: str,
                    threads: int) -> dict:
    """Export ``network`` with the auricle in ``src`` (a fresh process); its ExportReport as a dict."""
    checkpoint = folder / "weights.safetensors"
    if not checkpoint.exists():
        save_checkpoint(network, checkpoint, labels=[item.name for item in audioset_labels().classes], name=name)
    env = {**os.environ, "PYTHONPATH": str(src.resolve()), "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run([sys.executable, "-c", BASELINE_EXPORT, str(checkpoint), str(folder / f"baseline-{label}.onnx"),
                           "int8" if int8 else "fp32", runtime], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ced-mini")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=2.0, help="measuring time per figure per round")
    parser.add_argument("--no-engine", action="store_true", help="skip the onnx engine reference rows")
    parser.add_argument("--baseline-src", type=Path, default=None,
                        help="src folder of an older auricle checkout to export the same weights with")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)  # the matmul peak, the engine's frontend and the export checks
    torch.manual_seed(0)
    network = CED(model_info(args.model).config).eval()
    model = AudioModel(network, args.model, audioset_labels())
    models, exports = {}, {}
    with tempfile.TemporaryDirectory() as folder:
        for runtime in ("portable", "onnxruntime"):
            for int8 in (False, True):
                label = f"{runtime}-{'int8' if int8 else 'fp32'}"
                report = export_onnx(model, Path(folder) / f"{label}.onnx", int8=int8, runtime=runtime)
                exports[label] = report.to_dict()
                print(f"exported {label}: {report.size_bytes / 1e6:.1f} MB in {report.seconds:.1f} s, "
                      f"max |diff| {report.max_abs_diff:.1e}, top-5 overlap {report.top5_overlap:.3f}")
                models[label] = FileModel(Path(report.path), args.threads)
                if args.baseline_src:
                    base = baseline_export(args.baseline_src, network, args.model, Path(folder), label, int8,
                                           runtime, args.threads)
                    exports[f"baseline {label}"] = base
                    print(f"  baseline {label}: {base['size_bytes'] / 1e6:.1f} MB in {base['seconds']:.1f} s "
                          f"(this version {report.seconds:.1f} s), max |diff| {base['max_abs_diff']:.1e}, "
                          f"top-5 overlap {base['top5_overlap']:.3f}")
                    models[f"baseline {label}"] = FileModel(Path(base["path"]), args.threads)
        if not args.no_engine:
            for precision in ("fp32", "int8"):
                models[f"engine onnx-{precision}"] = AudioModel(
                    network, args.model, model.labels, engine=EngineConfig("onnx", precision, args.threads))
        peaks: list[float] = []
        rates = interleaved(models, args.batch_size, args.rounds, args.seconds, peaks)

    print(f"\n{args.model}, batch {args.batch_size} x 10 s, {args.threads} threads, {args.rounds} rounds; "
          f"onnxruntime {ort.__version__}, load {os.getloadavg()[0]:.2f}")
    print(f"{'variant':<27} {'clips/s':>8} {'(min-max)':>13} {'vs portable':>11}")
    rows = []
    for label, values in rates.items():
        median = statistics.median(values)
        base = statistics.median(rates[label.replace("onnxruntime", "portable")]) if "onnxruntime-" in label else None
        ratio = f"{median / base:.2f}x" if base else ""
        print(f"{label:<27} {median:>8.1f} {f'({min(values):.1f}-{max(values):.1f})':>13} {ratio:>11}")
        rows.append(dict(variant=label, clips_per_s=median, min=min(values), max=max(values), rounds=values,
                         export=exports.get(label)))
    print(f"{'matmul peak':<27} {statistics.median(peaks):>8.1f} {f'({min(peaks):.0f}-{max(peaks):.0f})':>13} GFLOP/s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(dict(
            date=time.strftime("%Y-%m-%d %H:%M"), model=args.model, torch=torch.__version__,
            onnxruntime=ort.__version__, threads=args.threads, batch_size=args.batch_size,
            machine=platform.machine(), rounds=args.rounds, seconds_per_figure=args.seconds,
            matmul_peaks_gflops=peaks, load_average=os.getloadavg(), results=rows), indent=2))


if __name__ == "__main__":
    main()
