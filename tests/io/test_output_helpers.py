"""The output helpers that left the CLI, through Python: a resumable tag output's settings and CSV layout
(``auricle.io.tag_resume``), and the lines ``auricle listen`` prints (``auricle.io.live_lines``)."""

from __future__ import annotations

import io
import json

import pytest

from auricle.errors import OutputError
from auricle.inference.live import EventStart, LiveReport
from auricle.inference.results import Event, Tag
from auricle.io.live_lines import LiveLineWriter, latency_summary
from auricle.io.tag_resume import appended_csv_layout, effective_tag_settings, tag_run_settings
from auricle.io.writers import EVENT_CSV_HEADER, TAG_CSV_HEADER, TAG_CSV_HEADER_V1
from auricle.listen import TimedReport


def test_a_csv_of_the_other_kind_is_refused_and_an_older_one_continues_without_truncated(tmp_path):
    events = tmp_path / "events.csv"
    events.write_text(",".join(EVENT_CSV_HEADER) + "\n")
    with pytest.raises(OutputError, match=r"events.csv: holds events, not clip tags; resume with the same --events"):
        appended_csv_layout(events, events=False)
    assert appended_csv_layout(events, events=True) is True
    older = tmp_path / "older.csv"
    older.write_text(",".join(TAG_CSV_HEADER_V1) + "\n")
    assert appended_csv_layout(older, events=False) is False
    current = tmp_path / "tags.csv"
    current.write_text(",".join(TAG_CSV_HEADER) + "\n")
    assert appended_csv_layout(current, events=False) is True
    assert appended_csv_layout(tmp_path / "absent.csv", events=False) is True
    other = tmp_path / "other.csv"
    other.write_text("a,b,c\n")
    with pytest.raises(OutputError, match=r"holds another table \(a,b,c\)"):
        appended_csv_layout(other, events=True)


def test_recorded_settings_are_json_values_and_compare_as_they_acted(tiny_model):
    options = tiny_model.tag_options(top_k=None, threshold=None, window=5.0)
    settings = tag_run_settings(tiny_model, options)
    assert settings == json.loads(json.dumps(settings))  # tuples as lists, as they read back
    assert settings["model"] == tiny_model.name and len(settings["weights"]) == 16
    assert settings["window"] == 5.0
    acted = effective_tag_settings({**settings, "top_k": None, "threshold": None, "profile": None, "hop": None})
    assert acted["top_k"] == 5 and acted["hop"] == acted["window"] == 5.0


def _report() -> TimedReport:
    report = LiveReport(start=0.0, end=2.0, tags=(Tag(0, "/m/09x0r", "Speech", 0.81234),),
                        started=(EventStart("Speech", "/m/09x0r", 0, 1.5, 0.8),),
                        ended=(Event("Dog", "/m/0bt9lr", 74, 0.2, 1.0, 0.9, 0.7),))
    return TimedReport(report, compute_seconds=0.0123, delay_seconds=0.0456)


def test_live_lines_as_text_and_as_json_lines():
    text = io.StringIO()
    LiveLineWriter(text, "text", windows=True).report(_report())
    assert text.getvalue().splitlines() == [
        "[    0.00 -     2.00]  Speech 0.81",
        "     1.00 s  end    Dog  (0.20-1.00 s, max 0.90, mean 0.70)",  # ends before starts
        "     1.50 s  start  Speech  (score 0.80)",
    ]
    lines = io.StringIO()
    LiveLineWriter(lines, "jsonl").report(_report())
    records = [json.loads(line) for line in lines.getvalue().splitlines()]
    assert [r["type"] for r in records] == ["end", "start"]  # no window line without windows=True
    assert records[0]["reported_at"] == 2.0 and records[0]["compute_ms"] == 12.3 and records[1]["delay_ms"] == 45.6
    assert all(r["schema_version"] >= 1 for r in records)


def test_latency_summary_says_the_hop_bound():
    line = latency_summary([0.01, 0.03], [0.02, 0.04], 12.0, 0.5)
    assert line.startswith("2 windows over 12.00 s; model time per window p50 20.0 ms, max 30.0 ms;")
    assert line.endswith("(sound-to-report latency is at most the hop, 0.5 s, plus this delay)")
