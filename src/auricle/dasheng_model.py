"""A loaded Dasheng encoder as a user-facing model: frame embeddings at 25 per second, and tags
for the AudioSet-fine-tuned variant (through :class:`~auricle.inference.pipeline.Tagger`).

Runs on the torch engine in float32; a recording is analysed as one signal (its own 120 dB
floor), in 252-token chunks as the official code does, streamed from a file in flat memory
(:mod:`auricle.inference.frame_tokens`).
"""

from __future__ import annotations

import os
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import torch

from auricle.audio import SAMPLE_RATE, prepare_batch, prepare_waveform
from auricle.errors import CheckpointError, OptionError
from auricle.engines import EngineConfig
from auricle.inference.frame_tokens import frame_tokens
from auricle.inference.pipeline import Tagger, file_blocks, finite_embeddings, finite_probabilities
from auricle.inference.results import Embeddings
from auricle.labels import LabelSet, audioset_labels
from auricle.models.dasheng import SAMPLES_PER_TOKEN, Dasheng
from auricle.models.dasheng_checkpoints import DashengCheckpoint, build_dasheng
from auricle.models.registry import ModelInfo

#: Windows per model call when tagging.
BATCH_SIZE = 8
#: Encoders at least this large say what they cost before a command runs them (dasheng-0.6b, 1.2b).
LARGE_PARAMETERS = 300e6
#: dasheng-base's size, and its speed on 2 CPU cores (docs/benchmarks.md: an hour in 408 s).
BASE_PARAMETERS = 85.45e6
BASE_SECONDS_PER_HOUR_2_CORES = 408


class DashengModel(Tagger):
    """A Dasheng encoder (with or without its AudioSet head), ready to embed and, with a head, tag."""

    def __init__(self, network: Dasheng, name: str, labels: LabelSet | None,
                 device: str | torch.device = "cpu") -> None:
        self.network = network.to(device).eval()
        self.name = name
        self.labels = labels  # type: ignore[assignment]  # None: an encoder without a head
        self.device = torch.device(device)

    @property
    def embedding_dim(self) -> int:
        return self.network.config.embed_dim

    @property
    def batch_size(self) -> int:
        return BATCH_SIZE

    @property
    def streams(self) -> int:
        return 1

    def __repr__(self) -> str:
        classes = len(self.labels) if self.labels is not None else 0
        return f"DashengModel(name={self.name!r}, classes={classes}, device={str(self.device)!r})"

    def cost_note(self) -> str | None:
        """One line on the memory and time a large encoder takes (None for a small one).

        Estimated from the parameter count: compute per second of audio grows with it, as
        every token passes through every weight.
        """
        parameters = sum(parameter.numel() for parameter in self.network.parameters())
        if parameters < LARGE_PARAMETERS:
            return None
        ratio = parameters / BASE_PARAMETERS
        minutes = ratio * BASE_SECONDS_PER_HOUR_2_CORES / 60
        return (f"{self.name} is a large encoder ({parameters / 1e6:.0f} M parameters): its weights take "
                f"{parameters * 4 / 2**30:.1f} GiB in fp32, and it computes ~{ratio:.0f}x dasheng-base per "
                f"second of audio (an hour: roughly {minutes:.0f} min on 2 CPU cores)")

    # -- tagging ---------------------------------------------------------------
    def tag_options(self, **option_values):
        if self.labels is None:
            raise OptionError(f"{self.name}: this encoder has no classification head; tag with "
                              "dasheng-base-audioset, or use embed")
        return super().tag_options(**option_values)

    def _submit(self, batch: np.ndarray) -> Future:
        future: Future = Future()
        future.set_result(self._score_now(batch))
        return future

    @torch.inference_mode()
    def _score_now(self, batch: np.ndarray) -> np.ndarray:
        return self.network(torch.from_numpy(batch).to(self.device)).cpu().numpy()

    @torch.inference_mode()
    def probabilities(self, waveforms: torch.Tensor | np.ndarray, *, finite: bool = True) -> np.ndarray:
        """(batch, samples) 16 kHz clips of equal length -> (batch, classes) probabilities, each clip on its own.

        ``finite=False`` leaves an overflowing clip's row NaN instead of raising (for batches
        that mix callers, as :meth:`auricle.model.AudioModel.probabilities`)."""
        if self.labels is None:
            raise OptionError(f"{self.name}: this encoder has no classification head")
        scores = self._score_now(prepare_batch(waveforms))
        return finite_probabilities(scores) if finite else scores

    # -- embeddings --------------------------------------------------------------
    @torch.inference_mode()
    def tokens(self, waveforms: torch.Tensor | np.ndarray, lengths=None) -> torch.Tensor:
        """Frame embeddings (batch, N, dim), 25 per second, of (batch, samples) 16 kHz clips.

        ``lengths`` (samples per clip) hides each clip's padding from attention, as the official
        ``x_length`` does; each clip keeps its own loudness floor.
        """
        batch = torch.from_numpy(prepare_batch(waveforms)).to(self.device)
        lengths = None if lengths is None else torch.as_tensor(lengths, device=self.device)
        return self.network.encode(batch, lengths).cpu()

    def embed_waveform(self, waveform: np.ndarray, name: str = "<array>", batch_size: int | None = None) -> Embeddings:
        """Embeddings of one 16 kHz mono signal: ``windows`` are the frame embeddings (one per 40 ms)
        with their start and end times, ``clip`` is their mean. ``batch_size``: 252-token chunks per call."""
        waveform = prepare_waveform(waveform, SAMPLE_RATE, name)
        return finite_embeddings(self._embeddings(name, lambda: [waveform], batch_size))

    def _embed_file(self, path: str | os.PathLike, batch_size: int | None = None) -> Embeddings:
        # Streamed: a long recording is never held whole, and is read twice (auricle.inference.frame_tokens).
        return self._embeddings(str(path), file_blocks(path), batch_size)

    def _embeddings(self, name: str, blocks, batch_size: int | None) -> Embeddings:
        result = frame_tokens(self.network, blocks, batch_size or self.batch_size)
        tokens = result.tokens
        duration = result.samples / SAMPLE_RATE
        step = SAMPLES_PER_TOKEN / SAMPLE_RATE
        starts = np.arange(len(tokens)) * step
        return Embeddings(file=name, duration=duration, model=self.name, clip=tokens.mean(axis=0), windows=tokens,
                          starts=starts, ends=np.minimum(starts + step, duration))

def load_dasheng(checkpoint: DashengCheckpoint, info: ModelInfo | None, device: torch.device,
                 engine: EngineConfig, where: str | os.PathLike | None = None) -> DashengModel:
    """The Dasheng family's model of a checkpoint :mod:`auricle.loading` read (``info``: the name it was asked by;
    messages name the weights file itself, ``where`` being its folder or the path given)."""
    if engine.engine != "torch" or engine.precision != "fp32":
        raise OptionError(f"{checkpoint.source}: Dasheng runs on the torch engine in fp32 only "
                          f"(not {engine.label})")
    if info is not None and (info.family != "dasheng" or info.config.embed_dim != checkpoint.config.embed_dim
                             or info.config.depth != checkpoint.config.depth):
        raise CheckpointError(f"{checkpoint.source}: holds a {checkpoint.config.embed_dim}-wide, "
                              f"{checkpoint.config.depth}-deep Dasheng encoder, not {info.name}")
    labels = None
    if checkpoint.config.num_classes:
        if checkpoint.labels is not None:
            labels = LabelSet.from_names(checkpoint.labels)
        elif checkpoint.config.num_classes == 527:
            labels = audioset_labels()
        else:
            raise CheckpointError(f"{checkpoint.source}: head has {checkpoint.config.num_classes} classes "
                                  "but the checkpoint names none")
    name = info.name if info is not None else (checkpoint.name or Path(checkpoint.source).stem)
    return DashengModel(build_dasheng(checkpoint), name, labels, device)
