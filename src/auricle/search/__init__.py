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
from typing import TYPE_CHECKING

import numpy as np

from auricle.errors import SearchIndexError
from auricle.search.index import AddReport, ScoredFile
from auricle.search.query import CaptionMatch, Filters, Match, QueryClass, SearchHit, Segment
from auricle.search.store import Store

if TYPE_CHECKING:
    from auricle.search.captions import CaptionReport

__all__ = ["Index", "AddReport", "ScoredFile", "SearchHit", "Segment", "Match", "QueryClass", "CaptionMatch",
           "SearchIndexError"]


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

    def __contains__(self, path: object) -> bool:
        """Whether ``path`` is an indexed file, exactly as stored (no normalising: a key, not a place on disk)."""
        if not isinstance(path, str):
            return False
        with self.store.errors():
            return self.store.connection.execute("SELECT 1 FROM files WHERE path = ?", (path,)).fetchone() is not None

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

    def search(self, query: str | None = None, *, like: str | os.PathLike | np.ndarray | None = None, model=None,
               top: int = 10, path: str | None = None, min_duration: float | None = None,
               max_duration: float | None = None, since=None, until=None,
               warn: Callable[[str], None] | None = None) -> list[SearchHit]:
        """The ``top`` files best matching ``query`` (words, class names, MIDs, ontology nodes) or,
        with ``like`` (a recording, embedded by ``model``, the index's model; or a clip embedding
        the index's model made), sounding most like it.

        Words are matched to the classes and, when the index holds captions (``auricle index
        --describe``), to the captions; both combine into one ranking (docs/search.md).
        ``since``/``until``: only files modified from ``since`` up to ``until`` (dates, datetimes,
        epoch seconds or ISO text; a date alone as ``until`` includes that day).
        Files deleted since indexing are skipped, each named once through ``warn``.
        """
        from auricle.errors import OptionError
        from auricle.search.query import like_hits, time_bound

        if (query is None) == (like is None):
            raise OptionError("give a query or like=, not both" if query is not None else "give a query or like=")
        if top < 1:
            raise OptionError(f"top must be at least 1, got {top}")
        filters = Filters(path, min_duration, max_duration, time_bound(since), time_bound(until, end=True))
        if "model" not in self.store.meta:
            return []
        warn = warn or (lambda message: None)
        if like is not None:
            if isinstance(like, np.ndarray):
                return like_hits(self.store, like, filters, top, warn, "the clip")
            if model is None:
                raise OptionError("like= needs the model the index was made with, to embed the recording")
            self.check(model)
            from auricle.search.index import like_embedding

            clip = like_embedding(model, str(like), self.store.meta)
            return like_hits(self.store, clip, filters, top, warn, os.path.basename(str(like)))
        return self._words(query, filters, top, warn)

    def _words(self, query: str, filters: Filters, top: int, warn: Callable[[str], None]) -> list[SearchHit]:
        """Class scores alone for exact names (or an index without captions); else classes and captions."""
        from auricle.search.captions import captioned_files, hybrid_hits
        from auricle.search.query import class_hits, understand

        labels = self.labels()
        exact = not query.strip() or _names_classes(query, labels)
        if exact or not captioned_files(self.store):
            return class_hits(self.store, self.query_classes(query), filters, top, warn)
        from auricle.search.text import text_encoder

        # A model of its own classes takes their exact names only: its words go to the captions alone.
        classes = understand(query, labels, refuse=False) if labels.has_mids else []
        return hybrid_hits(self.store, query, classes, filters, top, warn, text_encoder())

    def add_captions(self, describer, paths: Sequence[str | os.PathLike] | None = None, *, segment: float = 10.0,
                     recursive: bool = True, max_new_tokens: int = 128,
                     on_result: Callable[[str, str | None], None] | None = None) -> "CaptionReport":
        """Caption, with ``describer`` (a MiDashengLM :class:`~auricle.language_model.AudioLanguageModel`),
        the indexed files under ``paths`` (all indexed files if None) that have no captions yet, in
        segments of ``segment`` seconds; a :class:`~auricle.search.captions.CaptionReport`.

        Needs the sentence encoder (the ``search`` extra) to embed the captions.
        """
        from auricle.search.captions import caption
        from auricle.search.text import text_encoder

        if paths is None:
            files = self.files()
        else:
            from auricle.filelists import gather

            listed, _ = gather([os.fspath(p) for p in paths], recursive=recursive)
            files = [os.path.abspath(file) for file in listed]
        return caption(self.store, describer, files, text_encoder(), segment=segment, max_new_tokens=max_new_tokens,
                       on_result=on_result)

    @property
    def captioned(self) -> int:
        """How many indexed files have captions."""
        from auricle.search.captions import captioned_files

        return captioned_files(self.store)

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


def _names_classes(query: str, labels) -> bool:
    """Whether ``query`` is exact class names, MIDs or ontology nodes (matched as ``tag --classes``)."""
    from auricle.labels import LabelError, resolve_classes

    try:
        resolve_classes(query.strip(), labels)
    except LabelError:
        return False
    return True
