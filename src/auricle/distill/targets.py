"""Dense soft targets from a teacher's stored top-k outputs.

The store keeps only the k most probable classes of each view; the student is
trained on all classes, so the rest must be filled. The fill rules are those of
the paper's code (``label_type`` in the official ``dataset.py``): ``zero`` (its
default), ``last_mean`` (the smallest stored probability spread over the
classes left out), ``last_half`` (half the smallest), ``last_random`` (uniform
in [0, smallest)) and ``uniform`` (1 / num_classes, the official ``527``).
"""

from __future__ import annotations

import torch

from auricle.distill.fill import DEFAULT_FILL, FILL_MODES  # noqa: F401 - re-exported


def expand_topk(
    indices: torch.Tensor,
    values: torch.Tensor,
    num_classes: int,
    fill: str = DEFAULT_FILL,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """(batch, k) class indices and probabilities -> (batch, num_classes) float32 targets.

    ``last_random`` draws from ``generator`` so that a resumed run fills the same
    values. Stored values always overwrite the fill.
    """
    if fill not in FILL_MODES:
        raise ValueError(f"unknown fill {fill!r} (choose from {', '.join(FILL_MODES)})")
    indices = torch.as_tensor(indices).long()
    values = torch.as_tensor(values, dtype=torch.float32)
    if indices.dim() == 1:
        indices, values = indices.unsqueeze(0), values.unsqueeze(0)
    if indices.shape != values.shape:
        raise ValueError(f"indices {tuple(indices.shape)} and values {tuple(values.shape)} differ in shape")
    batch, k = indices.shape
    if k > num_classes:
        raise ValueError(f"top-{k} does not fit in {num_classes} classes")
    if k and (int(indices.min()) < 0 or int(indices.max()) >= num_classes):
        raise ValueError(f"class index out of range 0..{num_classes - 1}")
    smallest = values.min(dim=1, keepdim=True).values if k else torch.zeros(batch, 1)
    if fill == "zero":
        targets = torch.zeros(batch, num_classes)
    elif fill == "uniform":
        targets = torch.full((batch, num_classes), 1.0 / num_classes)
    elif fill == "last_mean":
        left_out = max(num_classes - k, 1)
        targets = (smallest / left_out).expand(batch, num_classes).clone()
    elif fill == "last_half":
        targets = (smallest / 2.0).expand(batch, num_classes).clone()
    else:  # last_random
        targets = torch.rand(batch, num_classes, generator=generator) * smallest
    return targets.scatter_(1, indices, values)
