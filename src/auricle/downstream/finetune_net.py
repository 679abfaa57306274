"""The network a fine-tuning run trains: the encoder under a new head, partial freezing, and the
SpecAugment and mixup plan drawn for each batch (applied inside :class:`TrainingNet`).

Apart from :mod:`auricle.downstream.finetune` (the run: data, loop, checkpoints), which re-exports
these names under their old path.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch
from torch import nn

from auricle.errors import CheckpointError
from auricle.frontend import HOP_LENGTH
from auricle.models.ced import CED, MIN_SAMPLES
from auricle.models.dasheng import Dasheng, valid_tokens

if TYPE_CHECKING:
    from auricle.downstream.finetune import FinetuneConfig

def with_new_head(encoder: CED | Dasheng, classes: int, activation: str) -> CED | Dasheng:
    """A copy of ``encoder`` whose head is a fresh LayerNorm+Linear over ``classes`` outputs."""
    if isinstance(encoder, Dasheng):
        network: CED | Dasheng = Dasheng(replace(encoder.config, num_classes=classes, head_activation=activation))
    else:
        network = CED(replace(encoder.config, num_classes=classes, head_activation=activation, head_hidden=0))
    own = {k: v for k, v in encoder.state_dict().items() if not k.startswith("outputlayer.")}
    missing, unexpected = network.load_state_dict(own, strict=False)
    if unexpected or any(not key.startswith("outputlayer.") for key in missing):
        raise CheckpointError(f"encoder does not fit a new head (missing {missing}, unexpected {unexpected})")
    return network


def freeze_for_partial(network: CED | Dasheng, train_blocks: int | None) -> list[nn.Parameter]:
    """Leave only the last ``train_blocks`` blocks, the final norm and the head trainable."""
    if train_blocks is None:
        for parameter in network.parameters():
            parameter.requires_grad_(True)
        return list(network.parameters())
    depth = len(network.blocks)
    if not 0 <= train_blocks <= depth:
        raise ValueError(f"train_blocks must be between 0 and {depth}, not {train_blocks}")
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    trainable: list[nn.Module] = [network.outputlayer]
    if train_blocks:
        trainable += [network.norm, *network.blocks[depth - train_blocks:]]
    for module in trainable:
        for parameter in module.parameters():
            parameter.requires_grad_(True)
    return [p for p in network.parameters() if p.requires_grad]


def valid_time_patches(lengths: torch.Tensor, patch_size: int, total: int) -> torch.Tensor:
    """Time patches holding real (not padded) frames, per clip; at least one."""
    frames = 1 + torch.clamp(lengths, min=MIN_SAMPLES) // HOP_LENGTH
    return torch.clamp((frames + patch_size - 1) // patch_size, 1, total)


@dataclass
class AugmentPlan:
    """Random choices of one training batch, drawn outside the model so its forward is deterministic."""

    keep: torch.Tensor  # (B, 1, F, T) 0/1 mask from SpecAugment
    mix_order: torch.Tensor | None = None  # partner of each clip in mixup
    mix_weight: torch.Tensor | None = None  # (B,) weight of the clip itself


class TrainingNet(nn.Module):
    """Log-mel -> masks/mixup -> encoder -> mean of the real tokens -> logits; what DDP wraps."""

    def __init__(self, network: CED | Dasheng, bf16: bool = False) -> None:
        super().__init__()
        self.network = network
        self.bf16 = bf16

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor, plan: AugmentPlan | None) -> torch.Tensor:
        network = self.network
        with torch.autocast(waveforms.device.type, enabled=False):  # the log-mel's dB range needs float32
            normalized = network.normalize(network.spectrogram(waveforms))
        if plan is not None:
            normalized = normalized * plan.keep[..., : normalized.shape[-1]]
        if isinstance(network, Dasheng):
            return self._dasheng(network, normalized, lengths, plan)
        target = network.config.target_frames
        if normalized.shape[-1] > target:
            normalized = normalized[..., :target]
        patch = network.config.patch_size
        time_patches = normalized.shape[-1] // patch
        valid = valid_time_patches(lengths, patch, time_patches)
        normalized, valid = _mix(normalized, valid, plan)
        with torch.autocast(waveforms.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            tokens = network.forward_features(normalized).float()
        batch, _, dim = tokens.shape
        grid = tokens.reshape(batch, -1, time_patches, dim)  # frequency-major token order
        mask = (torch.arange(time_patches, device=tokens.device)[None, :] < valid[:, None]).to(tokens.dtype)
        pooled = (grid * mask[:, None, :, None]).sum(dim=(1, 2)) / (mask.sum(dim=1) * grid.shape[1])[:, None]
        with torch.autocast(waveforms.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return network.outputlayer(pooled).float()

    def _dasheng(self, network: Dasheng, normalized: torch.Tensor, lengths: torch.Tensor,
                 plan: AugmentPlan | None) -> torch.Tensor:
        # Keys past a clip's end are masked and the mean is over its valid tokens, as auricle tag computes it.
        normalized, valid = _mix(normalized, valid_tokens(lengths), plan)
        with torch.autocast(normalized.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            tokens = network.forward_features(normalized, valid).float()
        pooled = network.pool(tokens, valid)
        with torch.autocast(normalized.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return network.outputlayer(pooled).float()


def _mix(normalized: torch.Tensor, valid: torch.Tensor, plan: AugmentPlan | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup of the (already masked) log-mel; a mixed clip is as long as the longer of the two."""
    if plan is None or plan.mix_order is None:
        return normalized, valid
    weight = plan.mix_weight.view(-1, 1, 1, 1)
    mixed = weight * normalized + (1 - weight) * normalized[plan.mix_order]
    return mixed, torch.maximum(valid, valid[plan.mix_order])


def draw_augment_plan(
    shape: tuple[int, int, int], lengths: torch.Tensor, config: FinetuneConfig, generator: torch.Generator
) -> AugmentPlan:
    """SpecAugment masks over (B, n_mels, frames) and mixup partners, from ``generator``."""
    batch, bands, frames = shape
    keep = torch.ones(batch, 1, bands, frames)
    clip_frames = (1 + torch.clamp(lengths, min=MIN_SAMPLES) // HOP_LENGTH).clamp(max=frames)
    for row in range(batch):
        width_limit = max(1, int(config.time_mask_fraction * int(clip_frames[row])))
        for _ in range(config.time_masks):
            width = int(torch.randint(0, width_limit + 1, (1,), generator=generator))
            start = int(torch.randint(0, max(1, int(clip_frames[row]) - width + 1), (1,), generator=generator))
            keep[row, :, :, start:start + width] = 0
        for _ in range(config.freq_masks):
            width = int(torch.randint(0, config.freq_mask_bands + 1, (1,), generator=generator))
            start = int(torch.randint(0, max(1, bands - width + 1), (1,), generator=generator))
            keep[row, :, start:start + width, :] = 0
    plan = AugmentPlan(keep)
    if config.mixup_alpha > 0 and batch > 1:
        beta = torch.distributions.Beta(config.mixup_alpha, config.mixup_alpha)
        # Beta sampling has no generator argument; draw it from a uniform of ours by inversion-free seeding.
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            weight = beta.sample((batch,))
        plan.mix_weight = torch.maximum(weight, 1 - weight)  # the clip itself dominates its target
        plan.mix_order = torch.randperm(batch, generator=generator)
    return plan
