"""The engine base class: runs the encoder of a network, a batch split over the CPU streams.

The engines themselves are :class:`~auricle.engines.torch.TorchEngine` and
:class:`~auricle.engines.onnx.OnnxEngine`; :mod:`auricle.engines` says which runs what.
"""

from __future__ import annotations

from concurrent.futures import Future

import torch

from auricle.engines.config import EngineConfig
from auricle.inference.streams import StreamPool, run_here, split_bounds
from auricle.inference.tuning import default_batch_size, default_streams
from auricle.models.ced import CED


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

    def probabilities_and_tokens(self, waveforms: torch.Tensor) -> torch.Tensor:
        """(batch, samples) -> (batch, classes + dim): :meth:`probabilities`, then each clip's mean token."""
        return self._split(self._probabilities_and_tokens, waveforms)

    def submit_with_tokens(self, waveforms: torch.Tensor) -> Future:
        """:meth:`submit` of :meth:`probabilities_and_tokens`."""
        if self._pool is not None:
            return self._pool.submit(lambda stream, part: self._probabilities_and_tokens(part, stream), waveforms)
        return run_here(torch.inference_mode()(self._probabilities_and_tokens), waveforms, 0)

    # -- per stream ------------------------------------------------------------------
    def _features(self, pieces: torch.Tensor, stream: int = 0) -> torch.Tensor:
        raise NotImplementedError

    def _probabilities_and_tokens(self, waveforms: torch.Tensor, stream: int = 0) -> torch.Tensor:
        # One encoder pass gives both: the head reads the mean token, which is also the embedding.
        network = self.network
        pieces, count = network.pieces(network.normalize(network.spectrogram(waveforms)))
        means = self._features(pieces, stream).mean(dim=1)
        probabilities = network.activate(network.outputlayer(means))
        both = torch.cat([probabilities, means], dim=1)
        return both.reshape(count, -1, both.shape[-1]).mean(dim=0)

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
