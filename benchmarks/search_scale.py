"""Search index at scale: build an index of N synthetic files, then time ranking them all.

Rows hold random float16 scores and embeddings shaped as ced-mini's (527 classes,
256 dims, --windows windows per file), written through the index's own store in
transactions of 1000 files. Times the ranking pass over every row (what grows with
the index: reading and scoring the clip column in chunks), for a class query and a
--like query, and reports the file's size and the process's peak memory.

    python benchmarks/search_scale.py --files 20000 --out /tmp/scale.db
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import numpy as np

from auricle.search.query import Filters, top_rows
from auricle.search.store import FileRow, Store


def build(path: str, files: int, windows: int, classes: int, dim: int, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    store = Store(path, create=True)
    store.set_meta({"model": "synthetic", "weights": "0" * 16})
    start = time.perf_counter()
    for first in range(0, files, 1000):
        with store.transaction() as connection:
            for number in range(first, min(files, first + 1000)):
                scores = rng.random((windows, classes), dtype=np.float32)
                bounds = np.stack([np.arange(windows) * 10.0, np.arange(1, windows + 1) * 10.0], axis=1)
                store.put(connection, FileRow(f"/synthetic/{number:08d}.wav", 1, 1, windows * 10.0, scores.max(axis=0),
                                             bounds, scores, rng.standard_normal(dim), bounds,
                                             rng.standard_normal((windows, dim))))
    elapsed = time.perf_counter() - start
    store.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=20000)
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--out", default="/tmp/auricle-search-scale.db")
    parser.add_argument("--keep", action="store_true", help="Keep the index file afterwards.")
    args = parser.parse_args()
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(args.out + suffix):
            os.remove(args.out + suffix)
    built = build(args.out, args.files, args.windows, 527, 256)
    store = Store(args.out, readonly=True)
    indices, weights = np.array([74, 75, 76]), np.array([1.0, 0.9, 0.8], dtype=np.float32)
    start = time.perf_counter()
    top_rows(store, "clip_scores", lambda m: (m[:, indices].astype(np.float32) * weights).max(axis=1), Filters(), 10)
    by_class = time.perf_counter() - start
    query = np.random.default_rng(1).standard_normal(256).astype(np.float32)
    start = time.perf_counter()
    top_rows(store, "clip_embedding", lambda m: m.astype(np.float32) @ query / np.linalg.norm(m.astype(np.float32), axis=1), Filters(), 10)
    by_like = time.perf_counter() - start
    store.close()
    size = os.path.getsize(args.out)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"files {args.files}, windows {args.windows}: built in {built:.1f} s, {size / 1e6:.0f} MB "
          f"({size / args.files / 1e3:.1f} kB per file); rank by class {by_class:.2f} s, by --like {by_like:.2f} s; "
          f"peak RSS {peak:.0f} MB")
    if not args.keep:
        os.remove(args.out)


if __name__ == "__main__":
    main()
