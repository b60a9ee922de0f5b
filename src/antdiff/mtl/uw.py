"""Uncertainty weighting (Kendall, Gal & Cipolla 2018) on timestep clusters, as ANT-UW (paper §5.4)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .base import Balancer, ClusterLosses, check_positive

__all__ = ["UncertaintyWeighting"]


class UncertaintyWeighting(Balancer):
    """One learnable log-variance ``s_i = log σ_i²`` per cluster:

        L = Σ_{i present} ½ (e^{−s_i} · L_i / k + s_i)            (official ANT code, §5.4)

    ``divide_by_k=False`` drops the ``/k`` (Kendall's original ``Σ ½(e^{−s_i} L_i + s_i)``). For
    fixed losses the optimum is ``e^{s_i} = L_i/k``, so UW divides each cluster loss by a running
    estimate of its own size. ``s`` starts at ``init`` (0, as ANT; LibMTL uses −0.5) and is trained
    by the user's optimiser in its own parameter group (:meth:`param_groups`: lr 0.025, no weight
    decay, as ANT). Under DDP do *not* wrap the balancer in DDP: ``∂L/∂s`` depends only on the
    all-reduced cluster losses, so it is already identical on every rank.
    """

    name = "uw"

    def __init__(
        self,
        num_clusters: int,
        *,
        lr: float = 0.025,
        init: float = 0.0,
        divide_by_k: bool = True,
        max_grad_norm: float | None = None,
    ) -> None:
        super().__init__(num_clusters, max_grad_norm=max_grad_norm)
        self.lr = check_positive("lr", lr)
        init = float(init)
        if not torch.isfinite(torch.tensor(init)):
            raise ValueError(f"init must be finite, got {init!r}")
        self.divide_by_k = bool(divide_by_k)
        self.log_vars = nn.Parameter(torch.full((num_clusters,), init, dtype=torch.float32))

    def combine(self, cl: ClusterLosses) -> Tensor:
        s = self.log_vars
        p = cl.present.to(s.dtype)
        scale = 1.0 / self.num_clusters if self.divide_by_k else 1.0
        precision = 0.5 * torch.exp(-s)
        self._set_weights(precision.detach() * scale * p)
        return (p * (precision * cl.losses.to(s.dtype) * scale + 0.5 * s)).sum()

    def param_groups(self) -> list[dict[str, Any]]:
        return [{"params": [self.log_vars], "lr": self.lr, "weight_decay": 0.0}]

    def _diagnostics(self) -> dict[str, Any]:
        s = self.log_vars.detach()
        return {
            "log_vars": [float(x) for x in s.tolist()],
            # The quantity the official code logs as the UW weight.
            "uw_weights": [float(x) for x in (0.5 * torch.exp(-s)).tolist()],
        }

    def extra_repr(self) -> str:
        return f"num_clusters={self.num_clusters}, lr={self.lr}, divide_by_k={self.divide_by_k}"
