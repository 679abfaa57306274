"""Inference engines: who runs the CED encoder, and at what precision.

Every engine runs the same pipeline around the encoder: the log-mel frontend,
the input BatchNorm, the split into 1012-frame pieces and the head always run
in float32 torch from the network itself, so all engines see identical inputs
and produce results of identical shape and meaning. Only the encoder (patch
embedding, transformer blocks, final norm: ~99% of the FLOPs) changes hands:

========  =========  ====================================================
engine    precision  encoder
========  =========  ====================================================
torch     fp32       on CPUs with oneDNN: :class:`~auricle.inference.fused.FusedEncoder`
                     (AVX-512: prepacked oneDNN weights, fused GELU/residual epilogues;
                     AVX2: BLAS products accumulating the residual; same float32
                     math, ~1e-7 from ``CED.forward`` in probabilities); elsewhere
                     the network as is
torch     bf16       the fused encoder with bfloat16 products and attention, float32
                     residuals (fast on CPUs with avx512_bf16/AMX); ``torch.autocast``
                     where oneDNN is missing
torch     int8       the fused encoder with FBGEMM dynamic int8 Linear layers and, on
                     CPUs with native bf16, bfloat16 attention; elsewhere the blocks'
                     Linear layers through ``quantize_dynamic``
onnx      fp32       ONNX Runtime running the encoder written with its fused
                     Attention/BiasGelu operators (:mod:`auricle.inference.ort_graph`)
onnx      int8       the same graph dynamically quantised (QAttention, int8 MatMuls)
========  =========  ====================================================

The ``onnx`` engine builds the encoder graph once per set of weights and caches the
file (``$AURICLE_CACHE``, else ``~/.cache/auricle``), so only the first use
pays the export (seconds).

On a CPU every engine splits a batch over ``streams`` concurrent calls, each on
``threads // streams`` threads (:mod:`auricle.inference.streams`); by default one
stream per thread. Each clip is still computed on its own, so results do not
change (int8 aside, whose activation scale is taken per call: see docs/deploy.md).
"""

from __future__ import annotations

import copy
import importlib.util
import os
import warnings
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from auricle.cache import cache_dir as engine_cache_dir
from auricle.errors import AuricleError
from auricle.fingerprints import model_key
from auricle.inference.fused import PRECISIONS, FusedEncoder, fused_supported
from auricle.inference.ort_sessions import ONNX_MISSING, ONNXRUNTIME_MISSING, stream_sessions
from auricle.inference.streams import StreamPool, run_here, split_bounds
from auricle.inference.tuning import CpuFeatures, default_batch_size, default_streams, default_threads, fastest_precision
from auricle.io import atomic
from auricle.models.ced import CED

ENGINES = ("torch", "onnx")
#: Bump when the exported encoder graph changes, so stale cache files are not reused.
ONNX_CACHE_VERSION = 3


class EngineError(AuricleError):
    """An engine or precision cannot run here (missing package, unsupported device, ...)."""


class EngineWarning(UserWarning):
    """An engine runs as asked, but not the way it is meant to (e.g. emulated, far slower)."""


@dataclass(frozen=True)
class EngineConfig:
    """Which engine runs the encoder, at what precision, on how many threads and streams.

    ``threads=None`` means one per usable core for ONNX Runtime and PyTorch's
    own default for torch (also one per core); torch's thread count is
    process-wide, so setting it here sets it for the whole process.
    ``streams`` is how many parts of a batch run at once on a CPU, each on
    ``threads // streams`` threads; ``None``: one per thread. ``streams=1`` runs
    a batch as one call on all threads (the lowest latency for a single clip
    with the onnx engine).
    """

    engine: str = "torch"
    precision: str = "fp32"
    threads: int | None = None
    streams: int | None = None

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise EngineError(f"unknown engine {self.engine!r} (choose from {', '.join(ENGINES)})")
        if self.precision not in PRECISIONS:
            raise EngineError(f"unknown precision {self.precision!r} (choose from {', '.join(PRECISIONS)})")
        if self.engine == "onnx" and self.precision == "bf16":
            raise EngineError("the onnx engine runs fp32 or int8; use --engine torch for bf16")
        if self.threads is not None and self.threads < 1:
            raise EngineError(f"threads must be at least 1, got {self.threads}")
        if self.streams is not None and self.streams < 1:
            raise EngineError(f"streams must be at least 1, got {self.streams}")
        if self.streams is not None and self.threads is not None and self.streams > self.threads:
            raise EngineError(f"{self.streams} streams need at least as many threads, got {self.threads}")

    @property
    def label(self) -> str:
        return f"{self.engine}-{self.precision}"


def resolve_precision(engine: str, precision: str, device: str | torch.device = "cpu",
                      features: CpuFeatures | None = None) -> str:
    """``"auto"`` -> the precision expected to run fastest for ``engine`` here; other values unchanged.

    On the CPU: int8 with VNNI, else bf16 with native bfloat16 (torch only), else
    int8 with AVX2, else fp32 (see :func:`~auricle.inference.tuning.fastest_precision`). Off the CPU: fp32.
    """
    if precision != "auto":
        return precision
    if torch.device(device).type != "cpu":
        return "fp32"
    return fastest_precision(features, engine)


class Engine:
    """Runs the encoder of ``network``; the frontend, piece split and head stay in fp32 torch.

    Subclasses implement :meth:`_features` (and may override :meth:`_probabilities`);
    the public methods split a batch over the streams.
    """

    def __init__(self, network: CED, config: EngineConfig, threads: int) -> None:
        self.network = network
        self.config = config
        self.device_type = next(network.parameters()).device.type
        self.threads = threads
        self.streams = min(config.streams or default_streams(threads), threads) if self.device_type == "cpu" else 1
        self._pool = (StreamPool(self.streams, max(1, threads // self.streams), self._stream_setup)
                      if self.streams > 1 else None)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config.label}, threads={self.threads}, streams={self.streams})"

    @property
    def batch_size(self) -> int:
        """Windows per call that keep every stream busy (what the CLI's --batch-size defaults to)."""
        return default_batch_size(self.device_type, self.streams)

    def forward_features(self, pieces: torch.Tensor) -> torch.Tensor:
        """Normalised mel pieces (n, 1, n_mels, frames) -> float32 tokens (n, patches, dim)."""
        return self._split(self._features, pieces)

    @property
    def pool(self) -> StreamPool | None:
        """The streams' workers (None with one stream); work handed to them runs on one stream's threads."""
        return self._pool

    def stream_features(self, pieces: torch.Tensor, stream: int) -> torch.Tensor:
        """:meth:`forward_features` whole, as stream ``stream`` runs it: call it on that stream's worker."""
        return self._features(pieces, stream)

    def probabilities(self, waveforms: torch.Tensor) -> torch.Tensor:
        """(batch, samples) 16 kHz -> (batch, classes), exactly as ``CED.forward`` but with this encoder."""
        return self._split(self._probabilities, waveforms)

    def submit(self, waveforms: torch.Tensor) -> Future:
        """:meth:`probabilities` of the whole batch on the next free stream, without waiting.

        Callers that keep several calls in flight (``AudioModel.iter_tag``) let the
        streams run independently, so a stream never waits for another one that
        the decoder slowed down. With one stream it runs here and now.
        """
        if self._pool is not None:
            return self._pool.submit(lambda stream, part: self._probabilities(part, stream), waveforms)
        return run_here(torch.inference_mode()(self._probabilities), waveforms, 0)

    # -- per stream ------------------------------------------------------------------
    def _features(self, pieces: torch.Tensor, stream: int = 0) -> torch.Tensor:
        raise NotImplementedError

    def _probabilities(self, waveforms: torch.Tensor, stream: int = 0) -> torch.Tensor:
        network = self.network
        pieces, count = network.pieces(network.normalize(network.spectrogram(waveforms)))
        probabilities = network.activate(network.forward_head(self._features(pieces, stream)))
        return probabilities.reshape(count, -1, probabilities.shape[-1]).mean(dim=0)

    @staticmethod
    def _stream_setup() -> None:
        """Per-thread state each stream's worker needs (run once in it).

        A static method: the workers keep it for their lifetime, and a bound method
        would keep the engine, and so the workers themselves, alive forever.
        """

    def _parts(self, count: int) -> list[tuple[int, int]]:
        """How a batch of ``count`` is cut over the streams; one part runs on the calling thread.

        A batch smaller than the stream count runs whole, on all threads.
        """
        if self._pool is None or count < self.streams:
            return [(0, count)]
        return split_bounds(count, self.streams)

    def _split(self, function, batch: torch.Tensor) -> torch.Tensor:
        parts = self._parts(len(batch))
        if len(parts) == 1:
            return function(batch, 0)
        assert self._pool is not None
        return torch.cat(self._pool.map(lambda stream, part: function(part, stream),
                                        [batch[start:end] for start, end in parts]))


def torch_encoder_path(device: torch.device | str, precision: str) -> str:
    """What the torch engine runs the encoder with on ``device`` at ``precision``.

    ``"fused"`` (:class:`~auricle.inference.fused.FusedEncoder`), ``"autocast"``
    (bf16 without fused kernels), ``"quantized"`` (int8 through
    ``quantize_dynamic``) or ``"module"`` (fp32: the network itself).
    """
    if fused_supported(device, precision):
        return "fused"
    return {"bf16": "autocast", "int8": "quantized"}.get(precision, "module")


class TorchEngine(Engine):
    def __init__(self, network: CED, config: EngineConfig) -> None:
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        super().__init__(network, config, torch.get_num_threads())
        device = next(network.parameters()).device
        self._encoder: nn.Module = network
        self._fused: FusedEncoder | None = None
        if config.precision == "int8" and device.type != "cpu":
            raise EngineError(f"int8 runs on the CPU only, not on {device}")
        path = torch_encoder_path(device, config.precision)
        if path == "fused":
            self._fused = FusedEncoder(network, config.precision)
        elif path == "autocast" and device.type == "cpu":
            # AVX2-only AMD Zen 3: ced-mini 2.6 clips/s under autocast vs 17.2 in fp32 (docs/benchmarks.md).
            warnings.warn("bf16 has no fast kernels on this CPU (oneDNN needs AVX-512 or AVX-NE-CONVERT), so it "
                          "runs emulated, several times slower than fp32; --precision auto picks the fastest here",
                          EngineWarning, stacklevel=2)
        elif path == "quantized":
            # Only the blocks' Linear layers (~97% of the FLOPs); the patch
            # embedding and norms stay fp32, which keeps agreement high.
            encoder = copy.deepcopy(network)
            with warnings.catch_warnings():  # torch.ao prints a migration notice on every call
                warnings.simplefilter("ignore")
                encoder.blocks = torch.ao.quantization.quantize_dynamic(
                    encoder.blocks, {nn.Linear}, dtype=torch.qint8
                )
            self._encoder = encoder.eval()

    def _features(self, pieces: torch.Tensor, stream: int = 0) -> torch.Tensor:
        if self._fused is not None and next(self.network.parameters()).device.type == "cpu":
            return self._fused.forward_features(pieces)
        if self.config.precision == "bf16":
            with torch.autocast(device_type=self.device_type, dtype=torch.bfloat16):
                return self._encoder.forward_features(pieces).float()
        return self._encoder.forward_features(pieces)

    def _probabilities(self, waveforms: torch.Tensor, stream: int = 0) -> torch.Tensor:
        if self.config.precision == "fp32" and self._fused is None:
            return self.network(waveforms)  # the reference path itself
        return super()._probabilities(waveforms, stream)


class OnnxEngine(Engine):
    def __init__(self, network: CED, config: EngineConfig, cache_dir: str | os.PathLike | None = None) -> None:
        super().__init__(network, config, config.threads or default_threads())
        device = next(network.parameters()).device
        if device.type != "cpu":
            raise EngineError(f"the onnx engine runs on the CPU only, not on {device}")
        if importlib.util.find_spec("onnxruntime") is None:  # checked before the export, which needs it too
            raise EngineError(ONNXRUNTIME_MISSING)
        model = encoder_model(network, config.precision == "int8", cache_dir)
        self._sessions = stream_sessions(model, self.threads, self.streams)

    @staticmethod
    def _stream_setup() -> None:
        # Flush subnormals in the workers too, whichever thread created the process's first session.
        torch.set_flush_denormal(True)

    def _parts(self, count: int) -> list[tuple[int, int]]:
        # Sessions are sized for one stream, so even a small batch is spread over the streams.
        return split_bounds(count, self.streams) if self._pool is not None else [(0, count)]

    def _features(self, pieces: torch.Tensor, stream: int = 0) -> torch.Tensor:
        feed = np.ascontiguousarray(pieces.detach().cpu().numpy(), dtype=np.float32)
        (tokens,) = self._sessions[stream % len(self._sessions)].run(None, {"pieces": feed})
        return torch.from_numpy(tokens)


def weights_digest(network: nn.Module) -> str:
    """A digest of the weights, their names and the encoder config: equal digests, equal functions."""
    return model_key(network)[:20]


def encoder_model(network: CED, int8: bool, cache_dir: str | os.PathLike | None = None) -> bytes:
    """The serialized ONNX encoder for ``network``: from the cache, else written (and cached)."""
    from auricle.inference import ort_graph

    key = f"v{ONNX_CACHE_VERSION}-torch{torch.__version__}-{weights_digest(network)}"
    folder = engine_cache_dir(cache_dir) / "onnx"
    path = folder / f"encoder-{key}-{'int8' if int8 else 'fp32'}.onnx"
    if path.is_file():
        return path.read_bytes()
    if importlib.util.find_spec("onnx") is None:  # only writing the graph needs it
        raise EngineError(ONNX_MISSING)
    payload = ort_graph.encoder_graph(copy.deepcopy(network).float().eval(), int8=int8).SerializeToString()
    try:  # a cache that cannot be written only costs the export next time
        folder.mkdir(parents=True, exist_ok=True)
        atomic.write_bytes(path, payload)
    except OSError:
        pass
    return payload


def make_engine(network: CED, config: EngineConfig | None = None,
                cache_dir: str | os.PathLike | None = None) -> Engine:
    """The engine ``config`` names, running ``network``'s encoder."""
    config = config or EngineConfig()
    if config.engine == "onnx":
        return OnnxEngine(network, config, cache_dir)
    return TorchEngine(network, config)
