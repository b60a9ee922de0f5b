"""Dynamic weight average (Liu, Johns & Davison, CVPR 2019), adapted to per-step cluster losses."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .base import Balancer, ClusterLosses, check_positive, check_positive_int

__all__ = ["DynamicWeightAverage"]


class DynamicWeightAverage(Balancer):
    """Weights from the rate at which each cluster loss decreases:

        w_i = k · exp(r_i / T) / Σ_j exp(r_j / T),     r_i = L̄_i(p−1) / L̄_i(p−2),
        L = (1/k) Σ_i w_i L_i,

    where ``L̄_i(p)`` is the average of ``L_i`` over the p-th *period* of ``window`` steps. The
    original averages over epochs; diffusion has no meaningful epoch and single-step cluster losses
    are dominated by noise, so antdiff averages over a fixed window of steps (default 100). Weights
    are 1 during the first two periods. The ``1/k`` keeps the scale of the plain mean (equal
    weights reproduce :class:`~antdiff.mtl.mean.MeanBalancer`). T = 2 as in the paper.
    """

    name = "dwa"

    def __init__(
        self,
        num_clusters: int,
        *,
        temperature: float = 2.0,
        window: int = 100,
        max_grad_norm: float | None = None,
    ) -> None:
        super().__init__(num_clusters, max_grad_norm=max_grad_norm)
        self.temperature = check_positive("temperature", temperature)
        self.window = check_positive_int("window", window)
        k = num_clusters
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.register_buffer("periods", torch.zeros((), dtype=torch.long))
        self.register_buffer("running_sum", torch.zeros(k, dtype=torch.float64))
        self.register_buffer("running_count", torch.zeros(k, dtype=torch.float64))
        self.register_buffer("previous", torch.ones(k, dtype=torch.float64))  # L̄(p−1)
        self.register_buffer("before_previous", torch.ones(k, dtype=torch.float64))  # L̄(p−2)

    def current_weights(self) -> Tensor:
        """``w`` (sums to k) from the two last complete periods."""
        if int(self.periods) < 2:
            return torch.ones_like(self.previous)
        r = self.previous / self.before_previous.clamp_min(1e-12)
        return self.num_clusters * torch.softmax(r / self.temperature, dim=0)

    def combine(self, cl: ClusterLosses) -> Tensor:
        present = cl.present.to(self.previous.device)
        w = self.current_weights().to(cl.losses.device, torch.float32) / self.num_clusters
        w = w * cl.present.to(w.dtype)
        self._set_weights(w)
        loss = (w * cl.losses).sum()
        # History update (detached, global losses: identical on every DDP rank).
        losses = cl.losses.detach().to(self.running_sum.device, torch.float64)
        self.running_sum += torch.where(present, losses, torch.zeros_like(losses))
        self.running_count += present.to(torch.float64)
        self.step += 1
        if int(self.step) % self.window == 0:
            seen = self.running_count > 0
            average = self.running_sum / self.running_count.clamp_min(1.0)
            # A cluster unseen during the whole period keeps its previous average.
            new = torch.where(seen, average, self.previous)
            self.before_previous.copy_(self.previous)
            self.previous.copy_(new)
            self.running_sum.zero_()
            self.running_count.zero_()
            self.periods += 1
        return loss

    def _diagnostics(self) -> dict[str, Any]:
        return {"dwa_periods": int(self.periods)}

    def extra_repr(self) -> str:
        return f"num_clusters={self.num_clusters}, temperature={self.temperature}, window={self.window}"
