"""Scale-out: --files-from and --shard K/N for tag, embed and index, `auricle index-merge` of the parts,
and `auricle index-export` to Parquet (docs/search.md)."""

from __future__ import annotations

import csv
import io
import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest

import auricle
from auricle.filelists import Shard, read_file_list, select, shard_of
from test_search_cli import one_error_line, run, search_json, write_wav

SHARDS = 3


@pytest.fixture
def recordings(tmp_path) -> Path:
    folder = tmp_path / "sounds"
    folder.mkdir()
    for number in range(7):  # enough files that each of 3 shards likely holds some
        write_wav(folder / f"clip{number}.wav", 1.0 + 0.5 * number, 220.0 * (number + 1) if number % 2 else None,
                  seed=number)
    write_wav(folder / "long.wav", 21.0, None, seed=9)  # several windows and pieces
    return folder


def all_files(folder: Path) -> list[str]:
    return sorted(str(path) for path in folder.glob("*.wav"))


# --- the split -----------------------------------------------------------------------------------


def test_shards_cover_every_file_once_and_stay_put_when_files_are_added():
    paths = [f"data/{name}/{i}.wav" for name in ("a", "b", "c") for i in range(300)]
    for n in (1, 2, 3, 7):
        parts = [select(paths, Shard(k, n)) for k in range(1, n + 1)]
        assert sorted(p for part in parts for p in part) == sorted(paths)  # union: every file
        assert sum(len(part) for part in parts) == len(paths)  # disjoint
        assert all(part for part in parts)
    before = {path: shard_of(path, 4) for path in paths}
    more = paths + [f"data/new/{i}.wav" for i in range(100)]
    shuffled = list(reversed(more))
    assert {path: shard_of(path, 4) for path in shuffled if path in before} == before  # order, other files: no matter
    assert select(shuffled, Shard(2, 4)) == [p for p in shuffled if before.get(p, shard_of(p, 4)) == 2]
    assert shard_of("./data//a/1.wav", 4) == shard_of("data/a/1.wav", 4)  # the normalized spelling


@pytest.mark.integration
@pytest.mark.parametrize("command", ["tag", "embed", "index"])
@pytest.mark.parametrize("bad", ["0/3", "4/3", "a/b", "3", "1/0", "-1/3"])
def test_a_bad_shard_is_one_line_and_exit_2(command, bad, recordings, tmp_path):
    result = run(command, recordings, "--shard", bad, "-o", tmp_path / "out.db")
    one_error_line(result, f"--shard {bad}", "1 <= K <= N")
    assert result.exit_code == 2


def test_a_file_list_skips_blanks_and_comments(tmp_path):
    listing = tmp_path / "files.txt"
    listing.write_text("# made by find\n\na.wav\n  sub/b.wav  \n#c.wav\n")
    assert read_file_list(str(listing)) == ["a.wav", "sub/b.wav"]
    one_error_line(run("tag", "--files-from", tmp_path / "absent.txt"), "--files-from", "absent.txt", "cannot read")
    one_error_line(run("tag"), "PATHS, or --files-from")


def tag_rows(result) -> dict[str, list]:
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    return {row["file"]: (row["label"], row["score"]) for row in rows}


@pytest.mark.integration
def test_tag_and_embed_shards_of_a_list_on_stdin_add_up_to_the_whole(recordings, tiny_checkpoint, tmp_path,
                                                                       restore_torch_threads, monkeypatch):
    from click.testing import CliRunner

    from auricle.cli import cli

    monkeypatch.chdir(recordings.parent)
    listing = "# relative to the current folder\n" + "\n".join(f"sounds/{Path(f).name}" for f in
                                                                all_files(recordings)) + "\n"

    def tag(*args):
        return CliRunner().invoke(cli, ["tag", "--checkpoint", str(tiny_checkpoint), "-f", "csv", "--top-k", "1",
                                        "--files-from", "-", *args], input=listing, catch_exceptions=False)

    whole = tag_rows(tag())
    parts = [tag_rows(tag("--shard", f"{k}/{SHARDS}")) for k in range(1, SHARDS + 1)]
    assert sorted(f for part in parts for f in part) == sorted(whole)
    assert {f: row for part in parts for f, row in part.items()} == whole
    for k, part in enumerate(parts, 1):
        assert all(shard_of(file, SHARDS) == k for file in part)

    embedded = []
    for k in range(1, SHARDS + 1):
        out = tmp_path / f"emb{k}"
        result = CliRunner().invoke(cli, ["embed", "--checkpoint", str(tiny_checkpoint), "--files-from", "-",
                                          "--shard", f"{k}/{SHARDS}", "-o", str(out)], input=listing)
        if result.exit_code == 0 and "nothing to do" in result.stderr:
            continue
        assert result.exit_code == 0, result.output
        with open(out / "index.csv", newline="") as handle:
            embedded += [row[0] for row in list(csv.reader(handle))[1:]]
    assert sorted(embedded) == sorted(whole)


# --- index parts and their merge -------------------------------------------------------------------


def index_shards(recordings: Path, checkpoint, folder: Path, *extra) -> list[Path]:
    parts = []
    for k in range(1, SHARDS + 1):
        part = folder / f"part{k}.db"
        result = run("index", recordings, "--shard", f"{k}/{SHARDS}", "-o", part, "--checkpoint", checkpoint, *extra)
        assert result.exit_code == 0, result.output
        assert part.is_file()  # even a shard that holds no file leaves its (empty) part
        parts.append(part)
    return parts


def stored_rows(index: Path) -> dict:
    with sqlite3.connect(index) as connection:
        rows = connection.execute(
            "SELECT path, size, mtime_ns, duration, clip_scores, clip_embedding, window_bounds, window_scores,"
            " piece_bounds, piece_embeddings FROM files JOIN file_windows ON file_windows.file_id = files.id").fetchall()
        meta = dict(connection.execute("SELECT key, value FROM meta"))
    connection.close()
    # Each index file has its own name for its column file, and its own count of changes: bookkeeping, not content.
    for key in ("uid", "columns_generation"):
        meta.pop(key)
    return {"rows": {row[0]: row for row in rows}, "meta": meta}


@pytest.mark.integration
def test_three_shards_merged_equal_one_run(recordings, tiny_checkpoint, tmp_path, restore_torch_threads):
    whole = tmp_path / "whole.db"
    assert run("index", recordings, "-o", whole, "--checkpoint", tiny_checkpoint).exit_code == 0
    parts = index_shards(recordings, tiny_checkpoint, tmp_path)
    counts = [len(auricle.Index.open(part, readonly=True)) for part in parts]
    assert sum(counts) == len(all_files(recordings))
    merged = tmp_path / "out" / "merged.db"
    result = run("index-merge", *parts, "-o", merged)
    assert result.exit_code == 0, result.output
    assert f"merged 3 parts: {len(all_files(recordings))} files" in result.stderr
    assert stored_rows(merged) == stored_rows(whole)
    # no temporary, no log left; the column file made whole
    assert sorted(os.listdir(merged.parent)) == ["merged.db", "merged.db.columns"]
    for query in ("=Speech", "Music", "Animal"):
        assert search_json(merged, query, "--top", "20") == search_json(whole, query, "--top", "20")
    with auricle.Index.open(merged, readonly=True) as index:
        assert index.files() == all_files(recordings)

    # A rerun of a worker is its resume: nothing is computed again.
    # The split follows the paths, which pytest's temporary folder changes: rerun a shard that holds files.
    k = next(k for k, count in enumerate(counts, 1) if count)
    again = run("index", recordings, "--shard", f"{k}/{SHARDS}", "-o", parts[k - 1], "--checkpoint", tiny_checkpoint)
    assert f"indexed 0 of 0 files, {counts[k - 1]} unchanged" in again.stderr


@pytest.mark.integration
def test_merge_refuses_parts_of_another_model_or_windows(recordings, tiny_checkpoint, mini_checkpoint, tmp_path,
                                                           restore_torch_threads):
    files = all_files(recordings)
    tiny, mini, other_window = tmp_path / "tiny.db", tmp_path / "mini.db", tmp_path / "window.db"
    assert run("index", files[0], "-o", tiny, "--checkpoint", tiny_checkpoint).exit_code == 0
    assert run("index", files[1], "-o", mini, "--checkpoint", mini_checkpoint).exit_code == 0
    assert run("index", files[1], "-o", other_window, "--checkpoint", tiny_checkpoint, "--window", "5").exit_code == 0
    out = tmp_path / "merged.db"
    one_error_line(run("index-merge", tiny, mini, "-o", out), str(mini), "another model", str(tiny))
    one_error_line(run("index-merge", tiny, other_window, "-o", out), str(other_window), "window 5.0 there")
    assert not out.exists()
    one_error_line(run("index-merge", tiny, tmp_path / "absent.db", "-o", out), "absent.db", "no such index")
    (tmp_path / "foreign.db").write_bytes(b"not sqlite at all" * 100)
    one_error_line(run("index-merge", tiny, tmp_path / "foreign.db", "-o", out), "foreign.db")
    assert not out.exists()
    assert not [name for name in os.listdir(tmp_path) if ".tmp" in name]


@pytest.mark.integration
def test_a_file_in_two_parts_keeps_its_newest_row(recordings, tiny_checkpoint, tmp_path, restore_torch_threads):
    files = all_files(recordings)
    old, new = tmp_path / "old.db", tmp_path / "new.db"
    assert run("index", *files[:3], "-o", old, "--checkpoint", tiny_checkpoint).exit_code == 0
    write_wav(Path(files[0]), 2.5, 330.0)  # changed since `old` was made
    os.utime(files[0], ns=(os.stat(files[0]).st_mtime_ns + 10**9,) * 2)
    assert run("index", files[0], "-o", new, "--checkpoint", tiny_checkpoint).exit_code == 0
    for order in ((old, new), (new, old)):
        merged = tmp_path / "merged.db"
        result = run("index-merge", *order, "-o", merged)
        assert result.exit_code == 0, result.output
        assert "1 in several parts" in result.stderr
        with auricle.Index.open(merged, readonly=True) as index:
            assert len(index) == 3
            assert index.store.row(files[0]).duration == pytest.approx(2.5)
    # The output may be one of the parts: it is replaced only when complete.
    assert run("index-merge", old, new, "-o", old).exit_code == 0
    assert stored_rows(old) == stored_rows(tmp_path / "merged.db")


@pytest.mark.integration
def test_an_empty_shard_says_so_and_leaves_an_empty_part(tmp_path, tiny_checkpoint):
    only = write_wav(tmp_path / "only.wav", 1.0, 440.0)
    other = next(k for k in range(1, 4) if k != shard_of(str(only), 3))
    part = tmp_path / "part.db"
    result = run("index", only, "--shard", f"{other}/3", "-o", part, "--checkpoint", tiny_checkpoint)
    assert result.exit_code == 0, result.output
    assert f"shard {other}/3 holds none of the 1 files" in result.stderr
    full = tmp_path / "full.db"
    assert run("index", only, "-o", full, "--checkpoint", tiny_checkpoint).exit_code == 0
    merged = tmp_path / "merged.db"
    assert run("index-merge", part, full, "-o", merged).exit_code == 0
    assert stored_rows(merged) == stored_rows(full)


# --- Parquet export ----------------------------------------------------------------------------------


@pytest.mark.integration
def test_export_to_parquet_reads_back(recordings, tiny_checkpoint, tiny_model, tmp_path, restore_torch_threads):
    pq = pytest.importorskip("pyarrow.parquet")
    index_path = tmp_path / "i.db"
    assert run("index", recordings, "-o", index_path, "--checkpoint", tiny_checkpoint).exit_code == 0
    out = tmp_path / "export"
    result = run("index-export", index_path, "-o", out)
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(out)) == ["classes.parquet", "files.parquet", "pieces.parquet", "windows.parquet"]
    files = pq.read_table(out / "files.parquet").to_pylist()
    windows = pq.read_table(out / "windows.parquet").to_pylist()
    pieces = pq.read_table(out / "pieces.parquet").to_pylist()
    classes = pq.read_table(out / "classes.parquet").to_pylist()
    assert [row["path"] for row in files] == all_files(recordings)
    assert classes[0]["class"] == 0 and len(classes) == 527 and classes[0]["mid"].startswith("/m/")
    long = str(recordings / "long.wav")
    with auricle.Index.open(index_path, readonly=True) as index:
        row = index.store.row(long)
    file_row = next(r for r in files if r["path"] == long)
    assert file_row["duration"] == pytest.approx(row.duration)
    np.testing.assert_array_equal(np.float32(file_row["clip_scores"]), row.clip_scores)
    np.testing.assert_array_equal(np.float32(file_row["clip_embedding"]), row.clip_embedding)
    its_windows = [w for w in windows if w["path"] == long]
    assert [w["window"] for w in its_windows] == list(range(len(row.window_bounds)))
    np.testing.assert_array_equal(np.float32([w["scores"] for w in its_windows]), row.window_scores)
    np.testing.assert_array_equal(np.float32([[w["start"], w["end"]] for w in its_windows]), row.window_bounds)
    its_pieces = [p for p in pieces if p["path"] == long]
    np.testing.assert_array_equal(np.float32([p["embedding"] for p in its_pieces]), row.piece_embeddings)
    # What the DuckDB recipe does (docs/search.md): the Speech score of each window, by the class table.
    speech = next(c["class"] for c in classes if c["label"] == "Speech")
    assert its_windows[0]["scores"][speech] == pytest.approx(float(row.window_scores[0, speech]))


@pytest.mark.integration
def test_export_without_pyarrow_names_the_extra(recordings, tiny_checkpoint, tmp_path, monkeypatch,
                                                restore_torch_threads):
    import sys

    index_path = tmp_path / "i.db"
    assert run("index", all_files(recordings)[0], "-o", index_path, "--checkpoint", tiny_checkpoint).exit_code == 0
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    one_error_line(run("index-export", index_path, "-o", tmp_path / "export"), "pyarrow", "auricle[export]")
    one_error_line(run("index-export", tmp_path / "absent.db", "-o", tmp_path / "export"), "no such index")


@pytest.mark.integration
def test_python_api_shards_and_merge(recordings, tiny_model, tmp_path):
    from auricle.search.merge import merge

    parts = []
    for k in range(1, SHARDS + 1):
        with auricle.Index.open(tmp_path / f"api{k}.db", create=True) as index:
            index.add([recordings], tiny_model, shard=f"{k}/{SHARDS}")
            assert all(shard_of(file, SHARDS) == k for file in index.files())
        parts.append(tmp_path / f"api{k}.db")
    report = merge(parts, tmp_path / "api.db")
    assert (report.parts, report.files, report.duplicates) == (SHARDS, len(all_files(recordings)), 0)
    with auricle.Index.open(tmp_path / "whole.db", create=True) as index:
        index.add([recordings], tiny_model)
    assert stored_rows(tmp_path / "api.db") == stored_rows(tmp_path / "whole.db")
    with auricle.Index.open(tmp_path / "x.db", create=True) as index, pytest.raises(auricle.errors.OptionError,
                                                                                    match="--shard 2/1"):
        index.add([recordings], tiny_model, shard="2/1")


def test_equal_scores_rank_by_path_not_by_storage_order(tmp_path, tiny_model):
    # Two recordings of the same sound, stored in reverse path order (as a merge of parts may store them).
    first, second = write_wav(tmp_path / "a.wav", 1.0, 440.0), write_wav(tmp_path / "b.wav", 1.0, 440.0)
    with auricle.Index.open(tmp_path / "i.db", create=True) as index:
        index.add([second], tiny_model)
        index.add([first], tiny_model)
        for query in ("=Speech", "Animal"):
            hits = index.search(query, top=2)
            assert hits[0].score == hits[1].score
            assert [hit.file for hit in hits] == [str(first), str(second)]
        assert [hit.file for hit in index.search(query, top=1)] == [str(first)]  # also when the top cuts a tie
