"""The evaluation tables through Python (``auricle.downstream.eval_tables``): what ``auricle evaluate`` prints
and writes as CSV, made from a report built without the CLI."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from auricle.cli import cli
from auricle.downstream import evaluate as ev
from auricle.downstream.eval_tables import EVENT_CSV_HEADER, TAGGING_CSV_HEADER, report_csv, report_table
from auricle.io.datasets import read_dataset


def run(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def tagging_case(tmp_path):
    (tmp_path / "labels.csv").write_text("file,labels\na.wav,Dog\nb.wav,Cat\nc.wav,Dog\nd.wav,Cat\n")
    scores = {"a.wav": 0.9, "b.wav": 0.8, "c.wav": 0.3, "d.wav": 0.1}
    records = [{"file": f"somewhere/{name}", "duration": 1.0, "tags": [{"label": "Dog", "mid": "", "score": score}],
                "windows": []} for name, score in scores.items()]
    (tmp_path / "tags.json").write_text(json.dumps(records))
    return tmp_path


def test_a_tagging_report_made_in_python_has_the_commands_table_and_csv(tagging_case):
    labels, predictions = tagging_case / "labels.csv", tagging_case / "tags.json"
    dataset = read_dataset(labels, check_files=False)
    found, failures = ev.read_matched_predictions(predictions, dataset.files, dataset.classes)
    assert [p.file for p in found] == dataset.files and failures == []
    report = ev.dataset_tagging_report(dataset, found, f"predictions {predictions}", failures)

    table, table_csv = report_table(report), report_csv(report)
    assert table.splitlines()[0] == f"predictions {predictions}: 4 files"
    assert table.splitlines()[-1] == "  mAP 0.667   mean AUC 0.625   d' 0.451"
    assert table_csv.splitlines()[0] == ",".join(TAGGING_CSV_HEADER)
    dog = next(line for line in table_csv.splitlines() if line.startswith("Dog,"))
    assert dog.split(",")[1] == "2" and float(dog.split(",")[2]) == pytest.approx(5 / 6)

    shown = run("evaluate", labels, "--predictions", predictions, "--csv", tagging_case / "report.csv")
    assert shown.exit_code == 0, shown.output
    assert shown.stdout == table + "\n"
    assert (tagging_case / "report.csv").read_text() == table_csv


def test_an_event_report_made_in_python_has_the_commands_table_and_csv(tmp_path):
    (tmp_path / "ref.csv").write_text("file,onset,offset,label\na.wav,1.0,3.0,Dog\na.wav,5.0,6.0,Dog\n"
                                      "a.wav,2.5,4.5,Cat\n")
    prediction = {
        "schema_version": 1, "file": "a.wav", "duration": 10.0, "model": "m", "pool": "max", "tags": [],
        "windows": [{"start": 0.0, "end": 5.0, "tags": [{"label": "Dog", "mid": "", "score": 0.9}]},
                    {"start": 5.0, "end": 10.0, "tags": [{"label": "Cat", "mid": "", "score": 0.4}]}],
        "events": [{"label": "Dog", "mid": "", "index": 0, "onset": 1.2, "offset": 3.6, "max_score": 1,
                    "mean_score": 1}],
    }
    (tmp_path / "pred.jsonl").write_text(json.dumps(prediction) + "\n")
    reference, files, classes = ev.read_strong_labels(tmp_path / "ref.csv", None)
    found, failures = ev.read_matched_predictions(tmp_path / "pred.jsonl", files, classes)
    report = ev.event_report(reference, found, classes, ev.EventSettings(psds=False),
                             f"predictions {tmp_path / 'pred.jsonl'}", failures)

    table = report_table(report)
    assert "segment-based (1 s): F1" in table and "event-based (collar 200 ms / 20%)" in table
    assert report_csv(report).splitlines()[0] == ",".join(EVENT_CSV_HEADER)
    shown = run("evaluate", tmp_path / "ref.csv", "--events", "--predictions", tmp_path / "pred.jsonl", "--no-psds",
                "--csv", tmp_path / "report.csv")
    assert shown.exit_code == 0, shown.output
    assert shown.stdout == table + "\n"
    assert (tmp_path / "report.csv").read_text() == report_csv(report)


def test_undefined_values_read_as_a_dash_in_the_table_and_empty_in_the_csv():
    import numpy as np

    # No positive Cat file: its AP and AUC are undefined.
    report = ev.tagging_report(np.array([[1, 0], [0, 0]]), np.array([[0.9, 0.2], [0.1, 0.3]]), ["Dog", "Cat"], "m")
    cat = next(line for line in report_table(report).splitlines() if line.strip().startswith("Cat"))
    assert cat.split()[2:] == ["-", "-", "-"]
    assert report_csv(report).splitlines()[2] == "Cat,0,,,"
