"""Exponential moving average of the model weights (used for sampling by default).

After n updates with decay d the EMA is

    θ_ema ← d_n · θ_ema + (1 − d_n) · θ,      d_n = min(d, (1 + n) / (10 + n))  with warm-up,
                                               d_n = d                            without,

the warm-up being TensorFlow's ``ExponentialMovingAverage(num_updates=...)`` rule (also diffusers'
``EMAModel`` default), so a short run's EMA is not dominated by the random initialisation. Buffers
are copied, not averaged. DiT and the official ANT code use d = 0.9999 without warm-up.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["EMA"]


class EMA:
    """An EMA copy of ``model`` (an ``nn.Module`` in eval mode, no gradients)."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = True) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.num_updates = 0
        self.model = copy.deepcopy(model).eval()
        self.model.requires_grad_(False)
        # The EMA's own tensors, listed once (load_state_dict copies into them in place): walking
        # a few hundred modules costs a fraction of a millisecond of Python on every update.
        self._params = list(self.model.parameters())
        self._buffers = list(self.model.buffers())

    def current_decay(self) -> float:
        """d_n for the next update."""
        if not self.warmup:
            return self.decay
        n = self.num_updates
        return min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One EMA step towards ``model``'s current weights."""
        self.update_from(list(model.parameters()), list(model.buffers()))

    @torch.no_grad()
    def update_from(self, params: Sequence[Tensor], buffers: Sequence[Tensor]) -> None:
        """One EMA step towards ``params`` (buffers are copied), the model's tensors in
        ``model.parameters()`` / ``model.buffers()`` order; a training loop lists them once."""
        if len(params) != len(self._params) or len(buffers) != len(self._buffers):
            raise ValueError(
                f"the EMA has {len(self._params)} parameters and {len(self._buffers)} buffers, "
                f"got {len(params)} and {len(buffers)}: not the model it was made from"
            )
        d = self.current_decay()
        new_p = [p.detach() for p in params]
        if d == 0.0:
            torch._foreach_copy_(self._params, new_p)
        else:
            torch._foreach_lerp_(self._params, new_p, 1.0 - d)
        for b_ema, b in zip(self._buffers, buffers):
            b_ema.copy_(b)
        self.num_updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "num_updates": self.num_updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.num_updates = int(state["num_updates"])
