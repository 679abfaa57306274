"""A diary of a long recording: a tagger's events choose the segments; the summary pass; both through
the Python API and ``auricle describe --segments events --summary`` (tiny MiDashengLM, hand-set burst tagger)."""

from __future__ import annotations

import csv
import io
import json
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

pytest.importorskip("transformers", reason="MiDashengLM needs the language extra (transformers)")

import auricle  # noqa: E402
from auricle.cli import cli  # noqa: E402
from auricle.errors import AudioError, OptionError  # noqa: E402
from auricle.language.diary import EventSegmentation, Span, merge_events, summary_question  # noqa: E402
from language_support import folder, model  # noqa: E402,F401  (fixtures)
from serve_support import burst_checkpoint, burst_signal  # noqa: E402

#: The burst detector's classes as a diary sees them: its "quiet" class is AudioSet's Silence, never a segment.
LABELS = ("Burst", "Silence")
ONSET, OFFSET, TOTAL = 25.0, 35.0, 60.0


@pytest.fixture(scope="module")
def tagger_path(tmp_path_factory):
    return burst_checkpoint(tmp_path_factory.mktemp("tagger") / "burst.safetensors", labels=LABELS)


@pytest.fixture(scope="module")
def tagger(tagger_path):
    return auricle.load_model(checkpoint=tagger_path)


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    root = tmp_path_factory.mktemp("audio")
    sf.write(root / "hour.wav", burst_signal(TOTAL, ONSET, OFFSET), 16_000, subtype="FLOAT")
    sf.write(root / "calm.wav", burst_signal(20.0, 30.0, 30.0, seed=3), 16_000, subtype="FLOAT")  # never loud
    return root


def event(label, onset, offset):
    return SimpleNamespace(label=label, onset=onset, offset=offset)


def test_events_merge_when_close_are_cut_to_the_segment_length_and_skip_silence():
    events = [event("Dog", 1.0, 2.0), event("Bark", 3.5, 4.0), event("Silence", 5.0, 50.0),
              event("Speech", 10.0, 75.0), event("Door", 90.0, 90.1)]
    spans = merge_events(events, duration=100.0, max_seconds=30.0, min_seconds=1.0, merge_gap=2.0)
    assert [(round(s.start, 2), round(s.end, 2)) for s in spans] == [
        (1.0, 4.0), (10.0, 31.67), (31.67, 53.33), (53.33, 75.0), (89.55, 90.55)]
    assert [s.labels for s in spans] == [("Dog", "Bark"), ("Speech",), ("Speech",), ("Speech",), ("Door",)]
    apart = merge_events(events[:2], duration=100.0, max_seconds=30.0, min_seconds=1.0, merge_gap=1.0)
    assert len(apart) == 2
    edge = merge_events([event("Door", 0.0, 0.05)], duration=0.5, max_seconds=30.0, min_seconds=1.0)
    assert [(s.start, s.end) for s in edge] == [(0.0, 0.5)]  # widened, but never past the recording
    assert merge_events([event("Silence", 0, 10)], 10.0, 30.0, 1.0) == []


def test_describe_takes_the_segments_it_is_given(model):
    audio = (np.random.default_rng(1).standard_normal(48_000) * 0.1).astype(np.float32)
    result = model.describe(audio, max_new_tokens=3, segments=[Span(0.5, 1.5, ("Dog",)), (2.0, 2.05)])
    # A stretch too short for one audio token (0.19 s) is widened about its middle.
    assert [(s.start, s.end, s.labels) for s in result.segments] == [
        (0.5, 1.5, ("Dog",)), (pytest.approx(1.93), pytest.approx(2.12), ())]
    alone = model.describe(audio[8_000:24_000], max_new_tokens=3)
    assert result.segments[0].tokens == alone.segments[0].tokens  # the same as describing that stretch alone
    assert result.segmentation == "given" and result.to_dict()["segments"][0]["labels"] == ["Dog"]
    cut = model.describe(audio, max_new_tokens=2, segment_seconds=1.0, segments=[(0.0, 2.5)])
    assert [(s.start, s.end) for s in cut.segments] == [(0.0, 0.8333125), (0.8333125, 1.6666875), (1.6666875, 2.5)]
    with pytest.raises(OptionError, match="after the end"):
        model.describe(audio, segments=[(5.0, 6.0)], name="clip.wav")
    nothing = model.describe(audio, segments=[])
    assert nothing.segments == () and nothing.text == ""


@pytest.mark.integration
def test_a_diary_describes_only_where_the_tagger_hears_something(model, tagger, recordings):
    diary = model.diary(recordings / "hour.wav", tagger, max_new_tokens=3, segment_seconds=10.0)
    assert diary.segmentation == "events" and 2 <= len(diary.segments) <= 3
    assert all(s.labels == ("Burst",) and s.end - s.start <= 10.0 for s in diary.segments)
    assert all(a.end == b.start for a, b in zip(diary.segments, diary.segments[1:]))  # one stretch, cut
    first, last = diary.segments[0].start, diary.segments[-1].end
    # 10 s windows every 2 s: an event is where most windows covering a moment hold the burst.
    assert ONSET - 10 <= first <= ONSET and OFFSET <= last <= OFFSET + 10
    fixed = model.describe(recordings / "hour.wav", max_new_tokens=3, segment_seconds=10.0)
    assert len(fixed.segments) == 6
    calm = model.diary(recordings / "calm.wav", tagger, max_new_tokens=3)
    assert calm.segments == ()
    finer = model.diary(recordings / "hour.wav", tagger, max_new_tokens=2,
                        options=EventSegmentation(window=2.0, hop=1.0))
    assert len(finer.segments) == 1 and ONSET - 2 <= finer.segments[0].start and finer.segments[0].end <= OFFSET + 2
    with pytest.raises(OptionError, match="not a tagger"):
        model.diary(recordings / "hour.wav", model)
    asked = model.diary(recordings / "hour.wav", tagger, "music", max_new_tokens=2, literal=True)
    assert asked.prompt == "music" and asked.segments
    with pytest.raises(OptionError, match="the question is empty"):
        model.diary(recordings / "hour.wav", None, " ", literal=True)  # before any tagging


def test_the_summary_is_one_more_pass_over_the_segment_texts(model, tagger, recordings):
    diary = model.diary(recordings / "hour.wav", tagger, max_new_tokens=3, segment_seconds=10.0, summary=True)
    question = summary_question(diary.segments)
    assert "[0:" in question and diary.segments[0].text.strip() in question
    assert diary.summary.tokens == model.complete(question, max_new_tokens=3).tokens
    assert diary.to_dict()["summary"] == {"text": diary.summary.text, "tokens": list(diary.summary.tokens)}
    assert {"tag", "encode", "generate", "summary", "total"} <= set(diary.timing)
    calm = model.diary(recordings / "calm.wav", tagger, summary=True)
    assert calm.summary.text == "" and calm.summary.tokens == ()  # nothing happened: nothing to summarise


def test_more_tokens_than_the_context_is_one_line_naming_the_file(model, recordings):
    with pytest.raises(AudioError, match=r"hour\.wav: the prompt is \d+ tokens but the model's context is 256"):
        model.ask(recordings / "hour.wav", "dog " * 300)
    # An answer that would not fit is cut at the context, not run past it.
    long = model.describe(recordings / "hour.wav", max_new_tokens=4000, segment_seconds=30.0)
    assert all(s.prompt_tokens + len(s.tokens) <= 256 for s in long.segments)


def _run(*args):
    return CliRunner().invoke(cli, list(map(str, args)))


@pytest.mark.integration
def test_describe_segments_events_with_a_summary_in_each_format(folder, tagger_path, recordings, tmp_path):
    options = ["--checkpoint", folder, "--max-new-tokens", 3, "--segment", 10, "--segments", "events",
               "--tagger-checkpoint", tagger_path, "--summary"]
    out = tmp_path / "diary.jsonl"
    result = _run("describe", recordings / "hour.wav", *options, "-o", out)
    assert result.exit_code == 0, result.stderr
    other = _run("describe", recordings, *options[:-1], "-o", out, "--resume")
    assert other.exit_code == 2 and "written with other settings (summary true -> null)" in other.stderr
    again = _run("describe", recordings, *options, "-o", out, "--resume")
    assert again.exit_code == 0 and "described 1 of 1 files, 1 already done" in again.stderr
    records = {json.loads(line)["file"].rsplit("/", 1)[1]: json.loads(line) for line in out.read_text().splitlines()}
    hour, calm = records["hour.wav"], records["calm.wav"]
    assert hour["segmentation"] == "events" and 2 <= len(hour["segments"]) <= 3
    assert all(segment["labels"] == ["Burst"] for segment in hour["segments"])
    assert calm["segments"] == [] and calm["summary"] == {"text": "", "tokens": []}
    assert set(hour["summary"]) == {"text", "tokens"}
    settings = json.loads((tmp_path / "diary.jsonl.settings.json").read_text())
    assert settings["segments"] == "events" and settings["tagger"] == "burst-detector" and settings["summary"] is True

    table = _run("describe", recordings / "hour.wav", *options)
    lines = table.stdout.splitlines()
    segments = len(hour["segments"])
    assert table.exit_code == 0 and "[Burst]" in lines[1] and lines[1 + segments].startswith("  summary: ")
    rows = list(csv.reader(io.StringIO(_run("describe", recordings / "hour.wav", *options, "-f", "csv").stdout)))
    assert rows[0] == ["file", "start", "end", "text"] and len(rows) == 1 + segments + 1
    assert rows[-1][1:3] == ["", ""] and rows[-1][3] == hour["summary"]["text"]


def test_events_need_a_tagger(folder, recordings):
    result = _run("describe", recordings / "hour.wav", "--checkpoint", folder, "--segments", "events",
                  "--tagger-checkpoint", folder)
    assert result.exit_code == 2
    assert result.stderr == f"auricle: error: {folder}: not a tagger (--segments events needs a model with classes, " \
                            "such as ced-mini)\n"
    named = _run("describe", recordings / "hour.wav", "--checkpoint", folder, "--segments", "events", "--tagger",
                 "midashenglm-7b")
    assert named.exit_code == 2 and "midashenglm-7b: not a tagger" in named.stderr
