"""Search at scale: a synthetic index of N files, and `auricle index` against `auricle tag` on real audio.

``scale``: N synthetic files shaped as ced-mini's rows (527 classes, 256 dims,
``--windows`` 10 s windows per file, scores skewed towards 0 as real ones are), written
through the index's own store (``Store.put``, transactions of 5000 files), each path an
empty file on disk (so a search's existence check and ``--path`` globs see real files),
then the column file written (``columns.refresh``). Then, each phase in a fresh process:

* queries through ``auricle.Index.search`` (class names, ontology nodes, words through the
  sentence encoder, duration and path filters) and ``like_hits`` (a clip embedding, with
  torch loaded as a ``--like`` search has it): the first query of a process with the index's
  pages evicted from the page cache (``posix_fadvise(DONTNEED)``: *cold*), then every query
  ``--repeat`` times (*warm*);
* the same with ``--pending`` files changed after the column file (read from SQLite);
* peak RSS of each process.

``build-rate``: ``auricle tag`` and ``auricle index`` (a fresh index each time) over the
same files, alternating, ``--rounds`` times; also ``auricle embed`` (what the index paid
on top of tagging when it decoded and encoded every file twice).

    python benchmarks/search_scale.py scale --files 1000000 --dir /tmp/auricle-scale
    python benchmarks/search_scale.py build-rate ../shared/data/everyday/audio \\
        --checkpoint ../shared/reference/ced_mini_perturbed.pt
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

KINDS = ("dog", "rain", "street", "speech", "music", "bird", "car", "kitchen")
CLASSES, DIM = 527, 256
#: (label, query or None, keyword arguments of Index.search); None: a --like search.
QUERIES = [
    ("class name", "Dog", {}),
    ("exact class", "=Speech", {}),
    ("two classes", "Bark;Meow", {}),
    ("MID", "/m/05tny_", {}),
    ("ontology node (Animal, 90+ classes)", "Animal", {}),
    ("ontology node (Vehicle)", "Vehicle", {}),
    ("words", "a dog barking at night", {}),
    ("words", "rain on a tin roof", {}),
    ("words", "someone knocking", {}),
    ("words + duration", "traffic on a wet road", {"min_duration": 25.0}),
    ("class + path 1/8", "Dog", {"path": "dog_*"}),
    ("class + path 1/1000", "Music", {"path": "{dir}/files/0012/*"}),
    ("class + top 100", "Music", {"top": 100}),
    ("like", None, {}),
    ("like + duration", None, {"max_duration": 22.0}),
]


def path_of(root: str, number: int) -> str:
    return os.path.join(root, "files", f"{number // 1000:04d}", f"{KINDS[number % len(KINDS)]}_{number:07d}.wav")


def rows(root: str, first: int, count: int, windows: int, rng: np.random.Generator):
    from auricle.search.store import FileRow

    scores = rng.random((count, windows, CLASSES), dtype=np.float32) ** 6  # mostly near 0, a few high
    clips = rng.standard_normal((count, DIM), dtype=np.float32)
    pieces = clips[:, None, :] + 0.5 * rng.standard_normal((count, windows, DIM), dtype=np.float32)
    durations = rng.uniform(10.0 * (windows - 1) + 0.5, 10.0 * windows, count)
    starts = np.arange(windows, dtype=np.float32) * 10.0
    for i in range(count):
        bounds = np.stack([starts, np.minimum(starts + 10.0, durations[i])], axis=1)
        yield FileRow(path_of(root, first + i), 0, 0, float(durations[i]), scores[i].max(axis=0), bounds, scores[i],
                      clips[i], bounds, pieces[i])


def build(args) -> dict:
    from auricle.search.columns import refresh
    from auricle.search.store import Store, to_blob

    if os.path.exists(args.dir):
        shutil.rmtree(args.dir)
    index = os.path.join(args.dir, "index.db")
    start = time.perf_counter()
    for folder in range(-(-args.files // 1000)):
        os.makedirs(os.path.dirname(path_of(args.dir, folder * 1000)))
        for number in range(folder * 1000, min(args.files, folder * 1000 + 1000)):
            open(path_of(args.dir, number), "wb").close()
    touched = time.perf_counter() - start
    rng = np.random.default_rng(0)
    store = Store(index, create=True)
    labels = json.dumps(__import__("auricle.labels", fromlist=["x"]).audioset_labels().names)
    store.set_meta({"model": "synthetic", "weights": "0" * 16, "labels": labels, "window": "10.0", "hop": "10.0"})
    start = time.perf_counter()
    for first in range(0, args.files, 5000):  # bulk inserts of the store's rows, as a merge writes them
        batch = list(rows(args.dir, first, min(5000, args.files - first), args.windows, rng))
        with store.transaction() as connection:
            connection.executemany("INSERT INTO files (id, path, size, mtime_ns, duration) VALUES (?, ?, 0, 0, ?)",
                                   [(first + i + 1, row.path, row.duration) for i, row in enumerate(batch)])
            connection.executemany(
                "INSERT INTO file_windows VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(first + i + 1, to_blob(row.clip_scores, "f2"), to_blob(row.clip_embedding, "f2"),
                  to_blob(row.window_bounds, "f4"), to_blob(row.window_scores, "f2"), to_blob(row.piece_bounds, "f4"),
                  to_blob(row.piece_embeddings, "f2")) for i, row in enumerate(batch)])
    written = time.perf_counter() - start
    with store.errors():
        store.connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    start = time.perf_counter()
    refresh(store)
    refreshed = time.perf_counter() - start
    store.close()
    return {"files": args.files, "windows": args.windows, "empty_files_s": touched, "rows_s": written,
            "rows_per_s": args.files / written, "column_file_s": refreshed, **sizes(index)}


def sizes(index: str) -> dict:
    found = {}
    for suffix, key in (("", "db_bytes"), ("-wal", "wal_bytes"), (".columns", "columns_bytes")):
        found[key] = os.path.getsize(index + suffix) if os.path.exists(index + suffix) else 0
    return found


def evict(index: str) -> None:
    """Drop the index's pages from the page cache (a cold start), without root."""
    for suffix in ("", "-wal", ".columns"):
        if os.path.exists(index + suffix):
            with open(index + suffix, "rb") as handle:
                os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def queries(args) -> dict:
    """One process: a cold first query of each kind asked for, then every query warm."""
    index_path = os.path.join(args.dir, "index.db")
    import torch  # noqa: F401  a --like search has the model, so torch, loaded: the float16 product path

    from auricle.search import Index
    from auricle.search.query import Filters, like_hits
    from auricle.search.text import class_embeddings, text_encoder

    class_embeddings(text_encoder())  # the sentence encoder loaded (and its class vectors cached) first
    rng = np.random.default_rng(7)
    like = rng.standard_normal(DIM).astype(np.float32)

    def ask(index: Index, query, options):
        if "path" in options:
            options = {**options, "path": options["path"].replace("{dir}", args.dir)}
        if query is None:
            filters = Filters(options.get("path"), options.get("min_duration"), options.get("max_duration"))
            return like_hits(index.store, like, filters, options.get("top", 10), lambda message: None, "like")
        return index.search(query, **options)

    evict(index_path)
    start = time.perf_counter()
    index = Index.open(index_path, readonly=True)
    label, query, options = QUERIES[args.cold]
    hits = ask(index, query, options)
    cold = time.perf_counter() - start
    assert hits, f"{label}: no hits"
    warm = {}
    for label, query, options in QUERIES:
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            hits = ask(index, query, options)
            times.append(time.perf_counter() - start)
        assert hits, f"{label} {query}: no hits"
        warm[f"{label}: {query or 'like'} {options or ''}".strip()] = times
    index.close()
    return {"cold_query": QUERIES[args.cold][0], "cold_s": cold, "warm": warm,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def pending(args) -> dict:
    """Change ``--pending`` files (replaced rows) after the column file, then time a refresh."""
    from auricle.search.columns import pending_changes, refresh
    from auricle.search.store import Store

    store = Store(os.path.join(args.dir, "index.db"))
    rng = np.random.default_rng(3)
    start = time.perf_counter()
    changed = rng.choice(args.files, args.pending, replace=False)
    with store.transaction() as connection:
        for number in changed:
            row = next(rows(args.dir, int(number), 1, args.windows, rng))
            store.put(connection, row.__class__(**{**row.__dict__, "path": path_of(args.dir, int(number))}))
    written = time.perf_counter() - start
    store.close()
    result = {"pending_files": args.pending, "write_s": written}
    result["queries"] = run_phase(args, "queries")
    store = Store(os.path.join(args.dir, "index.db"))
    result["changes"] = pending_changes(store)
    start = time.perf_counter()
    refresh(store)
    result["refresh_s"] = time.perf_counter() - start
    store.close()
    return result


def run_phase(args, phase: str, *extra: str) -> dict:
    command = [sys.executable, __file__, "_phase", phase, "--dir", args.dir, "--files", str(args.files),
               "--windows", str(args.windows), "--repeat", str(args.repeat), "--pending", str(args.pending),
               "--cold", str(args.cold), *extra]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{phase} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def summary(warm: dict[str, list[float]]) -> list[str]:
    lines, medians = [], []
    for label, times in warm.items():
        medians.append(statistics.median(times))
        lines.append(f"  {label:70s} median {1000 * statistics.median(times):7.1f} ms, "
                     f"max {1000 * max(times):7.1f} ms")
    everything = sorted(t for times in warm.values() for t in times)
    p95 = everything[min(len(everything) - 1, int(0.95 * len(everything)))]
    lines.append(f"  all {len(everything)} warm queries: median {1000 * statistics.median(everything):.1f} ms, "
                 f"p95 {1000 * p95:.1f} ms, max {1000 * everything[-1]:.1f} ms")
    return lines


def scale(args) -> dict:
    result = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if not args.reuse:
        result["build"] = run_phase(args, "build")
        print(json.dumps(result["build"]), flush=True)
    result["sizes"] = sizes(os.path.join(args.dir, "index.db"))
    result["cold"] = [run_phase(args, "queries", "--cold", str(i)) for i in args.cold_of]
    for run in result["cold"]:
        print(f"cold {run['cold_query']}: {1000 * run['cold_s']:.0f} ms (fresh process, pages evicted); "
              f"peak RSS {run['peak_rss_mb']:.0f} MB")
    print("warm (column file current):")
    print("\n".join(summary(result["cold"][0]["warm"])), flush=True)
    if args.pending:
        result["pending"] = run_phase(args, "pending")
        print(f"warm with {args.pending} files changed since the column file:")
        print("\n".join(summary(result["pending"]["queries"]["warm"])))
        print(f"column file rewritten in {result['pending']['refresh_s']:.1f} s")
    return result


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                 "?")
    return f"{model}, {os.cpu_count()} cores (shared machine)"


def build_rate(args) -> dict:
    files = sorted(os.path.join(folder, name) for folder, _, names in os.walk(args.folder) for name in names
                   if name.rsplit(".", 1)[-1].lower() in ("wav", "flac", "mp3", "ogg"))[:args.limit]
    list_file = tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False)
    list_file.write("\n".join(files))
    list_file.close()
    env = {**os.environ, "PYTHONPATH": os.path.join(os.path.dirname(__file__), "..", "src")}
    base = [sys.executable, "-m", "auricle"]
    model = ["--checkpoint", args.checkpoint] if args.checkpoint else ["--model", args.model]
    work = tempfile.mkdtemp()
    commands = {
        "tag": [*base, "tag", "--files-from", list_file.name, *model, "-f", "jsonl", "-o", f"{work}/tags.jsonl"],
        "index": [*base, "index", "--files-from", list_file.name, *model, "-o", f"{work}/index.db"],
        "embed": [*base, "embed", "--files-from", list_file.name, *model, "-o", f"{work}/embeddings"],
    }
    times: dict[str, list[float]] = {name: [] for name in commands if name in args.commands}
    for _ in range(args.rounds):
        for name in times:
            for leftover in ("tags.jsonl", "index.db", "index.db.columns", "embeddings"):
                target = os.path.join(work, leftover)
                shutil.rmtree(target) if os.path.isdir(target) else os.path.exists(target) and os.remove(target)
            start = time.perf_counter()
            subprocess.run(commands[name], env=env, check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            times[name].append(time.perf_counter() - start)
            print(f"{name}: {times[name][-1]:.1f} s", flush=True)
    medians = {name: statistics.median(values) for name, values in times.items()}
    ratios = [t / i for t, i in zip(times["tag"], times["index"])]
    result = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "files": len(files),
              "seconds": times, "median_s": medians, "index_over_tag_rate": ratios,
              "median_rate_ratio": statistics.median(ratios)}
    print(f"{len(files)} files: median tag {medians['tag']:.1f} s, index {medians['index']:.1f} s"
          + (f", embed {medians['embed']:.1f} s" if "embed" in medians else "")
          + f"; index rate / tag rate per round {[round(r, 3) for r in ratios]}, median {result['median_rate_ratio']:.3f}")
    shutil.rmtree(work)
    os.remove(list_file.name)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("scale", "_phase"):
        p = sub.add_parser(name)
        if name == "_phase":
            p.add_argument("phase", choices=("build", "queries", "pending"))
        p.add_argument("--files", type=int, default=1_000_000)
        p.add_argument("--windows", type=int, default=3)
        p.add_argument("--dir", default="/tmp/auricle-search-scale")
        p.add_argument("--repeat", type=int, default=5, help="Warm runs of each query.")
        p.add_argument("--pending", type=int, default=2000, help="Files changed after the column file (0: skip).")
        p.add_argument("--cold", type=int, default=0)
        p.add_argument("--cold-of", type=int, nargs="+", default=[0, 13],
                       help="Which queries (positions in QUERIES) get a cold run each.")
        p.add_argument("--reuse", action="store_true", help="Query the index --dir holds; build nothing.")
        p.add_argument("--json", default=None)
    rate = sub.add_parser("build-rate")
    rate.add_argument("folder")
    rate.add_argument("--checkpoint", default=None)
    rate.add_argument("--model", default="ced-mini")
    rate.add_argument("--rounds", type=int, default=3)
    rate.add_argument("--limit", type=int, default=None, help="Only the first N files (sorted by path).")
    rate.add_argument("--commands", nargs="+", default=["tag", "index", "embed"])
    rate.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.command == "_phase":
        print(json.dumps({"build": build, "queries": queries, "pending": pending}[args.phase](args)))
        return
    result = scale(args) if args.command == "scale" else build_rate(args)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=1)


if __name__ == "__main__":
    main()
