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


class PatchEmbed(nn.Module):
    def __init__(self, config: DashengConfig) -> None:
        super().__init__()
        patch = (config.n_mels, config.patch_frames)
        self.proj = nn.Conv2d(1, config.embed_dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def key_bias(valid: torch.Tensor, first: int, tokens: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive attention bias (batch, 1, 1, tokens) hiding keys at or past ``valid`` in tokens ``first:first+tokens``.

    The official code fills masked scores with the dtype's lowest value (not -inf); adding that
    value gives the same scores (scores are far below its rounding step), and a chunk whose keys
    are all masked then attends uniformly, as there (with -inf, torch's attention gives such rows 0).
    """
    positions = torch.arange(first, first + tokens, device=valid.device)
    masked = positions.unsqueeze(0) >= valid.unsqueeze(1)
    bias = torch.zeros(masked.shape, dtype=dtype, device=valid.device)
    return bias.masked_fill(masked, torch.finfo(dtype).min)[:, None, None, :]


class Dasheng(LogMelFront):
    """Dasheng encoder, optionally with a classification head over the mean token.

    Data flow: waveform -> :meth:`spectrogram` (log-mel) -> :meth:`normalize` (input BatchNorm) ->
    :meth:`forward_features` (tokens, 25 per second) -> :meth:`forward_head` (logits).
    """

    min_samples = MIN_SAMPLES

    family = "dasheng"

    def __init__(self, config: DashengConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.embed_dim
        with torch.device("cpu"):  # a real frontend even when built on the meta device (it holds no weights)
            self.frontend = LogMel()
        self.init_bn = nn.BatchNorm2d(config.n_mels, momentum=0.01)
        self.patch_embed = PatchEmbed(config)
        self.time_pos_embed = nn.Parameter(torch.randn(1, dim, 1, config.chunk_tokens) * 0.02)
        self.freq_pos_embed = nn.Parameter(torch.randn(1, dim, 1, 1) * 0.02)
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
    def forward_features(self, normalized: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised mel (batch, 1, n_mels, frames) -> tokens (batch, frames // 4, dim).

        ``valid``: per clip, how many leading tokens keys may attend to (:func:`valid_tokens`);
        None attends to all. Chunks of 252 tokens run through the blocks alone; full chunks
        are stacked into one call, the short last one runs on its own.
        """
        x = self.patch_embed(normalized)  # (batch, dim, 1, tokens)
        batch, tokens = x.shape[0], x.shape[-1]
        size = self.config.chunk_tokens
        full = tokens // size
        outputs = []
        if full:
            stacked = torch.cat(x[..., : full * size].split(size, dim=-1), dim=0)
            bias = None
            if valid is not None:
                bias = torch.cat([key_bias(valid, index * size, size, x.dtype) for index in range(full)])
            out = self._chunk(stacked, bias)
            outputs.extend(out.split(batch, dim=0))
        if tokens > full * size:
            bias = None if valid is None else key_bias(valid, full * size, tokens - full * size, x.dtype)
            outputs.append(self._chunk(x[..., full * size :], bias))
        return torch.cat(outputs, dim=1)

    def _chunk(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        x = x + self.time_pos_embed[..., : x.shape[-1]]
        x = x + self.freq_pos_embed
        x = x.flatten(2).transpose(1, 2).contiguous()
        for block in self.blocks:
            x = block(x, bias)
        return self.norm(x)

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
