"""`auricle system`: the machine's CPU, the defaults picked from it, and how each engine would run."""

from __future__ import annotations

import json
import os

import pytest
import torch
from click.testing import CliRunner

from auricle.cli import cli
from auricle.engines import fused, resolve_precision
from auricle.inference import system
from auricle.inference.tuning import cpu_model, default_threads

PAIRS = ["torch-fp32", "torch-bf16", "torch-int8", "onnx-fp32", "onnx-int8"]


def run(*args: str):
    result = CliRunner().invoke(cli, ["system", *args])
    assert result.exit_code == 0, result.output
    return result.stdout


def routes(report: dict) -> dict[str, dict]:
    return {f"{route['engine']}-{route['precision']}": route for route in report["routes"]}


def test_json_report_matches_what_auricle_picks_here():
    report = json.loads(run("--json"))
    assert list(routes(report)) == PAIRS
    assert report["threads"] == default_threads() and report["streams"] >= 1 and report["batch_size"] >= 1
    assert report["auto_precision"] == {"torch": resolve_precision("torch", "auto"),
                                        "onnx": resolve_precision("onnx", "auto")}
    assert report["vector_isa"] == torch.backends.cpu.get_cpu_capability()
    assert report["torch"] == torch.__version__
    from auricle.devices import training_bf16

    # What the training commands' --precision auto would pick on this CPU.
    assert report["training_precision"] == ("bf16 (autocast)" if training_bf16("auto", torch.device("cpu")) else "fp32")
    if report["onnxruntime"]:
        assert report["exported_files"].startswith(f"ONNX Runtime {report['onnxruntime']}, without importing torch")


def test_table_has_one_line_per_engine_and_precision():
    lines = run().splitlines()
    assert lines[0].startswith("cpu") and any(line.startswith("--precision auto") for line in lines)
    assert [line.split()[0] for line in lines if line.split() and line.split()[0] in PAIRS] == PAIRS


def test_routes_follow_the_cpu(monkeypatch):
    if not fused.fused_supported("cpu", "fp32"):
        pytest.skip("this torch build has no oneDNN fused kernels")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert "oneDNN" in routes(json.loads(run("--json")))["torch-fp32"]["route"]
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    monkeypatch.setattr(fused, "bf16_kernels", lambda: False)
    report = routes(json.loads(run("--json")))
    assert "BLAS" in report["torch-fp32"]["route"]
    assert "emulated" in report["torch-bf16"]["route"] and "slower than fp32" in report["torch-bf16"]["note"]


def test_bf16_route_names_its_attention_kernel(monkeypatch):
    if not fused.fused_supported("cpu", "bf16"):
        pytest.skip("no fused bf16 kernels in this build or on this CPU")
    for amx, words in [(True, "fused attention kernel (AMX)"), (False, "attention as products")]:
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda amx=amx: amx)
        assert words in routes(json.loads(run("--json")))["torch-bf16"]["route"]


def test_missing_onnxruntime_is_reported_with_the_install_hint(monkeypatch):
    monkeypatch.setattr(system, "_version", lambda package: None)
    report = json.loads(run("--json"))
    assert report["onnxruntime"] is None
    for pair in ("onnx-fp32", "onnx-int8"):
        assert not routes(report)[pair]["available"] and "auricle[onnx]" in routes(report)[pair]["note"]
    assert "auricle[onnx]" in report["exported_files"]
    table = run()
    assert "onnx-int8   unavailable" in table and "pip install 'auricle[onnx]'" in table


def test_cpu_model_names_the_generation(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 1\n"
                       "model name\t: AMD EPYC\nflags\t\t: fpu avx2\n\nprocessor\t: 1\nmodel name\t: other\n")
    assert cpu_model(cpuinfo) == "AMD EPYC, family 25 model 1"
    cpuinfo.write_text("processor\t: 0\nModel name\t: Neoverse-N1\n")  # no family numbers (e.g. ARM)
    assert cpu_model(cpuinfo) == "Neoverse-N1"
    assert cpu_model(tmp_path / "missing")  # not Linux: still names something


@pytest.mark.integration
def test_the_report_works_without_torch(tmp_path):
    """An install for exported files only asks `auricle system` whether they can run: it must answer."""
    from no_torch_support import without_torch

    result = without_torch("system", "--json", AURICLE_CACHE=str(tmp_path))  # a cache with no graph in it
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["torch"] == system.NO_TORCH
    assert not any(route["available"] for route in report["routes"] if route["engine"] == "torch")
    assert report["vector_isa"] == torch.backends.cpu.get_cpu_capability()  # the same answer from the CPU flags
    assert report["auto_precision"] == {"torch": resolve_precision("torch", "auto"),
                                        "onnx": resolve_precision("onnx", "auto")}
    assert report["prepared_graphs"] == 0 and "embed" in report["exported_files"]


def test_vector_isa_from_flags_follows_aten(tmp_path, monkeypatch):
    from auricle.inference.tuning import vector_isa

    cpuinfo = tmp_path / "cpuinfo"
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    cases = {"fpu avx2 fma": "AVX2", "fpu avx2": "DEFAULT", "avx2 fma avx512f": "AVX2",
             "avx2 fma avx512f avx512vl avx512bw avx512dq": "AVX512"}
    for flags, expected in cases.items():
        cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        assert vector_isa(cpuinfo) == expected, flags
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")  # caps it, as it caps ATen
    assert vector_isa(cpuinfo) == "AVX2"



@pytest.mark.parametrize("files, expected", [
    ({"cpu.max": "200000 100000\n"}, 2),  # cgroup v2, docker --cpus=2
    ({"cpu.max": "150000 100000\n"}, 2),  # 1.5 CPUs: rounded up
    ({"cpu.max": "max 100000\n"}, None),
    ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),  # cgroup v1
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    ({}, None),
])
def test_a_container_cpu_quota_caps_the_usable_cores(tmp_path, files, expected):
    """Docker --cpus and Kubernetes limits set a quota, not an affinity mask: 64 threads on a 2-CPU limit."""
    from auricle.inference.tuning import cgroup_cpu_quota, usable_cores

    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cgroup_cpu_quota(tmp_path) == expected
    affinity = len(os.sched_getaffinity(0))
    assert usable_cores(tmp_path) == (min(affinity, expected) if expected else affinity)
