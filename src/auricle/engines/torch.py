"""The torch engine: the encoder in PyTorch, fused (:mod:`auricle.engines.fused`) where the CPU allows.

Named ``torch`` after the engine; ``import torch`` in here is the library (absolute imports).
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from auricle.engines.base import Engine
from auricle.engines.config import EngineConfig, EngineError, EngineWarning
from auricle.engines.fused import FusedEncoder, fused_supported
from auricle.models.ced import CED
from auricle.models.dasheng import Dasheng


def torch_encoder_path(device: torch.device | str, precision: str) -> str:
    """What the torch engine runs the encoder with on ``device`` at ``precision``.

    ``"fused"`` (:class:`~auricle.engines.fused.FusedEncoder`), ``"autocast"``
    (bf16 without fused kernels), ``"quantized"`` (int8 through
    ``quantize_dynamic``) or ``"module"`` (fp32: the network itself).
    """
    if fused_supported(device, precision):
        return "fused"
    return {"bf16": "autocast", "int8": "quantized"}.get(precision, "module")


class TorchEngine(Engine):
    def __init__(self, network: CED | Dasheng, config: EngineConfig) -> None:
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

    def _features(self, pieces: torch.Tensor, stream: int = 0, keys: torch.Tensor | None = None) -> torch.Tensor:
        if self._fused is not None and next(self.network.parameters()).device.type == "cpu":
            return self._fused.forward_features(pieces, keys)
        if self.config.precision == "bf16":
            with torch.autocast(device_type=self.device_type, dtype=torch.bfloat16):
                return self._encoder.piece_features(pieces, keys).float()
        return self._encoder.piece_features(pieces, keys)

    def _probabilities(self, waveforms: torch.Tensor, stream: int = 0) -> torch.Tensor:
        if self.config.precision == "fp32" and self._fused is None:
            return self.network(waveforms)  # the reference path itself
        return super()._probabilities(waveforms, stream)
