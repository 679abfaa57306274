"""The audio projector: five encoder tokens (25 Hz) become one decoder embedding (5 Hz).

As vLLM's ``AudioProjectorSubsample`` describes it: the ``T % k`` trailing encoder tokens are dropped,
``k`` consecutive tokens are concatenated along features, then ``Linear(k·D → H)``, exact GELU,
``Linear(H → H)``, both with bias. Its keys are ``net.0.*`` and ``net.2.*`` as in the checkpoint.
"""

from __future__ import annotations

import torch
from torch import nn

from auricle.language import choices


class AudioProjector(nn.Module):
    """Encoder tokens (B, T, D) to decoder embeddings (B, T // k, H)."""

    def __init__(self, encoder_dim: int, hidden_size: int, subsample_factor: int = choices.SUBSAMPLE_FACTOR):
        super().__init__()
        self.subsample_factor = subsample_factor
        self.net = nn.Sequential(
            nn.Linear(encoder_dim * subsample_factor, hidden_size),
            nn.GELU(),  # exact (erf), not the tanh approximation
            nn.Linear(hidden_size, hidden_size),
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, frames, dim = tokens.shape
        groups = frames // self.subsample_factor
        grouped = tokens[:, : groups * self.subsample_factor].reshape(batch, groups, dim * self.subsample_factor)
        return self.net(grouped.to(self.net[0].weight.dtype))

    def project_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """A (B, T) validity mask of encoder tokens as one of projected tokens: any of each group is valid."""
        batch, frames = mask.shape
        groups = frames // self.subsample_factor
        return mask[:, : groups * self.subsample_factor].reshape(batch, groups, self.subsample_factor).any(-1)
