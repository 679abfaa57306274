"""The onnx engine: only the encoder in ONNX Runtime, from a graph cached per set of weights.

The graph is :func:`auricle.onnx.encoder.encoder_graph`, kept by :func:`auricle.onnx.cache.encoder_model`.
Named ``onnx`` after the engine; ``import onnx`` anywhere in auricle is the library (absolute imports).
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import torch

from auricle.engines.base import Engine
from auricle.engines.config import EngineConfig, EngineError
from auricle.inference.streams import split_bounds
from auricle.inference.tuning import default_threads
from auricle.models.ced import CED
from auricle.models.dasheng import Dasheng
from auricle.onnx.cache import encoder_model
from auricle.onnx.sessions import ONNXRUNTIME_MISSING, stream_sessions


class OnnxEngine(Engine):
    def __init__(self, network: CED | Dasheng, config: EngineConfig, cache_dir: str | os.PathLike | None = None) -> None:
        super().__init__(network, config, config.threads or default_threads())
        device = next(network.parameters()).device
        if device.type != "cpu":
            raise EngineError(f"the onnx engine runs on the CPU only, not on {device}")
        if importlib.util.find_spec("onnxruntime") is None:  # checked before the export, which needs it too
            raise EngineError(ONNXRUNTIME_MISSING)
        model = encoder_model(network, config.precision == "int8", cache_dir)
        self._sessions = stream_sessions(model, self.threads, self.streams)
        #: Dasheng's graph takes each chunk's count of keys to attend to (all of them where none is given).
        self._takes_keys = getattr(network, "takes_key_counts", False)

    @staticmethod
    def _stream_setup() -> None:
        # Flush subnormals in the workers too, whichever thread created the process's first session.
        torch.set_flush_denormal(True)

    def _parts(self, count: int) -> list[tuple[int, int]]:
        # Sessions are sized for one stream, so even a small batch is spread over the streams.
        return split_bounds(count, self.streams) if self._pool is not None else [(0, count)]

    def _features(self, pieces: torch.Tensor, stream: int = 0, keys: torch.Tensor | None = None) -> torch.Tensor:
        feed = {"pieces": np.ascontiguousarray(pieces.detach().cpu().numpy(), dtype=np.float32)}
        if self._takes_keys:
            tokens = pieces.shape[-1] // self.network.config.patch_frames
            feed["keys"] = (np.full(len(pieces), tokens, dtype=np.int32) if keys is None
                            else keys.detach().cpu().numpy().astype(np.int32))
        elif keys is not None:
            raise ValueError("CED attends to every token of a piece; it takes no key mask")
        (tokens,) = self._sessions[stream % len(self._sessions)].run(None, feed)
        return torch.from_numpy(tokens)
