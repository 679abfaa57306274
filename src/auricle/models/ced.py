"""The CED encoder: a ViT over 16x16 log-mel patches with separate time and
frequency position embeddings, as in the official implementation.

Parameter names follow the official checkpoints, except that the input
BatchNorm is ``init_bn`` (as in the Hugging Face checkpoints) and the frontend
holds no parameters. ``models.checkpoints`` converts every foreign layout.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from auricle.frontend import HOP_LENGTH, LogMel
from auricle.models.config import PATCH_SIZE, CEDConfig

#: The shortest waveform that fills one patch (16 frames); shorter input is zero-padded.
MIN_SAMPLES = (PATCH_SIZE - 1) * HOP_LENGTH


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """``bias``: an additive attention mask (Dasheng masks a batch's padding; CED needs none)."""
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(query, key, value, attn_mask=bias)
        return self.proj(x.transpose(1, 2).reshape(batch, tokens, dim))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """A pre-norm transformer block; both families' (a Dasheng config has the same fields)."""

    def __init__(self, config: CEDConfig) -> None:
        super().__init__()
        dim = config.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, config.num_heads, config.qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * config.mlp_ratio))

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), bias)
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, config: CEDConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(
            1, config.embed_dim, kernel_size=config.patch_size, stride=config.patch_size
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def make_head(dim: int, classes: int, hidden: int = 0) -> nn.Sequential:
    """The classification head over the mean token: LayerNorm+Linear, or an MLP when ``hidden`` > 0."""
    if hidden <= 0:
        return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, classes))
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, classes))


class LogMelFront(nn.Module):
    """The stages both encoder families share before their patches: a log-mel per clip (clips under
    ``min_samples`` zero-padded to one patch) and the input BatchNorm over mel bands."""

    #: Samples of the shortest clip that fills one patch of log-mel frames.
    min_samples: int = MIN_SAMPLES

    def spectrogram(self, waveforms: torch.Tensor) -> torch.Tensor:
        """(batch, samples) 16 kHz -> log-mel (batch, n_mels, frames), each clip with its own floor;
        pads clips under one patch."""
        if waveforms.shape[-1] < self.min_samples:
            waveforms = F.pad(waveforms, (0, self.min_samples - waveforms.shape[-1]))
        return self.frontend(waveforms)

    def normalize(self, mel: torch.Tensor) -> torch.Tensor:
        """Input BatchNorm over mel bands: (batch, n_mels, frames) -> (batch, 1, n_mels, frames)."""
        return self.init_bn(mel.unsqueeze(2)).transpose(1, 2)


class CED(LogMelFront):
    """CED encoder with its AudioSet (or custom) head.

    Data flow: waveform -> :meth:`spectrogram` (log-mel) -> :meth:`normalize`
    (input BatchNorm) -> :meth:`pieces` (<= 1012-frame pieces) ->
    :meth:`forward_features` (tokens) -> :meth:`forward_head` (logits).
    """

    def __init__(self, config: CEDConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.embed_dim
        self.frontend = LogMel()
        self.init_bn = nn.BatchNorm2d(config.n_mels, momentum=0.01)
        self.patch_embed = PatchEmbed(config)
        time_patches = config.target_frames // config.patch_size
        freq_patches = config.n_mels // config.patch_size
        self.time_pos_embed = nn.Parameter(torch.randn(1, dim, 1, time_patches) * 0.02)
        self.freq_pos_embed = nn.Parameter(torch.randn(1, dim, freq_patches, 1) * 0.02)
        self.blocks = nn.Sequential(*[Block(config) for _ in range(config.depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.outputlayer = make_head(dim, config.num_classes, config.head_hidden)
        self.eval()

    # -- stages (spectrogram and normalize: LogMelFront's) ----------------------
    def pieces(self, normalized: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Split past ``target_frames`` into pieces stacked piece-major: (pieces * batch, 1, F, T).

        As the official model does, a short last piece is zero-padded (after the
        BatchNorm) and kept. Unlike it, a last piece that is exactly full is kept too.
        """
        frames = normalized.shape[-1]
        target = self.config.target_frames
        if frames <= target:
            return normalized, 1
        splits = list(normalized.split(target, dim=-1))
        if splits[-1].shape[-1] < target:
            splits[-1] = F.pad(splits[-1], (0, target - splits[-1].shape[-1]))
        return torch.cat(splits, dim=0), len(splits)

    def forward_features(self, pieces: torch.Tensor) -> torch.Tensor:
        """Normalised mel pieces (n, 1, F, T) -> tokens (n, F/16 * T/16, dim), frequency-major."""
        x = self.patch_embed(pieces)
        x = x + self.time_pos_embed[:, :, :, : x.shape[-1]]
        x = x + self.freq_pos_embed
        # Contiguous once here: otherwise the residual stream keeps the transposed
        # layout through every block, and each LayerNorm and residual add pays a copy.
        x = x.flatten(2).transpose(1, 2).contiguous()
        return self.norm(self.blocks(x))

    def piece_features(self, pieces: torch.Tensor, keys: torch.Tensor | None = None) -> torch.Tensor:
        """:meth:`forward_features` under the name every engine replaces (Dasheng's takes a key mask;
        CED's pieces are whole, so ``keys`` must be None)."""
        if keys is not None:
            raise ValueError("CED attends to every token of a piece; it takes no key mask")
        return self.forward_features(pieces)

    def probabilities_with(self, piece_features, waveforms: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` with the pieces run by ``piece_features`` ((pieces, keys) -> tokens; an engine's)."""
        pieces, count = self.pieces(self.normalize(self.spectrogram(waveforms)))
        return self.clip_probabilities(piece_features(pieces, None), count)

    def forward_head(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens -> logits (n, num_classes), from the mean token."""
        return self.outputlayer(tokens.mean(dim=1))

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits -> scores in [0, 1] with the head's activation (sigmoid unless configured)."""
        if self.config.head_activation == "softmax":
            return torch.softmax(logits, dim=-1)
        return torch.sigmoid(logits)

    # -- whole-clip entry points ---------------------------------------------
    def encode(self, waveforms: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Waveforms (batch, samples) -> (tokens (pieces * batch, N, dim), pieces)."""
        normalized = self.normalize(self.spectrogram(waveforms))
        pieces, count = self.pieces(normalized)
        return self.forward_features(pieces), count

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        """Waveforms (batch, samples) -> probabilities (batch, num_classes).

        Clips longer than 1012 frames are split into pieces whose sigmoid
        (or softmax, see ``CEDConfig.head_activation``) outputs are averaged,
        as the official model does.
        """
        return self.clip_probabilities(*self.encode(waveforms))

    def clip_probabilities(self, tokens: torch.Tensor, count: int) -> torch.Tensor:
        """Tokens of ``count`` pieces per clip, piece-major (:meth:`encode`) -> probabilities (batch, num_classes)."""
        probabilities = self.activate(self.forward_head(tokens))
        return probabilities.reshape(count, -1, probabilities.shape[-1]).mean(dim=0)


def batched_tokens(
    forward_features: Callable[[torch.Tensor], torch.Tensor], pieces: torch.Tensor, batch_size: int
) -> Iterator[tuple[int, torch.Tensor]]:
    """Tokens of normalised pieces (n, 1, F, T), ``batch_size`` pieces per call of ``forward_features``.

    Yields (index of the batch's first piece, its tokens) so that callers can
    reduce tokens as they come instead of holding those of every piece.
    ``forward_features`` is :meth:`CED.forward_features` or an engine's.
    """
    for first in range(0, len(pieces), batch_size):
        yield first, forward_features(pieces[first : first + batch_size])
