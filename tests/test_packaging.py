"""What pyproject.toml promises: the extras, and that the tests run with them but without system libraries."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from auricle.cli import cli

ROOT = Path(__file__).resolve().parents[1]


def _extras() -> dict[str, list[str]]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def test_dev_holds_every_feature_extra_that_installs_from_pypi_alone():
    """listen was left out of dev ("needs PortAudio"), but sounddevice installs without it."""
    dev = next(item for item in _extras()["dev"] if item.startswith("auricle["))
    held = set(dev[len("auricle["):-1].split(","))
    assert {"serve", "listen", "onnx", "eval"} <= held
    # The README's sentence on [dev] names what it holds, no more and no less.
    sentence = next(line for line in (ROOT / "README.md").read_text().splitlines() if "`[dev]` holds" in line)
    named = sentence.split("`[dev]` holds", 1)[1].split(" with the test tools")[0]
    assert {name.strip(" `") for name in named.replace(" and ", ", ").split(", ")} == held


@pytest.mark.integration
def test_listen_with_sounddevice_but_no_portaudio_says_what_is_missing(tiny_checkpoint, tmp_path, monkeypatch):
    """sounddevice without PortAudio raises OSError on import (as its Linux wheel does); only a microphone
    imports it, and then says so in one line."""
    (tmp_path / "sounddevice.py").write_text("raise OSError('PortAudio library not found')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "sounddevice", raising=False)
    result = CliRunner().invoke(cli, ["listen", "mic", "--checkpoint", str(tiny_checkpoint), "--threads", "1"])
    assert result.exit_code == 1 and result.stderr.strip().splitlines()[-1] == (
        "auricle: error: microphone input needs sounddevice and PortAudio (pip install 'auricle[listen]'): "
        "PortAudio library not found")
