"""Dasheng fp32 throughput on 10 s clips, next to the machine's fp32 matmul peak and the official package.

Measures, in one run and in turns (--rounds rounds, each figure the median over rounds, so drift
on a shared machine hits all alike):
  * the fp32 matrix-multiply peak (the best GFLOP/s of runs of five 1024x1024 products, as
    ``throughput.matmul_peak``) with the same thread count;
  * auricle's dasheng forward: ``DashengModel.tokens`` (waveforms -> frame tokens: log-mel, input
    BatchNorm, encoder) of a model loaded through ``auricle.load_model(checkpoint=...)`` from random
    full-size weights saved in auricle's format (speed does not depend on the values);
  * with --fused, the same network's blocks run by ``auricle.engines.fused.FusedEncoder`` (CED's fused
    CPU kernels: oneDNN prepacked weights, GELU and residual additions in the GEMM epilogue), the
    frontend as above; a 10 s clip is one chunk, so this is the whole Dasheng forward (checked
    against the module's tokens);
  * with --official, the official ``dasheng`` package's ``Dasheng.forward`` (0.0.9, the version that
    made ../shared/reference/dasheng) with the same weights, as the baseline.

FLOPs per clip, counted analytically for N tokens of width D (10 s: 160000 samples -> 1001 frames
-> N = 250 tokens, one 252-token chunk), multiply-adds counted as 2:
  patch embedding    2 * N * D * (64 * 4)
  per block          2 * N * D * 3D  (qkv)  + 2 * N * N * D (q k^T) + 2 * N * N * D (attention x v)
                   + 2 * N * D * D   (proj) + 2 * N * D * 4D (fc1)  + 2 * N * 4D * D (fc2)
                   = 24 N D^2 + 4 N^2 D
Every rate is given twice: per second of wall time, and per CPU second of this process times the
thread count ("CPU rate": what the threads would do given the cores to themselves). On a machine
shared with other jobs the wall rates move with their load from one second to the next, the CPU
rates much less; the fractions of peak are reported for both.

The log-mel, norms, softmax and GELU are not counted (they are under 1% of the products); their
time is in the measured forward, so the fraction of peak is conservative.
dasheng-base (D 768, 12 blocks): 44.86 GFLOP per 10 s clip.

The official package imports ``torchaudio.transforms``; torchaudio cannot enter the project's
environment (it pins another torch build), so the official code runs from a side folder
(``pip install --no-deps --target DIR dasheng==0.0.9``, on sys.path only in this process) with
``benchmarks/official_shim/torchaudio``, this benchmark's own stand-in for the two transforms it
uses. Before timing, the shimmed official forward is checked against the reference arrays the
real package computed (bit-identical expected on the reference checkpoint) and against auricle's
tokens on the full-size weights.

    python benchmarks/dasheng_speed.py --official /tmp/dasheng-official/site --json benchmarks/results/dasheng_speed.json
    python benchmarks/dasheng_speed.py --quick            # auricle only, 3 short rounds
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import auricle
from auricle.inference.tuning import cpu_model
from auricle.models.dasheng_config import DashengConfig
from auricle.models.registry import model_info
from synthetic import random_checkpoint, zenodo_state

CLIP_SAMPLES = 160_000
SHIM = Path(__file__).resolve().parent / "official_shim"
REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "dasheng"


def tokens_per_clip(samples: int = CLIP_SAMPLES) -> int:
    return (1 + samples // 160) // 4


def analytic_gflop(config: DashengConfig, tokens: int) -> float:
    """FLOPs of one clip of ``tokens`` tokens (one chunk; the formula in the module's docstring)."""
    d = config.embed_dim
    hidden = int(d * config.mlp_ratio)
    per_block = 2 * tokens * d * (3 * d + d + 2 * hidden) + 4 * tokens * tokens * d
    patch = 2 * tokens * d * config.n_mels * config.patch_frames
    return (config.depth * per_block + patch) / 1e9


def official_dasheng(site: Path):
    """The official package's ``Dasheng`` class, imported from ``site`` with the torchaudio shim."""
    sys.path[:0] = [str(site), str(SHIM)]
    from dasheng.pretrained.pretrained import Dasheng

    return Dasheng


def check_official(Dasheng) -> float:
    """Largest |difference| of the shimmed official tokens from the real package's reference tokens."""
    dump = torch.load(REFERENCE / "dasheng_small_perturbed.pt", weights_only=True)
    model = Dasheng(**dump["config"])
    model.load_state_dict(dump["model"], strict=True)
    model.eval()
    worst = 0.0
    with torch.inference_mode():
        for name in ("ref_a_sine440_1s", "ref_c_chirp_10s", "ref_d_mix_25p3s"):
            with np.load(REFERENCE / f"{name}.npz") as reference:
                for row, expected in zip(reference["wav"], reference["tokens"]):
                    got = model(torch.from_numpy(row).float()[None])[0].numpy()
                    worst = max(worst, float(np.abs(got - expected).max()))
        with np.load(REFERENCE / "batch_lengths.npz") as reference:
            got = model(torch.from_numpy(reference["batch"]).float(), torch.from_numpy(reference["lengths"]))
            worst = max(worst, float(np.abs(got.numpy() - reference["tokens"]).max()))
    return worst


def matmul_peak(seconds: float, threads: int, size: int = 1024) -> tuple[float, float]:
    """Best fp32 (wall, CPU) GFLOP/s of runs of five square products over ``seconds``."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(3):
        a @ b
    best_wall = best_cpu = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(5):
            a @ b
        gflop = 5 * 2 * size**3 / 1e9
        best_wall = max(best_wall, gflop / (time.perf_counter() - start))
        best_cpu = max(best_cpu, gflop * threads / max(time.process_time() - cpu, 1e-9))
    return best_wall, best_cpu


def rate(call, waveforms: torch.Tensor, seconds: float, threads: int) -> tuple[float, float]:
    """(wall, CPU) clips/s of back-to-back calls for about ``seconds`` (at least two calls)."""
    calls, start, cpu = 0, time.perf_counter(), time.process_time()
    while calls < 2 or time.perf_counter() - start < seconds:
        call(waveforms)
        calls += 1
    clips = calls * len(waveforms)
    return clips / (time.perf_counter() - start), clips * threads / (time.process_time() - cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="dasheng-base")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None, help="default: torch's (the cores)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=6.0, help="seconds per figure per round")
    parser.add_argument("--official", type=Path, default=None, metavar="SITE",
                        help="a folder holding the official dasheng package (pip install --no-deps --target)")
    parser.add_argument("--fused", action="store_true", help="also time the fused CPU encoder on the chunks")
    parser.add_argument("--quick", action="store_true", help="3 rounds of 3 s, auricle only")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seconds, args.official = 3, 3.0, None
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    info = model_info(args.model)
    tokens = tokens_per_clip()
    gflop = analytic_gflop(info.config, tokens)

    with tempfile.TemporaryDirectory() as folder:
        model = auricle.load_model(checkpoint=random_checkpoint(args.model, Path(folder)))
    torch.manual_seed(1)
    waveforms = torch.randn(args.batch_size, CLIP_SAMPLES) * 0.1
    calls = {"auricle": model.tokens}
    checks = {}
    if args.fused:
        from auricle.engines.fused import FusedEncoder

        fused = FusedEncoder(model.network, "fp32")
        network = model.network

        @torch.inference_mode()
        def fused_forward(batch: torch.Tensor) -> torch.Tensor:
            normalized = network.normalize(network.spectrogram(batch))
            assert normalized.shape[-1] <= network.config.target_frames, "one chunk per clip only"
            return fused.forward_features(normalized)

        calls["fused"] = fused_forward
        checks["fused_vs_module_max_abs"] = float((fused_forward(waveforms[:1]) - model.tokens(waveforms[:1])).abs().max())
        checks["fused_products"] = fused.products
    if args.official:
        Dasheng = official_dasheng(args.official)
        checks["official_shim_vs_reference_max_abs"] = check_official(Dasheng)
        config = info.config
        official = Dasheng(embed_dim=config.embed_dim, depth=config.depth, num_heads=config.num_heads)
        official.load_state_dict(zenodo_state(model.network), strict=True)
        official.eval()

        @torch.inference_mode()
        def official_forward(batch: torch.Tensor) -> torch.Tensor:
            return official(batch)

        calls["official"] = official_forward
        # Per clip, as auricle floors each clip on its own (the official floor is batch-wide).
        mine = model.tokens(waveforms[:1]).numpy()
        theirs = official_forward(waveforms[:1]).numpy()
        checks["auricle_vs_official_full_size_max_abs"] = float(np.abs(mine - theirs).max())
        checks["token_max_abs"] = float(np.abs(theirs).max())
    for name, value in checks.items():
        print(f"{name}: {value:.3g}" if isinstance(value, float) else f"{name}: {value}")
    for call in calls.values():  # warm-up: first calls pay allocation and weight packing
        call(waveforms)
    peaks: list[tuple[float, float]] = []
    rates: dict[str, list[tuple[float, float]]] = {name: [] for name in calls}
    for _ in range(args.rounds):
        peaks.append(matmul_peak(args.seconds / 2, threads))
        for name, call in calls.items():
            rates[name].append(rate(call, waveforms, args.seconds, threads))
        print("round: peak %.0f GFLOP/s (CPU %.0f); " % peaks[-1]
              + "; ".join(f"{name} {values[-1][0]:.2f} clips/s (CPU {values[-1][1]:.2f})"
                          for name, values in rates.items()), flush=True)
    peak = statistics.median(wall for wall, _ in peaks)
    cpu_peak = statistics.median(cpu for _, cpu in peaks)
    rows = {}
    for name, values in rates.items():
        clips = statistics.median(wall for wall, _ in values)
        cpu_clips = statistics.median(cpu for _, cpu in values)
        rows[name] = dict(clips_per_s=clips, gflops=clips * gflop, peak_fraction=clips * gflop / peak,
                          cpu_clips_per_s=cpu_clips, cpu_gflops=cpu_clips * gflop,
                          cpu_peak_fraction=cpu_clips * gflop / cpu_peak,
                          rounds_clips_per_s=[round(wall, 3) for wall, _ in values],
                          rounds_cpu_clips_per_s=[round(cpu, 3) for _, cpu in values])
        print(f"{name:>9}: {clips:.2f} clips/s = {clips * gflop:.0f} GFLOP/s = {clips * gflop / peak:.1%} "
              f"of the {peak:.0f} GFLOP/s matmul peak; CPU rate {cpu_clips:.2f} clips/s = "
              f"{cpu_clips * gflop / cpu_peak:.1%} of the {cpu_peak:.0f} GFLOP/s CPU peak")
    if "official" in rows:
        for key in ("clips_per_s", "cpu_clips_per_s"):
            print(f"auricle / official ({key}): {rows['auricle'][key] / rows['official'][key]:.2f}x")
    result = dict(date=time.strftime("%Y-%m-%d"), time_utc=time.strftime("%H:%M", time.gmtime()),
                  cpu_model=cpu_model(), threads=threads, torch=torch.__version__, model=args.model,
                  batch_size=args.batch_size, clip_samples=CLIP_SAMPLES, tokens_per_clip=tokens,
                  gflop_per_clip=gflop, rounds=args.rounds, seconds_per_figure=args.seconds,
                  matmul_peak_gflops=peak, matmul_cpu_peak_gflops=cpu_peak,
                  matmul_peaks_gflops=[[round(wall, 1), round(cpu, 1)] for wall, cpu in peaks],
                  load_average=os.getloadavg(), checks=checks, results=rows)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
