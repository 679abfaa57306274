"""benchmarks/distill_teach_speed.py runs end to end: precisions in turns, agreement with fp32, JSON out."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import ROOT

pytestmark = pytest.mark.integration  # starts auricle (or a benchmark) in other processes


def test_teach_speed_reports_each_precision_and_its_agreement(tmp_path):
    from auricle.models.ced import CED, CEDConfig
    from auricle.models.checkpoints import save_checkpoint

    torch.manual_seed(0)
    teacher = save_checkpoint(CED(CEDConfig(embed_dim=64, num_heads=1, depth=1)), tmp_path / "t.safetensors")
    audio = tmp_path / "audio"
    audio.mkdir()
    rng = np.random.default_rng(0)
    for number in range(3):
        sf.write(audio / f"{number}.wav", (0.1 * rng.standard_normal(160000)).astype(np.float32), 16000)
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "distill_teach_speed.py"), str(audio),
                           "--teacher", str(teacher), "--precision", "fp32", "int8", "--chunks", "3",
                           "--batch-size", "2", "--rounds", "2", "--threads", "1", "--json", str(tmp_path / "t.json")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "t.json").read_text())
    assert result["views"] == 3 and result["rounds"] == 2
    fp32, int8 = result["results"]
    assert fp32["precision"] == "fp32" and 0 < fp32["teach_fraction_of_matmul_peak"]
    assert "agreement_with_fp32" not in fp32
    agreement = int8["agreement_with_fp32"]
    assert 0 < agreement["max_abs_probability_difference"] < 0.05 and 0 <= agreement["top5_overlap"] <= 1
    assert all(row["model_clips_per_second"] > 0 and row["teach_views_per_second"] > 0 for row in (fp32, int8))
