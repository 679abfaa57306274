"""``auricle evaluate`` through the CLI: tagging and event metrics, from a model or from earlier predictions."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from auricle.cli import cli
from auricle.models.ced import CED, CEDConfig
from auricle.models.checkpoints import save_checkpoint

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def two_class_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    network = CED(CEDConfig(embed_dim=32, num_heads=1, depth=1, num_classes=2))
    path = tmp_path_factory.mktemp("eval") / "two.safetensors"
    save_checkpoint(network, path, labels=["Cat", "Dog"], name="two")
    return path


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    folder = tmp_path_factory.mktemp("audio")
    rng = np.random.default_rng(0)
    for number in range(4):
        samples = rng.normal(0, 0.05, 16000 * 3).astype(np.float32)
        start = 8000 * number  # a tone in a different second of each recording
        samples[start : start + 16000] += np.sin(np.arange(16000) * 0.05 * (number + 1)).astype(np.float32)
        sf.write(folder / f"r{number}.wav", samples, 16000)
    (folder / "labels.csv").write_text("file,labels\nr0.wav,Dog\nr1.wav,Cat\nr2.wav,Dog;Cat\nr3.wav,Cat\n")
    (folder / "events.csv").write_text(
        "file,onset,offset,label\nr0.wav,0.0,1.0,Dog\nr1.wav,0.5,1.5,Cat\nr2.wav,1.0,2.0,Dog\nr3.wav,1.0,2.5,Cat\n"
    )
    return folder


# -- tagging -----------------------------------------------------------------------------
@pytest.mark.integration
def test_tagging_metrics_by_hand_from_a_predictions_file(tmp_path):
    (tmp_path / "labels.csv").write_text("file,labels\na.wav,Dog\nb.wav,Cat\nc.wav,Dog\nd.wav,Cat\n")
    scores = {"a.wav": 0.9, "b.wav": 0.8, "c.wav": 0.3, "d.wav": 0.1}
    records = [
        {"file": f"somewhere/{name}", "duration": 1.0, "tags": [{"label": "Dog", "mid": "", "score": score}],
         "windows": []}
        for name, score in scores.items()
    ]
    (tmp_path / "tags.json").write_text(json.dumps(records))
    result = run("evaluate", tmp_path / "labels.csv", "--predictions", tmp_path / "tags.json",
                 "--json", tmp_path / "report.json", "--csv", tmp_path / "report.csv", "--plot", tmp_path / "ap.png")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    dog = next(c for c in report["classes"] if c["label"] == "Dog")
    # Dog ranking + - + -: AP (1 + 2/3) / 2, AUC 3/4, d' = sqrt(2) * Phi^-1(0.75).
    assert dog["average_precision"] == pytest.approx(0.833333, abs=1e-6)
    assert dog["auc"] == pytest.approx(0.75)
    assert dog["d_prime"] == pytest.approx(0.953872, abs=1e-6)
    cat = next(c for c in report["classes"] if c["label"] == "Cat")
    # Cat was never reported: every score 0, a tie -> AP = prevalence, AUC 1/2.
    assert cat["average_precision"] == pytest.approx(0.5) and cat["auc"] == pytest.approx(0.5)
    assert report["mAP"] == pytest.approx((0.833333 + 0.5) / 2, abs=1e-6)
    assert report["d_prime"] == pytest.approx(np.sqrt(2) * 0.318639, abs=1e-5)  # from mean AUC 0.625
    assert "Dog" in result.output and "mAP 0.667" in result.output
    assert (tmp_path / "report.csv").read_text().splitlines()[0] == "label,positives,average_precision,auc,d_prime"
    assert (tmp_path / "ap.png").read_bytes().startswith(PNG_MAGIC)
    # A plot is written in the format its name asks for (it used to be a PNG under any name).
    assert run("evaluate", tmp_path / "labels.csv", "--predictions", tmp_path / "tags.json",
               "--plot", tmp_path / "ap.svg").exit_code == 0
    assert b"<svg" in (tmp_path / "ap.svg").read_bytes()[:1000]
    # A manifest with its own column names, as probe and finetune read it.
    (tmp_path / "named.csv").write_text("clip,animal\na.wav,Dog\nb.wav,Cat\nc.wav,Dog\nd.wav,Cat\n")
    named = run("evaluate", tmp_path / "named.csv", "--predictions", tmp_path / "tags.json", "--file-column", "clip",
                "--label-column", "animal", "--json", tmp_path / "named.json")
    assert named.exit_code == 0, named.output
    assert json.loads((tmp_path / "named.json").read_text())["mAP"] == report["mAP"]
    # --timeline-png is only checked (and written) with --timeline; --csv is checked before any work.
    (tmp_path / "a-folder").mkdir()
    again = run("evaluate", tmp_path / "labels.csv", "--predictions", tmp_path / "tags.json",
                "--timeline-png", tmp_path / "a-folder")
    assert again.exit_code == 0, again.output
    refused = run("evaluate", tmp_path / "labels.csv", "--predictions", tmp_path / "tags.json",
                  "--csv", tmp_path / "a-folder")
    assert refused.exit_code == 2
    assert refused.stderr == f"auricle: error: {tmp_path / 'a-folder'}: is a folder; give a file name\n"


def test_tagging_with_a_model_equals_scoring_its_tag_output(two_class_checkpoint, recordings, tmp_path):
    direct = run("evaluate", recordings / "labels.csv", "--checkpoint", two_class_checkpoint, "--threads", "1", "--json", "-")
    assert direct.exit_code == 0, direct.output
    tags = run("tag", *(recordings / f"r{n}.wav" for n in range(4)), "--checkpoint", two_class_checkpoint, "--threads", "1",
               "--top-k", "2", "--format", "json", "--output", tmp_path / "tags.json")
    assert tags.exit_code == 0, tags.output
    scored = run("evaluate", recordings / "labels.csv", "--predictions", tmp_path / "tags.json", "--json", "-")
    ours, theirs = json.loads(direct.output), json.loads(scored.output)
    assert ours["model"] == "two" and ours["files"] == 4
    for key in ("mAP", "mean_auc"):
        assert ours[key] == pytest.approx(theirs[key], abs=1e-5)
    assert [c["positives"] for c in ours["classes"]] == [3, 2]  # Cat, Dog


# -- events ------------------------------------------------------------------------------
HAND_EVENTS = [(1.1, 3.3, "Dog"), (5.3, 6.0, "Dog"), (2.5, 4.0, "Cat"), (7.0, 8.0, "Cat")]


def hand_prediction(file: str) -> dict:
    return {
        "schema_version": 1, "file": file, "duration": 10.0, "model": "m", "pool": "max", "tags": [],
        "windows": [{"start": 0.0, "end": 5.0, "tags": [{"label": "Dog", "mid": "", "score": 0.9}]},
                    {"start": 5.0, "end": 10.0, "tags": [{"label": "Cat", "mid": "", "score": 0.4}]}],
        "events": [{"label": label, "mid": "", "index": 0, "onset": on, "offset": off, "max_score": 1, "mean_score": 1}
                   for on, off, label in HAND_EVENTS],
    }


@pytest.mark.integration
@pytest.mark.parametrize("header", ["filename,onset,offset,event_label", "file,onset,offset,label"])
def test_event_metrics_by_hand_from_a_predictions_file(tmp_path, header):
    """The hand-computed case of tests/downstream/test_eval_metrics.py, end to end."""
    (tmp_path / "ref.csv").write_text(f"{header}\na.wav,1.0,3.0,Dog\na.wav,5.0,6.0,Dog\na.wav,2.5,4.5,Cat\n")
    (tmp_path / "pred.jsonl").write_text(json.dumps(hand_prediction("a.wav")) + "\n")
    result = run("evaluate", tmp_path / "ref.csv", "--events", "--predictions", tmp_path / "pred.jsonl",
                 "--json", tmp_path / "report.json", "--csv", tmp_path / "report.csv", "--plot", tmp_path / "f1.png")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    # Segments (1 s): Dog true {1,2,5} vs predicted {1,2,3,5}; Cat true {2,3,4} vs {2,3,7}.
    assert (report["segment_based"]["tp"], report["segment_based"]["fp"], report["segment_based"]["fn"]) == (5, 2, 1)
    assert report["segment_based"]["f1"] == pytest.approx(10 / 13, abs=1e-6)
    # Events: only Dog 1.1-3.3 matches (Dog 5.3: onset off by 0.3; Cat 2.5-4.0: offset off by 0.5 > 0.4).
    assert (report["event_based"]["tp"], report["event_based"]["fp"], report["event_based"]["fn"]) == (1, 3, 2)
    assert report["event_based"]["f1"] == pytest.approx(2 / 7, abs=1e-6)
    assert report["event_based"]["macro_f1"] == pytest.approx(0.25)
    by_class = {c["label"]: c for c in report["classes"]}
    assert by_class["Dog"]["segment"]["f1"] == pytest.approx(6 / 7, abs=1e-6)
    assert by_class["Cat"]["event"]["f1"] == 0.0
    assert set(report["psds"]) == {"psds1", "psds2"}
    assert "event-based (collar 200 ms / 20%): F1 0.286" in result.output
    assert (tmp_path / "report.csv").read_text().count("\n") == 3
    assert (tmp_path / "f1.png").read_bytes().startswith(PNG_MAGIC)


def test_a_failure_of_the_tagging_run_that_no_label_names_does_not_fail_the_evaluation(tmp_path):
    (tmp_path / "ref.csv").write_text("file,onset,offset,label\na.wav,1.0,3.0,Dog\n")
    lines = [hand_prediction("a.wav"), {"schema_version": 1, "file": "other.flac", "error": "other.flac: not audio"}]
    (tmp_path / "pred.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = run("evaluate", tmp_path / "ref.csv", "--events", "--predictions", tmp_path / "pred.jsonl",
                 "--json", tmp_path / "report.json")
    assert result.exit_code == 0, result.output  # it exited 1 ("1 failed"), breaking CI gates on the score
    assert json.loads((tmp_path / "report.json").read_text())["failures"] == []
    # A failure of a labelled file still counts.
    lines[0] = {"schema_version": 1, "file": "a.wav", "error": "a.wav: not audio"}
    lines.append(hand_prediction("b.wav"))
    (tmp_path / "ref.csv").write_text("file,onset,offset,label\na.wav,1.0,3.0,Dog\nb.wav,1.0,3.0,Dog\n")
    (tmp_path / "pred.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    failed = run("evaluate", tmp_path / "ref.csv", "--events", "--predictions", tmp_path / "pred.jsonl", "--no-psds")
    assert failed.exit_code == 1 and "1 failed" in failed.stderr


def test_a_file_without_events_is_evaluated_and_its_detections_are_false_alarms(tmp_path):
    """DCASE lists a file with no event as `file,,,`; it was refused ("onset and offset must be numbers")."""
    (tmp_path / "ref.csv").write_text("filename,onset,offset,event_label\na.wav,1.0,3.0,Dog\nquiet.wav,,,\n")
    (tmp_path / "pred.jsonl").write_text("".join(json.dumps(hand_prediction(name)) + "\n"
                                                 for name in ("a.wav", "quiet.wav")))
    result = run("evaluate", tmp_path / "ref.csv", "--events", "--predictions", tmp_path / "pred.jsonl",
                 "--json", tmp_path / "report.json", "--no-psds")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["files"] == 2
    # quiet.wav's two Dog events (1.1-3.3, 5.3-6.0) are false alarms; a.wav's 1.1-3.3 matches, 5.3-6.0 does not.
    dog = next(c for c in report["classes"] if c["label"] == "Dog")
    assert (dog["event"]["tp"], dog["event"]["fp"], dog["event"]["fn"]) == (1, 3, 0)


def test_tagging_report_refuses_scores_it_cannot_rank():
    from auricle.downstream import evaluate as ev

    targets = np.array([[1, 0], [0, 1], [1, 0], [0, 1.0]])
    with pytest.raises(ev.EvaluationError, match=r"scores are not finite \(row 0 first\)"):
        ev.tagging_report(targets, np.full((4, 2), np.nan), ["a", "b"])  # once mAP 0.667 from NaN
    with pytest.raises(ev.EvaluationError, match="3 class names for 2 columns of scores"):
        ev.tagging_report(targets, targets, ["a", "b", "c"])
    assert ev.tagging_report(targets, targets, ["a", "b"]).to_dict()["mAP"] == pytest.approx(1.0)


def test_psds_of_perfect_and_of_useless_scores(tmp_path):
    # 60 s, so that a detection spanning the whole file overlaps an event by less than PSDS2's 10 %.
    (tmp_path / "ref.csv").write_text("file,onset,offset,label\na.wav,2.0,4.0,Dog\na.wav,40.0,41.0,Cat\n")

    def prediction(score_of):
        windows = [{"start": t / 2, "end": t / 2 + 0.5,
                    "tags": [{"label": c, "mid": "", "score": score_of(t / 2 + 0.25, c)} for c in ("Dog", "Cat")]}
                   for t in range(120)]
        return {"file": "a.wav", "duration": 60.0, "tags": [], "windows": windows, "events": []}

    def psds(score_of):
        (tmp_path / "p.json").write_text(json.dumps([prediction(score_of)]))
        result = run("evaluate", tmp_path / "ref.csv", "--events", "--predictions", tmp_path / "p.json", "--json", "-")
        assert result.exit_code == 0, result.output
        return json.loads(result.output)["psds"]

    perfect = psds(lambda t, c: float((c == "Dog" and 2 < t < 4) or (c == "Cat" and 40 < t < 41)))
    assert perfect["psds1"] == pytest.approx(1.0) and perfect["psds2"] == pytest.approx(1.0)
    wrong = psds(lambda t, c: float((c == "Cat" and 2 < t < 4) or (c == "Dog" and 40 < t < 41)))
    assert wrong["psds1"] == pytest.approx(0.0) and wrong["psds2"] == pytest.approx(0.0)


def test_psds_leaves_out_a_class_whose_only_events_were_in_a_file_that_failed(tmp_path):
    (tmp_path / "ref.csv").write_text("file,onset,offset,label\na.wav,2.0,4.0,Dog\nb.wav,1.0,2.0,Cat\n")
    windows = [{"start": t / 2, "end": t / 2 + 0.5,
                "tags": [{"label": "Dog", "mid": "", "score": float(2 < t / 2 < 4)}, {"label": "Cat", "mid": "", "score": 0.0}]}
               for t in range(40)]
    records = [{"file": "a.wav", "duration": 20.0, "tags": [], "windows": windows, "events": []},
               {"file": "b.wav", "error": "b.wav: corrupt or truncated audio"}]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    result = run("evaluate", tmp_path / "ref.csv", "--events", "--predictions", tmp_path / "p.jsonl",
                 "--json", tmp_path / "report.json")
    assert result.exit_code == 1 and "b.wav: corrupt or truncated audio" in result.stderr
    assert "Traceback" not in result.output + result.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["psds"]["psds1"] == pytest.approx(1.0)  # Dog alone, found exactly
    by_class = {c["label"]: c for c in report["classes"]}
    assert by_class["Cat"]["psds1"] is None and by_class["Cat"]["reference_events"] == 0


@pytest.mark.integration
def test_events_with_a_model_equal_scoring_its_tag_output_and_plot_a_timeline(two_class_checkpoint, recordings, tmp_path):
    window = ("--window", "1", "--hop", "0.5")
    direct = run("evaluate", recordings / "events.csv", "--events", "--checkpoint", two_class_checkpoint, "--threads", "1", *window,
                 "--json", tmp_path / "direct.json", "--timeline", recordings / "r2.wav",
                 "--timeline-png", tmp_path / "timeline.png")
    assert direct.exit_code == 0, direct.output
    assert (tmp_path / "timeline.png").read_bytes().startswith(PNG_MAGIC)
    tags = run("tag", *(recordings / f"r{n}.wav" for n in range(4)), "--checkpoint", two_class_checkpoint, "--threads", "1", *window,
               "--events", "--top-k", "2", "--format", "jsonl", "--output", tmp_path / "tags.jsonl")
    assert tags.exit_code == 0, tags.output
    scored = run("evaluate", recordings / "events.csv", "--events", "--predictions", tmp_path / "tags.jsonl", "--json", "-")
    assert scored.exit_code == 0, scored.output
    ours, theirs = json.loads((tmp_path / "direct.json").read_text()), json.loads(scored.output)
    assert ours["files"] == 4 and sum(c["reference_events"] for c in ours["classes"]) == 4
    assert ours["segment_based"] == theirs["segment_based"] and ours["event_based"] == theirs["event_based"]
    for name in ("psds1", "psds2"):
        assert ours["psds"][name] == pytest.approx(theirs["psds"][name], abs=1e-3)


# -- errors ------------------------------------------------------------------------------
def test_bad_input_gives_one_line_errors(two_class_checkpoint, recordings, tmp_path):
    (tmp_path / "horse.csv").write_text("file,labels\n" + f"{recordings / 'r0.wav'},Horse\n")
    result = run("evaluate", tmp_path / "horse.csv", "--checkpoint", two_class_checkpoint, "--threads", "1")
    assert result.exit_code == 2 and "1 class is not an output of the model: 'Horse'" in result.output
    (tmp_path / "typo.csv").write_text("file,labels\n" + f"{recordings / 'r0.wav'},Dgo;Caat;Horse\n")
    result = run("evaluate", tmp_path / "typo.csv", "--checkpoint", two_class_checkpoint, "--threads", "1")
    assert result.exit_code == 2, result.output
    assert ("3 classes are not outputs of the model: 'Caat' (did you mean 'Cat'?), 'Dgo' (did you mean 'Dog'?), "
            "'Horse'") in result.output

    (tmp_path / "bad.csv").write_text("file,start,end,label\na.wav,0,1,Dog\n")
    result = run("evaluate", tmp_path / "bad.csv", "--events", "--checkpoint", two_class_checkpoint, "--threads", "1")
    assert result.exit_code == 2 and "strong labels need columns" in result.output

    (tmp_path / "ref.csv").write_text("file,onset,offset,label\na.wav,0,1,Dog\nb.wav,0,1,Dog\n")
    (tmp_path / "p.jsonl").write_text(json.dumps(hand_prediction("a.wav")) + "\n")
    result = run("evaluate", tmp_path / "ref.csv", "--events", "--predictions", tmp_path / "p.jsonl")
    assert result.exit_code == 2 and "1 of 2 labelled files have no prediction" in result.output

    # A label with an unquoted comma shifts the row: it was read as the class "1" with "junk" dropped.
    (tmp_path / "extra.csv").write_text("filename,onset,offset,event_label\na.wav,1.0,2.0,Splash, splatter\n")
    result = run("evaluate", tmp_path / "extra.csv", "--events", "--predictions", tmp_path / "p.jsonl")
    assert result.exit_code == 2 and result.stderr == (
        f"auricle: error: {tmp_path / 'extra.csv'}: line 2: 5 fields, but the header has 4 "
        "(quote a label that holds a comma)\n")

    result = run("evaluate", recordings / "labels.csv", "--timeline", recordings / "r0.wav")
    assert result.exit_code == 2 and "--timeline needs --events" in result.output
    # A --timeline file that is not labelled is refused before any prediction is read or made.
    result = run("evaluate", tmp_path / "ref.csv", "--events", "--predictions", tmp_path / "p.jsonl",
                 "--timeline", "c.wav")
    assert result.exit_code == 2
    assert result.stderr == f"auricle: error: --timeline c.wav: not one of the files labelled in {tmp_path / 'ref.csv'}\n"


def test_a_broken_file_is_reported_and_the_rest_scored(two_class_checkpoint, recordings, tmp_path):
    (tmp_path / "broken.wav").write_bytes(b"not audio at all")
    (tmp_path / "labels.csv").write_text(
        "file,labels\n" + "".join(f"{recordings / f'r{n}.wav'},{'Dog' if n % 2 == 0 else 'Cat'}\n" for n in range(4))
        + "broken.wav,Dog\n"
    )
    result = run("evaluate", tmp_path / "labels.csv", "--checkpoint", two_class_checkpoint, "--threads", "1", "--json", "-")
    assert result.exit_code == 1
    assert "broken.wav" in result.output
    report = json.loads(result.output[result.output.index("{"): result.output.rindex("}") + 1])
    assert report["files"] == 4 and report["failures"][0]["file"].endswith("broken.wav")


def _aligned(table: str) -> None:
    """Every class row of the table is as wide as its header (short names shifted the header)."""
    lines = table.splitlines()
    header = next(line for line in lines if line.lstrip().startswith("class"))
    rows = lines[lines.index(header) + 1:lines.index(header) + 3]
    assert rows and all(len(row) == len(header) for row in rows), table
    assert all(row.index(row.split()[1]) + len(row.split()[1]) == header.index(header.split()[1]) + len(
        header.split()[1]) for row in rows), table


def test_tables_align_with_class_names_shorter_than_the_header(two_class_checkpoint, recordings, tmp_path):
    (tmp_path / "ref.csv").write_text("file,onset,offset,label\na.wav,1.0,3.0,Dog\na.wav,2.5,4.5,Cat\n")
    (tmp_path / "pred.jsonl").write_text(json.dumps(hand_prediction("a.wav")) + "\n")
    result = run("evaluate", tmp_path / "ref.csv", "--events", "--predictions", tmp_path / "pred.jsonl", "--no-psds")
    assert result.exit_code == 0, result.output
    _aligned(result.stdout)
    result = run("evaluate", recordings / "labels.csv", "--checkpoint", two_class_checkpoint, "--threads", "1")
    assert result.exit_code == 0, result.output
    _aligned(result.stdout)


def test_zero_length_events_are_refused_and_repeated_events_counted_once(tmp_path):
    (tmp_path / "pred.jsonl").write_text(json.dumps(hand_prediction("a.wav")) + "\n")
    (tmp_path / "zero.csv").write_text("file,onset,offset,label\na.wav,1.0,3.0,Dog\na.wav,2.0,2.0,Cat\n")
    result = run("evaluate", tmp_path / "zero.csv", "--events", "--predictions", tmp_path / "pred.jsonl")
    assert result.exit_code == 2 and result.stderr == (
        f"auricle: error: {tmp_path / 'zero.csv'}: line 3: zero-length event (a.wav, Cat at 2 s); "
        "offset must be after onset\n")
    # Listed twice, an event was two reference events, one of them always missed.
    events = "a.wav,1.0,3.0,Dog\na.wav,5.0,6.0,Dog\na.wav,2.5,4.5,Cat\n"
    (tmp_path / "once.csv").write_text("file,onset,offset,label\n" + events)
    (tmp_path / "twice.csv").write_text("file,onset,offset,label\n" + events + "a.wav,1.0,3.0,Dog\na.wav,1.0,3.0,Dog\n")
    reports = {}
    for name in ("once", "twice"):
        result = run("evaluate", tmp_path / f"{name}.csv", "--events", "--predictions", tmp_path / "pred.jsonl",
                     "--no-psds", "--json", tmp_path / f"{name}.json")
        assert result.exit_code == 0, result.output
        reports[name] = json.loads((tmp_path / f"{name}.json").read_text())
        reports[name].pop("labels", None)
    assert result.stderr == (f"auricle: warning: {tmp_path / 'twice.csv'}: 2 events listed twice, counted once "
                             "(the first: line 5 repeats line 2)\n")
    assert reports["twice"]["event_based"] == reports["once"]["event_based"]
    assert reports["twice"]["classes"] == reports["once"]["classes"]
