"""MGDA: multiple-gradient descent (Désidéri 2012) as MTL (Sener & Koltun, NeurIPS 2018)."""

from __future__ import annotations

from torch import Tensor
from torchjd.aggregation import MGDAWeighting

from .base import GradientBalancer, check_positive, check_positive_int

__all__ = ["MGDA"]


class MGDA(GradientBalancer):
    """The minimum-norm point of the convex hull of the cluster gradients:
    ``w = argmin_{w ≥ 0, Σw = 1} ‖Σ_i w_i g_i‖²``, by the Frank–Wolfe solver of Sener & Koltun's
    Algorithm 2 (torchjd's ``MGDAWeighting``, stopping when the step γ < ``epsilon``). The weights
    sum to 1, the scale of the plain mean.
    """

    name = "mgda"

    def __init__(
        self,
        num_clusters: int,
        *,
        epsilon: float = 1e-3,
        max_iters: int = 100,
        max_grad_norm: float | None = None,
    ) -> None:
        super().__init__(num_clusters, max_grad_norm=max_grad_norm)
        self.epsilon = check_positive("epsilon", epsilon)
        self.max_iters = check_positive_int("max_iters", max_iters)
        self.weighting = MGDAWeighting(epsilon=self.epsilon, max_iters=self.max_iters)

    def _solve(self, gramian: Tensor, losses: Tensor, clusters: Tensor) -> Tensor:
        return self.weighting(gramian)
