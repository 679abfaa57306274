"""The HEAR 2021 common API over a CED or Dasheng encoder.

Use as a HEAR module: ``load_model``, ``get_scene_embeddings`` and
``get_timestamp_embeddings`` at module level, and a ``torch.nn.Module`` model
with ``sample_rate``, ``scene_embedding_size`` and ``timestamp_embedding_size``.

The choices are those of the official CED submission (github.com/RicherMans/HEAR_CED):

* scene embedding: the mean of all encoder tokens of the whole clip, the clip
  cut internally into 1012-frame pieces (equals ``AudioModel.embed_waveform``);
* timestamp embeddings, ``timestamps="windows"`` (the submission's default):
  every 50 ms, the mean token of a 7677-sample (0.48 s) window centred on
  the timestamp, the signal zero-padded by half a window at both ends;
* ``timestamps="grid"`` (the submission's ``overlap=False``): one embedding per
  16-frame time patch of the token grid (mean over the 4 frequency patches),
  every 160 ms, one pass over the clip. Unlike the official code, pieces are
  1008 frames (63 whole patches), so the grid stays regular past 10 s, and the
  timestamps are the exact patch centres (75 ms + 160 ms * k, not 80 ms + ...).

With a Dasheng encoder (``timestamps="frames"``, its only mode) the scene embedding is the
mean of the clip's frame tokens and the timestamp embeddings are those tokens, every 40 ms,
stamped at the centre of their 4 frames (15 ms + 40 ms * k); equal to ``DashengModel.embed``.

Every clip of a batch is analysed on its own (own log-mel floor, no padding
shared across clips), so an item's embeddings never depend on its batch mates.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

from auricle.audio import SAMPLE_RATE, prepare_waveform
from auricle.errors import NOT_FINITE, AudioError
from auricle.frontend import HOP_LENGTH
from auricle.models.ced import CED, batched_tokens
from auricle.models.dasheng import Dasheng
from auricle.models.dasheng_config import PATCH_FRAMES
from auricle.models.registry import DEFAULT_MODEL

#: Timestamp modes of a CED encoder; a Dasheng encoder has one, :data:`FRAMES`.
TIMESTAMP_MODES = ("windows", "grid")
FRAMES = "frames"
#: The official submission's window: 5 patches of 16 frames (0.48 s).
WINDOW_SAMPLES = 7677
HOP_MS = 50.0
DEFAULT_BATCH_SIZE = 64


class HearModel(nn.Module):
    """A CED or Dasheng encoder with the attributes the HEAR API asks for."""

    sample_rate: int = SAMPLE_RATE

    def __init__(
        self,
        network: CED | Dasheng,
        name: str,
        timestamps: str | None = None,
        hop_ms: float = HOP_MS,
        window_samples: int = WINDOW_SAMPLES,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        super().__init__()
        modes = (FRAMES,) if isinstance(network, Dasheng) else TIMESTAMP_MODES
        timestamps = modes[0] if timestamps is None else timestamps
        if timestamps not in modes:
            raise ValueError(f"timestamps must be one of {modes} for {name}, got {timestamps!r}")
        hop_samples = hop_ms * SAMPLE_RATE / 1000
        # A fractional hop would let timestamps and windows drift apart on long audio.
        if hop_samples < 1 or hop_samples != int(hop_samples):
            raise ValueError(f"hop_ms must be a whole number of samples at {SAMPLE_RATE} Hz, got {hop_ms}")
        if window_samples < 1 or batch_size < 1:
            raise ValueError("window_samples and batch_size must be >= 1")
        self.network = network.eval()
        self.name = name
        self.timestamps = timestamps
        self.hop_ms = float(hop_ms)
        self.window_samples = int(window_samples)
        self.batch_size = int(batch_size)
        self.scene_embedding_size = int(network.config.embed_dim)
        self.timestamp_embedding_size = int(network.config.embed_dim)

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    def extra_repr(self) -> str:
        return f"name={self.name!r}, timestamps={self.timestamps!r}"


def load_model(
    model_file_path: str | os.PathLike = "",
    model_name: str = DEFAULT_MODEL,
    *,
    timestamps: str | None = None,
    hop_ms: float | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> HearModel:
    """HEAR ``load_model``: weights from ``model_file_path`` if given, else ``model_name`` from the Hub.

    ``model_file_path`` may be any checkpoint ``auricle.load_model`` reads (official
    ``.pt``, Hugging Face folder, auricle ``.safetensors``), CED or Dasheng. ``timestamps``:
    "windows" (default) or "grid" for CED, "frames" (the only one) for Dasheng; ``hop_ms``
    (default 50) spaces CED's windows; Dasheng's frames are 40 ms apart.
    """
    from auricle.loading import Accepts, RunOptions, load

    checkpoint = model_file_path if str(model_file_path) else None
    # The HEAR functions run the network's layers, which an ONNX file lacks.
    audio_model = load(model_name, checkpoint, RunOptions(device), accepts=Accepts(
        exported=False, exported_refusal="{path}: the HEAR API runs the encoder's layers, which an exported ONNX "
        "file does not hold; give it the model's weights (.pt, .safetensors or a Hugging Face folder)"))
    if hop_ms is not None and isinstance(audio_model.network, Dasheng):
        raise ValueError(f"{audio_model.name}: a Dasheng encoder's timestamp embeddings are its frames, every "
                         "40 ms; hop_ms does not apply")
    return HearModel(audio_model.network, audio_model.name, timestamps, HOP_MS if hop_ms is None else hop_ms,
                     batch_size=batch_size)


def _as_batch(audio: torch.Tensor | np.ndarray, model: HearModel) -> torch.Tensor:
    """(n_sounds, n_samples) float32 on the model's device; refuses other shapes and NaN or Inf.

    Integer samples are scaled to [-1, 1] as ``auricle.audio.prepare_waveform`` scales them
    (int16 taken as raw amplitude was 32768 times too loud).
    """
    audio = torch.as_tensor(audio)
    if audio.dim() != 2:
        raise ValueError(f"audio must be (n_sounds, n_samples), got shape {tuple(audio.shape)}")
    if audio.shape[1] == 0:
        raise ValueError("audio has no samples")
    if not audio.is_floating_point() and len(audio):
        audio = torch.from_numpy(np.stack([prepare_waveform(row, SAMPLE_RATE, "audio") for row in audio.cpu().numpy()]))
    audio = audio.to(device=model.device, dtype=torch.float32)
    if not torch.isfinite(audio).all():
        raise AudioError("audio: contains NaN or Inf samples")
    return audio


def _finite(embeddings: torch.Tensor) -> torch.Tensor:
    if not torch.isfinite(embeddings).all():  # a row of NaN would pass for an embedding downstream
        raise AudioError(f"audio: {NOT_FINITE}")
    return embeddings


@torch.inference_mode()
def get_scene_embeddings(audio: torch.Tensor, model: HearModel) -> torch.Tensor:
    """(n_sounds, n_samples) at 16 kHz -> (n_sounds, scene_embedding_size) float32: mean of all tokens."""
    audio = _as_batch(audio, model)
    network = model.network
    sounds = audio.shape[0]
    if sounds == 0:  # an empty batch of a task split: no rows (the FFT refuses an empty batch)
        return torch.zeros(0, model.scene_embedding_size, device=audio.device)
    if model.timestamps == FRAMES:
        return _finite(torch.cat([tokens.mean(dim=1) for tokens in _frame_tokens(audio, model)]))
    pieces, count = network.pieces(network.normalize(network.spectrogram(audio)))
    # Pieces are stacked piece-major: row r belongs to sound r % sounds.
    sums = torch.zeros(sounds, model.scene_embedding_size, dtype=torch.float64, device=audio.device)
    tokens_per_piece = 0
    for first, tokens in batched_tokens(network.forward_features, pieces, model.batch_size):
        tokens_per_piece = tokens.shape[1]
        owners = torch.arange(first, first + len(tokens), device=audio.device) % sounds
        sums.index_add_(0, owners, tokens.double().sum(dim=1))
    return _finite((sums / (count * tokens_per_piece)).float())


@torch.inference_mode()
def get_timestamp_embeddings(audio: torch.Tensor, model: HearModel) -> tuple[torch.Tensor, torch.Tensor]:
    """(n_sounds, n_samples) -> (embeddings (n_sounds, n_timestamps, size) float32, timestamps in ms).

    Timestamps are the centres of what each embedding sees, at regular
    intervals (``model.hop_ms`` for windows, 160 ms for the grid), never past the end.
    """
    audio = _as_batch(audio, model)
    embed = {"grid": _grid_embeddings, FRAMES: _frame_embeddings}.get(model.timestamps, _window_embeddings)
    if audio.shape[0] == 0:  # no rows, but the timestamp axis a sound of this length would have
        embeddings, timestamps = embed(audio.new_zeros(1, audio.shape[1]), model)
        return embeddings[:0], timestamps[:0]
    embeddings, timestamps = embed(audio, model)
    return _finite(embeddings), timestamps


def _window_embeddings(audio: torch.Tensor, model: HearModel) -> tuple[torch.Tensor, torch.Tensor]:
    sounds, samples = audio.shape
    width = model.window_samples
    hop = int(model.hop_ms * SAMPLE_RATE / 1000)
    padded = torch.nn.functional.pad(audio, (width // 2, width - width // 2))
    windows = padded.unfold(-1, width, hop)  # a view: (sounds, per_sound, width)
    per_sound = windows.shape[1]  # = samples // hop + 1, centred at 0, hop, 2 hop, ...
    embeddings = torch.empty(sounds * per_sound, model.timestamp_embedding_size, device=audio.device)
    for first in range(0, sounds * per_sound, model.batch_size):
        rows = torch.arange(first, min(first + model.batch_size, sounds * per_sound), device=audio.device)
        # Gather only this chunk: the unfolded view of 60 s clips would not fit in memory.
        chunk = windows[rows // per_sound, rows % per_sound]
        tokens, _ = model.network.encode(chunk)
        embeddings[rows] = tokens.mean(dim=1)
    timestamps = torch.arange(per_sound, dtype=torch.float64, device=audio.device) * model.hop_ms
    return embeddings.reshape(sounds, per_sound, -1), timestamps.float().expand(sounds, -1).contiguous()


def _frame_tokens(audio: torch.Tensor, model: HearModel):
    """Dasheng's tokens (sounds, frames, dim) of a few sounds at a time: about ``batch_size`` chunks per call."""
    network = model.network
    samples = max(audio.shape[1], PATCH_FRAMES * HOP_LENGTH)
    chunks = -(-samples // (network.config.chunk_tokens * PATCH_FRAMES * HOP_LENGTH))
    per_call = max(1, model.batch_size // chunks)
    for first in range(0, audio.shape[0], per_call):
        yield network.encode(audio[first : first + per_call])  # each clip with its own floor


def _frame_embeddings(audio: torch.Tensor, model: HearModel) -> tuple[torch.Tensor, torch.Tensor]:
    embeddings = torch.cat(list(_frame_tokens(audio, model)))
    return embeddings, _patch_centres(embeddings.shape[1], PATCH_FRAMES, audio.shape[1], audio.device,
                                      audio.shape[0])


def _patch_centres(patches: int, frames_per_patch: int, samples: int, device: torch.device,
                   sounds: int) -> torch.Tensor:
    """Timestamps (sounds, patches) in ms: frame j is centred on sample j * hop, so patch k on frame
    ``frames_per_patch * k + (frames_per_patch - 1) / 2``; a clip shorter than one patch was
    zero-padded, and its one embedding is placed inside the clip."""
    frame_ms = 1000 * HOP_LENGTH / SAMPLE_RATE
    centres = (torch.arange(patches, dtype=torch.float64) * frames_per_patch + (frames_per_patch - 1) / 2) * frame_ms
    centres = centres.clamp(max=1000 * samples / SAMPLE_RATE)
    return centres.float().to(device).expand(sounds, -1).contiguous()


def _grid_embeddings(audio: torch.Tensor, model: HearModel) -> tuple[torch.Tensor, torch.Tensor]:
    network = model.network
    config = network.config
    sounds, samples = audio.shape
    normalized = network.normalize(network.spectrogram(audio))  # (sounds, 1, F, frames)
    frames = normalized.shape[-1]
    piece_frames = (config.target_frames // config.patch_size) * config.patch_size
    if frames <= piece_frames:
        pieces, count = normalized, 1
    else:
        splits = list(normalized.split(piece_frames, dim=-1))
        splits[-1] = torch.nn.functional.pad(splits[-1], (0, piece_frames - splits[-1].shape[-1]))
        pieces, count = torch.cat(splits), len(splits)
    tokens = torch.cat([batch for _, batch in batched_tokens(network.forward_features, pieces, model.batch_size)])
    freq_patches = config.n_mels // config.patch_size
    grid = tokens.reshape(count, sounds, freq_patches, -1, tokens.shape[-1]).mean(dim=2)
    patches = max(1, frames // config.patch_size)  # only patches made of real frames
    embeddings = grid.transpose(0, 1).reshape(sounds, -1, tokens.shape[-1])[:, :patches]
    return embeddings.contiguous(), _patch_centres(patches, config.patch_size, samples, audio.device, sounds)


def timestamp_hop_ms(model: HearModel) -> float:
    """Interval between timestamp embeddings of ``model``, in milliseconds."""
    if model.timestamps == "grid":
        return model.network.config.patch_size * 1000 * HOP_LENGTH / SAMPLE_RATE
    if model.timestamps == FRAMES:
        return PATCH_FRAMES * 1000 * HOP_LENGTH / SAMPLE_RATE
    return model.hop_ms


__all__ = [
    "HearModel",
    "load_model",
    "get_scene_embeddings",
    "get_timestamp_embeddings",
    "timestamp_hop_ms",
    "TIMESTAMP_MODES",
    "FRAMES",
]
