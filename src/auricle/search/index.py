"""Adding recordings to a search index: one pass of tagging and embedding per new or changed file.

What is stored per file (docs/search.md): the class scores of every analysis window
and their maximum over the clip, the clip embedding and one embedding per 10.12 s
piece. Files are written in batches, one transaction each, so an interrupted run
keeps every finished batch and the next run (``--resume`` is the same thing) goes on
from there: unchanged files (same size and modification time) are skipped, changed
ones computed again, and files that no longer exist dropped (those under the
paths given this time: a disk not mounted today keeps its files).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from auricle.errors import SearchIndexError
from auricle.inference.results import ClipTags, Embeddings, Failure
from auricle.search.columns import refresh_if_due
from auricle.search.store import FileRow, Store

#: Files per transaction: small enough that a kill loses little, large enough that commits cost nothing.
BATCH_FILES = 32
#: Files written between two looks at whether the column file is due a rewrite (a look counts the rows).
CHECK_FILES = 1024


@dataclass
class IndexPlan:
    """What an update will do: files to compute, files unchanged, indexed files gone from disk."""

    todo: list[str]
    unchanged: list[str]
    gone: list[str]


@dataclass
class AddReport:
    """What :meth:`auricle.Index.add` did; ``failures`` are (file, one-line reason)."""

    added: int = 0
    unchanged: int = 0
    removed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)


def model_meta(model, window: float, hop: float | None) -> dict[str, str]:
    """What decides the stored numbers: the model, its weights and the tagging windows."""
    from auricle.fingerprints import tagger_key

    return {**scorer_meta(model.name, tagger_key(model)[:16], model.labels.names, window, hop),
            "embeddings": embeddings_kind(model)}


def scorer_meta(name: str, weights: str, labels: Iterable[str], window: float, hop: float | None) -> dict[str, str]:
    """:func:`model_meta` for any scorer: its name, a key of its weights, its class names and windows."""
    return {"model": name, "weights": weights, "labels": json.dumps(list(labels)),
            "window": repr(float(window)), "hop": repr(float(hop if hop is not None else window))}


@dataclass(frozen=True)
class ScoredFile:
    """One recording scored by a model outside auricle (:meth:`auricle.Index.add_scores`).

    ``window_scores`` (windows, classes) over ``window_bounds`` (windows, 2) seconds and
    ``clip_scores`` (classes,) in [0, 1], on the index's classes. Without embeddings the
    class scores stand in for them (``like=`` then compares class-score profiles).
    """

    path: str
    duration: float
    clip_scores: np.ndarray
    window_bounds: np.ndarray
    window_scores: np.ndarray
    clip_embedding: np.ndarray | None = None
    piece_bounds: np.ndarray | None = None
    piece_embeddings: np.ndarray | None = None

    def row(self, classes: int) -> FileRow:
        """The stored row; ValueError (one line naming the file) for arrays of the wrong shape or a missing file."""
        clip = np.asarray(self.clip_scores, dtype=np.float32)
        windows = np.asarray(self.window_scores, dtype=np.float32)
        bounds = np.asarray(self.window_bounds, dtype=np.float32)
        if (clip.shape != (classes,) or windows.ndim != 2 or windows.shape[1:] != (classes,) or not len(windows)
                or bounds.shape != (len(windows), 2)):
            raise ValueError(f"{self.path}: clip scores {clip.shape}, window scores {windows.shape}, bounds "
                             f"{bounds.shape}; the index needs ({classes},), (windows >= 1, {classes}), (windows, 2)")
        embedding = clip if self.clip_embedding is None else np.asarray(self.clip_embedding, dtype=np.float32)
        pieces = windows if self.piece_embeddings is None else np.asarray(self.piece_embeddings, dtype=np.float32)
        piece_bounds = bounds if self.piece_bounds is None else np.asarray(self.piece_bounds, dtype=np.float32)
        try:
            size, mtime_ns = stamp(self.path)
        except OSError:
            raise ValueError(f"{self.path}: file not found") from None
        return FileRow(path=self.path, size=size, mtime_ns=mtime_ns, duration=float(self.duration), clip_scores=clip,
                       window_bounds=bounds, window_scores=windows, clip_embedding=embedding,
                       piece_bounds=piece_bounds, piece_embeddings=pieces)


def put_scored(store: Store, meta: dict[str, str], scored: Iterable[ScoredFile]) -> AddReport:
    """Write files scored elsewhere (:class:`ScoredFile`) under ``meta`` (:func:`scorer_meta`), in batches.

    Files of the wrong shape (or gone) are reported and the rest go on, as :func:`update` does.
    """
    check_model(store, meta)
    if "model" not in store.meta:
        store.set_meta(meta)
    classes = len(json.loads(meta["labels"]))
    report = AddReport()
    pending: list[FileRow] = []

    def write() -> None:
        with store.transaction() as connection:
            for row in pending:
                store.put(connection, row)
        if (report.added + len(pending)) // CHECK_FILES > report.added // CHECK_FILES:
            refresh_if_due(store, finished=False)
        report.added += len(pending)
        pending.clear()

    for item in scored:
        try:
            pending.append(item.row(classes))
        except ValueError as error:
            report.failures.append((item.path, str(error)))
            continue
        if len(pending) >= BATCH_FILES:
            write()
    if pending:
        write()
    refresh_if_due(store, finished=True)
    return report


def check_model(store: Store, expected: dict[str, str]) -> None:
    """Refuse to mix another model's (or other windows') numbers into an index."""
    if "model" not in store.meta:
        return  # a new index
    differences = [f"{key} {store.meta.get(key)} here, {value} now" if key != "labels" else "other classes"
                   for key, value in expected.items() if store.meta.get(key) != value]
    if differences:
        raise SearchIndexError(f"{store.path}: made with another model or settings ({'; '.join(differences)}); "
                               "update it with the same --model/--checkpoint and --window/--hop, or index into a "
                               "new file")


def stamp(path: str) -> tuple[int, int]:
    status = os.stat(path)
    return status.st_size, status.st_mtime_ns


def scope(paths: Iterable[str | os.PathLike], recursive: bool = True) -> Callable[[str], bool]:
    """Whether an indexed file lies where ``paths`` (as given to ``auricle index``) look.

    Only such files are dropped when they no longer exist: indexing ~/music must not
    drop the files of a disk that is not mounted today. A folder that does not exist
    (that disk) covers nothing.
    """
    import fnmatch

    folders, files, patterns = [], set(), []
    for path in map(os.fsdecode, paths):
        absolute = os.path.abspath(path)
        if os.path.isdir(path):
            folders.append(absolute.rstrip(os.sep) + os.sep)
        elif os.path.exists(path) or not set("*?[") & set(path):
            files.add(absolute)
        else:
            patterns.append(absolute)

    def covers(file: str) -> bool:
        if file in files or any(fnmatch.fnmatchcase(file, pattern) for pattern in patterns):
            return True
        return any(file.startswith(folder) and (recursive or os.sep not in file[len(folder):]) for folder in folders)

    return covers


def plan(store: Store, files: Iterable[str], covers: Callable[[str], bool] = lambda file: True) -> IndexPlan:
    """Which of ``files`` (absolute paths) need computing; which indexed files ``covers`` are gone from disk."""
    stored = store.stamps()
    todo, unchanged = [], []
    for file in files:
        try:
            current = stamp(file)
        except OSError:
            todo.append(file)  # reported as its failure when it is decoded
            continue
        (unchanged if stored.get(file) == current else todo).append(file)
    gone = [path for path in stored if covers(path) and not os.path.exists(path)]
    return IndexPlan(todo, unchanged, gone)


def file_row(path: str, tags: ClipTags, embeddings: Embeddings, size_mtime: tuple[int, int]) -> FileRow:
    scores = np.asarray(tags.scores, dtype=np.float32)
    piece_bounds = np.stack([embeddings.starts, embeddings.ends], axis=1) if len(embeddings.starts) else np.zeros((0, 2))
    return FileRow(path=path, size=size_mtime[0], mtime_ns=size_mtime[1], duration=float(tags.duration),
                   clip_scores=scores.max(axis=0), window_bounds=np.asarray(tags.window_bounds),
                   window_scores=scores, clip_embedding=np.asarray(embeddings.clip),
                   piece_bounds=piece_bounds, piece_embeddings=np.asarray(embeddings.windows))


def window_row(path: str, tags: ClipTags, tokens: np.ndarray, size_mtime: tuple[int, int]) -> FileRow:
    """The row of a file tagged and embedded in one pass: a piece per tagging window, the clip their mean."""
    scores = np.asarray(tags.scores, dtype=np.float32)
    bounds = np.asarray(tags.window_bounds, dtype=np.float32)
    return FileRow(path=path, size=size_mtime[0], mtime_ns=size_mtime[1], duration=float(tags.duration),
                   clip_scores=scores.max(axis=0), window_bounds=bounds, window_scores=scores,
                   clip_embedding=tokens.mean(axis=0), piece_bounds=bounds, piece_embeddings=tokens)


def embeddings_kind(model) -> str:
    """How the index's embeddings are made: ``windows`` (one pass with the tags) or ``pieces`` (``embed``'s)."""
    return "windows" if getattr(model, "tags_with_tokens", False) else "pieces"


def query_embedding(model, source: str | np.ndarray, window: float = 10.0, hop: float | None = None,
                    name: str | None = None) -> np.ndarray:
    """A recording's clip embedding made as the index made its files' (``like=``): a file's path, or a
    16 kHz mono waveform (an upload to ``POST /v1/search``) named ``name``."""
    from auricle.audio import SAMPLE_RATE
    from auricle.errors import AudioError

    array = isinstance(source, np.ndarray)
    name = name or ("<array>" if array else str(source))
    if embeddings_kind(model) == "pieces":
        return model.embed_waveform(source, name=name).clip if array else model.embed(source).clip
    result = next(model.iter_tag_embed([source], model.tag_options(window=window, hop=hop), names=[name],
                                       sample_rate=SAMPLE_RATE if array else None))
    if isinstance(result, Failure):
        raise AudioError(result.error)
    return result[1].mean(axis=0)


def like_embedding(model, source: str | np.ndarray, meta: dict[str, str], name: str | None = None) -> np.ndarray:
    """:func:`query_embedding` with the tagging windows of the index whose meta rows are ``meta``."""
    window = float(meta.get("window", "10.0"))
    return query_embedding(model, source, window, float(meta.get("hop", window)), name)


def compute(model, files: list[str], options, batch_size: int | None = None) -> Iterator[FileRow | Failure]:
    """Tag and embed ``files``, in order; a :class:`Failure` for each that fails and the rest go on.

    A model whose head reads the mean token (CED) gives both from one decode and one
    encoder call per window (:meth:`~auricle.inference.pipeline.Tagger.iter_tag_embed`);
    others are tagged, then embedded as ``auricle embed`` does (each file decoded twice).
    """
    stamps: dict[str, tuple[int, int]] = {}
    for file in files:
        try:
            stamps[file] = stamp(file)  # taken before decoding: a file changed meanwhile is computed again next time
        except OSError:
            pass
    if embeddings_kind(model) == "windows":
        for file, result in zip(files, model.iter_tag_embed(files, options, batch_size=batch_size)):
            if isinstance(result, Failure):
                yield result
            elif file not in stamps:
                yield Failure(file, f"{file}: file not found")
            else:
                yield window_row(file, result[0], result[1], stamps[file])
        return
    embedded = model.iter_embed(files, batch_size=batch_size)
    for file, tags in zip(files, model.iter_tag(files, options, batch_size=batch_size)):
        embeddings = next(embedded)
        if isinstance(tags, Failure):
            yield tags
        elif isinstance(embeddings, Failure):
            yield embeddings
        elif file not in stamps:
            yield Failure(file, f"{file}: file not found")
        else:
            yield file_row(file, tags, embeddings, stamps[file])


def update(store: Store, model, files: list[str], *, window: float = 10.0, hop: float | None = None,
           batch_size: int | None = None, on_result: Callable[[str, str | None], None] | None = None,
           covers: Callable[[str], bool] = lambda file: True) -> AddReport:
    """Bring ``store`` up to date with ``files`` (absolute paths); see the module docstring.

    Indexed files that ``covers`` (:func:`scope` of the paths given) and that no longer exist are dropped.

    ``on_result(file, error)`` is called once per computed file (error None on success).
    """
    meta = model_meta(model, window, hop)
    check_model(store, meta)
    options = model.tag_options(window=window, hop=hop)
    work = plan(store, files, covers)
    report = AddReport(unchanged=len(work.unchanged), removed=len(work.gone))
    if "model" not in store.meta:
        store.set_meta(meta)
    if work.gone:
        with store.transaction() as connection:
            store.delete(connection, work.gone)
    pending: list[FileRow] = []
    failed: list[str] = []

    def write() -> None:
        with store.transaction() as connection:
            for row in pending:
                store.put(connection, row)
            # A changed file that no longer decodes: its old row would describe other audio.
            store.delete(connection, failed)
        if (report.added + len(pending)) // CHECK_FILES > report.added // CHECK_FILES:
            refresh_if_due(store, finished=False)
        report.added += len(pending)
        pending.clear()
        failed.clear()

    try:
        for result in compute(model, work.todo, options, batch_size):
            if isinstance(result, Failure):
                report.failures.append((result.file, result.error))
                failed.append(result.file)
                if on_result is not None:
                    on_result(result.file, result.error)
                continue
            pending.append(result)
            if on_result is not None:
                on_result(result.path, None)
            if len(pending) >= BATCH_FILES:
                write()
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM (auricle.cli): what is computed is kept, then the run stops
        if pending or failed:
            write()
        raise
    if pending or failed:
        write()
    refresh_if_due(store, finished=True)
    return report
