"""Embedding a folder: files at once on their own streams vs one after another, beside tagging.

Writes the mixed-format folder of folder_e2e.py (--files clips of --seconds each), then
times in turns, for --rounds rounds, in one process:
  * `iter_embed(files)`: several files at once, each whole on one stream (what `auricle embed` runs);
  * one by one: `[embed(file) for file in files]`, each file on all streams (what it ran before);
  * `iter_tag(files)`: tagging the same files, for reference.
Figures are files/s, medians over rounds.

    python benchmarks/embed_folder.py --files 48 --rounds 5 --json benchmarks/results/embed_folder.json

--checkpoint model.onnx runs an `auricle export --piece-embeddings` file.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from auricle.cli import prefer_sleeping_openmp_threads

prefer_sleeping_openmp_threads()  # as `auricle embed` does before torch loads

from folder_e2e import folder_arguments, make_folder  # noqa: E402
from synthetic import report  # noqa: E402


def main() -> None:
    parser = folder_arguments(__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from auricle import load_model

    model = load_model(checkpoint=args.checkpoint, threads=args.threads)
    rates: dict[str, list[float]] = {"together": [], "one_by_one": [], "tag": []}
    with tempfile.TemporaryDirectory() as folder:
        files, skipped = make_folder(Path(folder), args.files, args.seconds)
        for line in skipped:
            print(f"skipped format {line}")
        options = model.tag_options(top_k=5)
        runs = {
            "together": lambda: list(model.iter_embed(files)),
            "one_by_one": lambda: [model.embed(file) for file in files],
            "tag": lambda: list(model.iter_tag(files, options)),
        }
        runs["together"]()  # warm-up: weight packing, stream workers, file cache
        for _ in range(args.rounds):
            for name, run in runs.items():
                start = time.perf_counter()
                results = run()
                rates[name].append(len(files) / (time.perf_counter() - start))
                assert not any(hasattr(r, "error") for r in results), name
    result = dict(
        date=time.strftime("%Y-%m-%d"), time_utc=time.strftime("%H:%M", time.gmtime()), files=len(files),
        seconds=args.seconds, threads=args.threads, streams=model.streams, checkpoint=str(args.checkpoint),
        rounds=args.rounds, skipped_formats=skipped,
        **{f"{name}_files_per_s": statistics.median(values) for name, values in rates.items()},
        **{f"{name}_range": [round(min(values), 1), round(max(values), 1)] for name, values in rates.items()},
    )
    report(result, args.json)


if __name__ == "__main__":
    main()
