"""The embeddings layout through Python (``auricle.io.embeddings``): the same files ``auricle embed`` writes,
its resume, and its refusals."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from auricle.cli import cli
from auricle.errors import OutputError
from auricle.io.embeddings import EmbeddingsReport, EmbeddingsWriter, output_problem, write_embeddings

INPUTS = ["a_sine440_1s.wav", "f_stereo_44k1_2s.wav"]


def run(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def inputs(reference_dir) -> list[str]:
    return [str(reference_dir / "inputs" / name) for name in INPUTS]


def _index(folder) -> list[dict]:
    with open(folder / "index.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.integration
def test_a_folder_written_in_python_is_the_folder_the_command_writes(inputs, tiny_checkpoint, tiny_model, tmp_path):
    missing = str(tmp_path / "missing.wav")
    seen = []
    report = write_embeddings(tiny_model, [*inputs, missing], tmp_path / "py", on_result=seen.append)
    assert isinstance(report, EmbeddingsReport)
    assert (report.todo, report.embedded, report.already_done, report.written) == (3, 2, 0, True)
    assert [f.file for f in report.failures] == [missing] and len(seen) == 3
    assert report.to_dict()["failures"] == [{"file": missing, "error": report.failures[0].error}]
    assert json.loads(json.dumps(report.to_dict()))["embedded"] == 2

    result = run("embed", *inputs, missing, "--checkpoint", tiny_checkpoint, "--output", tmp_path / "cli")
    assert result.exit_code == 1  # the missing file
    assert _index(tmp_path / "py") == _index(tmp_path / "cli")
    assert [row["file"] for row in _index(tmp_path / "py")] == inputs
    for row in _index(tmp_path / "py"):
        with np.load(tmp_path / "py" / row["npz"]) as ours, np.load(tmp_path / "cli" / row["npz"]) as theirs:
            assert sorted(ours.files) == sorted(theirs.files)
            for key in ours.files:
                if ours[key].dtype.kind == "f":
                    np.testing.assert_allclose(ours[key], theirs[key], atol=1e-6)
                else:
                    assert (ours[key] == theirs[key]).all(), key


def test_resume_keeps_what_is_there_and_refuses_another_models_folder(inputs, tiny_model, tmp_path):
    folder = tmp_path / "emb"
    write_embeddings(tiny_model, inputs[:1], folder)
    report = write_embeddings(tiny_model, inputs, folder, resume=True)
    assert (report.todo, report.embedded, report.already_done) == (1, 1, 1)
    assert [row["file"] for row in _index(folder)] == inputs

    writer = EmbeddingsWriter(folder, inputs)
    with pytest.raises(OutputError, match=r"holds embeddings by .* resume with the same model or write to another"):
        writer.resume(tiny_model.name, "0" * 16)
    with pytest.raises(OutputError, match="resuming needs an output folder"):
        write_embeddings(tiny_model, inputs, tmp_path / "all.npz", resume=True)


def test_single_files_hold_every_input_in_order(inputs, tiny_model, tmp_path):
    missing = str(tmp_path / "missing.wav")
    write_embeddings(tiny_model, [missing, *inputs], tmp_path / "clips.npy")
    clips = np.load(tmp_path / "clips.npy")
    assert clips.shape[0] == 3 and np.isnan(clips[0]).all() and np.isfinite(clips[1:]).all()

    report = write_embeddings(tiny_model, inputs, tmp_path / "all.npz")
    with np.load(tmp_path / "all.npz") as archive:
        assert list(archive["files"]) == inputs and str(archive["model"]) == tiny_model.name
        np.testing.assert_allclose(archive["clip"][1:], clips[2:], atol=1e-6)
    nothing = write_embeddings(tiny_model, [missing], tmp_path / "none.npz")
    assert report.written and not nothing.written and not (tmp_path / "none.npz").exists()


def test_files_with_one_stem_get_names_of_their_own(reference_dir, tmp_path):
    for folder in ("one", "two"):
        (tmp_path / folder).mkdir()
        shutil.copy(reference_dir / "inputs" / INPUTS[0], tmp_path / folder / "x.wav")
    files = [str(tmp_path / "one" / "x.wav"), str(tmp_path / "two" / "x.wav")]
    names = EmbeddingsWriter(tmp_path / "emb", files).names
    assert names[files[0]] == "x.npz" and names[files[1]].startswith("x-") and names[files[1]].endswith(".npz")
    assert output_problem(tmp_path / "emb.csv") is not None and output_problem(tmp_path / "emb") is None


def test_the_layout_is_reachable_from_the_package_face():
    import auricle
    from auricle.errors import WriteError

    assert auricle.write_embeddings is write_embeddings and auricle.EmbeddingsReport is EmbeddingsReport
    assert issubclass(auricle.WriteError, auricle.OutputError) and auricle.WriteError is WriteError
