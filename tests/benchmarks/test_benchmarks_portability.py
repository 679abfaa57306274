"""benchmarks/portability.py and import_time.py run end to end (small model, this interpreter as the other one)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from conftest import ROOT

pytestmark = pytest.mark.integration  # starts auricle (or a benchmark) in other processes


def test_every_kind_runs_in_the_other_environment_and_agrees(tmp_path):
    from auricle.models.ced import CED, CEDConfig
    from auricle.models.checkpoints import save_checkpoint

    torch.manual_seed(0)
    checkpoint = save_checkpoint(CED(CEDConfig(embed_dim=64, num_heads=2, depth=1, num_classes=10)),
                                 tmp_path / "small.safetensors", labels=[f"c{i}" for i in range(10)], name="small")
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "portability.py"), "--checkpoint", str(checkpoint),
                           "--python", sys.executable, "--json", str(tmp_path / "out.json")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = json.loads((tmp_path / "out.json").read_text())["rows"]
    assert len(rows) == 16  # 8 kinds, in this environment and in the "other" one
    assert {row["python"] for row in rows} == {"this environment", sys.executable}
    assert all("error" not in row and row["max_abs_diff"] <= 1e-6 for row in rows), rows  # same runtime, same files
    kinds = {row["file"] for row in rows}
    assert {"portable-fp32-waveform", "onnxruntime-int8-mel"} <= kinds and len(kinds) == 8


def test_import_time_reports_each_module_and_environment(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "import_time.py"), "--module", "json",
                           "--module", "numpy", "--repeats", "2", "--json", str(tmp_path / "t.json")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = json.loads((tmp_path / "t.json").read_text())["rows"]
    assert [row["module"] for row in rows] == ["json", "numpy"]
    assert all(len(row["seconds"]) == 2 and row["median_s"] > 0 for row in rows)
    assert rows[1]["version"] != "?"  # numpy's installed version
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "import_time.py"), "--module", "no_such_mod"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "import no_such_mod failed" in done.stderr
