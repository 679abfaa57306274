"""benchmarks/train_speed.py runs end to end: precisions in turns, JSON out with the CPU and auto's choice."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from auricle.devices import bf16_trains_faster
from conftest import ROOT

pytestmark = pytest.mark.integration  # starts auricle (or a benchmark) in other processes


def test_train_speed_reports_each_precision(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "train_speed.py"), "--models", "ced-tiny",
                           "--precision", "fp32", "bf16", "--batch-size", "2", "--seconds", "0.3", "--rounds", "2",
                           "--threads", "1", "--json", str(tmp_path / "t.json")],
                          capture_output=True, text=True, timeout=300, cwd=ROOT / "benchmarks")
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "t.json").read_text())
    assert result["auto_trains_in_bf16"] == bf16_trains_faster(torch.device("cpu")) and "bf16" in result["cpu"]
    assert [(row["model"], row["precision"]) for row in result["results"]] == [("ced-tiny", "fp32"), ("ced-tiny", "bf16")]
    assert all(len(row["steps_per_s_rounds"]) == 2 and row["steps_per_s"] > 0 for row in result["results"])
