"""benchmarks/loadtest.py runs end to end against a server it starts (tiny random weights, a few requests)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.integration  # starts auricle (or a benchmark) in other processes


def test_a_short_load_test_reports_statuses_latency_and_the_servers_memory(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "loadtest.py"), "--random", "ced-tiny",
                           "--requests", "12", "--concurrency", "3", "--lengths", "1,3", "--threads", "1",
                           "--json", str(tmp_path / "load.json")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "load.json").read_text())
    assert summary["requests"] == 12 and summary["unexpected"] == {} and summary["other_5xx"] == 0
    assert sum(summary["status_counts"].values()) == 12 and summary["status_counts"].get("200", 0) > 0
    memory = summary["server_memory_mb"]
    assert 50 < memory["rss_at_end"] <= memory["peak_rss"] < 4000


@pytest.mark.slow
def test_the_load_test_runs_hostile_clients_alongside_and_reports_them(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "loadtest.py"), "--random", "ced-tiny",
                           "--requests", "12", "--concurrency", "3", "--lengths", "1", "--threads", "1",
                           "--hostile", "--slow-uploads", "3", "--stalled-headers", "40", "--stream-floods", "1",
                           "--large-uploads", "1", "--hostile-head-start", "1", "--max-refusal-s", "5",
                           "--server-flag=--max-connections-per-client=4", "--server-flag=--header-timeout=1",
                           "--json", str(tmp_path / "load.json")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "load.json").read_text())
    assert summary["unexpected"] == {} and summary["other_5xx"] == 0 and summary["longest_refusal_s"] == 0
    hostile = summary["hostile"]
    assert set(hostile) == {"slow_uploads", "stalled_headers", "stream_floods", "large_uploads"}
    assert hostile["stalled_headers"]["outcomes"].get("429", 0) > 0  # over the per-client cap
    assert hostile["stream_floods"]["outcomes"].get("refused", 0) > 0
