"""Learning rate as a pure function of the step: linear warm-up, then cosine decay.

A function of the step alone (rather than a stateful scheduler object) means a
resumed run needs nothing but the step count to continue on the same curve.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Schedule:
    """Warm-up from 0 to ``peak_lr`` over ``warmup_steps``, then cosine to ``peak_lr * final_fraction``."""

    peak_lr: float
    total_steps: int
    warmup_steps: int = 0
    final_fraction: float = 0.1

    def __post_init__(self) -> None:
        if self.peak_lr <= 0:
            raise ValueError(f"learning rate must be > 0, got {self.peak_lr}")
        if self.total_steps < 1:
            raise ValueError(f"total steps must be >= 1, got {self.total_steps}")
        if not 0 <= self.warmup_steps:
            raise ValueError(f"warm-up steps must be >= 0, got {self.warmup_steps}")
        if not 0 <= self.final_fraction <= 1:
            raise ValueError(f"final fraction must be in [0, 1], got {self.final_fraction}")

    def lr(self, step: int) -> float:
        """Learning rate for optimiser step ``step`` (0-based)."""
        if step < self.warmup_steps:
            return self.peak_lr * (step + 1) / self.warmup_steps
        decay_steps = max(self.total_steps - self.warmup_steps, 1)
        progress = min((step - self.warmup_steps) / decay_steps, 1.0)
        floor = self.peak_lr * self.final_fraction
        return floor + (self.peak_lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def to_dict(self) -> dict:
        return asdict(self)
