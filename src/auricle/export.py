"""ONNX export of CED models, with the frontend and the 10.12 s piece splitting inside the graph.

Two graphs are built from one network:

* :class:`WaveformInput` over :class:`MelGraph` (the default export): 16 kHz waveforms (batch, samples)
  -> ``probabilities`` (batch, classes) and ``embedding`` (batch, dim). The
  log-mel (STFT as a strided convolution with a windowed DFT basis, see
  :class:`ConvLogMel`), the per-clip 120 dB floor, the input
  BatchNorm and the split into 1012-frame pieces all run in the graph, with
  dynamic batch and length, so any clip length gives what ``AudioModel.probabilities``
  gives.
* :class:`MelGraph` (``--mel-input``): the log-mel (batch, 64, frames) in dB,
  as ``auricle.frontend.LogMel`` computes it, for runtimes with their own frontend.

Each comes in two runtimes. ``portable`` (the default) is the exporter's trace
of the whole network in standard operators (opset 18), for any ONNX runtime.
``onnxruntime`` keeps the traced frontend and head but puts in the encoder the
``onnx`` engine runs, :mod:`auricle.inference.ort_graph` (fused
``com.microsoft`` Attention and BiasGelu; QAttention with int8): faster in
ONNX Runtime, and only loadable there. It is three graphs joined with
``onnx.compose``: input -> pieces (:class:`MelPieces`), pieces -> tokens
(ort_graph), tokens -> outputs (:class:`PooledHead`).

Every export is checked against the torch model on synthetic clips of several
lengths before it is written; :class:`ExportReport` carries the figures.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from auricle.audio import SAMPLE_RATE
from auricle.errors import AuricleError
from auricle.exported import read_metadata  # noqa: F401  (where it lived first)
from auricle.frontend import FrontendConfig, LogMel
from auricle.io import atomic
from auricle.models.ced import CED, MIN_SAMPLES

OPSET = 18
#: An fp32 export whose probabilities stray further than this from torch is refused.
FP32_TOLERANCE = 1e-4
FORMATS = ("onnx",)
#: ``portable``: standard operators only; ``onnxruntime``: ONNX Runtime's fused contrib operators in the encoder.
RUNTIMES = ("portable", "onnxruntime")


class ExportError(AuricleError):
    """A model cannot be exported, or the export does not reproduce the torch model."""


class ParityError(ExportError):
    """The exported graph was built but strays from the torch model beyond the tolerance."""


def split_pieces(normalized: torch.Tensor, target_frames: int) -> tuple[torch.Tensor, torch.SymInt | int]:
    """``CED.pieces`` without Python branching on the length, so it exports with a dynamic length.

    Up to ``target_frames`` the input is one piece of its own length; past it,
    the mel is zero-padded to a whole number of pieces, stacked piece-major.
    """
    frames = normalized.shape[-1]
    count = (frames + target_frames - 1) // target_frames
    # sym_min(count - 1, 1) is 0 for one piece (keep its length) and 1 otherwise (pad).
    target = frames + torch.sym_min(count - 1, 1) * (count * target_frames - frames)
    padded = F.pad(normalized, (0, target - frames))
    batch, _, mels, _ = padded.shape
    pieces = padded.reshape(batch, mels, count, target // count).permute(2, 0, 1, 3)
    return pieces.reshape(count * batch, 1, mels, target // count), count


def pool_pieces(network: CED, tokens: torch.Tensor, count, piece_embeddings: bool = False) -> tuple[torch.Tensor, ...]:
    """Tokens of ``count`` pieces per clip, piece-major -> (probabilities, embedding) per clip.

    ``piece_embeddings``: also the mean token of every piece, (pieces, batch, dim), what
    ``AudioModel.embed`` gives as ``windows`` for a recording passed whole.
    """
    probabilities = network.activate(network.forward_head(tokens))
    probabilities = probabilities.reshape(count, -1, probabilities.shape[-1]).mean(dim=0)
    pieces = tokens.mean(dim=1).reshape(count, -1, tokens.shape[-1])
    # Every piece has the same token count, so this is the mean over all tokens (the HEAR clip embedding).
    embedding = pieces.mean(dim=0)
    return (probabilities, embedding, pieces) if piece_embeddings else (probabilities, embedding)


def pad_short(waveforms: torch.Tensor) -> torch.Tensor:
    """Clips under one patch zero-padded, as CED.spectrogram does, without a branch."""
    return F.pad(waveforms, (0, torch.sym_max(MIN_SAMPLES - waveforms.shape[-1], 0)))


class ConvLogMel(LogMel):
    """The log-mel with its STFT written as a strided convolution with a windowed DFT basis (for export).

    ONNX's ``STFT`` operator ran at ~8 ms per 10 s clip in ONNX Runtime here, a
    third of an int8 file's time; the same transform as a ``Conv`` runs on the
    matrix-product kernels. Same float32 arithmetic up to summation order (the
    export's parity check holds it to the torch model).
    """

    def __init__(self, config: FrontendConfig) -> None:
        if config.win_length != config.n_fft:
            raise ExportError("the convolutional STFT assumes win_length == n_fft")
        super().__init__(config)
        bins = config.n_fft // 2 + 1
        time_index = torch.arange(config.n_fft, dtype=torch.float64)
        angle = 2 * torch.pi * torch.arange(bins, dtype=torch.float64)[:, None] * time_index / config.n_fft
        window = torch.hann_window(config.win_length, periodic=True, dtype=torch.float64)
        basis = torch.cat([torch.cos(angle) * window, -torch.sin(angle) * window])  # (2 * bins, n_fft)
        self.register_buffer("dft_basis", basis.float().unsqueeze(1), persistent=False)

    def power_mel(self, waveforms: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        padded = F.pad(waveforms.unsqueeze(1), (cfg.n_fft // 2, cfg.n_fft // 2), mode="reflect")
        real, imag = F.conv1d(padded, self.dft_basis, stride=cfg.hop_length).chunk(2, dim=1)
        power = real.square() + imag.square()
        return torch.matmul(power.transpose(-1, -2), self.mel_basis).transpose(-1, -2)


class MelGraph(nn.Module):
    """Log-mel (batch, n_mels, frames) in dB -> (probabilities, embedding)."""

    def __init__(self, network: CED, piece_embeddings: bool = False) -> None:
        super().__init__()
        self.network = network
        self.piece_embeddings = piece_embeddings

    def forward(self, mel: torch.Tensor) -> tuple[torch.Tensor, ...]:
        network = self.network
        pieces, count = split_pieces(network.normalize(mel), network.config.target_frames)
        return pool_pieces(network, network.forward_features(pieces), count, self.piece_embeddings)


class WaveformInput(nn.Module):
    """16 kHz waveforms (batch, samples) -> what ``mel_part`` makes of their log-mel: the frontend in the graph.

    ``WaveformInput(MelGraph(network))`` is the default export (waveforms -> probabilities,
    embedding); ``WaveformInput(MelPieces(network))`` the input side of the ``onnxruntime`` runtime.
    """

    def __init__(self, mel_part: MelGraph | MelPieces) -> None:
        super().__init__()
        self.mel_part = mel_part
        self.frontend = ConvLogMel(mel_part.network.frontend.config)

    def forward(self, waveforms: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.mel_part(self.frontend(pad_short(waveforms)))


class MelPieces(nn.Module):
    """Log-mel -> (normalised pieces, ``piece_marker``): the part before the encoder, ``onnxruntime`` runtime.

    ``piece_marker`` is an empty-valued (zeros) tensor of shape (pieces per clip,):
    its length carries the piece count to :class:`PooledHead` through the joined
    graph as a dynamic dimension, which a shape-only input traces without data-dependent ops.
    """

    def __init__(self, network: CED) -> None:
        super().__init__()
        self.network = network

    def forward(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pieces, count = split_pieces(self.network.normalize(mel), self.network.config.target_frames)
        return pieces, pieces.new_zeros(count)


class PooledHead(nn.Module):
    """(tokens (pieces * batch, patches, dim), ``piece_marker``) -> (probabilities, embedding[, piece_embeddings])."""

    def __init__(self, network: CED, piece_embeddings: bool = False) -> None:
        super().__init__()
        self.network = network
        self.piece_embeddings = piece_embeddings

    def forward(self, tokens: torch.Tensor, piece_marker: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return pool_pieces(self.network, tokens, piece_marker.shape[0], self.piece_embeddings)


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """Silence the exporter's chatter (missing torchvision ops, deprecations) for one export."""
    # onnxruntime.quantization warns through the root logger.
    loggers = [logging.getLogger("torch.onnx"), logging.getLogger()]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _to_onnx(graph: nn.Module, examples: dict[str, torch.Tensor], dims: dict[str, dict[int, torch.export.Dim]],
             output_names: list[str]):
    """ModelProto of ``graph``; ``examples`` are its forward arguments by name, ``dims`` their dynamic axes."""
    graph.eval()
    with quiet_exporter():
        program = torch.onnx.export(
            graph, tuple(examples.values()), dynamo=True, opset_version=OPSET, input_names=list(examples),
            output_names=output_names, dynamic_shapes=dims, optimize=True, verbose=False,
        )
    return program.model_proto


def quantize_int8(model_proto, work_dir: Path, keep_float: list[str] | None = None,
                  op_types: tuple[str, ...] = ("MatMul", "Gemm"), extra_options: dict | None = None):
    """Dynamic int8 quantisation of the weights of ``op_types`` nodes (activations quantised per call).

    ``keep_float`` names nodes left in float32 (see :func:`filterbank_products`).

    Weights are quantised per output channel to 7 bits (``reduce_range``). On CPUs
    without VNNI (AVX2 only), ONNX Runtime multiplies uint8 activations by int8
    weights with ``vpmaddubsw``, whose int16 pair sums saturate for 8-bit weights:
    on an AMD Zen 3 that moved a small model's probabilities by 0.39 (0.11 through
    QAttention). 7-bit weights cannot saturate, and per-channel scales win back
    the lost bit (worst difference 0.008). A file exported on one CPU
    runs on any other, so this is done everywhere.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source, target = work_dir / "fp32.onnx", work_dir / "int8.onnx"
    onnx.save_model(model_proto, source)
    with quiet_exporter():
        quantize_dynamic(source, target, weight_type=QuantType.QInt8, per_channel=True, reduce_range=True,
                         op_types_to_quantize=list(op_types),
                         nodes_to_exclude=list(keep_float or []), extra_options=extra_options or {})
    return onnx.load_model(target)


def filterbank_products(model_proto, network: CED) -> list[str]:
    """Names of the MatMul nodes that apply the frontend's mel filterbank.

    Their input is the power spectrum, whose values span ~12 orders of magnitude:
    one int8 scale per call rounds all but the loudest bins to zero, and the
    log-mel (then every score) with them. On a small random model, quantising it
    moved probabilities by 0.77 where the encoder alone moves them by 0.006.
    """
    from onnx import numpy_helper

    basis = network.frontend.mel_basis.detach().cpu().numpy()
    matches = {item.name for item in model_proto.graph.initializer
               if tuple(item.dims) in (basis.shape, basis.T.shape)
               and np.array_equal(numpy_helper.to_array(item).reshape(-1),
                                  (basis if tuple(item.dims) == basis.shape else basis.T).reshape(-1))}
    return [node.name for node in model_proto.graph.node if node.op_type == "MatMul" and matches & set(node.input)]


def onnxruntime_graph(network: CED, mel_input: bool, int8: bool, work_dir: Path, piece_embeddings: bool = False):
    """The ``onnxruntime`` runtime's graph: traced frontend, ort_graph's fused encoder, traced head."""
    import onnx
    from onnx import compose

    from auricle.inference import ort_graph

    front = _to_onnx(*_front_parts(network, mel_input, pieces_only=True), ["pieces", "piece_marker"])
    # Examples of size 2 at least on every dynamic axis: torch.export specialises axes of size 0 or 1.
    tokens = torch.zeros(4, 62, network.config.embed_dim)
    head = _to_onnx(PooledHead(network, piece_embeddings), {"tokens": tokens, "piece_marker": torch.zeros(2)},
                    {"tokens": {0: torch.export.Dim("n"), 1: torch.export.Dim("patches")},
                     "piece_marker": {0: torch.export.Dim("count")}},
                    output_names(piece_embeddings))
    encoder = ort_graph.encoder_graph(network)
    if int8:  # only the encoder: its MatMuls and Attention are nearly all of the arithmetic
        encoder = ort_graph.quantize_encoder(encoder, work_dir)
    # merge_models wants one IR version and one version per operator domain. The encoder's standard
    # operators (Conv, Slice, Shape, Reshape, Transpose, Add, MatMul, LayerNormalization and, int8,
    # DynamicQuantizeLinear, Mul, Cast) have the same definition in opset 17 and 18.
    encoder.ir_version = front.ir_version
    for entry in encoder.opset_import:
        if entry.domain in ("", "ai.onnx"):
            entry.version = OPSET
    parts = [compose.add_prefix(model, prefix, rename_inputs=False, rename_outputs=False)
             for model, prefix in ((front, "front/"), (encoder, "encoder/"), (head, "head/"))]
    joined = compose.merge_models(parts[0], parts[1], io_map=[("pieces", "pieces")])
    joined = compose.merge_models(joined, parts[2],
                                  io_map=[("tokens", "tokens"), ("piece_marker", "piece_marker")])
    opsets = {entry.domain or "": entry.version for entry in joined.opset_import}
    del joined.opset_import[:]
    joined.opset_import.extend(onnx.helper.make_opsetid(domain, version) for domain, version in opsets.items())
    joined.graph.name = "auricle_ced_onnxruntime"
    return joined


def output_names(piece_embeddings: bool) -> list[str]:
    return ["probabilities", "embedding"] + (["piece_embeddings"] if piece_embeddings else [])


def _front_parts(network: CED, mel_input: bool, pieces_only: bool = False, piece_embeddings: bool = False):
    """(module, example inputs, dynamic axes) of the graph's input side for ``_to_onnx``."""
    module = MelPieces(network) if pieces_only else MelGraph(network, piece_embeddings)
    if mel_input:
        return (module, {"mel": torch.zeros(2, network.config.n_mels, 1101)},
                {"mel": {0: torch.export.Dim("batch"), 2: torch.export.Dim("frames", min=1, max=2**24)}})
    return (WaveformInput(module), {"waveforms": torch.zeros(2, 176000)},
            {"waveforms": {0: torch.export.Dim("batch"), 1: torch.export.Dim("samples", min=1, max=2**31 - 1)}})


# -- user-facing export --------------------------------------------------------------

@dataclass
class ExportReport:
    """What was exported and how closely it reproduces the torch model."""

    path: str
    model: str
    input: str  # "waveform" or "log-mel"
    int8: bool
    opset: int
    max_abs_diff: float  # probabilities, ONNX Runtime vs torch fp32, over the check clips
    embedding_max_abs_diff: float
    top5_overlap: float  # mean share of each clip's torch top 5 found in the ONNX top 5 (top all, under 5 classes)
    check_clips: list[str]
    seconds: float
    size_bytes: int
    runtime: str = "portable"  # see RUNTIMES
    piece_embeddings: bool = False  # the third output, per-piece mean tokens

    def to_dict(self) -> dict:
        return asdict(self)


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
    from auricle import __version__

    network = model.network
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
        "outputs": "probabilities (batch, classes): mean over 1012-frame pieces of the sigmoid; "
                   "embedding (batch, dim): mean of all encoder tokens"
                   + ("; piece_embeddings (pieces, batch, dim): mean token of each 1012-frame piece"
                      if piece_embeddings else ""),
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
    """
    import tempfile

    import onnxruntime as ort

    if runtime not in RUNTIMES:
        raise ExportError(f"{model.name}: unknown runtime {runtime!r} (choose from {', '.join(RUNTIMES)})")
    started = time.perf_counter()
    # A copy: the caller's model keeps its device and dtype.
    network = copy.deepcopy(model.network).float().cpu().eval()
    input_name = "mel" if mel_input else "waveforms"
    try:
        with tempfile.TemporaryDirectory() as work:
            if runtime == "onnxruntime":
                proto = onnxruntime_graph(network, mel_input, int8, Path(work), piece_embeddings)
            else:
                proto = _to_onnx(*_front_parts(network, mel_input, piece_embeddings=piece_embeddings),
                                 output_names(piece_embeddings))
                if int8:
                    proto = quantize_int8(proto, Path(work), keep_float=filterbank_products(proto, network))
    except Exception as error:  # the exporter raises many types; all mean "cannot export"
        raise ExportError(f"{model.name}: ONNX export failed: {str(error).strip().splitlines()[0]}") from error
    for key, value in _metadata(model, "log-mel" if mel_input else "waveform", int8, runtime,
                                piece_embeddings).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    payload = proto.SerializeToString()

    session = ort.InferenceSession(payload, providers=["CPUExecutionProvider"])
    clips = check_clips()
    worst = embedding_worst = 0.0
    overlaps = []
    with torch.inference_mode():
        for clip in clips.values():
            # Batch of two (the clip and half its amplitude) to exercise the batch axis.
            batch = torch.from_numpy(np.stack([clip, 0.5 * clip]))
            expected = network(batch).numpy()
            tokens, count = network.encode(batch)
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
        path=str(out), model=model.name, input="log-mel" if mel_input else "waveform", int8=int8, opset=OPSET,
        max_abs_diff=worst, embedding_max_abs_diff=embedding_worst, top5_overlap=float(np.mean(overlaps)),
        check_clips=list(clips), seconds=time.perf_counter() - started, size_bytes=len(payload), runtime=runtime,
        piece_embeddings=piece_embeddings,
    )


def top_k_overlap(reference: np.ndarray, other: np.ndarray, k: int = 5) -> list[float]:
    """Per row, the share of ``reference``'s top ``k`` classes that are also in ``other``'s top ``k``."""
    reference_top = np.argsort(-reference, axis=-1)[:, :k]
    other_top = np.argsort(-other, axis=-1)[:, :k]
    return [len(set(a) & set(b)) / k for a, b in zip(reference_top, other_top)]
