"""The user-facing model: load by name or checkpoint, then tag, embed or score."""

from __future__ import annotations

import os
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import torch

from auricle.audio import SAMPLE_RATE, prepare_batch, prepare_waveform
from auricle.devices import torch_device
from auricle.engines import EngineConfig, make_engine, resolve_precision
from auricle.engines.base import Engine
from auricle.errors import CheckpointError, OptionError
from auricle.frontend import HOP_LENGTH
from auricle.inference.embedding import token_means
from auricle.inference.pipeline import Tagger, embedded_file, finite_embeddings, finite_probabilities
from auricle.inference.results import Embeddings
from auricle.inference.streams import StreamPool
from auricle.labels import LabelSet, audioset_labels
from auricle.models.ced import CED
from auricle.models.families import read_any_checkpoint
from auricle.models.registry import DEFAULT_MODEL, ModelInfo, available_models, model_info
from auricle.onnx.exported import ExportedModel, is_exported_file, load_exported


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


def _load_language_model(name: str, checkpoint, cache_dir, engine: str, precision: str, device: torch.device):
    """A MiDashengLM when the name or the checkpoint folder is one, else None."""
    from auricle.language_model import is_language_checkpoint, load_language_model, load_named

    info = model_info(name) if checkpoint is None else None
    if not is_language_checkpoint(checkpoint) and (info is None or info.family != "midashenglm"):
        return None
    if engine != "torch" or precision != "fp32":
        raise OptionError("MiDashengLM runs on the torch engine in its stored precision; drop --engine/--precision")
    if device.type != "cpu":  # the encoder, projector and decoding loop keep their tensors on the CPU
        raise OptionError(f"MiDashengLM runs on the CPU in auricle for now, not on {device}")
    return load_named(info, cache_dir) if info is not None else load_language_model(checkpoint)


def load_model(
    name: str = DEFAULT_MODEL,
    checkpoint: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    cache_dir: str | os.PathLike | None = None,
    engine: str | None = None,
    precision: str | None = None,
    threads: int | None = None,
    streams: int | None = None,
) -> AudioModel | ExportedModel:
    """Load a model by name (``ced-tiny`` ... ``ced-base``, ``dasheng-base`` ...) or from a checkpoint.

    A Dasheng checkpoint (or name) gives a :class:`~auricle.dasheng_model.DashengModel`
    (torch engine, fp32 only). ``midashenglm-7b`` or a MiDashengLM model folder gives an
    :class:`~auricle.language_model.AudioLanguageModel` (``describe``/``ask``/``stream``; torch
    engine, the stored precision).

    Weights come from ``checkpoint`` if given (official ``.pt``, Hugging Face
    folder or auricle ``.safetensors``), else from the local Hugging Face cache,
    else they are downloaded from the Hub. ``engine`` (torch, onnx),
    ``precision`` (fp32, bf16, int8, or auto: the fastest this CPU supports) and
    ``threads`` and ``streams`` (concurrent calls a batch is split over; default one
    per thread) choose how the encoder runs (see :mod:`auricle.engines`);
    results keep their format. A ``checkpoint`` ending in ``.onnx`` (an ``auricle
    export`` file) gives an :class:`~auricle.onnx.exported.ExportedModel` instead (tagging
    only; ``engine``/``precision``, where given, must match the file: ``engine="torch"`` is refused).
    ``engine`` None is torch and ``precision`` None fp32 for weights.
    """
    if is_exported_file(checkpoint):
        return load_exported(checkpoint, device=str(device), engine=engine, precision=precision, threads=threads,
                             streams=streams)
    engine, precision = engine or "torch", precision or "fp32"
    # fails before any weights are read
    device = torch_device(device)
    engine_config = EngineConfig(engine, resolve_precision(engine, precision, device), threads, streams)
    language = _load_language_model(name, checkpoint, cache_dir, engine, precision, device)
    if language is not None:
        return language
    if checkpoint is None:
        from auricle.models.hub import fetch_weights

        info: ModelInfo | None = model_info(name)
        if not info.hf_repo:
            raise CheckpointError(f"{info.name}: weights are published only on Zenodo ({info.zenodo_url}); "
                                  "download them and pass checkpoint=PATH")
        checkpoint = fetch_weights(info, cache_dir=cache_dir)
    else:
        info = None
    family, loaded = read_any_checkpoint(checkpoint)
    if family.name == "dasheng":
        from auricle.dasheng_model import load_dasheng

        return load_dasheng(loaded, info, device, engine_config)
    if info is not None and info.family != "ced":
        raise CheckpointError(f"{checkpoint}: holds a CED encoder, not {info.name}")
    if info is not None and loaded.config.embed_dim != info.config.embed_dim:
        raise CheckpointError(
            f"{checkpoint}: holds a {loaded.config.embed_dim}-wide encoder, not {info.name}"
        )
    if loaded.labels is not None:
        labels = LabelSet.from_names(loaded.labels)
    elif loaded.config.num_classes == 527:
        labels = audioset_labels()
    else:
        raise CheckpointError(
            f"{checkpoint}: head has {loaded.config.num_classes} classes but the checkpoint names none"
        )
    display_name = info.name if info is not None else (loaded.name or Path(str(checkpoint)).stem)
    return AudioModel(family.build(loaded), display_name, labels, device, engine=engine_config)


__all__ = ["AudioModel", "load_model", "available_models"]
