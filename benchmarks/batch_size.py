"""Which batch size runs fastest on this CPU: engines x batch sizes, interleaved.

Each round scores the same 16 ten-second clips once per (engine, batch size),
in batches of that size; the engines and sizes take turns, so slow phases of a
shared machine hit all of them. Prints median (min-max) clips/s per cell and
writes them as JSON. This is the measurement behind ``CPU_BATCH_SIZE`` (one stream)
and, with ``--streams 2 --tagging-path``, behind ``STREAM_BATCH_SIZE``: then the
clips go through ``AudioModel.score_windows`` (what ``auricle tag`` runs), each
stream taking calls of size / streams.

    python benchmarks/batch_size.py --engines torch-fp32 torch-int8 torch-bf16 onnx-int8 --sizes 2 4 8 16 --streams 1 --json benchmarks/results/batch_size.json
    python benchmarks/batch_size.py --engines torch-fp32 torch-int8 onnx-int8 --sizes 2 4 8 --streams 2 --tagging-path --json benchmarks/results/batch_size_streams.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from auricle.inference.engines import EngineConfig, make_engine
from auricle.labels import audioset_labels
from auricle.model import AudioModel
from auricle.models.ced import CED
from auricle.models.registry import model_info

CLIP_SAMPLES = 160000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ced-mini")
    parser.add_argument("--engines", nargs="+", default=["torch-fp32", "torch-int8"],
                        help="engine-precision pairs, e.g. torch-bf16 onnx-int8")
    parser.add_argument("--sizes", nargs="+", type=int, default=[2, 4, 8, 16])
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--streams", type=int, default=None, help="default: one per thread")
    parser.add_argument("--tagging-path", action="store_true",
                        help="score through AudioModel.score_windows (streams run free) instead of probabilities")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    network = CED(model_info(args.model).config).eval()
    engines = {name: make_engine(network, EngineConfig(*name.split("-"), threads=args.threads, streams=args.streams))
               for name in args.engines}
    clips = torch.randn(args.clips, CLIP_SAMPLES) * 0.1
    if args.tagging_path:
        windows = list(clips.numpy())
        models = {name: AudioModel(network, args.model, audioset_labels(), engine=engine)
                  for name, engine in engines.items()}

    def score(name: str, size: int) -> None:
        if args.tagging_path:
            models[name].score_windows(windows, size)
            return
        for first in range(0, args.clips, size):
            engines[name].probabilities(clips[first : first + size])

    rates: dict[tuple[str, int], list[float]] = {}
    with torch.inference_mode():
        for engine in engines.values():  # warm-up: weight packing, graph building
            engine.probabilities(clips[: max(args.sizes)])
        for _ in range(args.rounds):
            for name in engines:
                for size in args.sizes:
                    start = time.perf_counter()
                    score(name, size)
                    rates.setdefault((name, size), []).append(args.clips / (time.perf_counter() - start))
    rows = []
    for name in engines:
        cells = []
        for size in args.sizes:
            values = rates[name, size]
            rows.append(dict(engine=name, batch_size=size, median=statistics.median(values), min=min(values),
                             max=max(values)))
            cells.append(f"b{size}: {statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})")
        print(f"{name:<12} " + "  ".join(cells))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(dict(date=time.strftime("%Y-%m-%d %H:%M"), model=args.model,
                                             threads=args.threads, streams=next(iter(engines.values())).streams,
                                             tagging_path=args.tagging_path, clips=args.clips, rounds=args.rounds,
                                             results=rows), indent=2))


if __name__ == "__main__":
    main()
