"""Random loss weighting (Lin et al., TMLR 2022, "Reasonable effectiveness of random weighting")."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .base import Balancer, ClusterLosses, new_generator

__all__ = ["RandomLossWeighting"]


class RandomLossWeighting(Balancer):
    """``L = Σ_i λ_i L_i`` with fresh ``λ = softmax(p)``, ``p ~ N(0, I)`` at every step (RLW with
    the normal distribution, as LibMTL). The softmax runs over the present clusters, so the
    weights always sum to 1 (the scale of :class:`~antdiff.mtl.mean.MeanBalancer`).

    The draws come from a seeded CPU generator whose state is saved in ``state_dict()``: resumed
    runs draw the same weights, and under DDP every rank draws the same weights.
    """

    name = "rlw"

    def __init__(
        self, num_clusters: int, *, seed: int = 0, max_grad_norm: float | None = None
    ) -> None:
        super().__init__(num_clusters, max_grad_norm=max_grad_norm)
        self.seed = seed
        self._generator = new_generator(seed)

    def combine(self, cl: ClusterLosses) -> Tensor:
        p = torch.randn(self.num_clusters, generator=self._generator, dtype=torch.float32)
        p = p.to(cl.losses.device).masked_fill(~cl.present, float("-inf"))
        if not bool(cl.present.any()):
            w = torch.zeros_like(p)
        else:
            w = torch.softmax(p, dim=0)
        self._set_weights(w)
        return (w * cl.losses).sum()

    def get_extra_state(self) -> dict[str, Any]:
        return {"generator": self._generator.get_state()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self._generator.set_state(state["generator"])

    def extra_repr(self) -> str:
        return f"num_clusters={self.num_clusters}, seed={self.seed}"
