"""auricle.allocator: freed model temporaries are reused instead of faulted in again; the command sets it up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import ROOT

# A model call's pattern in miniature: megabytes of temporaries alive together, then freed, again and again.
CHURN = textwrap.dedent("""
    import resource, sys
    import numpy as np
    if sys.argv[1] == "kept":
        from auricle.allocator import keep_freed_memory
        assert keep_freed_memory()
    for call in range(23):
        if call == 3:
            start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        blocks = [np.ones(1 << 20, dtype=np.float32) for _ in range(10)]
        del blocks
    print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start) / 20)
""")


def glibc_linux() -> bool:
    import ctypes

    try:
        ctypes.CDLL(None).gnu_get_libc_version  # noqa: B018
    except (OSError, AttributeError):
        return False
    return sys.platform.startswith("linux")


def faults_per_call(setting: str) -> float:
    env = {name: value for name, value in os.environ.items() if not name.startswith("MALLOC_") and name != "AURICLE_MALLOC"}
    done = subprocess.run([sys.executable, "-c", CHURN, setting], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return float(done.stdout)


@pytest.mark.integration
@pytest.mark.skipif(not glibc_linux(), reason="the setting is glibc's (Linux)")
def test_kept_memory_is_reused_where_glibc_would_fault_it_in_again():
    # The premise: glibc's defaults hand 40 MB of freed blocks back and fault them in on the next call.
    assert faults_per_call("default") > 1000
    assert faults_per_call("kept") < 50


def test_the_users_own_malloc_settings_win(monkeypatch):
    from auricle import allocator

    def never(*args):
        raise AssertionError("mallopt must not be reached")

    monkeypatch.setattr(allocator.ctypes, "CDLL", never)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1000000")
    assert allocator.keep_freed_memory() is False
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=65536")
    assert allocator.keep_freed_memory() is False
    monkeypatch.delenv("GLIBC_TUNABLES")
    monkeypatch.setenv("AURICLE_MALLOC", "default")
    assert allocator.keep_freed_memory() is False
    monkeypatch.delenv("AURICLE_MALLOC")
    monkeypatch.setattr(allocator.sys, "platform", "darwin")
    assert allocator.keep_freed_memory() is False


def test_a_c_library_without_glibcs_malloc_is_left_alone(monkeypatch):
    from auricle import allocator

    class Musl:  # has mallopt (a stub there), but not glibc's version call
        def mallopt(self, *args):
            raise AssertionError("not glibc: must not be called")

    for name in allocator.USER_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.delenv("AURICLE_MALLOC", raising=False)
    monkeypatch.setattr(allocator.sys, "platform", "linux")
    monkeypatch.setattr(allocator.ctypes, "CDLL", lambda name: Musl())
    assert allocator.keep_freed_memory() is False


def test_the_command_keeps_freed_memory_before_it_runs(monkeypatch, capsys):
    from auricle import cli as cli_module

    calls = []
    monkeypatch.setattr(cli_module, "keep_freed_memory", lambda: calls.append("kept") or True)
    monkeypatch.setenv("AURICLE_CLEAN_EXIT", "1")  # end with SystemExit, not os._exit
    monkeypatch.setattr(sys, "argv", ["auricle", "labels", "Animal"])
    with pytest.raises(SystemExit) as finished:
        cli_module.main()
    assert finished.value.code == 0 and calls == ["kept"] and "Animal" in capsys.readouterr().out


@pytest.mark.integration
@pytest.mark.skipif(not glibc_linux(), reason="the setting is glibc's (Linux)")
def test_the_benchmark_compares_both_settings_in_fresh_processes(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "allocator.py"), "--model", "ced-tiny",
                           "--engines", "torch-fp32", "--rounds", "1", "--seconds", "0.2", "--threads", "1",
                           "--json", str(tmp_path / "a.json")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = json.loads((tmp_path / "a.json").read_text())["rows"]
    assert [(row["engine"], row["setting"]) for row in rows] == [("torch-fp32", "default"), ("torch-fp32", "kept")]
    assert all(row["clips_per_s"] > 0 and row["faults_per_call"] >= 0 for row in rows)


def test_auricle_system_says_what_the_command_does_to_malloc(monkeypatch):
    from click.testing import CliRunner

    from auricle import allocator
    from auricle.cli import cli

    for name in ("AURICLE_MALLOC", "GLIBC_TUNABLES", *allocator.USER_SETTINGS):
        monkeypatch.delenv(name, raising=False)
    shown = CliRunner().invoke(cli, ["system", "--json"])
    expected = "kept for reuse" if glibc_linux() else "left as it is"
    assert shown.exit_code == 0 and json.loads(shown.output)["freed_memory"].startswith(expected)
    monkeypatch.setattr(allocator.sys, "platform", "linux")
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    shown = CliRunner().invoke(cli, ["system"])
    line = next(line for line in shown.output.splitlines() if line.startswith("freed memory"))
    assert line.endswith("left as it is: set by the environment (MALLOC_MMAP_THRESHOLD_)")
    if glibc_linux():  # a value other than `default` was silently taken as unset
        monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
        monkeypatch.setenv("AURICLE_MALLOC", "bogus")
        shown = CliRunner().invoke(cli, ["system", "--json"])
        assert json.loads(shown.output)["freed_memory"].endswith(
            "; AURICLE_MALLOC=bogus is not a setting (only 'default' leaves glibc's)")
