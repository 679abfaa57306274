"""Agreement of the fast engines with the fp32 torch model on real inputs (issue 6).

Every input is cut into windows exactly as `auricle tag` cuts it (10 s windows, hop = window;
`iter_blocks` + `iter_windows`) and each window is scored with `AudioModel.score_windows`, once by
the reference (`load_model(checkpoint=..., engine="torch", precision="fp32")`) and once by each
engine. A "clip" below is one scored window. Input sets:
  * reference: ../shared/reference/inputs/*.wav (tones, noise, chirp, stereo 44.1 kHz, edge lengths);
  * everyday:  ../shared/data/everyday, the whole test split (111 sound effects, 0.3 to 25 s);
  * long:      ../shared/data/long/*.flac (four recordings of 61 to 154 s, cut into 10 s windows);
  * fsdd:      a fixed random sample (--fsdd-sample, --seed) of ../shared/data/fsdd spoken digits.

Per checkpoint, engine and set (and over all sets):
  * max |dp| and mean |dp| over clips and classes;
  * top-5 overlap |top5_engine & top5_fp32| / 5, mean and min over clips;
  * tie-aware top-5 overlap: only clips whose fp32 gap between the 5th and 6th probability exceeds
    twice that clip's max |dp|, with how many qualify. On such a clip the engine cannot reorder the
    5th and 6th class, so its overlap is 1 by construction: the figure to read is the count;
  * top-5 overlap on the clips whose fp32 5th-6th gap exceeds --gap (the same clips for every
    engine, so this one can fall below 1 and compares engines on well-defined top-5 sets).
Random (perturbed) weights give near-flat outputs where top-5 is ill-defined; a trained
checkpoint (e.g. the distilled student) gives peaked outputs: read both.

    python benchmarks/agreement.py --threads 2 \\
        --checkpoint ../shared/reference/ced_mini_perturbed.pt --checkpoint ../shared/reference/ced_tiny_perturbed.pt \\
        --checkpoint ../runs/yamnet-distill/student/student.safetensors --json benchmarks/results/agreement.json
    python benchmarks/agreement.py --limit 20 --engines torch-int8 onnx-int8   # quick check
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

SHARED = Path(__file__).resolve().parents[2] / "shared"
SETS = ("reference", "everyday", "long", "fsdd")
ENGINES = ("torch-bf16", "torch-int8", "onnx-fp32", "onnx-int8")
CHOICES = ("torch-fp32", *ENGINES)  # torch-fp32: a second fp32 model, to check the comparison itself
TOP_K = 5
SCORE_GROUP = 64  # windows per score_windows call (progress granularity)


# -- inputs ---------------------------------------------------------------------------------


def set_files(name: str, reference_dir: Path, data_dir: Path, fsdd_sample: int, seed: int) -> list[Path]:
    """The files of one input set, in a fixed order."""
    if name == "reference":
        return sorted(reference_dir.glob("*.wav"))
    if name == "everyday":
        with open(data_dir / "everyday" / "labels.csv", newline="") as handle:
            rows = [row for row in csv.DictReader(handle) if row["split"] == "test"]
        return sorted(data_dir / "everyday" / "audio" / row["file"] for row in rows)
    if name == "long":
        return sorted((data_dir / "long").glob("*.flac"))
    if name == "fsdd":
        files = sorted((data_dir / "fsdd" / "recordings").glob("*.wav"))
        if fsdd_sample < len(files):
            picked = np.random.default_rng(seed).choice(len(files), fsdd_sample, replace=False)
            files = [files[index] for index in sorted(picked)]
        return files
    raise ValueError(f"unknown input set {name!r}")


def windows_of(files: Sequence[Path], limit: int | None) -> tuple[list[np.ndarray], list[str], list[str]]:
    """(windows, their names "file@start_s", failures) as `auricle tag` cuts them; at most ``limit`` windows."""
    from auricle.audio import iter_blocks
    from auricle.errors import AuricleError
    from auricle.inference.windows import WindowConfig, iter_windows

    config = WindowConfig()  # what `auricle tag` uses by default: 10 s windows, hop = window
    windows, names, failures = [], [], []
    for path in files:
        if limit is not None and len(windows) >= limit:
            break
        try:
            for start, samples in iter_windows(iter_blocks(path, config.hop_samples), config):
                windows.append(np.ascontiguousarray(samples))
                names.append(f"{path.name}@{start / 16000:g}")
                if limit is not None and len(windows) >= limit:
                    break
        except AuricleError as error:
            failures.append(str(error))
    return windows, names, failures


# -- comparison -----------------------------------------------------------------------------


def top_k(probabilities: np.ndarray, k: int = TOP_K) -> np.ndarray:
    """Indices of the k largest probabilities of each row (ties broken by class index)."""
    return np.argsort(-probabilities, axis=1, kind="stable")[:, :k]


def compare(reference: np.ndarray, other: np.ndarray, gap: float) -> dict:
    """Agreement figures of ``other`` with ``reference``, both (clips, classes) probabilities."""
    if reference.shape != other.shape or reference.ndim != 2 or not len(reference):
        raise ValueError(f"need two equal (clips, classes) arrays, got {reference.shape} and {other.shape}")
    k = min(TOP_K, reference.shape[1])
    difference = np.abs(other.astype(np.float64) - reference.astype(np.float64))
    clip_max = difference.max(axis=1)
    ours, theirs = top_k(reference, k), top_k(other, k)
    overlap = np.array([len(set(a) & set(b)) / k for a, b in zip(ours, theirs)])
    ordered = -np.sort(-reference.astype(np.float64), axis=1)
    # gap between the k-th and (k+1)-th fp32 probability: how well defined the top-k set is
    kth_gap = ordered[:, k - 1] - ordered[:, k] if reference.shape[1] > k else np.full(len(reference), np.inf)
    robust = kth_gap > 2 * clip_max
    defined = kth_gap > gap

    def summary(mask: np.ndarray) -> dict:
        chosen = overlap[mask]
        return {"clips": int(mask.sum()),
                "top5_overlap_mean": float(chosen.mean()) if len(chosen) else None,
                "top5_overlap_min": float(chosen.min()) if len(chosen) else None}

    return {
        "clips": len(reference),
        "max_abs_diff": float(difference.max()),
        "mean_abs_diff": float(difference.mean()),
        "top5_overlap_mean": float(overlap.mean()),
        "top5_overlap_min": float(overlap.min()),
        "tie_aware": summary(robust),
        "gap_defined": {"gap": gap, **summary(defined)},
        "fp32_top5_gap_median": float(np.median(kth_gap)),
    }


# -- running --------------------------------------------------------------------------------


def score(model, windows: Sequence[np.ndarray], batch_size: int, progress: tqdm) -> np.ndarray:
    rows = []
    for first in range(0, len(windows), SCORE_GROUP):
        group = windows[first : first + SCORE_GROUP]
        rows.extend(model.score_windows(group, batch_size))
        progress.update(len(group))
    return np.stack(rows)


def run(args: argparse.Namespace) -> dict:
    from auricle.errors import AuricleError
    from auricle.inference.tuning import cpu_features
    from auricle import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    inputs: dict[str, dict] = {}
    windows: dict[str, list[np.ndarray]] = {}
    for name in args.sets:
        files = set_files(name, args.reference_dir, args.data_dir, args.fsdd_sample, args.seed)
        windows[name], clip_names, failures = windows_of(files, args.limit)
        inputs[name] = {"files": len(files), "clips": len(windows[name]), "failures": failures,
                        "first_clips": clip_names[:3]}
        if not windows[name]:
            raise SystemExit(f"input set {name!r} has no clips (is {args.data_dir} there?)")
    total = sum(len(clips) for clips in windows.values())

    results, skipped = [], []
    for checkpoint in args.checkpoint:
        label = Path(checkpoint).stem
        reference_model = load_model(checkpoint=checkpoint, engine="torch", precision="fp32", threads=args.threads)
        with tqdm(total=total, desc=f"{label} torch-fp32 (reference)", unit="clip") as progress:
            reference = {name: score(reference_model, clips, args.batch_size, progress)
                         for name, clips in windows.items()}
        del reference_model
        for engine_label in args.engines:
            engine, precision = engine_label.split("-")
            try:
                model = load_model(checkpoint=checkpoint, engine=engine, precision=precision, threads=args.threads)
            except AuricleError as error:  # e.g. onnxruntime missing: say so and go on
                skipped.append({"checkpoint": label, "engine": engine_label, "error": str(error)})
                continue
            with tqdm(total=total, desc=f"{label} {engine_label}", unit="clip") as progress:
                scores = {name: score(model, clips, args.batch_size, progress) for name, clips in windows.items()}
            del model
            for name in windows:
                results.append({"checkpoint": label, "engine": engine_label, "set": name,
                                **compare(reference[name], scores[name], args.gap)})
            everything = np.concatenate([scores[name] for name in windows])
            results.append({"checkpoint": label, "engine": engine_label, "set": "all",
                            **compare(np.concatenate([reference[name] for name in windows]), everything, args.gap)})
    return {
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    **cpu_features().to_dict(), "torch": torch.__version__},
        "threads": torch.get_num_threads(), "batch_size": args.batch_size, "limit": args.limit,
        "seed": args.seed, "fsdd_sample": args.fsdd_sample, "gap": args.gap,
        "checkpoints": {Path(c).stem: str(c) for c in args.checkpoint},
        "inputs": inputs, "results": results, "skipped": skipped,
    }


def table(result: dict) -> str:
    """The results as a plain-text table."""
    gap = result["gap"]
    header = ("checkpoint", "engine", "set", "clips", "max|dp|", "mean|dp|", "top5 mean", "top5 min",
              "tie-aware (n)", f"gap>{gap:g} (n)")
    rows = [header]

    def overlap(part: dict) -> str:
        if part["top5_overlap_mean"] is None:
            return f"- ({part['clips']})"
        return f"{part['top5_overlap_mean']:.3f} ({part['clips']})"

    for entry in result["results"]:
        rows.append((entry["checkpoint"], entry["engine"], entry["set"], str(entry["clips"]),
                     f"{entry['max_abs_diff']:.2e}", f"{entry['mean_abs_diff']:.2e}",
                     f"{entry['top5_overlap_mean']:.3f}", f"{entry['top5_overlap_min']:.2f}",
                     overlap(entry["tie_aware"]), overlap(entry["gap_defined"])))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    for entry in result["skipped"]:
        lines.append(f"skipped {entry['checkpoint']} {entry['engine']}: {entry['error']}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", action="append", type=Path,
                        help="repeatable; default: the perturbed official ced-mini and ced-tiny in ../shared")
    parser.add_argument("--engines", nargs="+", choices=CHOICES, default=list(ENGINES),
                        help="compared with torch-fp32 (torch-fp32 itself checks the comparison: 0 and 1.0)")
    parser.add_argument("--sets", nargs="+", choices=SETS, default=list(SETS))
    parser.add_argument("--limit", type=int, default=None, help="at most this many clips per input set")
    parser.add_argument("--fsdd-sample", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gap", type=float, default=1e-3,
                        help="fp32 5th-6th probability gap above which a clip's top-5 counts as well defined")
    parser.add_argument("--threads", type=int, default=None, help="torch/ONNX Runtime threads (default: cores)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--reference-dir", type=Path, default=SHARED / "reference" / "inputs")
    parser.add_argument("--data-dir", type=Path, default=SHARED / "data")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be at least 1")
    if not args.checkpoint:
        args.checkpoint = [SHARED / "reference" / "ced_mini_perturbed.pt", SHARED / "reference" / "ced_tiny_perturbed.pt"]
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    result = run(args)
    print(table(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        partial = args.json.with_name(f"{args.json.name}.{os.getpid()}.partial")
        partial.write_text(json.dumps(result, indent=2))
        os.replace(partial, args.json)
    return result


if __name__ == "__main__":
    main()
