"""An index as Parquet tables, for DuckDB, Spark or a vector database to query (docs/search.md).

Four files in the output folder, one row per file, window, piece or class:

- ``files.parquet``: path, size, mtime_ns, duration, clip_scores (list of float, one per
  class), clip_embedding (list of float)
- ``windows.parquet``: path, window (0-based), start, end, scores (list of float)
- ``pieces.parquet``: path, piece (0-based), start, end, embedding (list of float)
- ``classes.parquet``: class (0-based position in the score lists), label, mid
- ``captions.parquet`` (only for an index with captions): path, segment (0-based), start, end,
  text, embedding (the caption's sentence-encoder vector)

Written a chunk of files at a time (a million-file index is never all in memory), each
file to a temporary that replaces it when complete. pyarrow comes with ``auricle[export]``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from auricle.errors import SearchIndexError
from auricle.search.store import Store, from_blob

TABLES = ("files", "windows", "pieces", "classes")


@dataclass
class ExportReport:
    files: int
    windows: int
    pieces: int
    paths: list[str]
    captions: int = 0  # caption rows (captions.parquet, written only for an index with captions)


def _pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise SearchIndexError("exporting to Parquet needs pyarrow: pip install 'auricle[export]'") from None
    return pyarrow


def export_parquet(index, folder: str | os.PathLike) -> ExportReport:
    """Write ``index`` (an open :class:`auricle.Index`) as the Parquet tables above into ``folder``."""
    from auricle.io.atomic import replacing

    pa = _pyarrow()
    import pyarrow.parquet as pq

    floats = pa.list_(pa.float32())
    schemas = {
        "files": pa.schema([("path", pa.string()), ("size", pa.int64()), ("mtime_ns", pa.int64()),
                            ("duration", pa.float64()), ("clip_scores", floats), ("clip_embedding", floats)]),
        "windows": pa.schema([("path", pa.string()), ("window", pa.int32()), ("start", pa.float32()),
                              ("end", pa.float32()), ("scores", floats)]),
        "pieces": pa.schema([("path", pa.string()), ("piece", pa.int32()), ("start", pa.float32()),
                             ("end", pa.float32()), ("embedding", floats)]),
    }
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SearchIndexError(f"{folder}: cannot make the export folder ({error.strerror or error})") from None
    counts = {"files": 0, "windows": 0, "pieces": 0}
    with (replacing(folder / "files.parquet") as files_path, replacing(folder / "windows.parquet") as windows_path,
          replacing(folder / "pieces.parquet") as pieces_path):
        writers = {name: pq.ParquetWriter(str(path), schemas[name]) for name, path in
                   (("files", files_path), ("windows", windows_path), ("pieces", pieces_path))}
        try:
            for chunk in _chunks(index.store):
                for name, columns in chunk.items():
                    table = pa.Table.from_pydict(columns, schema=schemas[name])
                    writers[name].write_table(table)
                    counts[name] += table.num_rows
        finally:
            for writer in writers.values():
                writer.close()
    labels = index.labels().classes
    classes = pa.table({"class": pa.array([c.index for c in labels], pa.int32()),
                        "label": pa.array([c.name for c in labels], pa.string()),
                        "mid": pa.array([c.mid or None for c in labels], pa.string())})
    with replacing(folder / "classes.parquet") as classes_path:
        pq.write_table(classes, str(classes_path))
    paths = [str(folder / f"{name}.parquet") for name in TABLES]
    captions = _export_captions(index.store, folder, pa, pq)
    if captions:
        paths.append(str(folder / "captions.parquet"))
    return ExportReport(counts["files"], counts["windows"], counts["pieces"], paths, captions)


def _export_captions(store: Store, folder: Path, pa, pq) -> int:
    """``captions.parquet`` (path, segment, start, end, text, embedding), if the index holds captions; its rows."""
    import json

    from auricle.io.atomic import replacing
    from auricle.search.captions import captioned_files

    if not captioned_files(store):
        return 0
    schema = pa.schema([("path", pa.string()), ("segment", pa.int32()), ("start", pa.float32()),
                        ("end", pa.float32()), ("text", pa.string()), ("embedding", pa.list_(pa.float32()))])
    rows = 0
    with replacing(folder / "captions.parquet") as path:
        writer = pq.ParquetWriter(str(path), schema)
        try:
            for batch in store.rows("path, bounds, texts, embeddings", "JOIN file_captions ON file_captions.file_id"
                                    " = files.id ORDER BY path", chunk=512):
                columns = {key: [] for key in ("path", "segment", "start", "end", "text", "embedding")}
                for file, bounds, texts, embeddings in batch:
                    texts = json.loads(texts)
                    vectors = from_blob(embeddings, "f2").reshape(len(texts), -1)
                    _rows(columns, file, from_blob(bounds, "f4", 2), vectors, texts)
                writer.write_table(pa.Table.from_pydict(columns, schema=schema))
                rows += len(columns["path"])
        finally:
            writer.close()
    return rows


def _chunks(store: Store):
    """Column lists of the three tables, a chunk of files at a time, in path order."""
    query = ("path, size, mtime_ns, duration, clip_scores, clip_embedding, window_bounds, window_scores, "
             "piece_bounds, piece_embeddings")
    for batch in store.rows(query, "ORDER BY path", chunk=512):
        files = {key: [] for key in ("path", "size", "mtime_ns", "duration", "clip_scores", "clip_embedding")}
        windows = {key: [] for key in ("path", "window", "start", "end", "scores")}
        pieces = {key: [] for key in ("path", "piece", "start", "end", "embedding")}
        for path, size, mtime_ns, duration, clip_scores, clip_embedding, wb, ws, pb, pe in batch:
            scores = from_blob(clip_scores, "f2")
            embedding = from_blob(clip_embedding, "f2")
            for key, value in zip(files, (path, size, mtime_ns, duration, scores, embedding)):
                files[key].append(value)
            _rows(windows, path, from_blob(wb, "f4", 2), from_blob(ws, "f2", len(scores)))
            _rows(pieces, path, from_blob(pb, "f4", 2), from_blob(pe, "f2", len(embedding)))
        yield {"files": files, "windows": windows, "pieces": pieces}


def _rows(columns: dict[str, list], path: str, bounds: np.ndarray, values: np.ndarray,
          texts: list[str] | None = None) -> None:
    number, start, end = list(columns)[1:4]
    vectors = list(columns)[-1]
    for position, ((begin, finish), vector) in enumerate(zip(bounds, values)):
        columns["path"].append(path)
        columns[number].append(position)
        columns[start].append(float(begin))
        columns[end].append(float(finish))
        if texts is not None:
            columns["text"].append(texts[position])
        columns[vectors].append(vector)
