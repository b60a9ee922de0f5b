"""Learning-rate schedule: linear warm-up, then constant (DiT, ADM) or cosine decay.

The factor is a pure function of the step, so resuming needs no scheduler state:

    f(s) = (s + 1) / W                                      for s < W (warm-up),
    f(s) = 1                                                constant,
    f(s) = r + (1 − r) · ½ (1 + cos(π (s − W) / (S − W)))   cosine, r = min_lr / lr,

for the update of step s = 0 … S−1.
"""

from __future__ import annotations

import math

__all__ = ["lr_factor"]


def lr_factor(
    step: int,
    *,
    warmup_steps: int = 0,
    total_steps: int = 1,
    schedule: str = "constant",
    min_ratio: float = 0.0,
) -> float:
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown learning-rate schedule {schedule!r}; use constant or cosine")
