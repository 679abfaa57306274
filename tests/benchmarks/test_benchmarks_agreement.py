"""benchmarks/agreement.py: engine-vs-fp32 agreement figures, on a tiny random model and a few clips."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

from conftest import DATA, REFERENCE, ROOT, require

pytestmark = pytest.mark.integration  # starts auricle (or a benchmark) in other processes


@pytest.fixture(scope="module")
def agreement():
    spec = importlib.util.spec_from_file_location("agreement", ROOT / "benchmarks" / "agreement.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    from auricle.models.ced import CED, CEDConfig
    from auricle.models.checkpoints import save_checkpoint

    torch.manual_seed(7)
    network = CED(CEDConfig(embed_dim=64, num_heads=1, depth=2))
    return save_checkpoint(network, tmp_path_factory.mktemp("agreement") / "small.safetensors", name="small")


def test_compare_figures(agreement):
    reference = np.array([
        [0.9, 0.8, 0.7, 0.6, 0.5, 0.1, 0.05, 0.0],  # top-5 well defined (gap 0.4)
        [0.9, 0.8, 0.7, 0.6, 0.5, 0.499, 0.1, 0.0],  # 5th and 6th nearly tied
    ], dtype=np.float32)
    other = reference.copy()
    other[1, 4], other[1, 5] = 0.4993, 0.4997  # swaps the near tie (|dp| 0.0007 < gap 0.001): overlap 4/5
    other[0, 7] = 0.01
    figures = agreement.compare(reference, other, gap=0.01)
    assert figures["clips"] == 2
    assert figures["max_abs_diff"] == pytest.approx(0.01, rel=1e-4)
    assert figures["mean_abs_diff"] == pytest.approx((0.01 + 0.0007 + 0.0007) / 16, rel=1e-4)
    assert (figures["top5_overlap_mean"], figures["top5_overlap_min"]) == (pytest.approx(0.9), pytest.approx(0.8))
    # clip 0: gap 0.4 > 2 x 0.01; clip 1: gap 0.001 < 2 x 0.0007 (and the swap shows why the 2)
    assert figures["tie_aware"] == {"clips": 1, "top5_overlap_mean": 1.0, "top5_overlap_min": 1.0}
    assert figures["gap_defined"] == {"gap": 0.01, "clips": 1, "top5_overlap_mean": 1.0, "top5_overlap_min": 1.0}
    same = agreement.compare(reference, reference, gap=0.01)
    assert same["max_abs_diff"] == 0 and same["top5_overlap_min"] == 1.0 and same["tie_aware"]["clips"] == 2
    with pytest.raises(ValueError):
        agreement.compare(reference, reference[:1], gap=0.01)


def test_main_on_a_few_clips(agreement, small_checkpoint, tmp_path, restore_torch_threads):
    require(REFERENCE / "inputs")
    require(DATA / "everyday")
    out = tmp_path / "results" / "agreement.json"
    result = agreement.main([
        "--checkpoint", str(small_checkpoint), "--engines", "torch-fp32", "torch-int8",
        "--sets", "reference", "everyday", "--limit", "2", "--threads", "1",
        "--reference-dir", str(REFERENCE / "inputs"), "--data-dir", str(DATA), "--json", str(out),
    ])
    written = json.loads(out.read_text())
    assert written == json.loads(json.dumps(result))
    assert written["inputs"]["reference"]["clips"] == written["inputs"]["everyday"]["clips"] == 2
    assert written["inputs"]["everyday"]["files"] == 111  # the whole test split, before --limit
    rows = {(row["engine"], row["set"]): row for row in written["results"]}
    assert set(rows) == {(engine, part) for engine in ("torch-fp32", "torch-int8")
                         for part in ("reference", "everyday", "all")}
    for row in rows.values():
        assert row["checkpoint"] == "small"
        assert row["clips"] == (4 if row["set"] == "all" else 2)
        assert 0 <= row["mean_abs_diff"] <= row["max_abs_diff"] <= 1
        assert 0 <= row["top5_overlap_min"] <= row["top5_overlap_mean"] <= 1
        for part in (row["tie_aware"], row["gap_defined"]):
            assert 0 <= part["clips"] <= row["clips"]
            if part["clips"]:
                assert 0 <= part["top5_overlap_min"] <= part["top5_overlap_mean"] <= 1
    itself = rows["torch-fp32", "all"]  # a second fp32 model: the comparison must see no difference
    assert itself["max_abs_diff"] == 0 and itself["top5_overlap_min"] == 1.0
    assert rows["torch-int8", "all"]["max_abs_diff"] > 0  # int8 does differ: the figures are not trivially 0
    assert written["skipped"] == []
