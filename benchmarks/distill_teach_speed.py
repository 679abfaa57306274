"""Teacher-pass throughput against the bare model on the same clips, and the fraction of the matmul peak.

    python benchmarks/distill_teach_speed.py ../shared/data/everyday/audio \
        --teacher ../shared/reference/ced_tiny_perturbed.pt --chunks 64 --threads 2
    python benchmarks/distill_teach_speed.py ../shared/data/everyday/audio --random ced-base \
        --precision fp32 bf16 --rounds 2 --chunks 32 --json benchmarks/results/teach_precision.json

Measured in one process: (1) fp32 matrix-multiply peak (2048^3 GEMM), then per
--precision (`auricle distill teach --precision`), taking turns for --rounds rounds:
(2) the teacher model alone on the chunks (batches of --batch-size equal-length 10 s
clips, no augmentation), (3) `teach` on the same chunks (decode FLAC, roll, masks,
per-clip log-mel, model, top-k, quantise, write). Figures are medians over rounds.
GFLOP per clip is counted from the model's matmuls and convolutions
(torch.utils.flop_counter). Each precision other than fp32 also gets its agreement
with the fp32 teacher on the chunks: max probability difference, top-1 agreement and
mean top-5 overlap. --random SIZE scores with random weights of that CED size (speed
does not depend on the weights).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from synthetic import random_checkpoint
from synthetic import report as report_json

from auricle.audio import list_audio_files
from auricle.distill.shards import ShardConfig, ShardReader, ShardSet, write_shards
from auricle.distill.teach import TeachConfig, teach
from auricle.distill.teachers import TEACHER_PRECISIONS, load_teacher
from auricle.inference.tuning import cpu_model


def matmul_peak(seconds: float = 2.0) -> float:
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    torch.mm(a, b)
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        torch.mm(a, b)
        count += 1
    return 2 * 2048**3 * count / (time.perf_counter() - started) / 1e9


def _model_rate(teacher, stacked: torch.Tensor, batch_size: int) -> tuple[float, torch.Tensor]:
    teacher.probabilities(stacked[:batch_size])  # warm-up
    started = time.perf_counter()
    scores = [teacher.probabilities(stacked[first:first + batch_size]) for first in range(0, len(stacked), batch_size)]
    return len(stacked) / (time.perf_counter() - started), torch.cat(scores)


def _agreement(scores: torch.Tensor, reference: torch.Tensor) -> dict:
    top5 = [len(set(a.tolist()) & set(b.tolist())) / 5
            for a, b in zip(scores.topk(5).indices, reference.topk(5).indices)]
    return {"max_abs_probability_difference": float((scores - reference).abs().max()),
            "top1_agreement": float((scores.argmax(1) == reference.argmax(1)).float().mean()),
            "top5_overlap": float(statistics.mean(top5))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sources", nargs="+")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--teacher", help="Teacher checkpoint (or model name, if cached).")
    which.add_argument("--random", metavar="SIZE", help="Random weights of this CED size (ced-tiny ... ced-base).")
    parser.add_argument("--precision", nargs="+", choices=TEACHER_PRECISIONS, default=["fp32"])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--chunks", type=int, default=64, help="Full 10 s chunks to score.")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        teacher_spec = args.teacher or str(random_checkpoint(args.random, scratch))
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

        peak = matmul_peak()
        teachers = {precision: load_teacher(teacher_spec, precision=precision) for precision in args.precision}
        stacked = torch.from_numpy(np.stack(waves))
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter, torch.inference_mode():
            # The module's operators: the fused CPU encoder's oneDNN calls are invisible to the counter.
            next(iter(teachers.values())).network(stacked[:1])
        gflop_per_clip = counter.get_total_flops() / 1e9

        config = TeachConfig(epochs=1, top_k=20, batch_size=args.batch_size)
        model_rates = {precision: [] for precision in teachers}
        teach_rates = {precision: [] for precision in teachers}
        scores, views, bytes_per_view = {}, 0, 0.0
        for _ in range(args.rounds):
            for precision, teacher in teachers.items():
                rate, scores[precision] = _model_rate(teacher, stacked, args.batch_size)
                model_rates[precision].append(rate)
                report = teach(scratch / "shards", scratch / "store", [teacher_spec], config, precision=precision)
                teach_rates[precision].append(report.views_per_second)
                views, bytes_per_view = report.views_written, report.bytes_per_view
                shutil.rmtree(scratch / "store")
        reference = scores["fp32"] if "fp32" in scores else _model_rate(load_teacher(teacher_spec), stacked,
                                                                          args.batch_size)[1]

    rows = []
    for precision in teachers:
        model_rate, teach_rate = statistics.median(model_rates[precision]), statistics.median(teach_rates[precision])
        row = {"precision": precision, "model_clips_per_second": round(model_rate, 2),
               "teach_views_per_second": round(teach_rate, 2),
               "teach_fraction_of_model_rate": round(teach_rate / model_rate, 3)}
        if precision == "fp32":  # the peak is fp32's; bf16 and int8 products run on other units
            row["teach_fraction_of_matmul_peak"] = round(teach_rate * gflop_per_clip / peak, 3)
        else:
            row["agreement_with_fp32"] = _agreement(scores[precision], reference)
        rows.append(row)
    result = {
        "date": time.strftime("%Y-%m-%d"), "cpu_model": cpu_model(), "torch": torch.__version__,
        "teacher": args.random or args.teacher, "threads": args.threads, "batch_size": args.batch_size,
        "rounds": args.rounds, "views": views, "matmul_peak_gflops": round(peak, 1),
        "gflop_per_clip": round(gflop_per_clip, 3), "bytes_per_view": round(bytes_per_view, 1), "results": rows,
    }
    for row in rows:
        print(f"{row['precision']:>5}: model {row['model_clips_per_second']:7.2f} clips/s, teach "
              f"{row['teach_views_per_second']:7.2f} views/s ({row['teach_fraction_of_model_rate']:.2f} of the model)",
              file=sys.stderr)
    report_json(result, args.json)


if __name__ == "__main__":
    main()
