"""Small perturbed CED networks and their normalised pieces, for tests of alternative encoders."""

from __future__ import annotations

import torch

from auricle.models.ced import CED, CEDConfig


def perturbed_network(seed: int = 0, **config) -> CED:
    """A small CED (64 wide, 2 heads, 2 blocks unless ``config`` says otherwise) off its init values.

    The init has zero biases and unit norms; perturbing every parameter makes every term count.
    """
    torch.manual_seed(seed)
    network = CED(CEDConfig(**{"embed_dim": 64, "num_heads": 2, "depth": 2, **config}))
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return network.eval()


def normalised_pieces(network: CED, samples: int, batch: int) -> torch.Tensor:
    """The encoder's input for ``batch`` noise clips of ``samples`` samples (seeded by the length)."""
    waveforms = torch.randn(batch, samples, generator=torch.Generator().manual_seed(samples)) * 0.1
    with torch.inference_mode():
        return network.pieces(network.normalize(network.spectrogram(waveforms)))[0]
