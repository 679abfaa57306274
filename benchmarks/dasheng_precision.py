"""Dasheng at bf16 and int8 on the torch and onnx engines against fp32: speed and embedding agreement (issue 25).

Speed: the encoder of dasheng-base and dasheng-0.6B, built at full size with random weights (speed does
not depend on the weights), on a batch of 10 s clips, through ``DashengModel.tokens`` (log-mel, chunks,
engine; what ``auricle embed`` runs per chunk batch). Every configuration is timed in turn within each
repeat (round-robin), so a neighbour's load hits them alike; the rate is clips/s from the best repeat,
and the ratio is against torch fp32 of the same run.

Agreement: cosine of each configuration's embeddings against torch fp32's on real clips from
../shared/data/everyday (the first ``--clips-agree`` files of the test split, each up to 10 s): the
clip embedding (mean token) and every frame token (mean and worst). The weights are random (no trained
Dasheng weights can be downloaded here), and ``--checkpoint`` adds the perturbed small reference
checkpoint; quantisation error depends on the weights' and activations' ranges, so these cosines
say the engines compute the same function, not what trained weights would lose.

    python benchmarks/dasheng_precision.py --threads 2 --models base 0.6b \\
        --checkpoint ../shared/reference/dasheng/dasheng_small_perturbed.pt --json benchmarks/results/dasheng_precision.json
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import platform
import resource
import time
from pathlib import Path

import numpy as np
import torch

from auricle.audio import SAMPLE_RATE, load_audio
from auricle.dasheng_model import DashengModel
from auricle.engines import EngineConfig, EngineError
from auricle.models.dasheng import Dasheng
from auricle.models.dasheng_config import SIZES

SHARED = Path(__file__).resolve().parents[2] / "shared"
CONFIGS = (("torch", "fp32"), ("torch", "bf16"), ("torch", "int8"), ("onnx", "fp32"), ("onnx", "int8"))


def everyday_clips(count: int) -> list[np.ndarray]:
    folder = SHARED / "data" / "everyday"
    with open(folder / "labels.csv", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("split", "test") == "test"]
    clips = []
    for row in rows[:count]:
        waveform = load_audio(folder / "audio" / row["file"])  # 16 kHz mono
        clips.append(np.ascontiguousarray(waveform[: 10 * SAMPLE_RATE], dtype=np.float32))
    return clips


def random_network(size: str, seed: int = 0) -> Dasheng:
    torch.manual_seed(seed)
    return Dasheng(SIZES[size]).eval()


def models(network: Dasheng, name: str, threads: int) -> dict[str, DashengModel | str]:
    """One model per configuration, sharing ``network``; a configuration that cannot run: why, as a string."""
    made: dict[str, DashengModel | str] = {}
    for engine, precision in CONFIGS:
        label = f"{engine}-{precision}"
        try:
            made[label] = DashengModel(network, name, None, engine=EngineConfig(engine, precision, threads))
        except EngineError as error:
            made[label] = str(error)
    return made


def speed(runnable: dict[str, DashengModel], clips: int, repeats: int) -> dict[str, float]:
    batch = (0.1 * np.random.default_rng(1).standard_normal((clips, 10 * SAMPLE_RATE))).astype(np.float32)
    for model in runnable.values():  # warm-up: packing, session start
        model.tokens(batch[:1])
    best = {label: float("inf") for label in runnable}
    for _ in range(repeats):
        for label, model in runnable.items():
            started = time.perf_counter()
            model.tokens(batch)
            best[label] = min(best[label], time.perf_counter() - started)
    return {label: clips / seconds for label, seconds in best.items()}


def agreement(runnable: dict[str, DashengModel], clips: list[np.ndarray]) -> dict[str, dict]:
    tokens = {label: [model.tokens(clip[None])[0].numpy() for clip in clips] for label, model in runnable.items()}
    reference = tokens["torch-fp32"]
    result = {}
    for label, found in tokens.items():
        clip_cos = [cosine(a.mean(axis=0), b.mean(axis=0)) for a, b in zip(reference, found)]
        frame_cos = np.concatenate([row_cosines(a, b) for a, b in zip(reference, found)])
        result[label] = {"clip_cosine_min": float(min(clip_cos)), "clip_cosine_mean": float(np.mean(clip_cos)),
                         "frame_cosine_min": float(frame_cos.min()), "frame_cosine_mean": float(frame_cos.mean())}
    return result


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["base", "0.6b"], choices=sorted(SIZES))
    parser.add_argument("--checkpoint", action="append", default=[], help="also a checkpoint's weights (agreement)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clips", type=int, default=4, help="10 s clips per timed call")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clips-agree", type=int, default=16, help="everyday clips for the cosines (0: speed only)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clips = everyday_clips(args.clips_agree)
    report = {"machine": f"{platform.processor() or platform.machine()}, {args.threads} threads (shared machine)",
              "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "clips_seconds": 10,
              "batch": args.clips, "repeats": args.repeats, "agreement_clips": len(clips), "results": {}}
    sources = [(f"dasheng-{size}", lambda size=size: random_network(size)) for size in args.models]
    for checkpoint in args.checkpoint:
        sources.append((Path(checkpoint).stem, lambda checkpoint=checkpoint: _checkpoint_network(checkpoint)))
    for name, build in sources:
        network = build()
        made = models(network, name, args.threads)
        runnable = {label: model for label, model in made.items() if isinstance(model, DashengModel)}
        entry: dict = {"parameters_m": sum(p.numel() for p in network.parameters()) / 1e6,
                       "refused": {label: why for label, why in made.items() if isinstance(why, str)}}
        if name.startswith("dasheng-"):  # random full-size weights: time them
            rates = speed(runnable, args.clips, args.repeats)
            entry["clips_per_s"] = rates
            entry["ratio_vs_torch_fp32"] = {label: rate / rates["torch-fp32"] for label, rate in rates.items()}
            if "onnx-fp32" in rates:  # the onnx engine's own fp32 (refused past ONNX's 2 GiB limit)
                entry["ratio_vs_onnx_fp32"] = {label: rate / rates["onnx-fp32"] for label, rate in rates.items()
                                               if label.startswith("onnx")}
        if clips:  # --clips-agree 0: speed only
            entry["agreement"] = agreement(runnable, clips)
        entry["peak_rss_gib_so_far"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        report["results"][name] = entry
        print(json.dumps({name: entry}, indent=1), flush=True)
        del made, runnable, network
        gc.collect()
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


def _checkpoint_network(path: str) -> Dasheng:
    from auricle.models.dasheng_checkpoints import build_dasheng
    from auricle.models.families import read_any_checkpoint

    _, loaded = read_any_checkpoint(path)
    return build_dasheng(loaded)


if __name__ == "__main__":
    main()
