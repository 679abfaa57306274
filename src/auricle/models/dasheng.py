"""The Dasheng encoder (Xiaomi, 2024): a ViT over 64x4 log-mel patches, one token per 40 ms.

Computes what the official ``dasheng`` package computes (``Dasheng.forward``): the CED log-mel,
an input BatchNorm, one patch per 4 frames over all 64 bands, 252-token chunks split after the
patch embedding (each through the blocks alone with positions from 0, the last one short and
unpadded), pre-norm blocks without LayerScale, a final LayerNorm. Deliberate differences, each
tested in ``tests/models/test_dasheng_parity.py``:

* the 120 dB floor is per clip (as auricle does for CED), not over the whole batch;
* a clip under 480 samples (less than one patch of 4 frames) is zero-padded to one token,
  where the official code raises inside its convolution.

Parameter names follow the official ones except that the input BatchNorm is ``init_bn``
(``init_bn.1`` there) and the frontend holds no parameters; ``models.dasheng_checkpoints``
converts the released layouts.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from auricle.frontend import HOP_LENGTH, LogMel
from auricle.models.ced import Block, LogMelFront, make_head
from auricle.models.dasheng_config import PATCH_FRAMES, DashengConfig

#: Samples per token as the official key mask counts them (``hop_size * 4``).
SAMPLES_PER_TOKEN = HOP_LENGTH * PATCH_FRAMES
#: The shortest waveform that makes one patch (4 frames); shorter input is zero-padded.
MIN_SAMPLES = (PATCH_FRAMES - 1) * HOP_LENGTH


def valid_tokens(samples: torch.Tensor) -> torch.Tensor:
    """Tokens of each clip that keys may attend to in a padded batch: floor(samples / 640), as officially."""
    return torch.div(samples, SAMPLES_PER_TOKEN, rounding_mode="floor").long()


def _initial_positions(*shape: int) -> torch.Tensor:
    """Position embeddings to start from, N(0, 0.02^2) (``randn * 0.02`` bit for bit); on the meta
    device shapes only.

    Drawing or scaling a meta tensor runs torch's Python reference kernels, which import sympy
    and torch._dynamo on first use (over a second of a cold start); ``empty`` does not.
    """
    values = torch.empty(shape)
    return values if values.is_meta else values.normal_(std=0.02)


class PatchEmbed(nn.Module):
    def __init__(self, config: DashengConfig) -> None:
        super().__init__()
        patch = (config.n_mels, config.patch_frames)
        self.proj = nn.Conv2d(1, config.embed_dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def chunk_keys(valid: torch.Tensor, first: int, tokens: int) -> torch.Tensor:
    """Per clip, how many of the tokens ``first:first+tokens`` keys may attend to, given each clip's ``valid`` tokens."""
    return (valid - first).clamp(0, tokens)


def key_bias(keys: torch.Tensor, tokens: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive attention bias (n, 1, 1, tokens) hiding each row's keys at or past ``keys`` (its count of valid keys).

    The official code fills masked scores with the dtype's lowest value (not -inf); adding that
    value gives the same scores (scores are far below its rounding step), and a chunk whose keys
    are all masked then attends uniformly, as there (with -inf, torch's attention gives such rows 0).
    """
    masked = torch.arange(tokens, device=keys.device).unsqueeze(0) >= keys.unsqueeze(1)
    bias = torch.zeros(masked.shape, dtype=dtype, device=keys.device)
    return bias.masked_fill(masked, torch.finfo(dtype).min)[:, None, None, :]


#: What runs chunks of normalised mel into tokens: (pieces, keys or None) -> tokens.
PieceFeatures = Callable[[torch.Tensor, "torch.Tensor | None"], torch.Tensor]


class Dasheng(LogMelFront):
    """Dasheng encoder, optionally with a classification head over the mean token.

    Data flow: waveform -> :meth:`spectrogram` (log-mel) -> :meth:`normalize` (input BatchNorm) ->
    :meth:`forward_features` (tokens, 25 per second) -> :meth:`forward_head` (logits).
    """

    min_samples = MIN_SAMPLES

    family = "dasheng"
    #: Batches of chunks carry each chunk's count of keys to attend to (the short last chunk's padding
    #: masked): engines that run chunks pass it on (auricle.engines).
    takes_key_counts = True

    def __init__(self, config: DashengConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.embed_dim
        with torch.device("cpu"):  # a real frontend even when built on the meta device (it holds no weights)
            self.frontend = LogMel()
        self.init_bn = nn.BatchNorm2d(config.n_mels, momentum=0.01)
        self.patch_embed = PatchEmbed(config)
        self.time_pos_embed = nn.Parameter(_initial_positions(1, dim, 1, config.chunk_tokens))
        self.freq_pos_embed = nn.Parameter(_initial_positions(1, dim, 1, 1))
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        if config.num_classes:
            self.outputlayer = make_head(dim, config.num_classes)
        self.eval()

    @staticmethod
    def meta_state_dict(config: DashengConfig) -> dict[str, torch.Tensor]:
        """The state dict of this size with shapes only (meta tensors): checks shapes without any weights."""
        with torch.device("meta"):
            return Dasheng(config).state_dict()

    # -- stages (spectrogram and normalize: LogMelFront's) ----------------------
    def forward_features(self, normalized: torch.Tensor, valid: torch.Tensor | None = None,
                         piece_features: PieceFeatures | None = None) -> torch.Tensor:
        """Normalised mel (batch, 1, n_mels, frames) -> tokens (batch, frames // 4, dim).

        ``valid``: per clip, how many leading tokens keys may attend to (:func:`valid_tokens`);
        None attends to all. The mel is cut into 1008-frame chunks (252 tokens; the patches do not
        overlap, so this is the official split after the patch embedding), each run through the
        blocks alone: full chunks stacked into one call, the short last one on its own.
        ``piece_features`` runs the chunks (default :meth:`piece_features`; an engine's, see
        :mod:`auricle.engines`).
        """
        run = piece_features or self.piece_features
        batch, frames = normalized.shape[0], normalized.shape[-1]
        size, width = self.config.chunk_tokens, self.config.target_frames
        full = frames // width
        outputs = []
        if full:
            stacked = torch.cat(normalized[..., : full * width].split(width, dim=-1), dim=0)
            keys = None if valid is None else torch.cat([chunk_keys(valid, index * size, size) for index in range(full)])
            outputs.extend(run(stacked, keys).split(batch, dim=0))
        if frames - full * width >= self.config.patch_frames:  # a short last chunk with at least one token
            rest = normalized[..., full * width :]
            keys = None if valid is None else chunk_keys(valid, full * size, rest.shape[-1] // self.config.patch_frames)
            outputs.append(run(rest, keys))
        return torch.cat(outputs, dim=1)

    def piece_features(self, pieces: torch.Tensor, keys: torch.Tensor | None = None) -> torch.Tensor:
        """Chunks of normalised mel (n, 1, n_mels, <=1008 frames) -> tokens (n, frames // 4, dim).

        ``keys``: per chunk, how many leading tokens keys may attend to (:func:`chunk_keys`); None: all.
        The step every engine replaces (CED's is :meth:`auricle.models.ced.CED.piece_features`).
        """
        x = self.patch_embed(pieces)  # (n, dim, 1, tokens)
        x = x + self.time_pos_embed[..., : x.shape[-1]]
        x = x + self.freq_pos_embed
        x = x.flatten(2).transpose(1, 2).contiguous()
        bias = None if keys is None else key_bias(keys, x.shape[1], x.dtype)
        for block in self.blocks:
            x = block(x, bias)
        return self.norm(x)

    def probabilities_with(self, piece_features: PieceFeatures, waveforms: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` (no lengths) with the chunks run by ``piece_features`` (an engine's)."""
        tokens = self.forward_features(self.normalize(self.spectrogram(waveforms)), None, piece_features)
        return self.activate(self.forward_head(tokens))

    def pool(self, tokens: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Clip embeddings (batch, dim): the mean token, over each clip's valid tokens (at least one)."""
        if valid is None:
            return tokens.mean(dim=1)
        count = valid.clamp(1, tokens.shape[1])
        keep = torch.arange(tokens.shape[1], device=tokens.device).unsqueeze(0) < count.unsqueeze(1)
        return (tokens * keep.unsqueeze(-1).to(tokens.dtype)).sum(dim=1) / count.unsqueeze(1).to(tokens.dtype)

    def forward_head(self, tokens: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens -> logits (batch, num_classes), from the mean token."""
        if not self.config.num_classes:
            raise RuntimeError("this Dasheng encoder has no classification head")
        return self.outputlayer(self.pool(tokens, valid))

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        if self.config.head_activation == "softmax":
            return torch.softmax(logits, dim=-1)
        return torch.sigmoid(logits)

    # -- whole-clip entry points ---------------------------------------------
    def encode(self, waveforms: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Waveforms (batch, samples), optionally with each clip's length in samples -> tokens (batch, N, dim)."""
        valid = None if lengths is None else valid_tokens(torch.as_tensor(lengths, device=waveforms.device))
        return self.forward_features(self.normalize(self.spectrogram(waveforms)), valid)

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Waveforms (batch, samples) -> probabilities (batch, num_classes) of the head."""
        valid = None if lengths is None else valid_tokens(torch.as_tensor(lengths, device=waveforms.device))
        tokens = self.forward_features(self.normalize(self.spectrogram(waveforms)), valid)
        return self.activate(self.forward_head(tokens, valid))
