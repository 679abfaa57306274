"""`auricle models` lists the Dasheng encoders; a large one says what it costs before a command runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import soundfile as sf
from click.testing import CliRunner

from auricle import dasheng_model
from auricle.cli import cli
from conftest import REFERENCE, require


def test_models_lists_ced_and_dasheng_in_the_table_and_json():
    table = CliRunner().invoke(cli, ["models"])
    assert table.exit_code == 0, table.output
    rows = {line.split()[0]: line.split() for line in table.stdout.splitlines()[1:]}
    assert list(rows) == ["ced-tiny", "ced-mini", "ced-small", "ced-base", "dasheng-base", "dasheng-0.6b",
                          "dasheng-1.2b", "dasheng-base-audioset"]
    assert rows["dasheng-1.2b"][1:4] == ["1134.0M", "-", "1536"]  # no head, no AudioSet mAP
    assert rows["dasheng-base-audioset"][2] == "49.7" and rows["dasheng-base-audioset"][4].startswith("https://zenodo")
    listed = json.loads(CliRunner().invoke(cli, ["models", "--json"]).stdout)
    dasheng = [model for model in listed if model["family"] == "dasheng"]
    assert [model["parameters_millions"] for model in dasheng] == [85.45, 630.33, 1134.05, 85.85]
    assert {model["family"] for model in listed} == {"ced", "dasheng"}


@pytest.mark.integration
def test_models_imports_no_torch():
    code = "import sys; from auricle.cli import cli; cli(['models'], standalone_mode=False); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_a_large_encoder_says_what_it_costs_before_the_job(tmp_path, monkeypatch):
    checkpoint = require(REFERENCE / "dasheng" / "dasheng_small_perturbed.pt")
    recording = tmp_path / "noise.wav"
    sf.write(recording, np.random.default_rng(0).normal(0, 0.1, 8000).astype(np.float32), 16000)
    args = ["embed", str(recording), "-o", str(tmp_path / "out"), "--checkpoint", str(checkpoint)]
    quiet = CliRunner().invoke(cli, args)
    assert quiet.exit_code == 0 and "note" not in quiet.stderr
    monkeypatch.setattr(dasheng_model, "LARGE_PARAMETERS", 1e6)  # the small test encoder stands in for 1.2b
    noted = CliRunner().invoke(cli, args)
    assert noted.exit_code == 0, noted.output
    notes = [line for line in noted.stderr.splitlines() if "note" in line]
    assert len(notes) == 1 and notes[0].startswith(
        "auricle: note: dasheng_small_perturbed is a large encoder (2 M parameters): its weights take 0.0 GiB")
    assert "x dasheng-base per second of audio (an hour: roughly" in notes[0]
