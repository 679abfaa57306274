"""Running auricle under torchrun in tests, keeping each rank's own output for the failure message."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def torchrun(arguments: list[str], log_dir: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --log-dir LOG_DIR --tee 3 ARGUMENTS``.

    ``--tee`` keeps the ranks' output on the console (tests read it) and also
    writes it per rank under ``log_dir``, so a rank that dies (one once aborted
    with SIGABRT) shows its own last words even when torchrun's long summary
    fills the end of stderr.
    """
    command = [sys.executable, "-m", "torch.distributed.run", "--log-dir", str(log_dir), "--tee", "3", *arguments]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)


def failure_report(completed: subprocess.CompletedProcess, log_dir: Path, tail: int = 1500) -> str:
    """torchrun's exit code and stderr tail, then every rank's own stderr tail."""
    parts = [f"torchrun exited {completed.returncode}; its stderr ends:\n{completed.stderr[-tail:]}"]
    for log in sorted(log_dir.rglob("stderr.log")):
        parts.append(f"--- {log.relative_to(log_dir)} ends:\n{log.read_text(errors='replace')[-tail:]}")
    return "\n".join(parts)
