"""Plain-language search over a user's recordings, offline (docs/search.md).

    import auricle
    with auricle.Index.open("sounds.db", create=True) as index:
        index.add(["recordings/"], model=auricle.load_model("ced-mini"))
        for hit in index.search("a dog barking at night", top=5):
            print(hit.score, hit.file, [(s.start, s.end) for s in hit.segments])

:mod:`~auricle.search.store` keeps the SQLite file, :mod:`~auricle.search.index` fills it,
:mod:`~auricle.search.query` ranks, :mod:`~auricle.search.text` understands the words.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence

from auricle.errors import SearchIndexError
from auricle.search.index import AddReport, ScoredFile
from auricle.search.query import Filters, Match, QueryClass, SearchHit, Segment
from auricle.search.store import Store

__all__ = ["Index", "AddReport", "ScoredFile", "SearchHit", "Segment", "Match", "QueryClass", "SearchIndexError"]


class Index:
    """A search index file: :meth:`open` it, :meth:`add` recordings, :meth:`search` them."""

    def __init__(self, store: Store) -> None:
        self.store = store

    @classmethod
    def open(cls, path: str | os.PathLike, *, create: bool = False, readonly: bool = False) -> "Index":
        """Open ``path`` (``create``: a new index if absent). Raises :class:`SearchIndexError` in one line
        for a file that is no index, of another schema version, locked or damaged."""
        return cls(Store(path, create=create, readonly=readonly))

    @property
    def path(self) -> str:
        return self.store.path

    @property
    def model(self) -> str | None:
        """The name of the model whose numbers the index holds (None while empty)."""
        return self.store.meta.get("model")

    def __len__(self) -> int:
        return self.store.count()

    def files(self) -> list[str]:
        return sorted(self.store.stamps())

    def add(self, paths: Sequence[str | os.PathLike], model, *, window: float = 10.0, hop: float | None = None,
            recursive: bool = True, batch_size: int | None = None,
            on_result: Callable[[str, str | None], None] | None = None, shard: str | None = None) -> AddReport:
        """Index the audio files under ``paths`` (files, folders, globs) with ``model``.

        New and changed files are computed, unchanged ones skipped, indexed files under
        ``paths`` that no longer exist dropped; each failed file is in the report and the rest go on.
        ``shard="K/N"``: only shard K of N of the files (as ``auricle index --shard``).
        """
        from auricle.filelists import Shard, gather
        from auricle.search.index import scope, update

        paths = [os.fspath(p) for p in paths]
        listed, _ = gather(paths, shard=Shard.parse(shard) if shard is not None else None, recursive=recursive)
        files = [os.path.abspath(file) for file in listed]
        return update(self.store, model, files, window=window, hop=hop, batch_size=batch_size, on_result=on_result,
                      covers=scope(paths, recursive))

    def add_scores(self, scored: Iterable[ScoredFile], *, model: str, weights: str, labels: Sequence[str] | None = None,
                   window: float = 10.0, hop: float | None = None) -> AddReport:
        """Fill the index from a model outside auricle: each :class:`ScoredFile` holds one file's class scores.

        ``model`` names the scorer and ``weights`` keys its weights (a hash); ``labels`` are its class
        names, AudioSet's 527 by default (then words are matched to classes as for auricle's models).
        An index holds one scorer's numbers: another ``model``, ``weights``, ``labels`` or windows are
        refused, as :meth:`add` refuses another model.
        """
        from auricle.labels import audioset_labels
        from auricle.search.index import put_scored, scorer_meta

        names = audioset_labels().names if labels is None else tuple(labels)
        return put_scored(self.store, scorer_meta(model, weights, names, window, hop), scored)

    def search(self, query: str | None = None, *, like: str | os.PathLike | None = None, model=None, top: int = 10,
               path: str | None = None, min_duration: float | None = None, max_duration: float | None = None,
               warn: Callable[[str], None] | None = None) -> list[SearchHit]:
        """The ``top`` files best matching ``query`` (words, class names, MIDs, ontology nodes) or,
        with ``like`` (a recording, embedded by ``model``, the index's model), sounding most like it.

        Files deleted since indexing are skipped, each named once through ``warn``.
        """
        from auricle.errors import OptionError
        from auricle.search.query import class_hits, like_hits

        if (query is None) == (like is None):
            raise OptionError("give a query or like=, not both" if query is not None else "give a query or like=")
        if top < 1:
            raise OptionError(f"top must be at least 1, got {top}")
        if "model" not in self.store.meta:
            return []
        filters = Filters(path, min_duration, max_duration)
        warn = warn or (lambda message: None)
        if like is not None:
            if model is None:
                raise OptionError("like= needs the model the index was made with, to embed the recording")
            self.check(model)
            from auricle.search.index import query_embedding

            window = float(self.store.meta.get("window", "10.0"))
            clip = query_embedding(model, str(like), window, float(self.store.meta.get("hop", window)))
            return like_hits(self.store, clip, filters, top, warn, os.path.basename(str(like)))
        return class_hits(self.store, self.query_classes(query), filters, top, warn)

    def query_classes(self, query: str) -> list[QueryClass]:
        """The classes ``query`` selects and their weights (what :meth:`search` ranks by)."""
        from auricle.search.query import understand

        return understand(query, self.labels())

    def labels(self):
        """The classes of the index's model (AudioSet's, with MIDs and ontology, unless it has its own head)."""
        import json

        from auricle.labels import LabelSet, audioset_labels

        audioset = audioset_labels()
        names = tuple(json.loads(self.store.meta.get("labels", "[]")))
        return audioset if not names or names == audioset.names else LabelSet.from_names(names)

    def check(self, model) -> None:
        """Refuse ``model`` if it is not the one the index was made with (its numbers would not compare)."""
        from auricle.search.index import model_meta

        expected = model_meta(model, float(self.store.meta.get("window", "10.0")), None)
        for key in ("model", "weights"):
            if self.store.meta.get(key) != expected[key]:
                raise SearchIndexError(f"{self.path}: made with {self.store.meta.get('model')} (weights "
                                       f"{self.store.meta.get('weights')}), not {model.name} (weights "
                                       f"{expected['weights']}); use the index's model")

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> "Index":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
