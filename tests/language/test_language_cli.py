"""``auricle describe`` and ``auricle ask`` with a tiny MiDashengLM folder (the official layout, random weights)."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

pytest.importorskip("transformers", reason="MiDashengLM needs the language extra (transformers)")

from language_support import write_model_folder  # noqa: E402

from auricle.cli import cli  # noqa: E402
from auricle.language.prompts import PRESETS  # noqa: E402


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return str(write_model_folder(tmp_path_factory.mktemp("lm")))


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    root = tmp_path_factory.mktemp("audio")
    rng = np.random.default_rng(0)
    sf.write(root / "a.wav", rng.standard_normal(16_000).astype(np.float32) * 0.1, 16_000)
    sf.write(root / "b.wav", rng.standard_normal(40_000).astype(np.float32) * 0.1, 16_000)
    sf.write(root / "silent.wav", np.zeros(16_000, np.float32), 16_000)
    return root


def _run(*args):
    return CliRunner().invoke(cli, list(map(str, args)))


def test_describe_writes_jsonl_and_goes_on_past_a_bad_file(folder, recordings, tmp_path):
    out = tmp_path / "out.jsonl"
    result = _run("describe", recordings, "--checkpoint", folder, "--max-new-tokens", 4, "-o", out)
    assert result.exit_code == 1
    assert f"auricle: error: {recordings / 'silent.wav'}: silent (every sample is zero)" in result.stderr
    assert "described 2 of 3 files; 1 failed" in result.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    errors = [line for line in lines if "error" in line]
    assert len(errors) == 1 and errors[0]["file"].endswith("silent.wav")
    assert sorted(line["file"].rsplit("/", 1)[1] for line in lines) == ["a.wav", "b.wav", "silent.wav"]
    described = [line for line in lines if "error" not in line]
    assert all(line["prompt"] == PRESETS["caption"] and 1 <= line["tokens"] <= 4 for line in described)


def test_resume_describes_only_what_is_left(folder, recordings, tmp_path):
    out = tmp_path / "out.jsonl"
    _run("describe", recordings / "a.wav", "--checkpoint", folder, "--max-new-tokens", 3, "-o", out)
    first = out.read_text()
    result = _run("describe", recordings / "a.wav", recordings / "b.wav", "--checkpoint", folder,
                  "--max-new-tokens", 3, "-o", out, "--resume")
    assert result.exit_code == 0, result.stderr
    assert "described 1 of 1 files, 1 already done" in result.stderr
    assert out.read_text().startswith(first) and len(out.read_text().splitlines()) == 2
    again = _run("describe", recordings / "a.wav", "--model", "nothing-to-load", "--max-new-tokens", 3, "-o", out,
                 "--resume")
    assert again.exit_code == 0 and "described 0 of 0 files, 1 already done" in again.stderr
    other = _run("describe", recordings / "silent.wav", "--checkpoint", folder, "--max-new-tokens", 5, "-o", out,
                 "--resume")
    assert other.exit_code == 2 and "written with other settings (max_new_tokens 3 -> 5)" in other.stderr


def test_csv_rows_are_segments_and_json_is_one_array(folder, recordings, tmp_path):
    out = tmp_path / "out.csv"
    result = _run("describe", recordings / "b.wav", "--checkpoint", folder, "--max-new-tokens", 2, "--segment", 1,
                  "-o", out)
    assert result.exit_code == 0, result.stderr
    rows = list(csv.reader(io.StringIO(out.read_text())))
    assert rows[0] == ["file", "start", "end", "text"]
    assert [(row[1], row[2]) for row in rows[1:]] == [("0.000", "1.000"), ("1.000", "2.000"), ("2.000", "2.500")]
    shown = _run("describe", recordings / "a.wav", "--checkpoint", folder, "--max-new-tokens", 2, "-f", "json")
    assert shown.exit_code == 0 and json.loads(shown.stdout)[0]["segments"][0]["end"] == 1.0


def test_ask_takes_the_last_argument_as_the_question(folder, recordings):
    result = _run("ask", recordings / "a.wav", recordings / "b.wav", "what is this sound", "--checkpoint", folder,
                  "--max-new-tokens", 2, "-f", "jsonl")
    assert result.exit_code == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["prompt"] for line in lines] == ["what is this sound"] * 2


def test_table_output_and_streaming_on_a_terminal(folder, recordings, monkeypatch):
    table = _run("describe", recordings / "a.wav", "--checkpoint", folder, "--max-new-tokens", 3, "-p", "music")
    assert table.exit_code == 0 and table.stdout.startswith(f"{recordings / 'a.wav'}  (1.00 s, ")
    from auricle.cli import describe

    monkeypatch.setattr(describe, "_terminal", lambda: True)
    streamed = _run("describe", recordings / "a.wav", "--checkpoint", folder, "--max-new-tokens", 3, "-p", "music")
    assert streamed.exit_code == 0
    text = table.stdout.splitlines()[1].strip()
    assert streamed.stdout == text + "\n"


def test_bad_options_are_one_line(folder, recordings, tmp_path):
    assert "0<x<=30" in _run("describe", recordings / "a.wav", "--checkpoint", folder, "--segment", 31).stderr
    missing = _run("describe", recordings / "a.wav", "--checkpoint", tmp_path)
    assert missing.exit_code == 2 and missing.stderr.startswith("auricle: error: ")
    assert len(missing.stderr.strip().splitlines()) == 1
    tagger = _run("describe", recordings / "a.wav", "--model", "ced-mini")
    assert tagger.exit_code == 2 and "ced-mini: not an audio-language model" in tagger.stderr
    offline = CliRunner(env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)}).invoke(
        cli, ["describe", str(recordings / "a.wav")])
    assert offline.exit_code == 2 and "midashenglm-7b: weights are not in the local cache" in offline.stderr


@pytest.mark.parametrize("command", ["tag", "embed"])
def test_other_commands_refuse_a_language_model_before_loading_it(folder, recordings, tmp_path, command):
    """It loaded, and `auricle tag` then failed with an AttributeError traceback."""
    out = tmp_path / ("out.jsonl" if command == "tag" else "out.npz")
    result = _run(command, recordings / "a.wav", "--checkpoint", folder, "-o", out)
    assert result.exit_code == 2
    assert f"{folder}: an audio-language model (MiDashengLM); it works with `auricle describe` and `auricle ask`, " \
           f"not `auricle {command}`" in result.stderr
    named = _run(command, recordings / "a.wav", "--model", "midashenglm-7b", "-o", out)
    assert named.exit_code == 2 and "midashenglm-7b: an audio-language model" in named.stderr


def test_bad_input_is_one_line_naming_the_file_and_the_batch_goes_on(folder, recordings, tmp_path):
    """Issue 28 item 8: silent and too-short audio, an empty question, more tokens than the context."""
    short = tmp_path / "click.wav"
    sf.write(short, np.ones(800, np.float32) * 0.1, 16_000)
    files = [recordings / "silent.wav", short, recordings / "a.wav"]
    result = _run("describe", *files, "--checkpoint", folder, "--max-new-tokens", 2, "-f", "jsonl")
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("auricle: error: ")]
    assert errors == [f"auricle: error: {recordings / 'silent.wav'}: silent (every sample is zero); nothing to describe",
                      f"auricle: error: {short}: too short to describe (0.050 s; at least 0.19 s is needed)"]
    assert json.loads(result.stdout.splitlines()[-1])["file"] == str(recordings / "a.wav")
    for question in ("", "   "):
        empty = _run("ask", recordings / "a.wav", question, "--checkpoint", folder)
        assert empty.exit_code == 2 and empty.stderr == "auricle: error: the question is empty\n"
    long = _run("ask", recordings / "a.wav", recordings / "b.wav", "dog " * 300, "--checkpoint", folder, "-f", "jsonl")
    assert long.exit_code == 1 and "described 0 of 2 files; 2 failed" in long.stderr
    for name in ("a.wav", "b.wav"):
        assert f"auricle: error: {recordings / name}: the prompt is " in long.stderr
    assert long.stderr.count("but the model's context is 256; shorten the question or the segments") == 2
