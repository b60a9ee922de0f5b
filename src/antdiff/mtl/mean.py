"""Plain averaging over clusters: vanilla ANT sampling without any weighting."""

from __future__ import annotations

from torch import Tensor

from .base import Balancer, ClusterLosses

__all__ = ["MeanBalancer"]


class MeanBalancer(Balancer):
    """``L = (1/|P|) Σ_{i∈P} L_i`` over the present clusters ``P``.

    With stratified sampling and equal cluster counts this equals the per-sample mean, i.e.
    vanilla training with cluster-balanced batches; it is the baseline every method is compared to.
    """

    name = "mean"

    def combine(self, cl: ClusterLosses) -> Tensor:
        p = cl.present.to(cl.losses.dtype)
        w = p / p.sum().clamp_min(1.0)
        self._set_weights(w)
        return (w * cl.losses).sum()
