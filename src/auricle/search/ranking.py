"""Ranking every indexed file for a score: from the column file and the rows changed since it, or
from the SQLite rows alone (:mod:`auricle.search.columns` says why and when). :mod:`~auricle.search.query`
turns a query into a score; this module finds the best files for it, ties by path, exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from auricle.search.columns import Columns, read_columns, usable
from auricle.search.store import Store

if TYPE_CHECKING:
    from auricle.search.query import Filters


def top_rows(store: Store, column: str, score: Callable[[np.ndarray], np.ndarray], filters: Filters,
             keep: int, since: int | None = None) -> list[tuple[float, str, float]]:
    """The ``keep`` best (score, path, duration) by ``score`` of the ``column`` blobs (a float16 matrix), best
    first, reading the SQLite rows (``since``: only the files changed after that change number)."""
    where, parameters = filters.sql()
    if since is not None:
        where = (where + " AND " if where else "WHERE ") + "files.id IN (SELECT file_id FROM changes WHERE seq > ?)"
        parameters = (*parameters, since)
    best: list[tuple[float, str, float]] = []
    for chunk in store.rows(f"path, duration, {column}", where, parameters):
        if filters.path is not None:
            chunk = [row for row in chunk if filters.keeps(row[0])]
            if not chunk:
                continue
        # float16 as stored: a query's few columns are converted, not the whole (rows, 527) matrix.
        matrix = np.frombuffer(b"".join(row[2] for row in chunk), dtype="<f2").reshape(len(chunk), -1)
        scores = score(matrix)
        # Ties go by path, not by where a row is stored: a merged index ranks as one run's does.
        chosen = (np.flatnonzero(scores >= -np.partition(-scores, keep - 1)[keep - 1]) if len(scores) > keep
                  else range(len(scores)))
        best = sorted(best + [(float(scores[i]), chunk[i][0], float(chunk[i][1])) for i in chosen],
                      key=lambda item: (-item[0], item[1]))[:keep]
    return best


@dataclass(frozen=True)
class ColumnScore:
    """How a query scores the column file: ``approximate`` scores of every row, each within ``tolerance``
    of ``exact(rows)`` (0: they are exact)."""

    approximate: Callable[[Columns], np.ndarray]
    exact: Callable[[Columns, np.ndarray], np.ndarray]
    tolerance: float = 0.0


def ranked(store: Store, column: str, score: Callable[[np.ndarray], np.ndarray], by_columns: ColumnScore,
           filters: Filters, keep: int) -> list[tuple[float, str, float]]:
    """The ``keep`` best (score, path, duration), best first and ties by path: the column file's rows
    (:mod:`auricle.search.columns`) less the files changed since it was written, and those read from SQLite.
    Without a usable column file every row is read from SQLite (the same ranking, slower)."""
    with store.errors():
        store.connection.execute("BEGIN")  # one snapshot: the changes read agree with the meta read
        try:
            meta = dict(store.connection.execute("SELECT key, value FROM meta"))
            columns = read_columns(store.path)
            if not usable(columns, meta):
                return top_rows(store, column, score, filters, keep)
            changed = np.fromiter((row[0] for row in store.connection.execute(
                "SELECT DISTINCT file_id FROM changes WHERE seq > ?", (columns.generation,))), dtype=np.int64)
            best = _best_columns(store, columns, by_columns, changed, filters, keep)
            if len(changed):
                best += top_rows(store, column, score, filters, keep, since=columns.generation)
            return sorted(best, key=lambda item: (-item[0], item[1]))[:keep]
        finally:
            store.connection.execute("COMMIT")


def _best_columns(store: Store, columns: Columns, by_columns: ColumnScore, changed: np.ndarray, filters: Filters,
                  keep: int) -> list[tuple[float, str, float]]:
    valid = np.ones(len(columns), dtype=bool)
    if len(changed):  # their rows here are out of date (or deleted): SQLite has the current ones
        valid &= ~np.isin(columns.ids, changed)
    if filters.min_duration is not None:
        valid &= columns.durations >= filters.min_duration
    if filters.max_duration is not None:
        valid &= columns.durations <= filters.max_duration
    if filters.since_ns is not None or filters.until_ns is not None:
        # Times are not in the column file (only since/until read them): the files in range from SQLite.
        valid &= np.isin(columns.ids, _time_ids(store, filters))
    count = int(valid.sum())
    if not count:
        return []
    approximate = np.where(valid, by_columns.approximate(columns), -np.inf)
    tolerance = by_columns.tolerance
    paths = _Paths(store, columns)
    wanted = keep if filters.path is None else max(256, 8 * keep)
    by_path = filters.path is not None  # each candidate's path checked in Python, a few at a time
    while True:
        if by_path and wanted > LAZY_PATHS:
            # A selective glob: match every path once in SQLite, then rank only the rows it keeps.
            valid &= np.isin(columns.ids, _glob_ids(store, filters))
            count = int(valid.sum())
            if not count:
                return []
            approximate = np.where(valid, approximate, -np.inf)
            by_path, wanted = False, keep
        if wanted >= count:
            rows, bound = np.flatnonzero(valid), -np.inf
        else:
            kth = float(-np.partition(-approximate, wanted - 1)[wanted - 1])
            # Rows below this cannot be among the `wanted` best, however their approximation erred.
            rows, bound = np.flatnonzero(approximate >= kth - 2 * tolerance), kth - tolerance
        exact = by_columns.exact(columns, rows)
        trusted = exact >= bound
        rows, exact = rows[trusted], exact[trusted]
        order = np.lexsort((columns.path_ranks[rows], -exact))  # ties by path, as the SQLite scan ranks them
        rows, exact = rows[order], exact[order]
        if by_path:
            kept = np.fromiter((filters.keeps(path) for path in paths.of(rows)), dtype=bool, count=len(rows))
            rows, exact = rows[kept], exact[kept]
        if len(rows) >= keep or bound == -np.inf:
            rows, exact = rows[:keep], exact[:keep]
            return [(float(score), path, float(columns.durations[row]))
                    for score, path, row in zip(exact, paths.of(rows), rows)]
        wanted *= 8


#: Candidates whose paths a glob is checked on one by one before all paths are matched in SQLite.
LAZY_PATHS = 2048


def _time_ids(store: Store, filters: Filters) -> np.ndarray:
    """The ids of the files modified within ``filters``' since/until."""
    clauses, parameters = filters.time_sql()
    found = store.connection.execute(f"SELECT id FROM files WHERE {' AND '.join(clauses)}", parameters)
    return np.sort(np.fromiter((file_id for (file_id,) in found), dtype=np.int64))


def _glob_ids(store: Store, filters: Filters) -> np.ndarray:
    """The ids of the files whose paths ``filters`` keeps."""
    found = store.connection.execute("SELECT id, path FROM files WHERE path GLOB ?", (filters.sql_glob(),))
    return np.sort(np.fromiter((file_id for file_id, path in found if filters.keeps(path)), dtype=np.int64))


class _Paths:
    """The paths of column-file rows: looked up by id for a few, read whole once for many (a path filter)."""

    MANY = 20000

    def __init__(self, store: Store, columns: Columns) -> None:
        self.store, self.columns = store, columns
        self.every: dict[int, str] | None = None

    def of(self, rows: np.ndarray) -> list[str]:
        ids = self.columns.ids[rows].tolist()
        if self.every is None and len(ids) > self.MANY:
            self.every = dict(self.store.connection.execute("SELECT id, path FROM files"))
        if self.every is not None:
            return [self.every[i] for i in ids]
        found: dict[int, str] = {}
        for first in range(0, len(ids), 900):  # SQLite's bound on parameters
            part = ids[first:first + 900]
            found.update(self.store.connection.execute(
                f"SELECT id, path FROM files WHERE id IN ({','.join('?' * len(part))})", part))
        return [found[i] for i in ids]


def class_matrix_score(indices: np.ndarray, weights: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """``max_c w_c * s_c`` of each row of a (files, classes) float16 matrix of SQLite's clip scores."""
    return lambda matrix: (matrix[:, indices].astype(np.float32) * weights).max(axis=1)


def class_score(indices: np.ndarray, weights: np.ndarray) -> ColumnScore:
    """``max_c w_c * s_c`` from the class-major columns: only the query's classes are read."""
    groups: dict[float, list[int]] = {}  # an ontology node's classes all weigh 1
    for index, weight in zip(indices.tolist(), weights.tolist()):
        groups.setdefault(weight, []).append(index)

    def every(columns: Columns) -> np.ndarray:
        best = np.full(len(columns), -np.inf, dtype=np.float32)
        for weight, members in groups.items():
            # max_c (w s_c) = w max_c s_c for w > 0 (rounding is monotone), so a group is one product.
            np.maximum(best, _column_max(columns, members).astype(np.float32) * np.float32(weight), out=best)
        return best

    def exact(columns: Columns, rows: np.ndarray) -> np.ndarray:
        return (columns.scores[np.ix_(indices, rows)].astype(np.float32) * weights[:, None]).max(axis=0)

    return ColumnScore(every, exact)


def _column_max(columns: Columns, members: list[int]) -> np.ndarray:
    """The largest float16 score per row over the classes ``members``."""
    if not columns.nonnegative:
        return np.max(columns.scores[members], axis=0)
    # Non-negative float16 values order as their bits do: integer maxima run at memory speed.
    best = columns.scores[members[0]].view(np.uint16).copy()
    for member in members[1:]:
        np.maximum(best, columns.scores[member].view(np.uint16), out=best)
    return best.view(np.float16)


#: How far a float16 matrix-vector product's cosines may lie from float32's over the same float16
#: vectors (rounding of the result to float16: at most 2^-12 for |cosine| <= 1; measured 1.4e-4).
F16_PRODUCT_ERROR = 2.5e-4


def cosine_score(query: np.ndarray) -> ColumnScore:
    """Cosines with the column file's unit embeddings. With torch loaded (a ``like=`` search has the
    model) all rows go through one float16 product (~0.06-0.2 s a million 256-dim rows on this CPU) and
    the few near the top are computed again in float32; without it, float32 in chunks."""
    import sys

    query = np.asarray(query, dtype=np.float32)

    def exact(columns: Columns, rows: np.ndarray) -> np.ndarray:
        return columns.embeddings[rows].astype(np.float32) @ query

    torch = sys.modules.get("torch")
    if torch is None:
        def chunked(columns: Columns) -> np.ndarray:
            out = np.empty(len(columns), dtype=np.float32)
            for first in range(0, len(columns), 65536):
                out[first:first + 65536] = columns.embeddings[first:first + 65536].astype(np.float32) @ query
            return out

        return ColumnScore(chunked, exact)

    def product(columns: Columns) -> np.ndarray:
        import warnings

        with warnings.catch_warnings():  # a read-only mapping: torch warns that it could be written; it is not
            warnings.simplefilter("ignore")
            matrix = torch.from_numpy(columns.embeddings)
        return torch.mv(matrix, torch.from_numpy(query).half()).float().numpy()

    return ColumnScore(product, exact, F16_PRODUCT_ERROR)
