"""Clips per second of exported ONNX files in ONNX Runtime: ``--runtime portable`` vs ``onnxruntime``.

Exports one CED size (random weights, seed 0: speed does not depend on them)
with ``auricle.export.export_onnx`` in both runtimes, fp32 and int8, to a
temporary folder, then times each file in ONNX Runtime (CPU provider,
--threads intra-op threads) on a batch of 10 s clips. The files, the ``onnx``
engine (PyTorch frontend + the same fused encoder, for reference) and the
fp32 matmul peak take turns in --rounds rounds (``throughput.interleaved``);
figures are medians with min-max over rounds.

    python benchmarks/export_speed.py --json benchmarks/results/export_speed.json
    python benchmarks/export_speed.py --model ced-tiny --rounds 3 --no-engine
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
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
from auricle.models.registry import model_info


class FileModel:
    """An exported file in an ONNX Runtime session, measured like a model."""

    def __init__(self, path: Path, threads: int) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def probabilities(self, waveforms: torch.Tensor) -> np.ndarray:
        return self.session.run(["probabilities"], {"waveforms": waveforms.numpy()})[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ced-mini")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=2.0, help="measuring time per figure per round")
    parser.add_argument("--no-engine", action="store_true", help="skip the onnx engine reference rows")
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
                print(f"exported {label}: {report.size_bytes / 1e6:.1f} MB in {report.seconds:.0f} s, "
                      f"max |diff| {report.max_abs_diff:.1e}, top-5 overlap {report.top5_overlap:.3f}")
                models[label] = FileModel(Path(report.path), args.threads)
        if not args.no_engine:
            for precision in ("fp32", "int8"):
                models[f"engine onnx-{precision}"] = AudioModel(
                    network, args.model, model.labels, engine=EngineConfig("onnx", precision, args.threads))
        peaks: list[float] = []
        rates = interleaved(models, args.batch_size, args.rounds, args.seconds, peaks)

    print(f"\n{args.model}, batch {args.batch_size} x 10 s, {args.threads} threads, {args.rounds} rounds; "
          f"onnxruntime {ort.__version__}, load {os.getloadavg()[0]:.2f}")
    print(f"{'variant':<20} {'clips/s':>8} {'(min-max)':>13} {'vs portable':>11}")
    rows = []
    for label, values in rates.items():
        median = statistics.median(values)
        base = statistics.median(rates[label.replace("onnxruntime", "portable")]) if "onnxruntime-" in label else None
        ratio = f"{median / base:.2f}x" if base else ""
        print(f"{label:<20} {median:>8.1f} {f'({min(values):.1f}-{max(values):.1f})':>13} {ratio:>11}")
        rows.append(dict(variant=label, clips_per_s=median, min=min(values), max=max(values), rounds=values,
                         export=exports.get(label)))
    print(f"{'matmul peak':<20} {statistics.median(peaks):>8.1f} {f'({min(peaks):.0f}-{max(peaks):.0f})':>13} GFLOP/s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(dict(
            date=time.strftime("%Y-%m-%d %H:%M"), model=args.model, torch=torch.__version__,
            onnxruntime=ort.__version__, threads=args.threads, batch_size=args.batch_size,
            machine=platform.machine(), rounds=args.rounds, seconds_per_figure=args.seconds,
            matmul_peaks_gflops=peaks, load_average=os.getloadavg(), results=rows), indent=2))


if __name__ == "__main__":
    main()
