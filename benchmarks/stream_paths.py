"""The two ways a batch meets the streams, side by side: per call, or free-running.

* ``probabilities(batch)``: one call split over the streams, waiting for all parts
  (the service batcher and direct API calls);
* ``score_windows(clips)``: the tagging path, each stream taking calls of its own
  with up to two in flight, never waiting for another stream.

Random ced-mini weights, 10 s clips; the variants take turns for --rounds rounds
of about --seconds each and each figure is the median (min-max) over rounds.

    python benchmarks/stream_paths.py --engines torch onnx --precision int8 --streams 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from auricle.inference.engines import EngineConfig
from auricle.labels import audioset_labels
from auricle.model import AudioModel
from auricle.models.ced import CED
from auricle.models.registry import model_info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ced-mini")
    parser.add_argument("--engines", nargs="+", default=["torch", "onnx"])
    parser.add_argument("--precision", default="int8")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--streams", type=int, default=2)
    parser.add_argument("--clips", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")  # torch.ao's per-call notices in int8

    torch.set_num_threads(args.threads)
    models = {}
    for engine in args.engines:
        torch.manual_seed(0)
        network = CED(model_info(args.model).config).eval()
        models[engine] = AudioModel(network, args.model, audioset_labels(),
                                    engine=EngineConfig(engine, args.precision, args.threads, args.streams))
    rng = np.random.default_rng(0)
    clips = [rng.standard_normal(160000).astype(np.float32) * 0.1 for _ in range(args.clips)]
    batch = torch.from_numpy(np.stack(clips[: models[args.engines[0]].batch_size]))
    for model in models.values():  # warm-up: packing, ONNX export cache, stream threads
        model.score_windows(clips[:8])
        model.probabilities(batch)
    rates: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for engine, model in models.items():
            start, clips_done = time.perf_counter(), 0
            while time.perf_counter() - start < args.seconds:
                model.probabilities(batch)
                clips_done += len(batch)
            rates.setdefault(f"{engine} probabilities(batch {len(batch)})", []).append(
                clips_done / (time.perf_counter() - start))
            start = time.perf_counter()
            model.score_windows(clips)
            rates.setdefault(f"{engine} score_windows({len(clips)})", []).append(
                len(clips) / (time.perf_counter() - start))
    rows = {name: dict(median=statistics.median(values), min=min(values), max=max(values))
            for name, values in rates.items()}
    for name, row in rows.items():
        print(f"{name:34s} {row['median']:6.1f} clips/s ({row['min']:.1f}-{row['max']:.1f})")
    if args.json:
        args.json.write_text(json.dumps(dict(date=time.strftime("%Y-%m-%d %H:%M"), model=args.model,
                                             precision=args.precision, threads=args.threads,
                                             streams=args.streams, rounds=args.rounds, results=rows), indent=2))


if __name__ == "__main__":
    main()
