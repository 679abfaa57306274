"""Inference commands ask OpenMP for sleeping idle threads, so the decoder thread gets free cores."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from auricle.cli import cli


def test_tag_sets_passive_openmp_unless_the_user_chose(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    CliRunner().invoke(cli, ["tag", "--help"])
    assert os.environ.get("OMP_WAIT_POLICY") == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    CliRunner().invoke(cli, ["embed", "--help"])
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def test_other_commands_and_help_leave_openmp_alone(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    CliRunner().invoke(cli, ["--help"])
    CliRunner().invoke(cli, ["labels", "--help"])
    assert "OMP_WAIT_POLICY" not in os.environ


@pytest.mark.integration
def test_the_setting_is_in_place_before_torch_loads(tmp_path):
    # libgomp reads the variable once, when torch is imported: the command's module must not import it earlier.
    # `tag` imports torch only to load weights; a missing weights file gets that far, then fails.
    import numpy as np
    import soundfile

    clip = tmp_path / "clip.wav"
    soundfile.write(clip, np.zeros(1600, dtype=np.float32), 16000)
    probe = (
        "import os, sys\n"
        "os.environ.pop('OMP_WAIT_POLICY', None)\n"
        "seen = []\n"
        "class Watch:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch':\n"
        "            seen.append(os.environ.get('OMP_WAIT_POLICY'))\n"
        "        return None\n"
        "sys.meta_path.insert(0, Watch())\n"
        "from auricle.cli import cli\n"
        "try:\n"
        f"    cli(['tag', {str(clip)!r}, '--checkpoint', {str(tmp_path / 'missing.safetensors')!r}])\n"
        "except SystemExit:\n"
        "    pass\n"
        "assert seen, 'tag with weights no longer imports torch; this check needs another command path'\n"
        "print(seen[0])\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "PASSIVE"  # the value torch's OpenMP runtime was loaded with
