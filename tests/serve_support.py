"""Small checkpoints and signals for the service and live-listening tests.

``burst_checkpoint`` is a CED whose weights are set by hand so that it is a
known detector: class "Burst" scores ~0.997 when any 16x16 patch of the window's
log-mel is loud (broadband noise well above the quiet background), ~0.003
otherwise; class "Quiet" is its opposite. Blocks are identities (zeroed output
projections), so the mean token carries the fraction of loud patches and the
head thresholds it.
"""

from __future__ import annotations

from contextlib import contextmanager

import math
import shutil
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from auricle.models.ced import CED, CEDConfig
from auricle.models.checkpoints import save_checkpoint

#: The system browser the page tests drive (Debian: apt-get install chromium); None skips them.
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

SR = 16000
QUIET = 0.001
LOUD = 0.3
BURST_LABELS = ("Burst", "Quiet")


def tiny_random_checkpoint(path: Path, seed: int = 0) -> Path:
    """A random 527-class CED small enough for fast tests (AudioSet labels apply)."""
    torch.manual_seed(seed)
    network = CED(CEDConfig(embed_dim=64, num_heads=1, depth=2))
    return save_checkpoint(network, path, name="test-tiny")


def noise(seconds: float, level: float, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(round(seconds * SR))) * level).astype(np.float32)


def burst_signal(total: float, onset: float, offset: float, seed: int = 0) -> np.ndarray:
    """Quiet noise of ``total`` seconds with loud noise from ``onset`` to ``offset``."""
    signal = noise(total, QUIET, seed)
    first, last = int(round(onset * SR)), int(round(offset * SR))
    signal[first:last] = noise((last - first) / SR, LOUD, seed + 1)
    return signal


@torch.no_grad()
def burst_checkpoint(path: Path, labels: tuple[str, str] = BURST_LABELS) -> Path:
    config = CEDConfig(embed_dim=64, num_heads=1, depth=1, num_classes=2)
    network = CED(config)
    for parameter in network.parameters():
        parameter.zero_()
    network.init_bn.running_mean.zero_()
    network.init_bn.running_var.fill_(1.0)
    network.init_bn.weight.fill_(1.0)
    # Patch loudness threshold: halfway (in dB) between quiet and loud noise.
    levels = [float(network.spectrogram(torch.from_numpy(noise(1.0, level, 7))[None]).mean())
              for level in (QUIET, LOUD)]
    threshold = sum(levels) / 2
    size = config.patch_size
    network.patch_embed.proj.weight[0].fill_(1.0 / size**2)
    network.patch_embed.proj.weight[1].fill_(-1.0 / size**2)
    network.patch_embed.proj.bias[0] = -threshold
    network.patch_embed.proj.bias[1] = threshold
    # Per token, LayerNorm maps (s, -s, 0, ...) to (+-g, -+g, 0, ...): a loud/quiet indicator.
    g = math.sqrt(config.embed_dim / 2)
    loud_fraction = 0.01  # fire when more than 1 % of the patches are loud
    network.norm.weight.fill_(1.0)
    network.norm.bias[0] = g * (1 - 2 * loud_fraction)
    network.norm.bias[1] = -g * (1 - 2 * loud_fraction)
    for block in network.blocks:
        for norm in (block.norm1, block.norm2):
            norm.weight.fill_(1.0)
    network.outputlayer[0].weight.fill_(1.0)
    network.outputlayer[1].weight[0, 0] = 1.0
    network.outputlayer[1].weight[1, 0] = -1.0
    return save_checkpoint(network, path, labels=list(labels), name="burst-detector")


def write_wav(path: Path, samples: np.ndarray, rate: int = SR) -> Path:
    sf.write(path, samples, rate, subtype="PCM_16")
    return path


#: The test client's base URL: a loopback name the service answers to (its own default, "testserver", is not).
LOCAL = "http://localhost"
#: The stream socket's URL on that name (the test client's WebSocket URLs ignore base_url).
STREAM = "ws://localhost/v1/stream"


@contextmanager
def running_server(arguments: list[str], folder: Path):
    """`python -m auricle serve ARGUMENTS --port P` on loopback until the block ends; yields its base URL.

    The server's output goes to ``folder/server.log``, shown if it does not answer /healthz within 60 s.
    """
    import os
    import socket
    import subprocess
    import sys
    import time

    import httpx
    import pytest

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = open(folder / "server.log", "w+")
    process = subprocess.Popen([sys.executable, "-m", "auricle", "serve", *arguments, "--port", str(port)],
                               stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    try:
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                pytest.fail(f"auricle serve did not start:\n{log.read()}")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def serve_in_process(monkeypatch, *arguments: str) -> tuple:
    """`auricle serve ARGUMENTS --port P` in this process with uvicorn.run recorded instead of run:
    (the CLI's result, what uvicorn was handed: app and options, the port)."""
    import socket

    import uvicorn
    from click.testing import CliRunner

    from auricle.cli import cli

    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: served.update(app=app, **options))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return CliRunner().invoke(cli, ["serve", *arguments, "--port", str(port)]), served, port
