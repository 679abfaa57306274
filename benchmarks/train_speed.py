"""Student training speed: optimiser steps per second of a CED on 10 s clips, next to the matmul peak.

Measures, in one process with the given threads: the fp32 matmul peak, then full training steps
(log-mel frontend, forward, BCE-with-logits on dense soft targets, backward, gradient clipping,
AdamW) of a randomly initialised student on random 10 s waveforms. FLOPs per step are taken as
3x the forward FLOPs of the batch (forward + backward), from ../shared/reference/official/flops.json.
This is the arithmetic `auricle distill train` runs per step; data loading and augmentation replay
are measured separately by the trainer itself (views_per_second in its train.csv). With
--precision fp32 bf16, the encoder and head also run under bf16 autocast, the log-mel staying float32
(what `auricle distill train` and `auricle finetune` do with --precision bf16), the precisions taking turns in --rounds rounds; figures are medians.

    python benchmarks/train_speed.py --models ced-tiny ced-mini --batch-size 16 --threads 2
    python benchmarks/train_speed.py --models ced-tiny --precision fp32 bf16 --rounds 3 --seconds 10
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from throughput import FLOPS_FILE, analytic_gflops, matmul_peak

from auricle.devices import bf16_trains_faster
from auricle.inference.tuning import cpu_features, cpu_model
from auricle.models.ced import CED
from auricle.models.registry import model_info


def forward_gflops(name: str) -> float:
    if FLOPS_FILE.is_file():
        flops = json.loads(FLOPS_FILE.read_text())
        key = name.removeprefix("ced-")
        if key in flops:
            return flops[key]["flop_counter_total_GFLOP"]
    return analytic_gflops(model_info(name).config)


def steps_per_second(name: str, batch_size: int, seconds: float, precision: str = "fp32") -> float:
    torch.manual_seed(0)
    network = CED(model_info(name).config).train()
    optimiser = torch.optim.AdamW(network.parameters(), lr=1e-4)
    waveforms = torch.randn(batch_size, 160000) * 0.1
    targets = torch.rand(batch_size, network.config.num_classes) * 0.2

    def step() -> None:
        normalized = network.normalize(network.spectrogram(waveforms))  # float32, as both trainers keep it
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            pieces, count = network.pieces(normalized)
            logits = network.forward_head(network.forward_features(pieces)).reshape(count, batch_size, -1).mean(dim=0)
        loss = F.binary_cross_entropy_with_logits(logits.float(), targets)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), 1.0)
        optimiser.step()

    step()  # warm-up: allocator and kernels
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        steps += 1
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["ced-tiny", "ced-mini"])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--precision", nargs="+", choices=["fp32", "bf16"], default=["fp32"])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    peak = matmul_peak()
    rows = []
    print(f"torch {torch.__version__}, {args.threads} threads; fp32 matmul peak {peak:.1f} GFLOP/s")
    print(f"{'model':10} {'precision':9} {'batch':>5} {'steps/s':>8} {'clips/s':>8} {'% peak':>7}")
    for name in args.models:
        rates: dict[str, list[float]] = {precision: [] for precision in args.precision}
        for _ in range(args.rounds):
            for precision in args.precision:
                rates[precision].append(steps_per_second(name, args.batch_size, args.seconds, precision))
        for precision, measured in rates.items():
            rate = statistics.median(measured)
            fraction = rate * args.batch_size * 3 * forward_gflops(name) / peak
            rows.append({"model": name, "precision": precision, "batch_size": args.batch_size, "steps_per_s": rate,
                         "steps_per_s_rounds": measured, "clips_per_s": rate * args.batch_size,
                         "peak_fraction": fraction})
            print(f"{name:10} {precision:9} {args.batch_size:5d} {rate:8.3f} {rate * args.batch_size:8.1f} "
                  f"{fraction:7.0%}")
    if args.json:
        args.json.write_text(json.dumps({
            "date": time.strftime("%Y-%m-%d %H:%M"), "torch": torch.__version__, "cpu_model": cpu_model(),
            "cpu": cpu_features().to_dict(), "auto_trains_in_bf16": bf16_trains_faster(torch.device("cpu")),
            "threads": args.threads, "rounds": args.rounds, "matmul_peak_gflops": peak, "results": rows,
        }, indent=2))


if __name__ == "__main__":
    main()
