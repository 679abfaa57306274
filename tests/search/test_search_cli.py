"""`auricle index` and `auricle search` end to end on generated audio with the small random checkpoint,
and the Python API (auricle.Index): exact class queries, incremental updates, interrupted batches, bad input.

Plain-language queries (the sentence encoder) are tested in test_search_text.py.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

import auricle
from auricle.cli import cli
from auricle.labels import audioset_labels, audioset_ontology, resolve_classes
from auricle.search import store as store_module

RATE = 16000


def run(*args) -> "click.testing.Result":
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def write_wav(path: Path, seconds: float, frequency: float | None, seed: int = 0) -> Path:
    t = np.arange(int(seconds * RATE)) / RATE
    if frequency is None:
        samples = 0.3 * np.random.default_rng(seed).standard_normal(len(t))
    else:
        samples = 0.5 * np.sin(2 * np.pi * frequency * t)
    sf.write(path, samples.astype(np.float32), RATE, subtype="PCM_16")
    return path


@pytest.fixture
def recordings(tmp_path) -> Path:
    folder = tmp_path / "sounds"
    folder.mkdir()
    write_wav(folder / "tone.wav", 1.0, 440.0)
    write_wav(folder / "noise.wav", 3.0, None)
    write_wav(folder / "long.wav", 23.0, None, seed=1)  # three 10 s windows
    return folder


@pytest.fixture
def indexed(recordings, tiny_checkpoint, tmp_path, restore_torch_threads) -> Path:
    index = tmp_path / "sounds.db"
    result = run("index", recordings, "-o", index, "--checkpoint", tiny_checkpoint)
    assert result.exit_code == 0, result.output
    return index


def search_json(index: Path, *args) -> list[dict]:
    result = run("search", *args, "--index", index, "--format", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.integration
def test_index_then_search_by_class_ranks_by_the_clip_scores(indexed, recordings, tiny_model):
    hits = search_json(indexed, "=Speech")  # the class alone, not its ontology subtree
    assert [hit["rank"] for hit in hits] == [1, 2, 3]
    scores = [hit["score"] for hit in hits]
    assert scores == sorted(scores, reverse=True)
    speech = audioset_labels().index_of_name("Speech")
    expected = {str(recordings / name): tiny_model.tag(str(recordings / name), top_k=527) for name in
                ("tone.wav", "noise.wav", "long.wav")}
    for hit in hits:
        tags = expected[hit["file"]]
        clip = float(tags.scores[:, speech].max())  # the stored clip score: the max over the windows, as float16
        assert hit["score"] == pytest.approx(clip, abs=2e-3)
        assert [m["label"] for m in hit["matched"]] == ["Speech"]
        assert hit["duration"] == pytest.approx(tags.duration)
        for segment in hit["segments"]:
            assert 0 <= segment["start"] < segment["end"] <= hit["duration"] + 1e-6
            assert segment["labels"] == ["Speech"]
        assert hit["segments"][0]["score"] == pytest.approx(hit["score"], abs=1e-6)


@pytest.mark.integration
def test_mids_and_ontology_nodes_select_exactly_their_classes(indexed):
    by_name = search_json(indexed, "Bark")
    by_mid = search_json(indexed, "/m/05tny_")
    assert by_mid == by_name
    assert all([m["label"] for m in hit["matched"]] == ["Bark"] for hit in by_name)
    animal = search_json(indexed, "Animal")
    allowed = {audioset_labels()[i].name for i in resolve_classes("Animal")}
    assert len(allowed) > 50  # the node's whole subtree, as `tag --classes Animal` selects
    assert all(m["label"] in allowed for hit in animal for m in hit["matched"])
    assert all(hit["matched"][0]["score"] == pytest.approx(hit["score"], abs=1e-6) for hit in animal)
    both = search_json(indexed, "Bark;=Music")
    assert {m["label"] for hit in both for m in hit["matched"]} == {"Bark", "Music"}


@pytest.mark.integration
def test_formats_filters_and_top(indexed, recordings):
    table = run("search", "=Music", "--index", indexed)
    assert table.exit_code == 0 and table.stdout.count("why: Music") == 3
    jsonl = run("search", "Music", "--index", indexed, "-f", "jsonl", "--top", "2")
    assert len([json.loads(line) for line in jsonl.stdout.splitlines()]) == 2
    rows = list(csv.reader(io.StringIO(run("search", "Music", "--index", indexed, "-f", "csv").stdout)))
    assert rows[0] == ["rank", "file", "score", "duration", "matched", "segments", "captions"] and len(rows) == 4
    assert [h["file"] for h in search_json(indexed, "Music", "--path", "no*.wav")] == [str(recordings / "noise.wav")]
    assert [h["file"] for h in search_json(indexed, "Music", "--path", str(recordings / "t*"))] == [
        str(recordings / "tone.wav")]
    assert {h["file"] for h in search_json(indexed, "Music", "--min-duration", "2", "--max-duration", "5")} == {
        str(recordings / "noise.wav")}
    assert search_json(indexed, "Music", "--min-duration", "100") == []


@pytest.mark.integration
def test_like_ranks_the_same_recording_first(indexed, recordings, tiny_checkpoint, mini_checkpoint):
    hits = search_json(indexed, "--like", recordings / "noise.wav", "--checkpoint", tiny_checkpoint)
    # long.wav is white noise too: its windows' mean tokens come within float16 rounding of noise.wav's
    # (cosine 0.99997), so the two tie and rank by path; the tone is far below.
    by_file = {hit["file"]: hit for hit in hits}
    assert by_file[str(recordings / "noise.wav")]["score"] == pytest.approx(1.0, abs=1e-3)
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-3)
    assert hits[-1]["file"] == str(recordings / "tone.wav") and hits[-1]["score"] < 0.99
    assert by_file[str(recordings / "noise.wav")]["segments"] and hits[0]["matched"] == []
    before = indexed.read_bytes()
    other = run("search", "--like", recordings / "noise.wav", "--index", indexed, "--checkpoint", mini_checkpoint)
    assert other.exit_code == 2
    assert other.stderr.count("\n") == 1 and "made with ced_tiny" in other.stderr and "Traceback" not in other.output
    assert indexed.read_bytes() == before


@pytest.mark.integration
def test_index_is_incremental(indexed, recordings, tiny_checkpoint):
    write_wav(recordings / "new.wav", 2.0, 880.0)
    write_wav(recordings / "tone.wav", 1.5, 440.0)  # changed: another size
    os.remove(recordings / "noise.wav")
    result = run("index", recordings, "-o", indexed, "--checkpoint", tiny_checkpoint, "--resume")
    assert result.exit_code == 0, result.output
    assert "indexed 2 of 2 files, 1 unchanged, 1 removed; 3 in" in result.stderr
    with auricle.Index.open(indexed) as index:
        assert index.files() == sorted(str(recordings / n) for n in ("long.wav", "new.wav", "tone.wav"))
        tone = index.store.row(str(recordings / "tone.wav"))
        assert tone.duration == pytest.approx(1.5)
    again = run("index", recordings, "-o", indexed, "--checkpoint", tiny_checkpoint)
    assert "indexed 0 of 0 files, 3 unchanged, 0 removed" in again.stderr


@pytest.mark.integration
def test_a_bad_file_is_reported_and_the_others_indexed(recordings, tiny_checkpoint, tmp_path):
    (recordings / "broken.wav").write_bytes(b"not audio at all")
    index = tmp_path / "i.db"
    result = run("index", recordings, "-o", index, "--checkpoint", tiny_checkpoint)
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("auricle: error:")]
    assert len(errors) == 1 and "broken.wav" in errors[0]
    assert "indexed 3 of 4 files" in result.stderr and "1 failed" in result.stderr
    with auricle.Index.open(index) as opened:
        assert len(opened) == 3


def test_an_interrupted_batch_leaves_the_index_as_of_the_last_commit(recordings, tiny_model, tmp_path, monkeypatch):
    import auricle.search.index as index_module

    monkeypatch.setattr(index_module, "BATCH_FILES", 1)
    real_put = store_module.Store.put
    calls = []

    def put_then_die(connection, row):
        calls.append(row.path)
        real_put(connection, row)
        if len(calls) == 2:  # the second batch's row is written but not committed
            raise RuntimeError("the disk went away")

    monkeypatch.setattr(store_module.Store, "put", staticmethod(put_then_die))
    path = tmp_path / "i.db"
    with auricle.Index.open(path, create=True) as index, pytest.raises(RuntimeError):
        index.add([recordings], tiny_model)
    monkeypatch.setattr(store_module.Store, "put", staticmethod(real_put))
    with auricle.Index.open(path) as index:
        assert index.files() == [calls[0]]  # the first batch, committed; the second rolled back
        report = index.add([recordings], tiny_model)
        assert (report.added, report.unchanged) == (2, 1)
        assert len(index) == 3
        assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"


@pytest.mark.integration
def test_python_api_returns_dataclasses(recordings, tiny_model, tmp_path):
    with auricle.Index.open(tmp_path / "api.db", create=True) as index:
        report = index.add([recordings / "tone.wav", recordings / "long.wav"], tiny_model)
        assert (report.added, report.failures) == (2, [])
        assert index.model == tiny_model.name
        hits = index.search("Dog", top=1)
        assert len(hits) == 1 and isinstance(hits[0], auricle.search.SearchHit)
        assert isinstance(hits[0].segments[0], auricle.search.Segment)
        assert index.search("Dog", like=None, path="nothing*") == []
        like = index.search(like=recordings / "long.wav", model=tiny_model)
        assert like[0].file == str(recordings / "long.wav")
        assert len(index.store.row(like[0].file).piece_embeddings) == 3  # 10.12 s pieces of 23 s


# --------------------------------------------------------------------------- bad input


def one_error_line(result, *fragments: str) -> None:
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("auricle: error:"), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.integration
def test_empty_query_and_missing_query(indexed):
    one_error_line(run("search", "   ", "--index", indexed), "empty query")
    one_error_line(run("search", "--index", indexed), "give a QUERY or --like")


@pytest.mark.integration
def test_an_index_of_another_model_is_not_updated(indexed, recordings, mini_checkpoint):
    before = indexed.read_bytes()
    one_error_line(run("index", recordings, "-o", indexed, "--checkpoint", mini_checkpoint), "another model",
                   "ced_mini")
    assert indexed.read_bytes() == before


@pytest.mark.integration
def test_another_schema_version_is_refused(indexed, recordings, tiny_checkpoint):
    with sqlite3.connect(indexed) as connection:
        connection.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
        connection.execute("DROP TABLE file_windows")  # another version may have other tables
    connection.close()
    before = indexed.read_bytes()
    one_error_line(run("search", "Dog", "--index", indexed), "schema version 99")
    one_error_line(run("index", recordings, "-o", indexed, "--checkpoint", tiny_checkpoint), "schema version 99")
    assert indexed.read_bytes() == before


@pytest.mark.integration
def test_a_truncated_or_foreign_file_is_refused_untouched(indexed, tmp_path):
    data = indexed.read_bytes()
    truncated = tmp_path / "truncated.db"
    truncated.write_bytes(data[: len(data) // 3])
    one_error_line(run("search", "Dog", "--index", truncated), str(truncated))
    assert truncated.read_bytes() == data[: len(data) // 3]
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"\x00" * 10 + b"not sqlite" * 100)
    one_error_line(run("search", "Dog", "--index", garbage), "not a readable auricle index")
    foreign = tmp_path / "foreign.db"
    sqlite3.connect(foreign).execute("CREATE TABLE t (x)").connection.commit()
    one_error_line(run("search", "Dog", "--index", foreign), "not an auricle search index")
    one_error_line(run("search", "Dog", "--index", tmp_path / "absent.db"), "no such index")


@pytest.mark.integration
def test_a_locked_index_is_one_line(indexed, recordings, tiny_checkpoint, monkeypatch):
    monkeypatch.setattr(store_module, "BUSY_TIMEOUT_S", 0.05)
    write_wav(recordings / "new.wav", 1.0, 220.0)
    holder = sqlite3.connect(indexed, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        one_error_line(run("index", recordings, "-o", indexed, "--checkpoint", tiny_checkpoint), "locked")
        assert len(search_json(indexed, "Dog")) == 3  # readers still read beside a writer (WAL)
    finally:
        holder.execute("ROLLBACK")
        holder.close()


@pytest.mark.integration
def test_a_file_deleted_since_indexing_is_skipped_with_a_warning(indexed, recordings):
    os.remove(recordings / "tone.wav")
    before = indexed.read_bytes()
    result = run("search", "Dog", "--index", indexed, "-f", "json")
    assert result.exit_code == 0
    assert [h["rank"] for h in json.loads(result.stdout)] == [1, 2]
    warnings = result.stderr.strip().splitlines()
    assert len(warnings) == 1 and "tone.wav" in warnings[0] and "no longer exists" in warnings[0]
    assert indexed.read_bytes() == before
    one_error_line(run("search", "--like", recordings / "tone.wav", "--index", indexed), "tone.wav",
                   "file not found")


@pytest.mark.integration
def test_words_without_the_search_extra_are_one_line_and_class_names_still_work(indexed, monkeypatch):
    from auricle.search import text

    monkeypatch.setattr(text, "ENCODER_PACKAGE", "auricle_no_such_encoder")
    monkeypatch.setattr(text, "text_encoder", lambda: text.TextEncoder())
    one_error_line(run("search", "a dog barking", "--index", indexed), "pip install 'auricle[search]'")
    assert len(search_json(indexed, "Bark")) == 3


@pytest.mark.integration
def test_a_killed_index_run_keeps_its_committed_batches(recordings, tiny_checkpoint, tmp_path):
    """SIGKILL inside the second batch's transaction: nothing to clean up, the first batch is there."""
    import subprocess
    import sys

    path = tmp_path / "killed.db"
    script = f"""
import os, signal
import auricle
import auricle.search.index as index_module
from auricle.search import store
index_module.BATCH_FILES = 1
put = store.Store.put
done = []
def put_then_die(connection, row):
    put(connection, row)
    done.append(row.path)
    if len(done) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
store.Store.put = staticmethod(put_then_die)
with auricle.Index.open({str(path)!r}, create=True) as index:
    index.add([{str(recordings)!r}], auricle.load_model(checkpoint={str(tiny_checkpoint)!r}))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == -9, result.stderr[-2000:]
    assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    with auricle.Index.open(path, readonly=True) as index:
        assert len(index) == 1
    result = run("index", recordings, "-o", path, "--checkpoint", tiny_checkpoint)
    assert result.exit_code == 0 and "indexed 2 of 2 files, 1 unchanged" in result.stderr


@pytest.mark.integration
def test_like_takes_a_published_model_from_the_index(indexed, recordings, monkeypatch):
    import auricle.cli.search as search_cli

    asked = []

    def load(model_name, checkpoint, *rest):
        asked.append((model_name, checkpoint))
        raise SystemExit(3)

    monkeypatch.setattr(search_cli, "load_model_or_exit", load)
    with sqlite3.connect(indexed) as connection:
        connection.execute("UPDATE meta SET value = 'ced-tiny' WHERE key = 'model'")
    connection.close()
    run("search", "--like", recordings / "tone.wav", "--index", indexed)
    run("search", "--like", recordings / "tone.wav", "--index", indexed, "--model", "ced-base")
    assert asked == [("ced-tiny", None), ("ced-base", None)]


@pytest.mark.integration
def test_only_files_under_the_paths_given_are_dropped_when_gone(indexed, recordings, tiny_checkpoint, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    write_wav(elsewhere / "other.wav", 1.0, 330.0)
    assert run("index", elsewhere, "-o", indexed, "--checkpoint", tiny_checkpoint).exit_code == 0
    os.remove(recordings / "tone.wav")  # gone, but not under the folder indexed next
    unplugged = tmp_path / "unplugged"  # a folder that is not there today covers nothing
    result = run("index", elsewhere, unplugged, "-o", indexed, "--checkpoint", tiny_checkpoint)
    assert "0 removed; 4 in" in result.stderr
    result = run("index", recordings / "*.wav", "-o", indexed, "--checkpoint", tiny_checkpoint)
    assert result.exit_code == 0 and "1 removed; 3 in" in result.stderr
    with auricle.Index.open(indexed) as index:
        assert str(recordings / "tone.wav") not in index.files() and str(elsewhere / "other.wav") in index.files()


def test_an_interrupt_keeps_the_files_computed_so_far(recordings, tiny_model, tmp_path, monkeypatch):
    import auricle.search.index as index_module

    real_compute = index_module.compute

    def two_then_interrupt(*args, **kwargs):
        results = real_compute(*args, **kwargs)
        yield next(results)
        yield next(results)
        raise KeyboardInterrupt  # Ctrl-C, or SIGTERM as auricle.cli takes it

    monkeypatch.setattr(index_module, "compute", two_then_interrupt)
    path = tmp_path / "i.db"
    with auricle.Index.open(path, create=True) as index, pytest.raises(KeyboardInterrupt):
        index.add([recordings], tiny_model)  # fewer files than a batch: nothing was committed yet
    with auricle.Index.open(path) as index:
        assert len(index) == 2


@pytest.mark.integration
def test_class_queries_need_no_torch(indexed):
    from no_torch_support import without_torch

    result = without_torch("search", "Bark", "--index", str(indexed), "-f", "jsonl")
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["rank"] for line in result.stdout.splitlines()] == [1, 2, 3]


@pytest.mark.integration
def test_since_and_until_filter_by_when_files_were_recorded(indexed, recordings, tiny_checkpoint):
    import datetime as dt

    for name, day in (("tone.wav", dt.datetime(2020, 6, 1, 12)), ("noise.wav", dt.datetime(2021, 1, 1, 9))):
        os.utime(recordings / name, (day.timestamp(), day.timestamp()))
    assert run("index", recordings, "-o", indexed, "--checkpoint", tiny_checkpoint).exit_code == 0

    def files(*args):
        return sorted(os.path.basename(hit["file"]) for hit in search_json(indexed, "Music", *args))

    assert files("--until", "2020-06-01") == ["tone.wav"]  # a date alone: up to the end of that day
    assert files("--until", "2020-05-31") == []
    assert files("--since", "2020-06-02", "--until", "2021-01-01T10:00") == ["noise.wav"]
    assert files("--since", "2021-01-02") == ["long.wav"]
    with auricle.Index.open(indexed, readonly=True) as index:
        assert [os.path.basename(h.file) for h in index.search("Music", until=dt.date(2020, 6, 1))] == ["tone.wav"]
    one_error_line(run("search", "Music", "--index", indexed, "--since", "last week"), "'last week': not a date")
