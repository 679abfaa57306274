"""`auricle distill shards`: chunking, tar layout, index, checksums, bad sources, resume."""

from __future__ import annotations

import csv
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from distill_helpers import CHUNK_SECONDS, SOURCES, make_audio

from auricle.audio import load_audio
from auricle.cli import cli
from auricle.distill import DistillError
from auricle.distill.shards import ShardConfig, ShardReader, ShardSet, iter_chunks, write_shards


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory):
    return make_audio(tmp_path_factory.mktemp("audio"))


def _expected_chunks(min_seconds: float) -> int:
    count = 0
    for _, seconds in SOURCES:
        full, tail = divmod(round(seconds * 16000), round(CHUNK_SECONDS * 16000))
        count += full + (tail >= round(min_seconds * 16000))
    return count


def test_shards_cli_writes_webdataset_tars_index_and_checksums(audio_dir, tmp_path):
    out = tmp_path / "shards"
    result = CliRunner().invoke(cli, ["distill", "shards", str(audio_dir), "--out", str(out),
                                      "--chunk-seconds", "2", "--min-seconds", "0.5", "--chunks-per-shard", "4"])
    # The corrupt file is reported by name, the rest is sharded, and the status says something failed.
    assert result.exit_code == 1, result.output
    assert "broken.wav" in result.stderr and result.stderr.count("broken.wav") == 1  # once, as an error
    assert result.stderr.count("auricle: error:") == 1 and "warning" not in result.stderr
    shards = ShardSet.open(out)
    expected = _expected_chunks(0.5)
    assert len(shards) == expected and len(shards.shards) == -(-expected // 4)
    assert shards.check() == []
    manifest = json.loads((out / "manifest.json").read_text())
    assert [f["source"].endswith("broken.wav") for f in manifest["failures"]] == [True]
    assert manifest["dropped_short"] == 1  # d.wav (0.1 s); every tail is >= 0.5 s

    with tarfile.open(shards.shards[0]) as tar:
        names = tar.getnames()
        assert all(member.mtime == 0 for member in tar.getmembers())
    assert names[0].endswith(".flac") and names[1] == names[0].replace(".flac", ".json")
    assert all(name.count(".") == 1 for name in names)  # WebDataset: the key is everything before the dot

    rows = list(csv.DictReader(open(out / "index.csv")))
    assert len(rows) == expected and len({row["key"] for row in rows}) == expected
    by_source: dict[str, list[dict]] = {}
    for row in rows:
        by_source.setdefault(row["source"], []).append(row)
    for source, source_rows in by_source.items():
        decoded = load_audio(source)
        for chunk in (c for shard in shards.shards for c in iter_chunks(shard) if c.source == source):
            row = next(r for r in source_rows if r["key"] == chunk.key)
            first = round(float(row["start"]) * 16000)
            assert int(row["num_samples"]) == chunk.num_samples
            assert chunk.end == pytest.approx(chunk.start + chunk.num_samples / 16000)
            # Lossless FLAC of the 16-bit quantised samples.
            original = np.clip(decoded[first : first + chunk.num_samples], -1, 1)
            assert np.max(np.abs(chunk.audio - original)) <= 1 / 32768 + 1e-9
    # A kept tail has its true length (a.wav: 4.5 s -> 2 s, 2 s, 0.5 s).
    lengths = sorted(int(row["num_samples"]) for row in rows if row["source"].endswith("a.wav"))
    assert lengths == [8000, 32000, 32000]


def test_shards_are_deterministic_and_random_access_matches_stream(audio_dir, tmp_path):
    config = ShardConfig(chunk_seconds=2.0, chunks_per_shard=3)
    files = sorted(str(p) for p in audio_dir.glob("*.wav") if p.name != "broken.wav")
    first = write_shards(files, tmp_path / "one", config)
    second = write_shards(files, tmp_path / "two", config)
    assert first.chunks == second.chunks == _expected_chunks(0.15)
    one, two = ShardSet.open(tmp_path / "one"), ShardSet.open(tmp_path / "two")
    assert [one.sha256(s) for s in one.shards] == [two.sha256(s) for s in two.shards]
    with ShardReader(one.shards[1]) as reader:
        streamed = list(iter_chunks(one.shards[1]))
        assert reader.keys == [c.key for c in streamed] == one.keys(one.shards[1])
        for chunk in streamed:
            assert np.array_equal(reader.audio(chunk.key), chunk.audio)
    with pytest.raises(DistillError, match="already holds a shard set"):
        write_shards(files, tmp_path / "one", config)
    with pytest.raises(DistillError, match="listed twice"):
        write_shards(files + files[:1], tmp_path / "three", config)


def test_shards_resume_after_a_crash_gives_identical_shards(audio_dir, tmp_path, monkeypatch):
    import auricle.distill.shards as shards_module

    config = ShardConfig(chunk_seconds=2.0, chunks_per_shard=2)
    files = sorted(str(p) for p in audio_dir.glob("*.wav"))
    reference = write_shards(files, tmp_path / "reference", config)

    real_encode = shards_module.encode_flac
    calls = {"n": 0}

    def crashing_encode(audio, subtype):
        calls["n"] += 1
        if calls["n"] == 6:  # in the middle of the third shard
            raise KeyboardInterrupt
        return real_encode(audio, subtype)

    monkeypatch.setattr(shards_module, "encode_flac", crashing_encode)
    with pytest.raises(KeyboardInterrupt):
        write_shards(files, tmp_path / "resumed", config)
    monkeypatch.setattr(shards_module, "encode_flac", real_encode)
    partial = json.loads((tmp_path / "resumed" / "manifest.json").read_text())
    assert len(partial["shards"]) == 2 and not partial["complete"]

    resumed = write_shards(files, tmp_path / "resumed", config, resume=True)
    assert resumed.resumed and resumed.chunks == reference.chunks
    assert resumed.failures == reference.failures and len(resumed.failures) == 1
    a, b = ShardSet.open(tmp_path / "reference"), ShardSet.open(tmp_path / "resumed")
    assert [a.sha256(s) for s in a.shards] == [b.sha256(s) for s in b.shards]
    assert (tmp_path / "reference" / "index.csv").read_text() == (tmp_path / "resumed" / "index.csv").read_text()
    assert not list((tmp_path / "resumed").glob("*.tmp"))


def test_shards_cli_errors(tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["distill", "shards", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "no sources" in result.stderr
    result = runner.invoke(cli, ["distill", "shards", str(tmp_path / "*.nothing"), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "no files match" in result.stderr
    with pytest.raises(DistillError, match="not a shard set"):
        ShardSet.open(tmp_path)
    # Sources that give no audio make no shard set (it was a "complete" set of 0 shards, then NaN figures).
    result = runner.invoke(cli, ["distill", "shards", str(tmp_path / "nope"), "--out", str(tmp_path / "empty")])
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1] == (f"auricle: error: {tmp_path / 'empty'}: no source gave any audio "
                                              "(1 failed, 0 too short); no shard set was made")
    with pytest.raises(DistillError, match="shard set is incomplete"):
        ShardSet.open(tmp_path / "empty")


def test_shards_cli_reads_a_file_list_and_resumes_a_finished_set(audio_dir, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text(f"# sources\n{audio_dir / 'a.wav'}\n\n{audio_dir / 'e*.wav'}\n")
    args = ["distill", "shards", "--files-from", str(listing), "--out", str(tmp_path / "s"), "--chunk-seconds", "2"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert {Path(row["source"]).name for row in csv.DictReader(open(tmp_path / "s" / "index.csv"))} == {"a.wav", "e.wav"}
    assert "5 chunks (" in result.stderr and "in 1 shard in" in result.stderr and "0 of 2 sources failed" in result.stderr
    result = CliRunner().invoke(cli, [*args, "--resume"])
    assert result.exit_code == 0 and "5 chunks" in result.stderr
    result = CliRunner().invoke(cli, [*args[:-1], "3", "--resume"])
    assert result.exit_code == 2 and "other sources or options" in result.stderr  # usage, as in every command
