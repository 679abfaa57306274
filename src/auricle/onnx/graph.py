"""The graphs ``auricle export`` writes, built node by node from the network's weights.

CED:

    waveforms (batch, samples)            mel (batch, n_mels, frames), with --mel-input
      -> log-mel in dB (log_mel_nodes)  --^
      -> input BatchNorm, split into <=1012-frame pieces (piece_nodes)
      -> encoder (auricle.onnx.encoder: standard operators, or ONNX Runtime's fused ones)
      -> head and pooling over pieces (head_nodes)
      -> probabilities (batch, classes), embedding (batch, dim)[, piece_embeddings (pieces, batch, dim)]

Dasheng (:func:`dasheng_nodes`): the same log-mel and BatchNorm, then 1008-frame chunks (252 tokens)
through the encoder, the short last one zero-padded where there are several and its padding hidden
from attention by a key mask (which equals running it alone, as the module does), the padding tokens
dropped -> ``frame_embeddings`` (batch, tokens, dim), ``embedding`` (batch, dim: their mean) and, with
a head, ``probabilities`` (batch, classes) from the mean token.

Every axis that depends on the input (batch, length, piece count) is computed in the
graph, so one file takes any batch of clips of any one length and gives what
``AudioModel.probabilities`` and ``AudioModel.embed`` give. The STFT is a strided
convolution with a windowed DFT basis: ONNX's ``STFT`` operator ran at ~8 ms per 10 s
clip in ONNX Runtime here, a third of an int8 file's time, and the convolution runs on
the matrix-product kernels (same float32 arithmetic up to summation order).

Writing the nodes directly takes a fraction of a second for ced-mini on 2 cores, where tracing
the torch modules with ``torch.onnx.export`` took 4-25 s per graph (and ``quantize_dynamic``
2-4 s more for int8), and needs neither ``onnxscript`` nor the exporter's version quirks.
"""

from __future__ import annotations

import math

import torch

from auricle.errors import ExportError
from auricle.frontend import AMIN, FrontendConfig, LogMel
from auricle.models.ced import CED, MIN_SAMPLES
from auricle.models.dasheng import Dasheng
from auricle.onnx.builder import CONTRIB_DOMAIN, EXPORT_OPSET, GraphBuilder
from auricle.onnx.encoder import encoder_nodes

ENCODER_PREFIX = "encoder/"
FILTERBANK_NODE = "frontend/filterbank"


def dft_basis(config: FrontendConfig) -> torch.Tensor:
    """(2 * bins, 1, n_fft): the Hann-windowed cosine rows, then the negated sine rows, of the one-sided DFT."""
    bins = config.n_fft // 2 + 1
    time_index = torch.arange(config.n_fft, dtype=torch.float64)
    angle = 2 * torch.pi * torch.arange(bins, dtype=torch.float64)[:, None] * time_index / config.n_fft
    window = torch.hann_window(config.win_length, periodic=True, dtype=torch.float64)
    return torch.cat([torch.cos(angle) * window, -torch.sin(angle) * window]).float().unsqueeze(1)


def log_mel_nodes(g: GraphBuilder, frontend: LogMel, waveforms: str, output: str | None = None,
                  min_samples: int = MIN_SAMPLES) -> str:
    """16 kHz waveforms (batch, samples) -> log-mel in dB (batch, n_mels, frames), as ``CED.spectrogram``.

    Clips under one patch (``min_samples``: the network's) are zero-padded first; the 120 dB floor is each clip's own.
    """
    config = frontend.config
    if config.win_length != config.n_fft:
        raise ExportError("the convolutional STFT assumes win_length == n_fft")
    bins = config.n_fft // 2 + 1
    short_by = g.node("Max", [g.node("Sub", [g.constant("min_samples", [min_samples]),
                                             g.node("Shape", [waveforms], start=1, end=2)]),
                              g.constant("zero", [0])])
    x = g.node("Pad", [waveforms, g.node("Concat", [g.constant("no_pad", [0, 0, 0]), short_by], axis=0)])
    half = config.n_fft // 2  # centred frames, as torch.stft(center=True)
    x = g.node("Pad", [x, g.constant("centre_pad", [0, half, 0, half])], mode="reflect")
    x = g.node("Unsqueeze", [x, g.constant("channel_axis", [1])])
    spectrum = g.node("Conv", [x, g.constant("dft_basis", dft_basis(config))],
                      kernel_shape=[config.n_fft], strides=[config.hop_length])  # (batch, 2 bins, frames)
    real, imag = g.node("Split", [spectrum, g.constant("halves", [bins, bins])], outputs=2, axis=1)
    power = g.node("Add", [g.node("Mul", [real, real]), g.node("Mul", [imag, imag])])
    g.node("MatMul", [g.constant("mel_basis", frontend.mel_basis.T), power], FILTERBANK_NODE)  # (batch, n_mels, frames)
    decibels = g.node("Mul", [g.node("Log", [g.node("Max", [FILTERBANK_NODE, g.constant("amin", AMIN)])]),
                              g.constant("db_per_neper", 10.0 / math.log(10.0))])
    loudest = g.node("ReduceMax", [decibels, g.constant("mel_frame_axes", [1, 2])], keepdims=1)
    floor = g.node("Sub", [loudest, g.constant("top_db", config.top_db)])
    return g.node("Max", [decibels, floor], output)


def normalize_nodes(g: GraphBuilder, network: CED | Dasheng, mel: str) -> str:
    """Log-mel (batch, n_mels, frames) -> the input BatchNorm's output (batch, 1, n_mels, frames)."""
    bn = network.init_bn
    x = g.node("BatchNormalization", [mel, g.constant("bn.weight", bn.weight), g.constant("bn.bias", bn.bias),
                                      g.constant("bn.mean", bn.running_mean), g.constant("bn.var", bn.running_var)],
               epsilon=bn.eps)
    return g.node("Unsqueeze", [x, g.constant("channel_axis", [1])])


def piece_nodes(g: GraphBuilder, network: CED, mel: str) -> tuple[str, str]:
    """Log-mel (batch, n_mels, frames) -> (normalised pieces (count * batch, 1, n_mels, piece frames), count).

    As ``CED.pieces``: up to ``target_frames`` a clip is one piece of its own length; past
    it, the normalised mel is zero-padded to a whole number of pieces, stacked piece-major.
    ``count`` is a one-element int64 tensor.
    """
    target = network.config.target_frames
    x = normalize_nodes(g, network, mel)  # (batch, 1, n_mels, frames)
    frames = g.node("Shape", [x], start=3, end=4)
    count = g.node("Div", [g.node("Add", [frames, g.constant("round_up", [target - 1])]),
                           g.constant("piece_frames", [target])])
    # min(count - 1, 1) is 0 for one piece (keep its length) and 1 otherwise (pad to whole pieces).
    several = g.node("Min", [g.node("Sub", [count, g.constant("one_piece", [1])]), g.constant("at_most_one", [1])])
    missing = g.node("Sub", [g.node("Mul", [count, g.constant("piece_frames", [target])]), frames])
    pads = g.node("Concat", [g.constant("no_pad", [0] * 7), g.node("Mul", [several, missing])], axis=0)
    x = g.node("Pad", [x, pads])
    mels = network.config.n_mels
    x = g.node("Reshape", [x, g.node("Concat", [g.constant("batch_mels", [0, mels]), count,
                                                g.constant("rest", [-1])], axis=0)])
    x = g.node("Transpose", [x], perm=[2, 0, 1, 3])  # (count, batch, n_mels, piece frames)
    return g.node("Reshape", [x, g.constant("pieces_shape", [-1, 1, mels, 0])]), count


def head_nodes(g: GraphBuilder, network: CED, tokens: str, count: str, piece_embeddings: bool) -> None:
    """Tokens (count * batch, patches, dim), piece-major -> the graph outputs ``probabilities``, ``embedding``
    and, with ``piece_embeddings``, ``piece_embeddings``: as ``CED.forward`` and ``CED.encode`` pool them."""
    means = g.node("ReduceMean", [tokens, g.constant("token_axis", [1])], keepdims=0)  # (count * batch, dim)
    scores = _head_scores(g, network, means)
    piece_axis = g.constant("piece_axis", [0])
    per_piece = lambda value, width: g.node(  # noqa: E731  (count * batch, width) -> (count, batch, width)
        "Reshape", [value, g.node("Concat", [count, g.constant("batch_width", [-1, width])], axis=0)])
    g.node("ReduceMean", [per_piece(scores, network.config.num_classes), piece_axis], "probabilities", keepdims=0)
    pieces = per_piece(means, network.config.embed_dim)
    # Every piece has the same token count, so this is the mean over all tokens (the HEAR clip embedding).
    g.node("ReduceMean", [pieces, piece_axis], "embedding", keepdims=0)
    if piece_embeddings:
        g.node("Identity", [pieces], "piece_embeddings")


def _head_scores(g: GraphBuilder, network: CED | Dasheng, means: str, output: str | None = None) -> str:
    """Mean tokens (n, dim) -> the head's scores (n, classes), with its activation."""
    layers = list(network.outputlayer)
    h = g.layer_norm("head.norm", layers[0], means)
    for layer in layers[1:]:
        if isinstance(layer, torch.nn.Linear):
            h = g.linear("head", layer, h)
        elif isinstance(layer, torch.nn.GELU) and layer.approximate == "none":
            h = g.gelu(h)
        else:
            raise ExportError(f"the head holds a {type(layer).__name__}, which the export does not write")
    if network.config.head_activation == "softmax":
        return g.node("Softmax", [h], output, axis=-1)
    return g.node("Sigmoid", [h], output)


def chunk_nodes(g: GraphBuilder, network: Dasheng, mel: str) -> tuple[str, str, str, str]:
    """Log-mel (batch, n_mels, frames) -> (normalised chunks (count * batch, 1, n_mels, width), their keys
    (count * batch,) int32, count, tokens), chunk-major.

    Frames past the last whole token are dropped (the patch embedding drops them too). One chunk keeps its
    own length; several are zero-padded to whole chunks, and each chunk's keys count only its real tokens,
    so the padding is never attended to: the same tokens as running the short last chunk alone.
    ``count`` and ``tokens`` (the clip's token count) are one-element int64 tensors.
    """
    config = network.config
    width, size, mels = config.target_frames, config.chunk_tokens, config.n_mels
    x = normalize_nodes(g, network, mel)  # (batch, 1, n_mels, frames)
    tokens = g.node("Div", [g.node("Shape", [x], start=3, end=4), g.constant("patch_frames", [config.patch_frames])])
    frames = g.node("Mul", [tokens, g.constant("patch_frames", [config.patch_frames])])
    x = g.node("Slice", [x, g.constant("i0", [0]), frames, g.constant("axis3", [3])])
    count = g.node("Div", [g.node("Add", [tokens, g.constant("round_up", [size - 1])]), g.constant("chunk_tokens", [size])])
    several = g.node("Min", [g.node("Sub", [count, g.constant("one_chunk", [1])]), g.constant("at_most_one", [1])])
    missing = g.node("Sub", [g.node("Mul", [count, g.constant("chunk_frames", [width])]), frames])
    x = g.node("Pad", [x, g.node("Concat", [g.constant("no_pad", [0] * 7), g.node("Mul", [several, missing])], axis=0)])
    x = g.node("Reshape", [x, g.node("Concat", [g.constant("batch_mels", [0, mels]), count,
                                                g.constant("rest", [-1])], axis=0)])
    x = g.node("Transpose", [x], perm=[2, 0, 1, 3])  # (count, batch, n_mels, width)
    chunks = g.node("Reshape", [x, g.constant("chunks_shape", [-1, 1, mels, 0])])
    # Chunk c attends to min(tokens - c * size, size) keys; every one of its batch rows alike.
    firsts = g.node("Mul", [g.node("Range", [g.constant("zero_scalar", 0), g.node("Squeeze", [count]),
                                             g.constant("one_scalar", 1)]), g.constant("chunk_tokens", [size])])
    per_chunk = g.node("Min", [g.node("Sub", [tokens, firsts]), g.constant("chunk_tokens", [size])])
    batch = g.node("Shape", [x], start=1, end=2)
    keys = g.node("Expand", [g.node("Unsqueeze", [per_chunk, g.constant("batch_axis", [1])]),
                             g.node("Concat", [count, batch], axis=0)])
    keys = g.node("Cast", [g.node("Reshape", [keys, g.constant("flat_keys", [-1])])], to=6)  # int32
    return chunks, keys, count, tokens


def dasheng_nodes(g: GraphBuilder, network: Dasheng, mel: str, fused: bool, int8: bool) -> None:
    """Log-mel -> the outputs ``frame_embeddings``, ``embedding`` and, with a head, ``probabilities``."""
    g.prefix = "chunks/"
    chunks, keys, count, tokens = chunk_nodes(g, network, mel)
    g.prefix, g.int8 = ENCODER_PREFIX, int8
    out = encoder_nodes(g, network, chunks, fused, keys=keys)  # (count * batch, width / 4, dim)
    g.prefix, g.int8 = "head/", int8 and not fused
    dim = network.config.embed_dim
    batch = g.node("Shape", [mel], start=0, end=1)
    x = g.node("Reshape", [out, g.node("Concat", [count, batch, g.constant("rest_dim", [-1, dim])], axis=0)])
    x = g.node("Transpose", [x], perm=[1, 0, 2, 3])  # (batch, count, width / 4, dim)
    x = g.node("Reshape", [x, g.constant("batch_tokens", [0, -1, dim])])
    frames = g.node("Slice", [x, g.constant("i0", [0]), tokens, g.constant("axis1", [1])], "frame_embeddings")
    means = g.node("ReduceMean", [frames, g.constant("token_axis", [1])], "embedding", keepdims=0)
    if network.config.num_classes:
        _head_scores(g, network, means, "probabilities")


def output_names(piece_embeddings: bool, network: CED | Dasheng | None = None) -> list[str]:
    if getattr(network, "family", "ced") == "dasheng":
        return (["probabilities"] if network.config.num_classes else []) + ["embedding", "frame_embeddings"]
    return ["probabilities", "embedding"] + (["piece_embeddings"] if piece_embeddings else [])


def model_graph(network: CED | Dasheng, mel_input: bool = False, fused: bool = False, piece_embeddings: bool = False,
                int8: bool = False):
    """ModelProto of the whole model: waveforms (or, ``mel_input``, the log-mel) -> probabilities, embedding.

    ``fused``: the encoder in ONNX Runtime's contrib operators (the ``onnxruntime`` runtime), else in
    standard operators only (``portable``). ``int8``: the encoder's weight products dynamic int8
    (:meth:`~auricle.onnx.builder.GraphBuilder.product`), and the head's too when not ``fused``;
    the mel filterbank product stays float32 always: its input, the power spectrum, spans ~12 orders
    of magnitude, and one int8 scale per call rounded all but the loudest bins to zero (on a small
    random model that moved probabilities by 0.77, where the encoder alone moves them by 0.006).
    ``network`` must be float32 and in eval mode. A Dasheng network always has its ``frame_embeddings``
    output (``piece_embeddings`` is CED's).
    """
    from onnx import TensorProto, helper

    config = network.config
    g = GraphBuilder()
    if mel_input:
        source = helper.make_tensor_value_info("mel", TensorProto.FLOAT, ["batch", config.n_mels, "frames"])
        mel = "mel"
    else:
        source = helper.make_tensor_value_info("waveforms", TensorProto.FLOAT, ["batch", "samples"])
        g.prefix = "frontend/"
        mel = log_mel_nodes(g, network.frontend, "waveforms", min_samples=network.min_samples)
    family = getattr(network, "family", "ced")
    if family == "dasheng":
        dasheng_nodes(g, network, mel, fused, int8)
    else:
        g.prefix = "pieces/"
        pieces, count = piece_nodes(g, network, mel)
        g.prefix, g.int8 = ENCODER_PREFIX, int8
        tokens = encoder_nodes(g, network, pieces, fused)
        # The onnxruntime runtime keeps its head float, as the onnx engine (whose graph is the encoder alone) does.
        g.prefix, g.int8 = "head/", int8 and not fused
        head_nodes(g, network, tokens, count, piece_embeddings)
    shapes = {"probabilities": ["batch", config.num_classes], "embedding": ["batch", config.embed_dim],
              "piece_embeddings": ["pieces", "batch", config.embed_dim],
              "frame_embeddings": ["batch", "tokens", config.embed_dim]}
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, shapes[name])
               for name in output_names(piece_embeddings, network)]
    graph = helper.make_graph(g.nodes, f"auricle_{family}_onnxruntime" if fused else f"auricle_{family}", [source],
                              outputs, g.initializers)
    opsets = [helper.make_opsetid("", EXPORT_OPSET)]
    if fused:
        opsets.append(helper.make_opsetid(CONTRIB_DOMAIN, 1))
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8  # readable by every onnxruntime this project supports
    return model


def log_mel_graph(config: FrontendConfig = FrontendConfig()):
    """ModelProto of the frontend alone: waveforms (batch, samples) -> ``log_mel`` (batch, n_mels, frames) in dB."""
    from onnx import TensorProto, helper

    g = GraphBuilder()
    log_mel_nodes(g, LogMel(config), "waveforms", output="log_mel")
    graph = helper.make_graph(
        g.nodes, "auricle_log_mel",
        [helper.make_tensor_value_info("waveforms", TensorProto.FLOAT, ["batch", "samples"])],
        [helper.make_tensor_value_info("log_mel", TensorProto.FLOAT, ["batch", config.n_mels, "frames"])],
        g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", EXPORT_OPSET)])
    model.ir_version = 8
    return model
