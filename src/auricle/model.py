"""The user-facing model: load by name or checkpoint, then tag, embed or score."""

from __future__ import annotations

import os
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import torch

from auricle.audio import SAMPLE_RATE, prepare_batch, prepare_waveform
from auricle.engines import EngineConfig, make_engine
from auricle.engines.base import Engine
from auricle.errors import CheckpointError
from auricle.frontend import HOP_LENGTH
from auricle.inference.embedding import token_means
from auricle.inference.pipeline import Tagger, embedded_file, finite_embeddings, finite_probabilities
from auricle.inference.results import Embeddings
from auricle.inference.streams import StreamPool
from auricle.labels import LabelSet, audioset_labels
from auricle.models.ced import CED
from auricle.models.checkpoints import build_model
from auricle.models.registry import DEFAULT_MODEL, ModelInfo, available_models


class AudioModel(Tagger):
    """A CED encoder with its labels, ready to tag and embed audio.

    Tagging (``tag``, ``iter_tag``, ``tag_options``, ``score_windows``) is
    :class:`~auricle.inference.pipeline.Tagger`'s; this class scores windows
    with the engine and adds raw probabilities and embeddings.
    """

    def __init__(
        self,
        network: CED,
        name: str,
        labels: LabelSet,
        device: str | torch.device = "cpu",
        engine: EngineConfig | Engine | None = None,
    ) -> None:
        self.network = network.to(device).eval()
        self.name = name
        self.labels = labels
        self.device = torch.device(device)
        # The encoder runner (torch fp32 unless asked otherwise); see auricle.engines.
        self.engine = engine if isinstance(engine, Engine) else make_engine(self.network, engine)

    @property
    def embedding_dim(self) -> int:
        return self.network.config.embed_dim

    @property
    def batch_size(self) -> int:
        """Default windows per model call: enough to keep every engine stream busy."""
        return self.engine.batch_size

    @property
    def streams(self) -> int:
        return self.engine.streams

    def _submit(self, batch: np.ndarray) -> Future:
        return self.engine.submit(torch.from_numpy(batch).to(self.device))

    @torch.inference_mode()
    def _score_now(self, batch: np.ndarray) -> torch.Tensor:
        return self.engine.probabilities(torch.from_numpy(batch).to(self.device))

    tags_with_tokens = True  # the head reads the mean token: one call gives scores and embedding

    def _submit_with_tokens(self, batch: np.ndarray) -> Future:
        return self.engine.submit_with_tokens(torch.from_numpy(batch).to(self.device))

    @torch.inference_mode()
    def _score_now_with_tokens(self, batch: np.ndarray) -> torch.Tensor:
        return self.engine.probabilities_and_tokens(torch.from_numpy(batch).to(self.device))

    @staticmethod
    def _rows(result: torch.Tensor) -> np.ndarray:
        return result.cpu().numpy()

    def __repr__(self) -> str:
        return (f"AudioModel(name={self.name!r}, classes={len(self.labels)}, device={str(self.device)!r}, "
                f"engine={self.engine.config.label!r})")

    # -- raw scores ------------------------------------------------------------
    @torch.inference_mode()
    def probabilities(self, waveforms: torch.Tensor | np.ndarray, *, finite: bool = True) -> torch.Tensor | np.ndarray:
        """(batch, samples) 16 kHz clips of equal length -> (batch, classes) float32 probabilities.

        A torch tensor in gives a (CPU) tensor out; anything else, a numpy array, as
        :meth:`auricle.onnx.exported.ExportedModel.probabilities` does, so code does not change
        with the kind of model file. Each clip is analysed on its own (no batch cross-talk);
        clips under one patch (0.15 s) are zero-padded. A clip far beyond full scale overflows
        the spectrogram: an AudioError names it, or with ``finite=False`` its row is NaN (for
        batches that mix callers, each of whom must see only their own failure).
        """
        given_tensor = isinstance(waveforms, torch.Tensor)
        batch = torch.from_numpy(prepare_batch(waveforms))
        result = self.engine.probabilities(batch.to(self.device)).cpu()
        if finite:
            finite_probabilities(result.numpy())
        return result if given_tensor else result.numpy()

    @torch.inference_mode()
    def embed_waveform(self, waveform: np.ndarray, name: str = "<array>", batch_size: int | None = None) -> Embeddings:
        """Embeddings of one 16 kHz mono signal, computed as the official HEAR submission does.

        The whole recording gets one log-mel (its own 120 dB floor), cut into
        1012-frame pieces (10.12 s, the last zero-padded after normalisation);
        ``clip`` is the mean of all tokens, ``windows`` the mean per piece.
        """
        waveform = prepare_waveform(waveform, SAMPLE_RATE, name)  # integers scaled, NaN refused, as tag() does
        return finite_embeddings(self._embeddings(name, lambda: [waveform], batch_size))

    def _embed_file(self, path: str | os.PathLike, batch_size: int | None = None) -> Embeddings:
        # Streamed: a long recording is never held whole, and may be read twice (auricle.inference.embedding).
        return embedded_file(path, lambda blocks: self._embeddings(str(path), blocks, batch_size))

    def _stream_pool(self) -> StreamPool | None:
        return self.engine.pool

    def _embed_file_on_stream(self, stream: int, path: str | os.PathLike, batch_size: int | None = None) -> Embeddings:
        return embedded_file(path, lambda blocks: self._embeddings(
            str(path), blocks, max(1, (batch_size or self.batch_size) // self.streams),
            lambda pieces: self.engine.stream_features(pieces, stream)))

    def _embeddings(self, name: str, blocks, batch_size: int | None, forward_features=None) -> Embeddings:
        means = token_means(self.network, forward_features or self.engine.forward_features, blocks,
                            batch_size or self.batch_size)
        piece_seconds = self.network.config.target_frames * HOP_LENGTH / SAMPLE_RATE
        duration = means.samples / SAMPLE_RATE
        starts = np.arange(len(means.pieces)) * piece_seconds
        return Embeddings(file=name, duration=duration, model=self.name, clip=means.clip, windows=means.pieces,
                          starts=starts, ends=np.minimum(starts + piece_seconds, duration))


def ced_model(checkpoint, info: ModelInfo | None, device: torch.device, engine: EngineConfig,
              where: str | os.PathLike) -> AudioModel:
    """The CED family's user-facing model of a checkpoint :mod:`auricle.loading` read from ``where``
    (``info``: the name it was asked by, None for a checkpoint)."""
    if info is not None and info.family != "ced":
        raise CheckpointError(f"{where}: holds a CED encoder, not {info.name}")
    if info is not None and checkpoint.config.embed_dim != info.config.embed_dim:
        raise CheckpointError(
            f"{where}: holds a {checkpoint.config.embed_dim}-wide encoder, not {info.name}"
        )
    if checkpoint.labels is not None:
        labels = LabelSet.from_names(checkpoint.labels)
    elif checkpoint.config.num_classes == 527:
        labels = audioset_labels()
    else:
        raise CheckpointError(
            f"{where}: head has {checkpoint.config.num_classes} classes but the checkpoint names none"
        )
    display_name = info.name if info is not None else (checkpoint.name or Path(str(where)).stem)
    return AudioModel(build_model(checkpoint), display_name, labels, device, engine=engine)


def load_model(name: str = DEFAULT_MODEL, checkpoint: str | os.PathLike | None = None, device: str | torch.device = "cpu",
               cache_dir: str | os.PathLike | None = None, engine: str | None = None, precision: str | None = None,
               threads: int | None = None, streams: int | None = None):
    """:func:`auricle.loading.load_model`, under its old name (deprecated path: kept one release)."""
    from auricle.loading import load_model as load  # deprecated re-export

    return load(name, checkpoint, device, cache_dir, engine, precision, threads, streams)


__all__ = ["AudioModel", "load_model", "available_models"]
