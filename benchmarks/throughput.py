"""Clips per second of 10 s audio for each CED size, next to the machine's matmul peak.

Measures, in one run:
  * the fp32 matrix-multiply peak (GFLOP/s) with the same thread count;
  * auricle's ``AudioModel.probabilities`` (frontend + encoder + head) at batch 1
    and batched, for tiny, mini, small and base;
  * the plain ``CED`` module (``CED.forward``: PyTorch's standard kernels, no
    fused oneDNN encoder), as the unfused baseline;
  * the same module with the official attention arithmetic (explicit
    softmax(q k^T) v instead of scaled_dot_product_attention), as the baseline
    that reproduces the official code's compute graph;
  * with --engine/--precision, each other engine (torch bf16/int8, ONNX Runtime
    fp32/int8; see auricle.inference.engines) on the same clips;
  * with --exported RUNTIME, the same network written by `auricle export --runtime RUNTIME`
    (fp32, and int8 when --precision has it) and run as an ExportedModel (ONNX Runtime
    for frontend, encoder and head; what `auricle tag --checkpoint FILE.onnx` runs);
  * with --streams, each engine with that many streams (the batch split over
    concurrent calls; auricle.inference.streams); by default the engine's own
    default (one per thread). "s1" rows are one call on all threads.

All variants of a size, and the matmul peak, take turns in --rounds rounds and
each figure is the median over rounds, so drift on a shared machine hits them
alike. Weights are random (speed does not depend on them). FLOPs per clip come
from ../shared/reference/official/flops.json when present, else from the analytic count.
Like the `auricle` command, it keeps freed memory for reuse (auricle.allocator);
AURICLE_MALLOC=default measures with glibc's defaults.

    python benchmarks/throughput.py --threads 2 --batch-size 8 --json benchmarks/results/throughput.json
    python benchmarks/throughput.py --engine torch onnx --precision fp32 bf16 int8 --json benchmarks/results/engines.json
    python benchmarks/throughput.py --models ced-mini --engine torch onnx --precision fp32 int8 --streams 1 2
    python benchmarks/throughput.py --models ced-mini --engine onnx --precision fp32 int8 --exported onnxruntime
    python benchmarks/throughput.py --models ced-mini --precision bf16 int8 --attention sdpa products --streams 2
    python benchmarks/throughput.py --quick            # ced-mini, fp32 torch, 3 rounds
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

import torch

from auricle.allocator import keep_freed_memory
from auricle.export import export_onnx
from auricle.exported import ExportedModel
from auricle.inference.engines import ENGINES, PRECISIONS, EngineConfig, EngineError
from auricle.inference.fused import FusedEncoder, bf16_attention, fp32_products
from auricle.inference.tuning import cpu_features, cpu_model, default_batch_size, default_streams
from auricle.labels import audioset_labels
from auricle.model import AudioModel
from auricle.models import ced
from auricle.models.ced import CED
from auricle.models.registry import available_models

FLOPS_FILE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "official" / "flops.json"
CLIP_SAMPLES = 160000


def matmul_peak(seconds: float = 3.0, size: int = 1024) -> float:
    """Best fp32 GFLOP/s of square matrix products over ``seconds``."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(3):
        a @ b
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        for _ in range(5):
            a @ b
        elapsed = time.perf_counter() - start
        best = max(best, 5 * 2 * size**3 / elapsed / 1e9)
    return best


def analytic_gflops(config: ced.CEDConfig, tokens: int = 248) -> float:
    d, hidden = config.embed_dim, int(config.embed_dim * config.mlp_ratio)
    per_block = 2 * tokens * d * (3 * d + d + 2 * hidden) + 2 * 2 * tokens * tokens * d
    return (config.depth * per_block + 2 * tokens * d * 256) / 1e9


def official_attention(self, x: torch.Tensor) -> torch.Tensor:
    """The official Attention.forward arithmetic, for the baseline."""
    batch, tokens, dim = x.shape
    qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
    query, key, value = qkv.unbind(0)
    attention = (query @ key.transpose(-2, -1)) * (dim // self.num_heads) ** -0.5
    x = (attention.softmax(dim=-1) @ value).transpose(1, 2).reshape(batch, tokens, dim)
    return self.proj(x)


class ModulePath:
    """The bare ``CED.forward`` (standard PyTorch kernels), measured like a model.

    ``attention`` replaces ``Attention.forward`` during this model's calls only.
    """

    def __init__(self, network: CED, attention=None) -> None:
        self.network = network
        self.attention = attention

    @torch.inference_mode()
    def probabilities(self, waveforms: torch.Tensor) -> torch.Tensor:
        original = ced.Attention.forward
        if self.attention is not None:
            ced.Attention.forward = self.attention
        try:
            return self.network(waveforms)
        finally:
            ced.Attention.forward = original


def one_round(model, waveforms: torch.Tensor, seconds: float) -> float:
    """Clips/s of back-to-back calls on ``waveforms`` for about ``seconds`` (at least one call)."""
    calls, start = 0, time.perf_counter()
    while calls == 0 or time.perf_counter() - start < seconds:
        model.probabilities(waveforms)
        calls += 1
    return calls * len(waveforms) / (time.perf_counter() - start)


def interleaved(models: dict, batch: int, rounds: int, seconds: float,
                peaks: list[float]) -> dict[str, list[float]]:
    """Each model's clips/s in ``rounds`` rounds, the models taking turns within a round.

    On a shared machine speed drifts over minutes; taking turns exposes every
    variant, and the matmul peak (appended to ``peaks`` once per round), to the
    same drift, so the ratios between them hold even when absolute figures move.
    """
    waveforms = torch.randn(batch, CLIP_SAMPLES) * 0.1
    for model in models.values():  # warm-up: first calls pay allocation and weight packing
        model.probabilities(waveforms)
    rates: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        peaks.append(matmul_peak(seconds))
        for name, model in models.items():
            rates[name].append(one_round(model, waveforms, seconds))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--batch-size", type=int, default=None,
                        help="clips per call [default: what auricle tag uses with the default streams]")
    parser.add_argument("--seconds", type=float, default=1.0,
                        help="measuring time per figure per round (batch 1 gets half)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds; figures are their medians")
    parser.add_argument("--models", nargs="+", default=[m.name for m in available_models()])
    parser.add_argument("--no-baseline", action="store_true", help="skip the official-attention baseline")
    parser.add_argument("--engine", nargs="+", default=["torch"], choices=ENGINES)
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=PRECISIONS)
    parser.add_argument("--streams", nargs="+", type=int, default=[None],
                        help="stream counts to compare [default: the engines' default, one per thread]")
    parser.add_argument("--products", nargs="+", choices=["onednn", "blas"], default=[None],
                        help="torch fp32 only: run the fused encoder's products this way (rows 'auricle[blas]' "
                             "...); default: what this CPU picks (auricle.inference.fused.fp32_products)")
    parser.add_argument("--attention", nargs="+", choices=["sdpa", "products"], default=[None],
                        help="torch bf16 and int8 only: run the fused encoder's bf16 attention this way (rows "
                             "'torch-bf16[sdpa]' ...); default: what this CPU picks (auricle.inference.fused.bf16_attention)")
    parser.add_argument("--exported", nargs="+", choices=["portable", "onnxruntime"], default=[],
                        help="also run the network exported with these runtimes (rows 'exported[RUNTIME]-fp32/int8')")
    parser.add_argument("--quick", action="store_true",
                        help="ced-mini only, no baseline, 3 rounds: for trying an idea, not for the table")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    if args.quick:
        args.models, args.no_baseline, args.rounds = ["ced-mini"], True, min(args.rounds, 3)

    malloc = "kept" if keep_freed_memory() else "default"  # as the `auricle` command does
    torch.set_num_threads(args.threads)
    args.batch_size = args.batch_size or default_batch_size("cpu", default_streams(args.threads))
    flops = json.loads(FLOPS_FILE.read_text()) if FLOPS_FILE.exists() else {}
    print(f"torch {torch.__version__}, {args.threads} threads, {cpu_model()}, {cpu_features().to_dict()}, "
          f"{torch.backends.cpu.get_cpu_capability()} (fp32 products: {fp32_products()}, "
          f"bf16 attention: {bf16_attention()}), freed memory {malloc}; "
          f"{args.rounds} interleaved rounds, ~{args.seconds} s per figure per round\n")
    header = (f"{'model':<10} {'engine':<28} {'GFLOP/clip':>10} {'batch 1':>9} {f'batch {args.batch_size}':>9} "
              f"{'(min-max)':>13} {'% peak':>7}")
    print(header)
    print("-" * len(header))
    rows = []
    # (row label, engine config or None for the bare module, a FusedEncoder option
    # {"products": ...} / {"attention": ...} or the module's attention override); "auricle" is torch fp32.
    variants = []
    for engine in args.engine:
        for precision in args.precision:
            for streams in args.streams:
                try:
                    config = EngineConfig(engine, precision, args.threads, streams)
                except EngineError:  # e.g. onnx bf16: not a combination that exists
                    continue
                if config.label == "torch-fp32":
                    options = [None if p is None else {"products": p} for p in args.products]
                elif config.label in ("torch-bf16", "torch-int8"):
                    options = [None if a is None else {"attention": a} for a in args.attention]
                else:
                    options = [None]
                for option in options:
                    label = "auricle" if config.label == "torch-fp32" else config.label
                    label += f"[{next(iter(option.values()))}]" if option is not None else ""
                    label += f" s{streams}" if streams is not None else ""
                    variants.append((label, config, option))
    if not args.no_baseline:
        variants.append(("module", None, None))
        variants.append(("official-attention", None, official_attention))
    peaks: list[float] = []
    exports = tempfile.TemporaryDirectory()
    for info in available_models():
        if info.name not in args.models:
            continue
        size = info.name.split("-")[1]
        gflop = flops.get(size, {}).get("flop_counter_total_GFLOP") or analytic_gflops(info.config)
        models = {}
        for label, config, option in variants:
            torch.manual_seed(0)  # same weights each run: the onnx engine's cached graph is reused
            network = CED(info.config)
            if config is None:
                models[label] = ModulePath(network, option)
                continue
            models[label] = AudioModel(network, info.name, audioset_labels(), engine=config)
            if option is not None:  # a benchmark-only swap: users get what the CPU picks
                models[label].engine._fused = FusedEncoder(network, config.precision, **option)
        if args.exported:
            torch.manual_seed(0)
            reference = AudioModel(CED(info.config), info.name, audioset_labels())
        for runtime in args.exported:
            for precision in [p for p in ("fp32", "int8") if p in args.precision]:
                path = Path(exports.name) / f"{info.name}-{runtime}-{precision}.onnx"
                export_onnx(reference, path, int8=precision == "int8", runtime=runtime)
                models[f"exported[{runtime}]-{precision}"] = ExportedModel(path, threads=args.threads)
        model_peaks: list[float] = []
        single = interleaved(models, 1, args.rounds, args.seconds / 2, model_peaks)
        batched = interleaved(models, args.batch_size, args.rounds, args.seconds, model_peaks)
        peak = statistics.median(model_peaks)
        peaks += model_peaks
        for label in models:
            rate = statistics.median(batched[label])
            fraction = rate * gflop / peak
            rows.append(dict(model=info.name, engine=label, gflop_per_clip=gflop,
                             batch1_clips_per_s=statistics.median(single[label]), batched_clips_per_s=rate,
                             batched_min=min(batched[label]), batched_max=max(batched[label]),
                             batch_size=args.batch_size, matmul_peak_gflops=peak, peak_fraction=fraction))
            spread = f"({min(batched[label]):.1f}-{max(batched[label]):.1f})"
            print(f"{info.name:<10} {label:<28} {gflop:>10.2f} {statistics.median(single[label]):>9.1f} "
                  f"{rate:>9.1f} {spread:>13} {100 * fraction:>6.0f}%")
        print(f"{'':<10} {'matmul peak':<28} {'':>10} {'':>9} {peak:>9.1f} "
              f"{f'({min(model_peaks):.0f}-{max(model_peaks):.0f})':>13}  GFLOP/s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(dict(
            date=time.strftime("%Y-%m-%d %H:%M"), torch=torch.__version__, threads=args.threads,
            machine=platform.machine(), cpu_model=cpu_model(), cpu=cpu_features().to_dict(),
            cpu_capability=torch.backends.cpu.get_cpu_capability(), fp32_products=fp32_products(),
            bf16_attention=bf16_attention(), malloc=malloc, rounds=args.rounds,
            seconds_per_figure=args.seconds, matmul_peaks_gflops=peaks, load_average=os.getloadavg(),
            results=rows), indent=2))


if __name__ == "__main__":
    main()
