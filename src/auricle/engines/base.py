"""The engine base class: runs the encoder of a network (CED or Dasheng), a batch split over the CPU streams.

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
from auricle.models.dasheng import Dasheng


class Engine:
    """Runs the encoder of ``network``; the frontend, piece split and head stay in fp32 torch.

    A network's pieces are CED's 1012-frame pieces or Dasheng's 1008-frame chunks (which may
    carry a key mask, ``keys``: per piece, how many leading tokens keys may attend to). Subclasses
    implement :meth:`_features` (and may override :meth:`_probabilities`); the public methods split
    a batch over the streams.
    """

    def __init__(self, network: CED | Dasheng, config: EngineConfig, threads: int) -> None:
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

    def forward_features(self, pieces: torch.Tensor, keys: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised mel pieces (n, 1, n_mels, frames) -> float32 tokens (n, patches, dim).

        ``keys`` (n,): each piece's count of tokens keys may attend to (Dasheng's padded batches); None: all.
        """
        return self._split(self._features, pieces, keys)

    @property
    def pool(self) -> StreamPool | None:
        """The streams' workers (None with one stream); work handed to them runs on one stream's threads."""
        return self._pool

    def stream_features(self, pieces: torch.Tensor, stream: int, keys: torch.Tensor | None = None) -> torch.Tensor:
        """:meth:`forward_features` whole, as stream ``stream`` runs it: call it on that stream's worker."""
        return self._features(pieces, stream, keys)

    def probabilities(self, waveforms: torch.Tensor) -> torch.Tensor:
        """(batch, samples) 16 kHz -> (batch, classes), exactly as the network's ``forward`` but with this encoder."""
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
    def _features(self, pieces: torch.Tensor, stream: int = 0, keys: torch.Tensor | None = None) -> torch.Tensor:
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
        return self.network.probabilities_with(lambda pieces, keys: self._features(pieces, stream, keys), waveforms)

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

    def _split(self, function, batch: torch.Tensor, keys: torch.Tensor | None = None) -> torch.Tensor:
        """``function(part, stream[, part's keys])`` over the parts of ``batch``, concatenated."""
        extra = (lambda start, end: ()) if keys is None else (lambda start, end: (keys[start:end],))
        parts = self._parts(len(batch))
        if len(parts) == 1:
            return function(batch, 0, *extra(0, len(batch)))
        assert self._pool is not None
        return torch.cat(self._pool.map(lambda stream, part: function(part[0], stream, *part[1]),
                                        [(batch[start:end], extra(start, end)) for start, end in parts]))
