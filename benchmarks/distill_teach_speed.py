"""Teacher-pass throughput against the bare model on the same clips, and the fraction of the matmul peak.

    python benchmarks/distill_teach_speed.py ../shared/data/everyday/audio \
        --teacher ../shared/reference/ced_tiny_perturbed.pt --chunks 64 --threads 2

Measured in one process, back to back: (1) fp32 matrix-multiply peak (2048^3
GEMM), (2) the model alone on the chunks (batches of --batch-size equal-length
10 s clips, no augmentation), (3) `teach` on the same chunks (decode FLAC,
roll, masks, per-clip log-mel, model, top-k, quantise, write). GFLOP per clip
is counted from the model's matmuls and convolutions (torch.utils.flop_counter).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

from auricle.audio import list_audio_files
from auricle.distill.shards import ShardConfig, ShardReader, ShardSet, write_shards
from auricle.distill.teach import TeachConfig, teach
from auricle.distill.teachers import load_teacher


def matmul_peak(seconds: float = 2.0) -> float:
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    torch.mm(a, b)
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        torch.mm(a, b)
        count += 1
    return 2 * 2048**3 * count / (time.perf_counter() - started) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sources", nargs="+")
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--chunks", type=int, default=64, help="Full 10 s chunks to score.")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        write_shards(list_audio_files(args.sources, recursive=True), scratch / "all", ShardConfig())
        everything = ShardSet.open(scratch / "all")
        # Keep only full 10 s chunks, so batches are full and comparable with the bare model.
        full = [key for shard in everything.shards for key in everything.keys(shard)
                if int(everything.row(key)["num_samples"]) == 160000][: args.chunks]
        if not full:
            raise SystemExit("no full 10 s chunks in the sources")
        waves = []
        for shard in everything.shards:
            with ShardReader(shard) as reader:
                waves += [reader.audio(key) for key in reader.keys if key in set(full)]
        sources = sorted({everything.row(key)["source"] for key in full})
        write_shards(sources, scratch / "shards", ShardConfig(min_seconds=10.0))
        shards = ShardSet.open(scratch / "shards")

        peak = matmul_peak()
        teacher = load_teacher(args.teacher)
        batch = torch.from_numpy(__import__("numpy").stack(waves[: args.batch_size]))
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter, torch.inference_mode():
            # The module's operators: the fused CPU encoder's oneDNN calls are invisible to the counter.
            teacher.network(batch[:1])
        gflop_per_clip = counter.get_total_flops() / 1e9

        stacked = torch.from_numpy(__import__("numpy").stack(waves))
        teacher.probabilities(stacked[: args.batch_size])  # warm-up
        started = time.perf_counter()
        for first in range(0, len(stacked), args.batch_size):
            teacher.probabilities(stacked[first : first + args.batch_size])
        model_rate = len(stacked) / (time.perf_counter() - started)

        config = TeachConfig(epochs=1, top_k=20, batch_size=args.batch_size)
        report = teach(scratch / "shards", scratch / "store", [args.teacher], config)
        shutil.rmtree(scratch / "store")

    result = {
        "threads": args.threads, "batch_size": args.batch_size, "views": report.views_written,
        "matmul_peak_gflops": round(peak, 1), "gflop_per_clip": round(gflop_per_clip, 3),
        "model_clips_per_second": round(model_rate, 2),
        "teach_views_per_second": round(report.views_per_second, 2),
        "teach_fraction_of_model_rate": round(report.views_per_second / model_rate, 3),
        "teach_fraction_of_matmul_peak": round(report.views_per_second * gflop_per_clip / peak, 3),
        "bytes_per_view": round(report.bytes_per_view, 1),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
