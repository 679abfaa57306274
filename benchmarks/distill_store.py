"""Teacher-pass cost and target-store size per view, per value codec.

Shards a folder of real audio, runs one teacher pass storing exact float32
top-k values, then rewrites every unit with each codec to measure bytes per
view and the quantisation error, all on the same teacher outputs:

    python benchmarks/distill_store.py ../shared/data/everyday/audio \
        --teacher ../shared/reference/ced_tiny_perturbed.pt --top-k 20 --epochs 2 --out /tmp/distill-bench
    python benchmarks/distill_store.py ../shared/data/everyday/audio \
        --teacher auricle.distill.yamnet:yamnet --no-masks --top-k 20 --epochs 1 --out /tmp/distill-bench-yamnet
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from auricle.audio import list_audio_files
from auricle.distill.augment import AugmentConfig
from auricle.distill.shards import ShardConfig, ShardSet, write_shards
from auricle.distill.store import CODECS, TargetStore
from auricle.distill.teach import TeachConfig, teach


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sources", nargs="+")
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", required=True)
    parser.add_argument("--no-masks", action="store_true", help="No log-mel masks (needed for callable teachers).")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)

    started = time.perf_counter()
    if not (out / "shards" / "manifest.json").exists():
        write_shards(list_audio_files(args.sources, recursive=True), out / "shards", ShardConfig())
    shards = ShardSet.open(out / "shards")
    shard_seconds = time.perf_counter() - started

    config = TeachConfig(epochs=args.epochs, top_k=args.top_k, batch_size=args.batch_size, codec="f32",
                         augment=AugmentConfig(time_mask=0, freq_mask=0) if args.no_masks else AugmentConfig())
    report = teach(out / "shards", out / "store-f32", [args.teacher], config, resume=True)
    if not report.complete:
        raise SystemExit("teacher pass incomplete")
    store = TargetStore.open(out / "store-f32")

    rows = []
    for codec in CODECS:
        with tempfile.TemporaryDirectory() as scratch:
            copy = TargetStore.create(scratch, dict(store.manifest, codec=codec))
            errors = []
            for shard, epoch in store.units():
                unit = store.read_unit(shard, epoch)
                copy.write_unit(shard, epoch, shards.keys(shard), unit.indices, unit.probabilities)
                errors.append(np.abs(copy.read_unit(shard, epoch).probabilities - unit.probabilities).max())
            rows.append({"codec": codec, "bytes_per_view": copy.bytes_per_view(),
                         "store_fraction_of_shards": copy.size_bytes() / shards.audio_bytes,
                         "max_abs_error": float(max(errors))})
    result = {
        "chunks": len(shards), "audio_hours": shards.seconds / 3600, "shard_bytes": shards.audio_bytes,
        "shard_seconds": shard_seconds, "views": report.views_total, "teacher_views_per_second":
        report.views_per_second if report.views_written else None, "top_k": args.top_k,
        "threads": args.threads, "codecs": rows,
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
