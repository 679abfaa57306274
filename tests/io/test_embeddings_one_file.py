"""`auricle embed ONE --output x.npz`: one file's frames (written without the concatenation that
several files need) equal what the folder output holds for that file."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from click.testing import CliRunner

from auricle.cli import cli
from conftest import REFERENCE, require


def run(*args) -> "object":
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.integration
def test_one_file_npz_holds_the_files_windows(reference_dir, tmp_path):
    checkpoint = require(REFERENCE / "ced_tiny_perturbed.pt")
    recording = reference_dir / "inputs" / "d_mix_25p3s.wav"
    assert run("embed", recording, "--checkpoint", checkpoint, "--output", tmp_path / "one.npz").exit_code == 0
    assert run("embed", recording, "--checkpoint", checkpoint, "--output", tmp_path / "folder").exit_code == 0
    row = next(csv.DictReader(open(tmp_path / "folder" / "index.csv")))
    with np.load(tmp_path / "one.npz") as one, np.load(tmp_path / "folder" / row["npz"]) as alone:
        assert one["windows"].shape == alone["windows"].shape == (3, 192)
        np.testing.assert_array_equal(one["windows"], alone["windows"])
        np.testing.assert_array_equal(one["window_file"], [0, 0, 0])
