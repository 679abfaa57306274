"""ONNX export of CED and Dasheng models, with the frontend and the 10.12 s piece (Dasheng: 10.08 s
chunk) splitting inside the graph.

Two inputs:

* waveforms (the default): 16 kHz waveforms (batch, samples) -> ``probabilities`` (batch, classes)
  and ``embedding`` (batch, dim). The log-mel (STFT as a strided convolution), the per-clip
  120 dB floor, the input BatchNorm and the split into 1012-frame pieces all run in the
  graph, with dynamic batch and length, so any clip length gives what ``AudioModel.probabilities`` gives.
* ``--mel-input``: the log-mel (batch, 64, frames) in dB, as ``auricle.frontend.LogMel``
  computes it, for runtimes with their own frontend.

And two runtimes. ``portable`` (the default) is written in standard operators (opset 18),
for any ONNX runtime. ``onnxruntime`` has in its encoder the fused ``com.microsoft``
Attention and BiasGelu the ``onnx`` engine runs (QAttention with int8): faster in ONNX
Runtime, and made for it (other runtimes may not know those operators).
:mod:`auricle.onnx.graph` writes both, node by node.

A Dasheng file gives ``frame_embeddings`` (batch, tokens, dim), one per 40 ms, and ``embedding`` (their
mean), and ``probabilities`` where the checkpoint has a head (dasheng-base-audioset); see
:mod:`auricle.onnx.graph`.

Every export is checked against the torch model on synthetic clips of several
lengths before it is written; :class:`ExportReport` carries the figures.
"""

from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from auricle.audio import SAMPLE_RATE
from auricle.errors import EngineError, ExportError
from auricle.onnx.cache import refuse_oversized
from auricle.onnx.builder import EXPORT_OPSET
from auricle.onnx.graph import model_graph
from auricle.onnx.exported import read_metadata  # noqa: F401  (where it lived first)
from auricle.io import atomic
from auricle.models.ced import MIN_SAMPLES

#: An fp32 export whose probabilities stray further than this from torch is refused.
FP32_TOLERANCE = 1e-4
#: ... and a Dasheng fp32 export whose frame tokens (LayerNorm outputs, of order 1) stray further than this.
#: From the log-mel input on, graph and module agree to ~2e-6; from the waveform, pure tones' near-floor mel
#: bins round apart in the float32 DFT and move tokens by up to ~1.3e-3 (the reference checkpoint), while a
#: wrong chunk or mask moves them by their own size.
FP32_TOKEN_TOLERANCE = 1e-2
FORMATS = ("onnx",)
#: ``portable``: standard operators only; ``onnxruntime``: ONNX Runtime's fused contrib operators in the encoder.
RUNTIMES = ("portable", "onnxruntime")


class ParityError(ExportError):
    """The exported graph was built but strays from the torch model beyond the tolerance."""


# -- user-facing export --------------------------------------------------------------

@dataclass
class ExportReport:
    """What was exported and how closely it reproduces the torch model."""

    path: str
    model: str
    input: str  # "waveform" or "log-mel"
    int8: bool
    opset: int
    max_abs_diff: float | None  # probabilities, ONNX Runtime vs torch fp32, over the check clips (None: no head)
    embedding_max_abs_diff: float  # clip embeddings and per-piece (Dasheng: per-frame) embeddings
    top5_overlap: float | None  # (None: no head) mean share of each clip's torch top 5 found in the ONNX top 5 (top all, under 5 classes)
    check_clips: list[str]
    seconds: float
    size_bytes: int
    runtime: str = "portable"  # see RUNTIMES
    piece_embeddings: bool = False  # the third output, per-piece mean tokens

    def to_dict(self) -> dict:
        # "precision" as the file's metadata and the text report name it, beside the older "int8" flag.
        return {**asdict(self), "precision": "int8" if self.int8 else "fp32"}


def check_clips(seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic clips that exercise the length handling: short, one piece, exactly full, several pieces."""
    rng = np.random.default_rng(seed)
    t = lambda seconds: np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE  # noqa: E731
    chirp = lambda seconds: 0.5 * np.sin(2 * np.pi * (100 + 300 * t(seconds)) * t(seconds))  # noqa: E731
    clips = {
        "noise_0.1s": 0.1 * rng.standard_normal(1600),
        "sine_1s": 0.5 * np.sin(2 * np.pi * 440 * t(1.0)),
        "chirp_10s": chirp(10.0),
        "noise_tone_10.12s_x2": np.concatenate([0.1 * rng.standard_normal(161760), chirp(10.23)[:161920]]),
        "mix_25.3s": 0.05 * rng.standard_normal(404800) + chirp(25.3),
    }
    return {name: clip.astype(np.float32) for name, clip in clips.items()}


def _metadata(model, input_kind: str, int8: bool, runtime: str, piece_embeddings: bool = False) -> dict[str, str]:
    from auricle.version import __version__

    network = model.network
    if getattr(network, "family", "ced") == "dasheng":
        return _dasheng_metadata(model, input_kind, int8, runtime, __version__)
    return {
        "producer": f"auricle {__version__}",
        "model": model.name,
        "input": input_kind,
        "precision": "int8" if int8 else "fp32",
        "runtime": runtime,
        "labels": json.dumps([item.name for item in model.labels.classes]),
        "label_mids": json.dumps([item.mid for item in model.labels.classes]),
        "frontend": json.dumps(asdict(network.frontend.config)),
        "encoder": json.dumps(network.config.to_dict()),
        "piece_frames": str(network.config.target_frames),
        "min_samples": str(MIN_SAMPLES),
        "outputs": "probabilities (batch, classes): mean over 1012-frame pieces of the "
                   f"{network.config.head_activation}; "
                   "embedding (batch, dim): mean of all encoder tokens"
                   + ("; piece_embeddings (pieces, batch, dim): mean token of each 1012-frame piece"
                      if piece_embeddings else ""),
    }


def _dasheng_metadata(model, input_kind: str, int8: bool, runtime: str, version: str) -> dict[str, str]:
    network = model.network
    classes = model.labels.classes if model.labels is not None else ()
    return {
        "producer": f"auricle {version}",
        "model": model.name,
        "family": "dasheng",
        "input": input_kind,
        "precision": "int8" if int8 else "fp32",
        "runtime": runtime,
        "labels": json.dumps([item.name for item in classes]),
        "label_mids": json.dumps([item.mid for item in classes]),
        "frontend": json.dumps(asdict(network.frontend.config)),
        "encoder": json.dumps(network.config.to_dict()),
        "piece_frames": str(network.config.target_frames),  # a chunk: what auricle.onnx.rows cuts calls at
        "patch_frames": str(network.config.patch_frames),
        "min_samples": str(network.min_samples),
        "outputs": ("probabilities (batch, classes): the head's "
                    f"{network.config.head_activation} of the mean token; " if classes else "")
                   + "embedding (batch, dim): mean of all encoder tokens; frame_embeddings (batch, tokens, dim): "
                     "one token per 40 ms, in 252-token chunks as the official Dasheng",
    }


def export_onnx(model, out: str | os.PathLike, *, int8: bool = False, mel_input: bool = False,
                runtime: str = "portable", tolerance: float = FP32_TOLERANCE,
                piece_embeddings: bool = False) -> ExportReport:
    """Export ``model`` (an :class:`auricle.model.AudioModel`) to ``out`` and check it against torch.

    ``runtime="onnxruntime"`` puts the ``onnx`` engine's fused encoder in the
    graph (ONNX Runtime only; with ``int8`` only the encoder is quantised).
    The file is written only if the check passes (fp32: probabilities within
    ``tolerance``, default :data:`FP32_TOLERANCE`); int8 agreement is reported, never enforced.
    ``piece_embeddings`` adds a third output, the mean token of every 1012-frame piece
    (pieces, batch, dim): with it, an exported file can embed as ``AudioModel.embed`` does.
    A Dasheng model (:class:`auricle.dasheng_model.DashengModel`) always gets its frame embeddings;
    fp32 is checked on its frame tokens (:data:`FP32_TOKEN_TOLERANCE`) and, with a head, probabilities.
    """
    try:
        import onnx  # noqa: F401  (the graph is built with it)
        import onnxruntime as ort
    except ImportError as error:
        raise ExportError(f"auricle export needs {error.name or 'onnx and onnxruntime'}: "
                          "pip install 'auricle[onnx]'") from None
    if runtime not in RUNTIMES:
        raise ExportError(f"{model.name}: unknown runtime {runtime!r} (choose from {', '.join(RUNTIMES)})")
    started = time.perf_counter()
    try:
        refuse_oversized(model.network, int8, f"{model.name}: ONNX export")
    except EngineError as error:
        raise ExportError(str(error)) from None
    # A copy: the caller's model keeps its device and dtype.
    network = copy.deepcopy(model.network).float().cpu().eval()
    input_name = "mel" if mel_input else "waveforms"
    try:
        proto = model_graph(network, mel_input, runtime == "onnxruntime", piece_embeddings, int8)
    except ExportError:
        raise
    except Exception as error:  # onnx raises many types; all mean "cannot export"
        raise ExportError(f"{model.name}: ONNX export failed: {str(error).strip().splitlines()[0]}") from error
    for key, value in _metadata(model, "log-mel" if mel_input else "waveform", int8, runtime,
                                piece_embeddings).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    payload = proto.SerializeToString()

    session = ort.InferenceSession(payload, providers=["CPUExecutionProvider"])
    clips = check_clips()
    if getattr(network, "family", "ced") == "dasheng":
        worst, embedding_worst, overlap = _check_dasheng(model.name, network, session, clips, mel_input, int8,
                                                         tolerance)
        return _written(out, payload, ExportReport(
            path=str(out), model=model.name, input="log-mel" if mel_input else "waveform", int8=int8,
            opset=EXPORT_OPSET, max_abs_diff=worst, embedding_max_abs_diff=embedding_worst, top5_overlap=overlap,
            check_clips=list(clips), seconds=0.0, size_bytes=len(payload), runtime=runtime,
            piece_embeddings=True), started)
    worst = embedding_worst = 0.0
    overlaps = []
    with torch.inference_mode():
        for clip in clips.values():
            # Batch of two (the clip and half its amplitude) to exercise the batch axis.
            batch = torch.from_numpy(np.stack([clip, 0.5 * clip]))
            tokens, count = network.encode(batch)  # once for both outputs: the encoder is the check's cost
            expected = network.clip_probabilities(tokens, count).numpy()
            expected_pieces = tokens.mean(dim=1).reshape(count, 2, -1)
            expected_embedding = expected_pieces.mean(dim=0).numpy()
            feed = network.spectrogram(batch) if mel_input else batch
            probabilities, embedding, *pieces = session.run(None, {input_name: feed.numpy()})
            worst = max(worst, float(np.abs(probabilities - expected).max()))
            embedding_worst = max(embedding_worst, float(np.abs(embedding - expected_embedding).max()))
            if pieces:
                embedding_worst = max(embedding_worst, float(np.abs(pieces[0] - expected_pieces.numpy()).max()))
            # With fewer than 5 classes (a probe's head) a top 5 would hold classes that are not there.
            overlaps.extend(top_k_overlap(expected, probabilities, min(5, expected.shape[-1])))
    if not int8 and worst > tolerance:
        # Sharp heads magnify where the graph's float32 DFT and torch's FFT round apart (near-silent bins of pure tones).
        raise ParityError(f"{model.name}: exported graph differs from torch by {worst:.2e} in probability "
                          f"(limit {tolerance:g}); nothing written (raise the limit with --tolerance to accept it)")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_bytes(out, payload)
    return ExportReport(
        path=str(out), model=model.name, input="log-mel" if mel_input else "waveform", int8=int8, opset=EXPORT_OPSET,
        max_abs_diff=worst, embedding_max_abs_diff=embedding_worst, top5_overlap=float(np.mean(overlaps)),
        check_clips=list(clips), seconds=time.perf_counter() - started, size_bytes=len(payload), runtime=runtime,
        piece_embeddings=piece_embeddings,
    )


def _check_dasheng(name: str, network, session, clips: dict[str, np.ndarray], mel_input: bool, int8: bool,
                   tolerance: float) -> tuple[float | None, float, float | None]:
    """(probabilities' worst difference or None, embeddings' worst, top-5 overlap or None) against the torch
    module; raises :class:`ParityError` for an fp32 graph past the tolerances."""
    head = bool(network.config.num_classes)
    worst = embedding_worst = 0.0
    overlaps: list[float] = []
    names = [item.name for item in session.get_outputs()]
    with torch.inference_mode():
        for clip in clips.values():
            batch = torch.from_numpy(np.stack([clip, 0.5 * clip]))
            tokens = network.encode(batch)
            feed = network.spectrogram(batch) if mel_input else batch
            found = dict(zip(names, session.run(None, {"mel" if mel_input else "waveforms": feed.numpy()})))
            embedding_worst = max(embedding_worst, float(np.abs(found["frame_embeddings"] - tokens.numpy()).max()),
                                  float(np.abs(found["embedding"] - tokens.mean(dim=1).numpy()).max()))
            if head:
                expected = network.activate(network.forward_head(tokens)).numpy()
                worst = max(worst, float(np.abs(found["probabilities"] - expected).max()))
                overlaps.extend(top_k_overlap(expected, found["probabilities"], min(5, expected.shape[-1])))
    if not int8 and (worst > tolerance or embedding_worst > FP32_TOKEN_TOLERANCE):
        raise ParityError(f"{name}: exported graph differs from torch by {worst:.2e} in probability (limit "
                          f"{tolerance:g}) and {embedding_worst:.2e} in frame tokens (limit {FP32_TOKEN_TOLERANCE:g}); "
                          "nothing written")
    return (worst if head else None), embedding_worst, (float(np.mean(overlaps)) if head else None)


def _written(out: str | os.PathLike, payload: bytes, report: ExportReport, started: float) -> ExportReport:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_bytes(out, payload)
    report.seconds = time.perf_counter() - started
    return report


def top_k_overlap(reference: np.ndarray, other: np.ndarray, k: int = 5) -> list[float]:
    """Per row, the share of ``reference``'s top ``k`` classes that are also in ``other``'s top ``k``."""
    reference_top = np.argsort(-reference, axis=-1)[:, :k]
    other_top = np.argsort(-other, axis=-1)[:, :k]
    return [len(set(a) & set(b)) / k for a, b in zip(reference_top, other_top)]
