"""Synthetic recordings for the benchmarks: written in blocks, so an hour never sits in memory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

REFERENCE_CHECKPOINT = Path(__file__).resolve().parents[2] / "shared" / "reference" / "ced_mini_perturbed.pt"


def signal_block(start: int, samples: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Noise with a 1 kHz tone switched on for 3 s of every 20 s: events to find."""
    t = (start + np.arange(samples)) / sample_rate
    tone = 0.3 * np.sin(2 * np.pi * 1000 * t) * ((t % 20.0) < 3.0)
    return (0.05 * rng.standard_normal(samples) + tone).astype(np.float32)


def write_recording(path: Path, seconds: float, sample_rate: int = 16000, channels: int = 1, seed: int = 0,
                    block_seconds: float = 30.0) -> Path:
    """Write ``seconds`` of the synthetic signal to ``path`` (format from the suffix)."""
    rng = np.random.default_rng(seed)
    total = int(seconds * sample_rate)
    block = int(block_seconds * sample_rate)
    with sf.SoundFile(path, "w", samplerate=sample_rate, channels=channels) as handle:
        for start in range(0, total, block):
            mono = signal_block(start, min(block, total - start), sample_rate, rng)
            handle.write(np.repeat(mono[:, None], channels, axis=1) if channels > 1 else mono)
    return path


def write_with_pyav(path: Path, seconds: float, sample_rate: int, codec: str, seed: int = 0, channels: int = 1,
                    container_format: str | None = None) -> Path:
    """Formats libsndfile cannot write (e.g. AAC in .m4a, Opus in .webm), through PyAV.

    With ``channels=2`` the right channel is the left one at half level.
    """
    import av

    rng = np.random.default_rng(seed)
    samples = signal_block(0, int(seconds * sample_rate), sample_rate, rng)
    layout = {1: "mono", 2: "stereo"}[channels]
    with av.open(str(path), "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=sample_rate, layout=layout)
        frame_size = 960 if "opus" in codec else 1024
        for start in range(0, len(samples), frame_size):
            chunk = samples[start : start + frame_size]
            interleaved = np.stack([chunk, 0.5 * chunk][:channels], axis=1).reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(interleaved), format="flt", layout=layout)
            frame.sample_rate = sample_rate
            frame.pts = start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def auricle_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "auricle", *map(str, args)]


def run_measured(command: list[str], env: dict[str, str] | None = None) -> tuple[float, float, subprocess.CompletedProcess]:
    """(wall seconds, peak RSS in MB of the child, result) of one command (``env``: variables to set for it)."""
    import os
    import tempfile
    import time

    # Output goes to files, not pipes: a pipe would fill up and block the child while we wait4 it.
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=out, stderr=err, env=None if env is None else {**os.environ, **env})
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        process.returncode = code = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if code != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({code}): {stderr.decode()[-2000:]}")
    return wall, usage.ru_maxrss / 1024, subprocess.CompletedProcess(command, 0, stdout, stderr)


def report(result: dict, json_path: Path | None) -> None:
    """Print ``result`` one figure a line, and write it as JSON if asked."""
    import json

    for key, value in result.items():
        print(f"{key:>26}: {value:.3f}" if isinstance(value, float) else f"{key:>26}: {value}")
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=2))


def random_checkpoint(name: str, folder: Path, layout: str = "auricle") -> Path:
    """Random weights of a CED or Dasheng size (``ced-base``, ``dasheng-base``...) saved under ``folder``.

    ``layout``: ``auricle`` (our ``.safetensors``) or, for Dasheng, ``zenodo`` (the released ``.pt``:
    ``{"model": state_dict, "config": kwargs}`` with the official key names and frontend buffers).
    """
    import torch

    from auricle.models.ced import CED
    from auricle.models.checkpoints import save_checkpoint
    from auricle.models.dasheng import Dasheng
    from auricle.models.registry import model_info

    info = model_info(name)
    torch.manual_seed(0)  # speed does not depend on the weights; the same ones every run
    network = Dasheng(info.config) if info.family == "dasheng" else CED(info.config)
    if layout == "auricle":
        return save_checkpoint(network, folder / f"{name}-random.safetensors", name=f"{name}-random")
    if layout != "zenodo" or info.family != "dasheng":
        raise ValueError(f"no {layout!r} layout for {name}")
    config = info.config
    path = folder / f"{name}-random.pt"
    torch.save({"model": zenodo_state(network), "config": dict(embed_dim=config.embed_dim, depth=config.depth,
                                                               num_heads=config.num_heads)}, path)
    return path


def zenodo_state(network) -> dict:
    """A Dasheng network's weights with the official key names (``init_bn.1.``) and frontend buffers."""
    import torch

    from auricle.frontend import mel_filterbank

    state = {("init_bn.1." + key[len("init_bn."):] if key.startswith("init_bn.") else key): value
             for key, value in network.state_dict().items()}
    state["front_end.0.spectrogram.window"] = torch.hann_window(512)
    state["front_end.0.mel_scale.fb"] = mel_filterbank()
    return state


def random_checkpoint_apart(name: str, folder: Path, layout: str = "auricle") -> Path:
    """:func:`random_checkpoint` in a child process, so that this one stays small.

    A child's peak RSS as the kernel reports it (wait4) is at least the RSS its parent had when it
    started it (Linux keeps the high-water mark across fork and exec), so a benchmark that builds
    a model in its own process inflates the peaks it then measures.
    """
    script = ("import sys; sys.path.insert(0, sys.argv[1]); from pathlib import Path; "
              "from synthetic import random_checkpoint; "
              "print(random_checkpoint(sys.argv[2], Path(sys.argv[3]), sys.argv[4]))")
    done = subprocess.run([sys.executable, "-c", script, str(Path(__file__).resolve().parent), name, str(folder),
                           layout], check=True, capture_output=True, text=True)
    return Path(done.stdout.strip().splitlines()[-1])
