"""End-to-end tests of `auricle tag`, `embed`, `models` and `labels`, called as a user would."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from auricle.cli import cli
from auricle.labels import audioset_labels, resolve_classes
from auricle.profiles import load_profile
from conftest import DATA, require
from test_audio import encode

INPUTS = ["a_sine440_1s.wav", "d_mix_25p3s.wav", "f_stereo_44k1_2s.wav", "i_tooshort_0p1s.wav"]


def run(*args: str) -> "click.testing.Result":
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def inputs(reference_dir) -> list[str]:
    return [str(reference_dir / "inputs" / name) for name in INPUTS]


@pytest.mark.integration
def test_tag_table(inputs, tiny_checkpoint):
    result = run("tag", *inputs, "--checkpoint", tiny_checkpoint, "--top-k", "3")
    assert result.exit_code == 0, result.output
    for name in INPUTS:
        assert name in result.stdout
    assert result.stdout.count("\n  ") >= 3 * len(INPUTS)


@pytest.mark.integration
def test_tag_json_matches_api(inputs, tiny_checkpoint, tiny_model):
    result = run("tag", *inputs, "--checkpoint", tiny_checkpoint, "--format", "json", "--top-k", "4")
    assert result.exit_code == 0, result.output
    records = json.loads(result.stdout)
    assert [r["file"] for r in records] == inputs
    for record, path in zip(records, inputs):
        expected = tiny_model.tag(path, top_k=4).to_dict()
        assert record["schema_version"] == 1
        assert [t["index"] for t in record["tags"]] == [t["index"] for t in expected["tags"]]
        np.testing.assert_allclose([t["score"] for t in record["tags"]], [t["score"] for t in expected["tags"]], atol=1e-6)
    mix = records[1]
    assert [(w["start"], w["end"]) for w in mix["windows"]] == [(0.0, 10.0), (10.0, 20.0), (20.0, 25.3)]
    assert records[2]["duration"] == pytest.approx(2.0)
    assert records[3]["duration"] == pytest.approx(0.1)


@pytest.mark.integration
def test_tag_jsonl_and_csv(inputs, tiny_checkpoint, tmp_path):
    out = tmp_path / "tags.jsonl"
    result = run("tag", *inputs, "--checkpoint", tiny_checkpoint, "-f", "jsonl", "-o", out, "--threshold", "0.6")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["file"] for line in lines] == inputs
    assert all(t["score"] >= 0.6 for line in lines for t in line["tags"])

    result = run("tag", *inputs, "--checkpoint", tiny_checkpoint, "-f", "csv", "-k", "2")
    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert rows[0] == ["file", "rank", "index", "mid", "label", "score", "truncated"]
    assert len(rows) == 1 + 2 * len(inputs)


@pytest.mark.integration  # the CLI end to end for seconds
def test_the_output_suffix_picks_the_format_unless_format_is_given(inputs, tiny_checkpoint, tmp_path):
    for name, first in [("tags.CSV", "file,rank,index,mid,label,score,truncated"), ("tags.jsonl", '{"'), ("tags.json", "["),
                        ("tags.txt", inputs[0])]:
        result = run("tag", *inputs, "--checkpoint", tiny_checkpoint, "-k", "1", "-o", tmp_path / name)
        assert result.exit_code == 0, result.output
        assert (tmp_path / name).read_text().startswith(first), name
    result = run("tag", *inputs, "--checkpoint", tiny_checkpoint, "-k", "1", "-f", "table", "-o", tmp_path / "t.csv")
    assert (tmp_path / "t.csv").read_text().startswith(inputs[0])  # an explicit --format wins
    # --resume takes the format from the suffix too
    result = run("tag", *inputs, "--checkpoint", tiny_checkpoint, "-k", "1", "-o", tmp_path / "again.jsonl", "--resume")
    assert result.exit_code == 0, result.output


@pytest.mark.integration
def test_events_csv_is_dcase(inputs, tiny_checkpoint):
    result = run("tag", inputs[1], "--checkpoint", tiny_checkpoint, "--events", "--hop", "5",
                 "--threshold", "0.55", "-f", "csv")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert rows, "the perturbed model scores many classes above 0.55"
    assert list(rows[0].keys()) == ["filename", "onset", "offset", "event_label"]
    for row in rows:
        assert 0 <= float(row["onset"]) < float(row["offset"]) <= 25.3
    onsets = [float(row["onset"]) for row in rows]
    assert onsets == sorted(onsets), "events are listed chronologically"


@pytest.mark.integration  # the CLI end to end for seconds
def test_classes_and_profile(inputs, tiny_checkpoint):
    result = run("tag", inputs[0], "--checkpoint", tiny_checkpoint, "--classes", "Animal", "-k", "50", "-f", "json")
    assert result.exit_code == 0, result.output
    tags = json.loads(result.stdout)[0]["tags"]
    animal = set(resolve_classes("Animal"))
    assert "Dog" in {audioset_labels().names[i] for i in animal}
    assert len(tags) == min(50, len(animal))
    assert {t["index"] for t in tags} <= animal
    assert "Speech" not in {t["label"] for t in tags}

    result = run("tag", inputs[0], "--checkpoint", tiny_checkpoint, "--profile", "home", "-k", "50", "-f", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["tags"]

    result = run("tag", inputs[0], "--checkpoint", tiny_checkpoint, "--classes", "Dog barks loudly")
    assert result.exit_code == 2
    assert "Dog barks loudly" in result.stderr and result.stderr.count("\n") == 1

    # Classes that no profile event covers: every result would be empty, so it is said instead.
    result = run("tag", inputs[0], "--checkpoint", tiny_checkpoint, "--profile", "home", "--classes", "Speech")
    assert result.exit_code == 2 and "no event of profile 'home' covers the classes Speech" in result.stderr

    # A profile sets each event's threshold: --threshold beside it would be silently ignored, so it is refused.
    result = run("tag", inputs[0], "--checkpoint", tiny_checkpoint, "--profile", "home", "--threshold", "0.2")
    assert result.exit_code == 2 and not result.stdout
    assert "threshold and profile do not combine" in result.stderr and result.stderr.count("\n") == 1


@pytest.mark.integration  # the CLI end to end for seconds
def test_embed_outputs(inputs, tiny_checkpoint, tmp_path):
    result = run("embed", *inputs, "--checkpoint", tiny_checkpoint, "--output", tmp_path / "emb")
    assert result.exit_code == 0, result.output
    index = list(csv.DictReader(open(tmp_path / "emb" / "index.csv")))
    assert [row["file"] for row in index] == inputs
    mix = np.load(tmp_path / "emb" / index[1]["npz"])
    assert mix["clip"].shape == (192,) and mix["windows"].shape == (3, 192)
    np.testing.assert_allclose(mix["ends"], [10.12, 20.24, 25.3])

    result = run("embed", *inputs, "--checkpoint", tiny_checkpoint, "--output", tmp_path / "all.npz")
    assert result.exit_code == 0, result.output
    archive = np.load(tmp_path / "all.npz")
    assert archive["clip"].shape == (4, 192)
    np.testing.assert_allclose(archive["clip"][1], mix["clip"], atol=1e-6)

    result = run("embed", *inputs, "--checkpoint", tiny_checkpoint, "--output", tmp_path / "clips.npy")
    assert np.load(tmp_path / "clips.npy").shape == (4, 192)


def make_bad_folder(folder: Path, good_source: Path) -> dict[str, str]:
    """Good and bad files side by side; returns bad file name -> expected words in its error."""
    folder.mkdir()
    shutil.copy(good_source, folder / "good.wav")
    tone = lambda rate, seconds: (0.3 * np.sin(2 * np.pi * 440 * np.arange(int(rate * seconds)) / rate)).astype(np.float32)
    sf.write(folder / "good_8k.flac", tone(8000, 1.0), 8000)
    sf.write(folder / "good_96k.wav", tone(96000, 1.0), 96000)
    sf.write(folder / "good_24bit.wav", tone(16000, 1.0), 16000, subtype="PCM_24")
    sf.write(folder / "good_float.wav", tone(16000, 1.0), 16000, subtype="FLOAT")
    sf.write(folder / "good_6ch.wav", np.tile(tone(48000, 1.0)[:, None], (1, 6)), 48000)
    sf.write(folder / "good.mp3", tone(44100, 1.5), 44100, format="MP3")
    encode(folder / "good.m4a", "aac", 44100, tone(44100, 1.5)[None])
    (folder / "empty.wav").write_bytes(b"")
    (folder / "noise.wav").write_bytes(os.urandom(5000))
    (folder / "notes.wav").write_text("this is not audio\n" * 20)
    (folder / "truncated.wav").write_bytes(good_source.read_bytes()[:20])
    sf.write(folder / "nan.wav", np.array([0.1, np.nan] * 4000, dtype=np.float32), 16000, subtype="FLOAT")
    # Not failures: tagged as far as they go (a WAV cut mid-data) or zero-padded (0.01 s), with a warning.
    cut = folder / "cut_mid.wav"
    cut.write_bytes((folder / "good_96k.wav").read_bytes()[: 44 + 2 * 48000])  # 16-bit: half of 1 s
    sf.write(folder / "blip.wav", tone(16000, 0.01), 16000)
    return {"empty.wav": "empty", "noise.wav": "", "notes.wav": "", "truncated.wav": "", "nan.wav": "nan"}


@pytest.mark.integration
def test_bad_files_are_reported_and_the_rest_is_tagged(reference_dir, tiny_checkpoint, tmp_path):
    folder = tmp_path / "mixed"
    bad = make_bad_folder(folder, reference_dir / "inputs" / "a_sine440_1s.wav")
    out = tmp_path / "out.jsonl"
    result = run("tag", folder, "--checkpoint", tiny_checkpoint, "-f", "jsonl", "-o", out)
    assert result.exit_code == 1
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("auricle: error:")]
    assert len(error_lines) == len(bad)
    for name, word in bad.items():
        line = next(line for line in error_lines if name in line)
        assert word in line.lower()
    assert f"{len(bad)} failed" in result.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    good = {Path(r["file"]).name for r in records if "error" not in r}
    assert good == {p.name for p in folder.iterdir()} - set(bad)
    assert {"good.mp3", "good.m4a", "good_6ch.wav", "good_96k.wav"} <= good
    warnings = [line for line in result.stderr.splitlines() if line.startswith("auricle: warning:")]
    assert len(warnings) == 2
    assert "cut_mid.wav: truncated: the header declares 1.000 s, only 0.500 s" in warnings[1]
    assert "blip.wav: 0.010 s is shorter than one patch" in warnings[0]


def test_missing_file_is_an_error_not_a_crash(tiny_checkpoint, tmp_path):
    result = run("tag", tmp_path / "nope.wav", "--checkpoint", tiny_checkpoint)
    assert result.exit_code == 1
    assert "nope.wav" in result.stderr and "not found" in result.stderr


@pytest.mark.integration
def test_resume_after_torn_write(reference_dir, tiny_checkpoint, tmp_path, inputs):
    full = tmp_path / "full.jsonl"
    assert run("tag", *inputs, "--checkpoint", tiny_checkpoint, "-f", "jsonl", "-o", full).exit_code == 0
    lines = full.read_text().splitlines(keepends=True)
    partial = tmp_path / "partial.jsonl"
    partial.write_text("".join(lines[:2]) + lines[2][:17])  # killed in the middle of line 3
    result = run("tag", *inputs, "--checkpoint", tiny_checkpoint, "-f", "jsonl", "-o", partial, "--resume")
    assert result.exit_code == 0, result.output
    assert "2 already done" in result.stderr
    resumed = [json.loads(line) for line in partial.read_text().splitlines()]
    original = [json.loads(line) for line in lines]
    assert sorted(r["file"] for r in resumed) == sorted(r["file"] for r in original)
    assert sorted(resumed, key=lambda r: r["file"]) == sorted(original, key=lambda r: r["file"])


@pytest.mark.integration
def test_killed_run_resumes_to_the_same_results(reference_dir, tiny_checkpoint, tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    source = reference_dir / "inputs" / "b_noise_3p7s.wav"
    for i in range(40):
        shutil.copy(source, folder / f"clip{i:02d}.wav")
    command = [sys.executable, "-m", "auricle", "tag", str(folder), "--checkpoint", str(tiny_checkpoint),
               "-f", "jsonl", "-b", "1", "--threads", "1"]
    interrupted = tmp_path / "interrupted.jsonl"
    process = subprocess.Popen(command + ["-o", str(interrupted)], stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and (not interrupted.exists() or interrupted.read_text().count("\n") < 3):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before = interrupted.read_text().count("\n")
    assert 3 <= done_before < 40, "the run should have been killed part-way"
    subprocess.run(command + ["-o", str(interrupted), "--resume"], check=True, stderr=subprocess.DEVNULL)
    complete = tmp_path / "complete.jsonl"
    subprocess.run(command + ["-o", str(complete)], check=True, stderr=subprocess.DEVNULL)
    resumed = [json.loads(line) for line in interrupted.read_text().splitlines()]
    reference = [json.loads(line) for line in complete.read_text().splitlines()]
    assert len(resumed) == 40 == len({r["file"] for r in resumed})
    assert sorted(resumed, key=lambda r: r["file"]) == sorted(reference, key=lambda r: r["file"])


@pytest.mark.integration
def test_ctrl_c_says_how_to_go_on(reference_dir, tiny_checkpoint, tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(60):
        shutil.copy(reference_dir / "inputs" / "b_noise_3p7s.wav", folder / f"clip{i:02d}.wav")
    out = tmp_path / "tags.jsonl"
    process = subprocess.Popen([sys.executable, "-m", "auricle", "tag", str(folder), "--checkpoint",
                                str(tiny_checkpoint), "-f", "jsonl", "-b", "1", "--threads", "1", "-o", str(out)],
                               stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and (not out.exists() or out.read_text().count("\n") < 3):
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode != 0, "the run should have been interrupted part-way"
    assert (f"auricle: interrupted; the files done are in {out}: run the same command with --resume to tag "
            "the rest") in stderr


@pytest.mark.integration
def test_a_killed_json_run_leaves_the_earlier_output_whole(reference_dir, tiny_checkpoint, tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(40):
        shutil.copy(reference_dir / "inputs" / "b_noise_3p7s.wav", folder / f"clip{i:02d}.wav")
    out = tmp_path / "tags.json"
    out.write_text('[{"file": "from an earlier run"}]\n')
    process = subprocess.Popen([sys.executable, "-m", "auricle", "tag", str(folder), "--checkpoint",
                                str(tiny_checkpoint), "-f", "json", "-b", "1", "--threads", "1", "-o", str(out)],
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list(tmp_path.glob("tags.json.*.tmp")) and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run should have been killed part-way"
    assert json.loads(out.read_text()) == [{"file": "from an earlier run"}]
    # The next run writes the whole array.
    assert run("tag", folder, "--checkpoint", tiny_checkpoint, "-f", "json", "-o", out).exit_code == 0
    assert len(json.loads(out.read_text())) == 40


@pytest.mark.integration
def test_batching_across_files_matches_one_at_a_time(inputs, tiny_checkpoint):
    batched = json.loads(run("tag", *inputs, "--checkpoint", tiny_checkpoint, "-f", "json", "-b", "16",
                             "--hop", "5", "-k", "10").stdout)
    single = json.loads(run("tag", *inputs, "--checkpoint", tiny_checkpoint, "-f", "json", "-b", "1",
                            "--hop", "5", "-k", "10").stdout)
    for a, b in zip(batched, single):
        assert [t["index"] for t in a["tags"]] == [t["index"] for t in b["tags"]]
        np.testing.assert_allclose([t["score"] for t in a["tags"]], [t["score"] for t in b["tags"]], atol=1e-5)


def test_models_and_labels_commands():
    result = run("models")
    assert result.exit_code == 0
    for name in ("ced-tiny", "ced-mini", "ced-small", "ced-base"):
        assert name in result.stdout
    assert "49.0" in result.stdout
    models = json.loads(run("models", "--json").stdout)
    assert models[1]["name"] == "ced-mini" and models[1]["audioset_map"] == 49.0
    result = run("labels", "Dog")
    assert "/m/0bt9lr" in result.stdout
    assert run("labels", "--profile", "home").exit_code == 0


@pytest.mark.integration  # the CLI end to end for seconds
def test_a_bundled_profile_copied_with_toml_and_edited_is_used(inputs, tiny_checkpoint, tmp_path):
    """The way to change a profile's thresholds, since --threshold beside --profile is refused."""
    result = run("labels", "--profile", "Home", "--toml")
    assert result.exit_code == 0, result.output
    copy = tmp_path / "quiet-home.toml"
    copy.write_text(result.stdout.replace("threshold = ", "threshold = 0.9999 # was "), encoding="utf-8")
    events = lambda *profile: json.loads(run("tag", inputs[0], "--checkpoint", tiny_checkpoint, "--events",
                                             "-f", "json", *profile).stdout)[0]["events"]
    bundled, edited = events("--profile", "home"), events("--profile", str(copy))
    assert len(edited) < len(bundled), "higher thresholds fire fewer events"
    assert {e["label"] for e in edited} <= {e.label for e in load_profile("home").events}

    assert run("labels", "--toml").exit_code == 2
    result = run("labels", "--profile", "hmoe", "--toml")
    assert result.exit_code == 2 and "did you mean 'home'" in result.stderr


def test_resume_needs_a_resumable_output(inputs, tiny_checkpoint):
    result = run("tag", inputs[0], "--checkpoint", tiny_checkpoint, "--resume")
    assert result.exit_code == 2 and "--resume" in result.stderr


@pytest.mark.integration  # the CLI end to end for seconds
def test_real_long_recordings_events(tiny_checkpoint, tmp_path):
    folder = require(DATA / "long")
    out = tmp_path / "events.csv"
    result = run("tag", folder, "--checkpoint", tiny_checkpoint, "--events", "-f", "csv", "-o", out,
                 "--threshold", "0.6")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(out)))
    assert {Path(r["filename"]).name for r in rows} <= {f"long_0{i}.flac" for i in range(1, 5)}
    truth = list(csv.DictReader(open(folder / "events.csv")))
    assert list(rows[0].keys()) == list(truth[0].keys())


@pytest.mark.integration  # the CLI end to end for seconds
def test_real_everyday_folder(tiny_checkpoint, tmp_path):
    folder = require(DATA / "everyday")
    out = tmp_path / "everyday.jsonl"
    result = run("tag", folder, "--checkpoint", tiny_checkpoint, "-f", "jsonl", "-o", out, "-b", "16")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    labels = list(csv.DictReader(open(folder / "labels.csv")))
    assert len(records) == len(labels)
    durations = {row["file"]: float(row["duration_s"]) for row in labels}
    for record in records:
        assert record["duration"] == pytest.approx(durations[Path(record["file"]).name], abs=2e-3)


@pytest.mark.integration
@pytest.mark.parametrize("clean", [False, True])
def test_the_command_ends_at_once_with_its_output_and_status(reference_dir, tiny_checkpoint, tmp_path, clean):
    """`auricle` skips Python's shutdown (0.7-1 s after torch): output piped out whole, status as it should be."""
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF not audio")
    files = [str(reference_dir / "inputs" / f"{name}.wav") for name in ("a_sine440_1s", "c_chirp_10s")]
    env = dict(os.environ, AURICLE_CLEAN_EXIT="1" if clean else "")
    run = subprocess.run([sys.executable, "-m", "auricle", "tag", *files, str(broken), "--checkpoint",
                          str(tiny_checkpoint), "--format", "json", "--threshold", "0"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 1, run.stderr[-2000:]
    results = json.loads(run.stdout)  # every class of every file: ~100 KB through the pipe
    assert len(run.stdout) > 65536 and [len(r["tags"]) for r in results] == [527, 527]  # failures go to stderr
    assert run.stderr.strip().endswith("tagged 2 of 3 files; 1 failed")
    labels = subprocess.run([sys.executable, "-m", "auricle", "labels"], capture_output=True, text=True, env=env,
                            timeout=120)
    assert labels.returncode == 0 and len(labels.stdout.splitlines()) >= 527


def test_end_skips_the_shutdown_unless_something_needs_it(monkeypatch, capsys):
    from auricle import cli as cli_module

    ended = []
    monkeypatch.setattr(cli_module.os, "_exit", ended.append)
    monkeypatch.delitem(sys.modules, "coverage", raising=False)
    monkeypatch.delenv("AURICLE_CLEAN_EXIT", raising=False)
    print("written before the end")
    cli_module.end(3)
    assert ended == [3] and "written before the end" in capsys.readouterr().out
    monkeypatch.setenv("AURICLE_CLEAN_EXIT", "0")  # off, as it reads
    cli_module.end(5)
    assert ended == [3, 5]
    monkeypatch.setenv("AURICLE_CLEAN_EXIT", "1")
    with pytest.raises(SystemExit) as finished:
        cli_module.end(4)
    assert finished.value.code == 4 and ended == [3, 5]


@pytest.mark.integration  # the CLI end to end for seconds
def test_embed_resumes_a_folder_where_it_stopped(inputs, tiny_checkpoint, tmp_path):
    full = tmp_path / "full"
    assert run("embed", *inputs, "--checkpoint", tiny_checkpoint, "--output", full).exit_code == 0
    # A run stopped after two files: their .npz are there (written atomically), the index is not.
    part = tmp_path / "part"
    assert run("embed", *inputs[:2], "--checkpoint", tiny_checkpoint, "--output", part).exit_code == 0
    (part / "index.csv").unlink()
    stamps = {path.name: path.stat().st_mtime_ns for path in part.glob("*.npz")}
    result = run("embed", *inputs, "--checkpoint", tiny_checkpoint, "--output", part, "--resume")
    assert result.exit_code == 0, result.output
    assert f"embedded {len(inputs) - 2} of {len(inputs) - 2} files" in result.stderr and "2 already done" in result.stderr
    assert {path.name: path.stat().st_mtime_ns for path in part.glob("*.npz") if path.name in stamps} == stamps
    assert (part / "index.csv").read_text() == (full / "index.csv").read_text()
    for npz in full.glob("*.npz"):
        np.testing.assert_allclose(np.load(part / npz.name)["clip"], np.load(npz)["clip"], atol=1e-6)
    refused = run("embed", *inputs, "--checkpoint", tiny_checkpoint, "--output", tmp_path / "all.npz", "--resume")
    assert refused.exit_code == 2 and "--resume needs --output FOLDER" in refused.stderr


@pytest.mark.integration  # the CLI end to end for seconds
def test_embed_never_gives_one_files_npz_name_to_another(inputs, tiny_checkpoint, tmp_path):
    # Two recordings named x.wav in different folders: the second gets a hashed name.
    for folder, source in (("a", inputs[0]), ("b", inputs[2])):
        (tmp_path / folder).mkdir()
        shutil.copy(source, tmp_path / folder / "x.wav")
    a, b = str(tmp_path / "a" / "x.wav"), str(tmp_path / "b" / "x.wav")
    out = tmp_path / "emb"
    assert run("embed", a, b, "--checkpoint", tiny_checkpoint, "--output", out).exit_code == 0
    names = {row["file"]: row["npz"] for row in csv.DictReader((out / "index.csv").open())}
    assert names[a] == "x.npz" and names[b].startswith("x-")
    a_clip = np.load(out / "x.npz")["clip"]
    # A later run over b alone finds it under its name instead of writing it over a's x.npz.
    result = run("embed", b, "--checkpoint", tiny_checkpoint, "--output", out, "--resume")
    assert result.exit_code == 0 and "1 already done" in result.stderr
    assert str(np.load(out / "x.npz")["path"]) == a and np.array_equal(np.load(out / "x.npz")["clip"], a_clip)
    # Not resumed, b is embedded again, still under its own name; a's file stays.
    assert run("embed", b, "--checkpoint", tiny_checkpoint, "--output", out).exit_code == 0
    assert str(np.load(out / "x.npz")["path"]) == a and str(np.load(out / names[b])["path"]) == b
    # The resumed run's index still lists both files.
    again = run("embed", b, "--checkpoint", tiny_checkpoint, "--output", out, "--resume")
    assert again.exit_code == 0
    assert {row["file"]: row["npz"] for row in csv.DictReader((out / "index.csv").open())} == names


def test_tag_never_writes_its_results_over_a_recording(inputs, tiny_checkpoint, tmp_path):
    first, second = tmp_path / "x1.wav", tmp_path / "x2.wav"
    shutil.copy(inputs[0], first)
    shutil.copy(inputs[0], second)
    before = second.read_bytes()
    # `-o x1.wav x2.wav` meant two recordings.
    result = run("tag", "--checkpoint", tiny_checkpoint, "-o", second, first)
    assert result.exit_code == 2 and second.read_bytes() == before
    assert result.stderr.strip() == (f"auricle: error: {second}: --output takes the results file, not a .wav "
                                     "recording; to tag it, list it without -o")
    take = tmp_path / "take.raw"  # named files are decoded whatever their suffix
    take.write_bytes(before)
    result = run("tag", take, "--checkpoint", tiny_checkpoint, "-f", "jsonl", "-o", take)
    assert result.exit_code == 2 and take.read_bytes() == before
    assert "is one of the files to tag" in result.stderr


def test_csv_resume_refuses_the_other_layout(inputs, tiny_checkpoint, tmp_path):
    out = tmp_path / "tags.csv"
    assert run("tag", inputs[0], "--checkpoint", tiny_checkpoint, "-f", "csv", "-o", out, "--resume").exit_code == 0
    before = out.read_text()
    result = run("tag", *inputs[:2], "--checkpoint", tiny_checkpoint, "-f", "csv", "-o", out, "--resume", "--events")
    assert result.exit_code == 2 and out.read_text() == before
    assert result.stderr.strip() == (f"auricle: error: {out}: holds clip tags, not events; resume with the same "
                                     "--events setting, or write to another file")


@pytest.mark.integration
def test_audio_that_overflows_the_spectrogram_fails_in_one_line(inputs, tiny_checkpoint, tmp_path):
    loud = tmp_path / "loud.wav"  # finite float samples, but their power overflows float32
    sf.write(loud, (1e19 * np.sin(np.arange(16000) / 10)).astype(np.float32), 16000, subtype="FLOAT")
    out = tmp_path / "tags.jsonl"
    result = run("tag", loud, inputs[0], "--checkpoint", tiny_checkpoint, "-f", "jsonl", "-o", out)
    assert result.exit_code == 1
    expected = f"{loud}: the model's output is not finite: samples far beyond full scale (±1) overflow the spectrogram"
    assert f"auricle: error: {expected}" in result.stderr.splitlines()
    records = [json.loads(line) for line in out.read_text().splitlines()]  # valid JSON: no NaN scores
    assert records[0] == {"schema_version": 1, "file": str(loud), "error": expected}
    assert records[1]["file"] == inputs[0] and records[1]["tags"]
    embedded = run("embed", loud, "--checkpoint", tiny_checkpoint, "--output", tmp_path / "emb")
    assert embedded.exit_code == 1 and expected in embedded.stderr


def test_a_list_of_arrays_is_tagged_at_its_sample_rate(tiny_model):
    tone = np.sin(2 * np.pi * 440 * np.arange(8000) / 8000).astype(np.float32)
    results = tiny_model.tag([tone, tone], sample_rate=8000, top_k=3)
    alone = tiny_model.tag(tone, sample_rate=8000, top_k=3)
    assert [r.file for r in results] == ["<array 0>", "<array 1>"]
    assert results[0].duration == alone.duration == pytest.approx(1.0)
    assert [t.index for t in results[1].tags] == [t.index for t in alone.tags]
    with pytest.raises(ValueError, match="need their sample_rate"):
        tiny_model.tag([tone])
    # A rate beside a file was silently ignored, and a list of samples failed as a path.
    with pytest.raises(TypeError, match="a list of numbers is not a waveform here"):
        tiny_model.tag(tone.tolist(), sample_rate=8000)


def test_a_sample_rate_beside_a_file_is_refused(tiny_model, inputs):
    for call in (tiny_model.tag, tiny_model.embed):
        with pytest.raises(ValueError, match="sample_rate applies to waveform arrays; a file's rate is read from it"):
            call(inputs[0], sample_rate=8000)


def test_iter_tag_prepares_waveform_arrays_as_tag_does(tiny_model, inputs):
    """Arrays went in as they were: int16 unscaled, 44.1 kHz read as 16 kHz, named by their printout."""
    import torch

    rng = np.random.default_rng(0)
    loud = (rng.standard_normal(16000) * 3000).astype(np.int16)
    fast = (0.1 * rng.standard_normal(44100)).astype(np.float32)
    results = list(tiny_model.iter_tag([loud, inputs[0], torch.from_numpy(np.stack([fast, fast])),
                                        np.full(100, np.nan, np.float32)], top_k=3, sample_rate=16000))
    alone = tiny_model.tag(loud, sample_rate=16000, top_k=3)
    assert [r.file for r in results] == ["<array 0>", inputs[0], "<array 2>", "<array 3>"]
    assert [t.index for t in results[0].tags] == [t.index for t in alone.tags]
    assert results[0].duration == alone.duration == pytest.approx(1.0)
    assert results[2].duration == pytest.approx(44100 / 16000)  # read at the rate it was given
    assert results[3].error == "<array 3>: contains NaN or Inf samples"
    [unrated] = tiny_model.iter_tag([fast], top_k=1)
    assert unrated.error == "<array 0>: a waveform array needs its sample_rate"


def test_api_errors_are_auricles_own_and_name_the_problem(tiny_model, inputs):
    from auricle.errors import AudioError, OptionError

    with pytest.raises(AudioError, match="nope.wav: file not found"):  # was the base AuricleError
        tiny_model.tag("/nope.wav")
    for options, message in [({"top_k": 2.5}, "top_k must be a whole number >= 1, got 2.5"),
                             ({"top_k": True}, "top_k must be a whole number >= 1, got True"),
                             ({"threshold": "0.5"}, "threshold must be a number in \\[0, 1\\], got '0.5'"),
                             ({"events": "yes"}, "events must be True, False or an EventOptions, got 'yes'"),
                             ({"pool": "median"}, "pool must be one of")]:
        with pytest.raises(OptionError, match=message):  # an OptionError is a ValueError too
            tiny_model.tag(inputs[0], **options)
    with open(inputs[0], "rb") as handle:  # it was read line by line as file names
        with pytest.raises(TypeError, match="tag takes a file path, a list of them or a waveform array, not "
                                            "BufferedReader"):
            tiny_model.tag(handle)
    with pytest.raises(TypeError, match="embed takes one file path or waveform array, not list; for many, iter_embed"):
        tiny_model.embed(inputs[:2])


def test_classes_given_as_one_string_are_specs_as_on_the_command_line(tiny_model, inputs):
    # A string used to be taken apart into characters: "unknown class 'V'".
    one = tiny_model.tag(inputs[0], classes="Vehicle;Speech", threshold=0.0)
    listed = tiny_model.tag(inputs[0], classes=["Vehicle", "Speech"], threshold=0.0)
    assert [t.label for t in one.tags] == [t.label for t in listed.tags] and len(one.tags) > 2


def test_a_device_that_cannot_be_used_is_one_line(inputs, tiny_checkpoint):
    import torch

    cases = [("gpu", "--device gpu: not a device; use cpu, cuda, cuda:N or mps"),
             ("xla", "--device xla: auricle runs on cpu, cuda or mps, not xla")]
    if not torch.backends.cuda.is_built():  # the CPU wheel these tests run on
        cases.append(("cuda", "--device cuda: this PyTorch is a CPU-only build (no CUDA); use --device cpu"))
    for device, message in cases:
        result = run("tag", inputs[0], "--checkpoint", tiny_checkpoint, "--device", device)
        assert result.exit_code == 2 and result.stderr == f"auricle: error: {message}\n", result.stderr


def test_standard_input_is_pointed_to_listen(tiny_checkpoint):
    for command in ("tag", "embed"):
        extra = ["--output", "out"] if command == "embed" else []
        result = run(command, "-", "--checkpoint", tiny_checkpoint, *extra)
        assert result.exit_code == 2 and result.stderr == (
            f"auricle: error: -: {command} reads files, folders and globs, not standard input; for a live stream "
            "use `auricle listen -`\n")


def test_when_no_input_exists_no_model_is_loaded(tmp_path):
    """A mistyped path fails at once, as it would after loading (here the model could not even be loaded)."""
    result = run("tag", tmp_path / "nope.wav", tmp_path / "nada.flac", "--checkpoint", tmp_path / "no-model.pt",
                 "--format", "jsonl")
    assert result.exit_code == 1
    assert "nope.wav: file not found" in result.stderr and "nada.flac: file not found" in result.stderr
    assert "tagged 0 of 2 files; 2 failed" in result.stderr and "no-model" not in result.stderr
    assert [json.loads(line)["error"] for line in result.stdout.splitlines()] == [
        f"{tmp_path / 'nope.wav'}: file not found", f"{tmp_path / 'nada.flac'}: file not found"]


@pytest.mark.integration
def test_csv_resume_counts_files_without_rows_and_writes_one_header(inputs, tiny_checkpoint, tmp_path):
    out = tmp_path / "events.csv"
    command = ["tag", inputs[0], "--checkpoint", tiny_checkpoint, "-f", "csv", "--events", "-t", "0.99", "-o", out,
               "--resume"]
    first = run(*command)
    assert first.exit_code == 0, first.output
    assert out.read_text() == "filename,onset,offset,event_label\n"  # nothing reaches 0.99: no row
    again = run(*command)
    assert again.exit_code == 0 and "tagged 0 of 0 files, 1 already done" in again.stderr
    assert out.read_text() == "filename,onset,offset,event_label\n"


@pytest.mark.integration
def test_csv_resume_drops_the_rows_of_a_file_cut_short(inputs, tiny_checkpoint, tmp_path):
    options = ["--checkpoint", tiny_checkpoint, "-f", "csv", "-k", "3"]
    full = tmp_path / "full.csv"
    assert run("tag", *inputs[:3], *options, "-o", full).exit_code == 0
    rows = full.read_text().splitlines(keepends=True)
    first, second = inputs[0], inputs[1]
    assert [row.split(",")[0] for row in rows[1:7]] == [first] * 3 + [second] * 3
    stopped = tmp_path / "stopped.csv"
    stopped.write_text("".join(rows[:6]))  # the first file whole, the second cut after two of its rows
    (tmp_path / "stopped.csv.done").write_text(json.dumps({"file": first, "model": "ced_tiny_perturbed"}) + "\n")
    resumed = run("tag", *inputs[:3], *options, "-o", stopped, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert "tagged 2 of 2 files, 1 already done" in resumed.stderr
    assert sorted(stopped.read_text().splitlines()) == sorted(full.read_text().splitlines())
    assert len((tmp_path / "stopped.csv.done").read_text().splitlines()) == 3


def test_resume_refuses_results_of_another_model(inputs, tiny_checkpoint, mini_checkpoint, tmp_path):
    out = tmp_path / "tags.jsonl"
    assert run("tag", inputs[0], "--checkpoint", tiny_checkpoint, "-f", "jsonl", "-o", out).exit_code == 0
    mixed = run("tag", *inputs[:2], "--checkpoint", mini_checkpoint, "-f", "jsonl", "-o", out, "--resume")
    assert mixed.exit_code == 2
    assert mixed.stderr.splitlines() == [f"auricle: error: {out}: holds results of ced_tiny_perturbed, not "
                                         "ced_mini_perturbed; resume with the same model or write to another file"]
    assert len(out.read_text().splitlines()) == 1


def test_outputs_that_cannot_be_written_fail_before_any_work(inputs, tiny_checkpoint, tmp_path):
    afile = tmp_path / "a-file"
    afile.write_text("")
    cases = [
        (["tag", inputs[0], "-o", afile / "x.json"], f"{afile / 'x.json'}: {afile} is a file, not a folder"),
        (["tag", inputs[0], "-o", tmp_path], f"{tmp_path}: is a folder; give a file name"),
        (["embed", inputs[0], "-o", afile / "x.npy"], f"{afile / 'x.npy'}: {afile} is a file, not a folder"),
        (["embed", inputs[0], "-o", afile], f"{afile}: exists and is not a folder"),
        (["export", "--out", afile / "m.onnx"], f"{afile / 'm.onnx'}: {afile} is a file, not a folder"),
        (["probe", inputs[0], "--result", afile / "r.json"], f"{afile / 'r.json'}: {afile} is a file, not a folder"),
        (["finetune", inputs[0], "-o", afile], f"{afile}: exists and is not a folder"),
        (["distill", "shards", inputs[0], "--out", afile], f"{afile}: exists and is not a folder"),
    ]
    for command, message in cases:
        # A checkpoint that does not exist: loading it would fail too, so only the early check can pass this way.
        result = run(*command, "--checkpoint", tmp_path / "no-model.pt") if command[0] != "distill" else run(*command)
        assert result.exit_code == 2, (command, result.output)
        assert result.stderr.splitlines() == [f"auricle: error: {message}"], command


@pytest.mark.integration
def test_sigterm_keeps_a_json_output_as_ctrl_c_does(inputs, tiny_checkpoint, tmp_path):
    """`timeout`, `kill`, schedulers and `docker stop` send SIGTERM: it ended the process and lost the JSON."""
    import signal
    import time

    import soundfile as sf

    long = tmp_path / "long.wav"  # 20 min at a 1 s hop: 1200 windows, many seconds of work to interrupt
    sf.write(long, np.zeros(20 * 60 * 16000, np.int16), 16000)
    out = tmp_path / "tags.json"
    process = subprocess.Popen([sys.executable, "-m", "auricle", "tag", *inputs[:2], long, "--checkpoint",
                                str(tiny_checkpoint), "--hop", "1", "--threads", "1", "-o", str(out)],
                               stderr=subprocess.PIPE, text=True)
    # Signalled once the model is at work, however loaded the machine: torch mapped in, then a moment more.
    time.sleep(3)
    deadline = time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline and "libtorch_cpu" not in _maps(process.pid):
        time.sleep(0.2)
    time.sleep(3)
    assert process.poll() is None, "finished before it could be interrupted"
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert "Traceback" not in stderr and "Aborted!" not in stderr
    done = json.loads(out.read_text())  # the files finished before the signal, as a whole JSON array
    assert [record["file"] for record in done] == inputs[:len(done)]  # both, on the development machine


def _maps(pid: int) -> str:
    """The process's memory map (Linux); where there is none, a stand-in that ends the wait for torch."""
    try:
        return Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return "libtorch_cpu"


@pytest.mark.integration
def test_a_write_that_fails_midway_is_one_line(inputs, tiny_checkpoint):
    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full (Linux) to fail a write with a full disk")
    result = subprocess.run([sys.executable, "-m", "auricle", "tag", inputs[0], "--checkpoint", str(tiny_checkpoint),
                             "-o", "/dev/full"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == "auricle: error: /dev/full: cannot write (No space left on device)"


@pytest.mark.integration  # the CLI end to end for seconds
def test_embed_resume_refuses_a_folder_of_other_weights_of_the_same_name(inputs, tiny_checkpoint, tmp_path):
    """Resuming would leave two models' vectors side by side (it once re-embedded some, silently)."""
    import torch

    out = tmp_path / "emb"
    assert run("embed", inputs[0], "--checkpoint", tiny_checkpoint, "--output", out).exit_code == 0
    before = np.load(out / "a_sine440_1s.npz")["clip"]
    # Other weights under the same file name (a fine-tuning run written again to its folder).
    torch.manual_seed(0)
    retrained = tmp_path / "again" / tiny_checkpoint.name
    retrained.parent.mkdir()
    torch.save({key: value + 0.01 * torch.randn_like(value) if "blocks" in key else value
                for key, value in torch.load(tiny_checkpoint, weights_only=True).items()}, retrained)
    result = run("embed", *inputs[:2], "--checkpoint", retrained, "--output", out, "--resume")
    assert result.exit_code == 2
    assert f"{out}: holds embeddings by ced_tiny_perturbed (weights " in result.stderr
    assert "resume with the same model or write to another folder" in result.stderr
    assert np.array_equal(np.load(out / "a_sine440_1s.npz")["clip"], before)
    assert not (out / f"{Path(inputs[1]).stem}.npz").exists()
    # Without --resume the folder is the new model's.
    assert run("embed", inputs[0], "--checkpoint", retrained, "--output", out).exit_code == 0
    assert np.abs(np.load(out / "a_sine440_1s.npz")["clip"] - before).max() > 0


@pytest.mark.integration
def test_embed_resume_redoes_a_damaged_npz_and_knows_a_path_however_spelt(inputs, tiny_checkpoint, tmp_path,
                                                                           monkeypatch):
    out = tmp_path / "emb"
    assert run("embed", *inputs[:2], "--checkpoint", tiny_checkpoint, "--output", out).exit_code == 0
    first, second = (out / f"{Path(file).stem}.npz" for file in inputs[:2])
    first.write_bytes(first.read_bytes()[:1000])  # a copy cut short: it once stopped the run with a traceback
    second.write_bytes(b"")
    result = run("embed", *inputs[:2], "--checkpoint", tiny_checkpoint, "--output", out, "--resume")
    assert result.exit_code == 0, result.output
    assert "embedded 2 of 2 files" in result.stderr and "Traceback" not in result.output
    # The same files spelt otherwise (absolute, ./) are done, under their names.
    monkeypatch.chdir(Path(inputs[0]).parent)
    again = run("embed", str(Path(inputs[0]).resolve()), "./" + Path(inputs[1]).name, "--checkpoint",
                tiny_checkpoint, "--output", out, "--resume")
    assert "embedded 0 of 0 files" in again.stderr and "2 already done" in again.stderr
    assert sorted(path.name for path in out.iterdir()) == sorted([first.name, second.name, "index.csv"])


@pytest.mark.integration  # the CLI end to end for seconds
def test_tag_resume_refuses_other_options_and_knows_a_path_however_spelt(inputs, tiny_checkpoint, tmp_path,
                                                                         monkeypatch):
    out = tmp_path / "tags.jsonl"
    options = ["--checkpoint", tiny_checkpoint, "-k", "2", "-o", out]
    assert run("tag", *inputs[:2], *options).exit_code == 0
    assert json.loads(out.with_name("tags.jsonl.settings.json").read_text())["top_k"] == 2
    changed = run("tag", *inputs[:3], *options, "--resume", "--pool", "mean", "--events")
    assert changed.exit_code == 2
    assert changed.stderr.splitlines() == [
        f'auricle: error: {out}: written with other settings (pool "max" -> "mean"; events null -> '
        '{"median_filter": 1, "min_duration": 0.0, "min_gap": 0.0}); resume with the same model and options, '
        "or write to another file"]
    # A default shows as the value it had, not as the null recorded for it (it was "top_k null -> 3").
    defaults = tmp_path / "defaults.jsonl"
    assert run("tag", inputs[0], "--checkpoint", tiny_checkpoint, "-o", defaults).exit_code == 0
    changed = run("tag", *inputs[:2], "--checkpoint", tiny_checkpoint, "-o", defaults, "--resume", "-k", "3",
                  "--hop", "5")
    assert changed.exit_code == 2 and "(top_k 5 -> 3; hop 10.0 -> 5.0)" in changed.stderr, changed.stderr
    monkeypatch.chdir(Path(inputs[0]).parent)
    spelt = [str(Path(inputs[0]).resolve()), "./" + Path(inputs[1]).name, inputs[2]]
    resumed = run("tag", *spelt, *options, "--resume")
    assert resumed.exit_code == 0 and "tagged 1 of 1 files, 2 already done" in resumed.stderr
    assert len(out.read_text().splitlines()) == 3


def test_per_file_errors_stay_one_line_and_an_all_failed_npy_says_it_wrote_nothing(tiny_checkpoint, tmp_path):
    odd = tmp_path / "bad\nname.wav"  # a newline in a file's name split the error line in two
    odd.write_bytes(b"")
    result = run("embed", odd, "--checkpoint", tiny_checkpoint, "--output", tmp_path / "c.npy")
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [f"auricle: error: {tmp_path}/bad\\nname.wav: empty file (0 bytes)",
                                          f"auricle: embedded none of 1 files; {tmp_path / 'c.npy'} not written; "
                                          "1 failed"]
    assert not (tmp_path / "c.npy").exists()


@pytest.mark.integration
def test_npy_rows_follow_the_inputs_when_a_file_fails(inputs, tiny_checkpoint, tmp_path):
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF not audio")
    result = run("embed", inputs[0], broken, inputs[1], "--checkpoint", tiny_checkpoint, "--output", tmp_path / "c.npy")
    assert result.exit_code == 1 and "broken.wav" in result.stderr
    rows = np.load(tmp_path / "c.npy")
    assert rows.shape == (3, 192)
    assert np.isnan(rows[1]).all() and not np.isnan(rows[[0, 2]]).any()


@pytest.mark.integration
def test_csv_ledger_always_speaks_for_the_csv_beside_it(inputs, tiny_checkpoint, tmp_path):
    options = ["--checkpoint", tiny_checkpoint, "-f", "csv", "-k", "2"]
    out = tmp_path / "tags.csv"
    ledger = tmp_path / "tags.csv.done"
    assert run("tag", *inputs[:2], *options, "-o", out).exit_code == 0  # without --resume: no ledger
    assert not ledger.exists()
    # Seeded from the rows, less the last file's: without a ledger nothing says its rows were all written
    # (a stop or a full disk may have cut them), so it is tagged again.
    again = run("tag", *inputs[:2], *options, "-o", out, "--resume")
    assert "tagged 1 of 1 files, 1 already done" in again.stderr
    assert [json.loads(line)["file"] for line in ledger.read_text().splitlines()][:1] == inputs[:1]
    rows = out.read_text().splitlines()[1:]
    assert [row.split(",")[0] for row in rows] == [inputs[0]] * 2 + [inputs[1]] * 2  # none twice, none lost
    more = run("tag", *inputs[:3], *options, "-o", out, "--resume")
    assert more.exit_code == 0 and "tagged 1 of 1 files, 2 already done" in more.stderr
    assert sorted({row.split(",")[0] for row in out.read_text().splitlines()[1:]}) == sorted(inputs[:3])
    # A run without --resume writes the CSV anew: the old ledger goes with it.
    assert run("tag", inputs[3], *options, "-o", out).exit_code == 0
    assert not ledger.exists()
    # A ledger whose CSV is gone is stale: every file is tagged.
    ledger.write_text(json.dumps({"file": inputs[0], "model": "ced_tiny_perturbed"}) + "\n")
    out.unlink()
    fresh = run("tag", inputs[0], *options, "-o", out, "--resume")
    assert "tagged 1 of 1 files, 0 already done" in fresh.stderr
    assert {row.split(",")[0] for row in out.read_text().splitlines()[1:]} == {inputs[0]}


def test_resume_to_standard_output_is_refused(inputs, tiny_checkpoint, tmp_path):
    result = run("tag", inputs[0], "--checkpoint", tiny_checkpoint, "-f", "csv", "-o", "-", "--resume")
    assert result.exit_code == 2 and "--resume needs --output FILE" in result.stderr
    assert not Path("-.done").exists()


@pytest.mark.integration
def test_a_full_standard_output_is_one_line(inputs, tiny_checkpoint):
    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full (Linux) to fail a write with a full disk")
    with open("/dev/full", "w") as full:
        result = subprocess.run([sys.executable, "-m", "auricle", "tag", inputs[0], "--checkpoint",
                                 str(tiny_checkpoint)], stdout=full, stderr=subprocess.PIPE, text=True, timeout=300)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == "auricle: error: standard output: cannot write (No space left on device)"


def test_embed_refuses_an_output_that_names_another_kind_of_file(inputs, tiny_checkpoint, tmp_path):
    result = run("embed", inputs[0], "--checkpoint", tiny_checkpoint, "--output", tmp_path / "emb.json")
    assert result.exit_code == 2
    assert result.stderr == (f"auricle: error: {tmp_path / 'emb.json'}: embeddings are written to a folder (one "
                             ".npz per file), a .npz or a .npy file, not a .json file\n")
    assert not (tmp_path / "emb.json").exists()
    upper = run("embed", inputs[0], "--checkpoint", tiny_checkpoint, "--output", tmp_path / "CLIPS.NPY")
    assert upper.exit_code == 0, upper.output
    assert np.load(tmp_path / "CLIPS.NPY").shape == (1, 192)



# -- names: commands, models, models beside checkpoints ---------------------------------


def test_a_misspelt_command_gets_a_suggestion():
    result = CliRunner().invoke(cli, ["tags", "x.wav"])
    assert result.exit_code == 2 and "No such command 'tags'. Did you mean 'tag'?" in result.output


@pytest.mark.integration
def test_an_unknown_model_name_is_refused_before_torch_loads(inputs):
    from no_torch_support import without_torch

    # Where `import torch` fails, the name is still answered: it is checked against the registry (data) first.
    result = without_torch("tag", inputs[0], "--model", "ced-mni")
    assert result.returncode == 2, result.stderr
    assert "ced-mni: unknown model (did you mean 'ced-mini'" in result.stderr and "PyTorch" not in result.stderr


def test_engine_and_precision_choices_are_the_engine_vocabulary():
    from auricle.engines.config import ENGINES, PRECISIONS

    for name in ("tag", "embed", "evaluate", "listen", "serve", "probe"):
        params = {param.name: param for param in cli.get_command(click.Context(cli), name).params}
        assert tuple(params["engine"].type.choices) == ENGINES
        assert tuple(params["precision"].type.choices) == (*PRECISIONS, "auto")


@pytest.mark.integration
def test_help_names_the_engines_and_precisions_without_torch():
    from no_torch_support import NO_TORCH

    from auricle.engines.config import ENGINES, PRECISIONS

    # The vocabulary module itself, and `auricle tag --help` built from it, never import torch.
    script = NO_TORCH + """
import auricle.engines.config
sys.argv[0] = "auricle"
from auricle.cli import main
main()
"""
    result = subprocess.run([sys.executable, "-c", script, "tag", "--help"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"[{'|'.join(ENGINES)}]" in result.stdout
    assert f"[{'|'.join((*PRECISIONS, 'auto'))}]" in result.stdout


@pytest.mark.integration
def test_model_beside_a_checkpoint_must_name_its_size(inputs, tiny_checkpoint, mini_checkpoint):
    unknown = run("tag", inputs[0], "--checkpoint", tiny_checkpoint, "--model", "ced-mni")
    assert unknown.exit_code == 2 and "did you mean 'ced-mini'" in unknown.stderr  # was ignored: exit 0
    other = run("tag", inputs[0], "--checkpoint", mini_checkpoint, "--model", "ced-tiny")
    assert other.exit_code == 2 and other.stderr.splitlines() == [
        f"auricle: error: --model ced-tiny does not match --checkpoint {mini_checkpoint}: the checkpoint holds "
        "ced-mini, not ced-tiny; drop --model or name the checkpoint's model"]
    assert run("tag", inputs[0], "--checkpoint", mini_checkpoint, "--model", "mini").exit_code == 0
    assert run("tag", inputs[0], "--checkpoint", mini_checkpoint).exit_code == 0  # the default yields, as before


# -- files cut short and clips under one patch: used, flagged, warned about -------------


def _cut_wav(folder: Path, name: str = "half.wav", seconds: float = 5.0) -> Path:
    """A WAV whose header promises ``seconds`` and which holds half of them."""
    whole = folder / f"whole_{name}"
    sf.write(whole, (0.3 * np.sin(np.arange(int(16000 * seconds)) / 5)).astype(np.float32), 16000)
    data = whole.read_bytes()
    (folder / name).write_bytes(data[: len(data) // 2])
    return folder / name


@pytest.mark.integration
def test_tag_says_a_file_was_cut_short(tiny_checkpoint, tmp_path):
    cut = _cut_wav(tmp_path)
    out = tmp_path / "tags.jsonl"
    result = run("tag", cut, tmp_path / "whole_half.wav", "--checkpoint", tiny_checkpoint, "-o", out)
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("auricle: warning:")]
    assert warnings == [f"auricle: warning: {cut}: truncated: the header declares 5.000 s, only 2.499 s could be "
                        "decoded; what there is was used"]
    records = {Path(r["file"]).name: r for r in map(json.loads, out.read_text().splitlines())}
    assert records["half.wav"]["truncated"] is True and records["half.wav"]["declared_duration"] == 5.0
    assert records["whole_half.wav"]["truncated"] is False and "declared_duration" not in records["whole_half.wav"]
    strict = run("tag", cut, "--checkpoint", tiny_checkpoint, "--strict")
    assert strict.exit_code == 1 and "1 truncated or too short (--strict)" in strict.stderr
    assert "half.wav" in strict.stdout  # tagged all the same


@pytest.mark.integration
def test_tag_csv_has_a_truncated_column_and_resumes_an_older_csv(tiny_checkpoint, tmp_path):
    cut = _cut_wav(tmp_path)
    whole = tmp_path / "whole_half.wav"
    out = tmp_path / "tags.csv"
    assert run("tag", cut, "--checkpoint", tiny_checkpoint, "-k", "1", "-o", out).exit_code == 0
    rows = list(csv.reader(out.open()))
    assert rows[0][-1] == "truncated" and rows[1][-1] == "true"
    # A CSV an earlier version began (no truncated column) is resumed in its own layout.
    older = tmp_path / "older.csv"
    older.write_text("file,rank,index,mid,label,score\n" + ",".join(rows[1][:-1]) + "\n")
    result = run("tag", cut, whole, "--checkpoint", tiny_checkpoint, "-k", "1", "-o", older, "--resume")
    assert result.exit_code == 0, result.output
    rows = list(csv.reader(older.open()))
    assert [len(row) for row in rows] == [6, 6, 6] and rows[2][0] == str(whole)


@pytest.mark.integration
def test_embed_says_a_file_was_cut_short(tiny_checkpoint, tmp_path):
    cut = _cut_wav(tmp_path)
    result = run("embed", cut, "--checkpoint", tiny_checkpoint, "--output", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert f"auricle: warning: {cut}: truncated: the header declares 5.000 s" in result.stderr
    assert np.load(tmp_path / "out" / "half.npz")["truncated"]
    assert list(csv.reader((tmp_path / "out" / "index.csv").open()))[1][-1] == "true"
    strict = run("embed", cut, "--checkpoint", tiny_checkpoint, "--output", tmp_path / "strict", "--strict")
    assert strict.exit_code == 1 and "(--strict)" in strict.stderr


@pytest.mark.integration
def test_api_results_say_a_file_was_cut_short(tiny_checkpoint, tmp_path):
    import auricle

    cut = _cut_wav(tmp_path)
    model = auricle.load_model(checkpoint=tiny_checkpoint)
    tags = model.tag(cut)
    assert tags.truncated and tags.declared_duration == 5.0 and tags.to_dict()["truncated"] is True
    assert not model.tag(tmp_path / "whole_half.wav").truncated
    embeddings = model.embed(cut)
    assert embeddings.truncated and embeddings.to_dict()["declared_duration"] == 5.0
    assert not model.embed(tmp_path / "whole_half.wav").truncated


@pytest.mark.integration
def test_clip_under_one_patch_is_tagged_with_a_warning(tiny_checkpoint, tmp_path):
    import auricle

    short = tmp_path / "blip.wav"
    sf.write(short, np.full(160, 0.1, dtype=np.float32), 16000)  # 0.01 s
    result = run("tag", short, "--checkpoint", tiny_checkpoint, "-f", "jsonl")
    assert result.exit_code == 0, result.output
    assert (f"auricle: warning: {short}: 0.010 s is shorter than one patch (0.15 s); scored zero-padded, "
            "its scores say little") in result.stderr.splitlines()
    assert json.loads(result.stdout)["too_short"] is True
    assert run("tag", short, "--checkpoint", tiny_checkpoint, "--strict").exit_code == 1
    model = auricle.load_model(checkpoint=tiny_checkpoint)
    assert model.tag(short).too_short and not model.tag(tmp_path / "blip.wav", window=10.0).truncated
    assert not model.tag(np.zeros(2400, dtype=np.float32), sample_rate=16000).too_short


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.mark.integration
def test_a_rerun_removes_what_a_killed_run_was_writing_but_not_a_live_runs(inputs, tiny_checkpoint, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    name = Path(inputs[0]).stem + ".npz"
    stale, live = out / f"{name}.{_dead_pid()}.tmp", out / f"index.csv.{os.getppid()}.tmp"
    other = out / f"notes.txt.{_dead_pid()}.tmp"  # not an output of this run: not ours to judge
    for path in (stale, live, other):
        path.write_bytes(b"half an npz")
    result = run("embed", inputs[0], "--checkpoint", tiny_checkpoint, "--output", out, "--resume")
    assert result.exit_code == 0, result.output
    assert not stale.exists() and live.exists() and other.exists()
    assert sorted(p.name for p in out.glob("*.tmp")) == sorted([live.name, other.name])
    # tag's whole-at-the-end outputs too
    leftover = tmp_path / f"tags.json.{_dead_pid()}.tmp"
    leftover.write_text("[")
    assert run("tag", inputs[0], "--checkpoint", tiny_checkpoint, "-o", tmp_path / "tags.json").exit_code == 0
    assert not leftover.exists()


def test_tag_says_in_its_own_words_what_the_mpeg_decoder_printed(tiny_checkpoint, tmp_path, capfd):
    from test_audio import _damaged_mp3

    path = _damaged_mp3(tmp_path / "damaged.mp3")
    result = run("tag", path, "--checkpoint", tiny_checkpoint, "-k", "1")
    assert result.exit_code == 0, result.output
    assert (f"auricle: warning: {path}: the MPEG decoder met damaged or inconsistent data (libmpg123: Note: "
            "Illegal Audio-MPEG-Header") in result.stderr
    assert "Trying to resync" not in capfd.readouterr().err  # nothing unprefixed from the C library
