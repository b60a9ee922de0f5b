"""CAGrad: conflict-averse gradient descent (Liu, Liu, Jin, Stone & Liu, NeurIPS 2021)."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor
from torchjd.aggregation import CAGradWeighting

from .base import GradientBalancer, check_positive

__all__ = ["CAGrad"]


class CAGrad(GradientBalancer):
    """The update maximises the worst cluster's improvement within a ball around the mean
    gradient ``g₀``: with ``w* = argmin_{w ∈ Δ} g_wᵀ g₀ + c‖g₀‖‖g_w‖`` (``g_w = Σ w_i g_i``),

        d = g₀ + (c‖g₀‖/‖g_w*‖) g_w*,    rescaled by 1/(1 + c²) (``rescale=1``, the official default),
        1/(1 + c) (``rescale=2``) or not at all (``rescale=0``).

    The weights come from torchjd's ``CAGradWeighting`` (the same problem on the trace-normalised
    Gramian, solved with CLARABEL instead of the official scipy SLSQP; the weights are invariant to
    that normalisation), times the official rescaling, which torchjd omits. c = 0.4 (the value
    used for NYUv2/Cityscapes in the paper and in nash-mtl). If the solver fails the step uses
    the plain mean (the c → 0 limit) and warns; ``cagrad_failures`` counts it.
    """

    name = "cagrad"

    def __init__(
        self,
        num_clusters: int,
        *,
        c: float = 0.4,
        rescale: int = 1,
        norm_eps: float = 1e-4,
        max_grad_norm: float | None = None,
    ) -> None:
        super().__init__(num_clusters, max_grad_norm=max_grad_norm)
        self.c = check_positive("c", c, allow_zero=True)
        if rescale not in (0, 1, 2):
            raise ValueError(f"rescale must be 0, 1 or 2 (as the official CAGrad), got {rescale!r}")
        self.rescale = rescale
        self.norm_eps = check_positive("norm_eps", norm_eps, allow_zero=True)
        self.weighting = CAGradWeighting(c=self.c, norm_eps=self.norm_eps)
        self.register_buffer("failures", torch.zeros((), dtype=torch.long))

    def _solve(self, gramian: Tensor, losses: Tensor, clusters: Tensor) -> Tensor:
        m = gramian.shape[0]
        try:
            w = self.weighting(gramian)
            if not bool(torch.isfinite(w).all()):
                raise FloatingPointError("non-finite weights")
        except Exception as e:
            self.failures += 1
            warnings.warn(
                f"CAGrad: the solver failed ({type(e).__name__}: {e}); using the mean gradient for "
                f"this step ({int(self.failures)} failure(s) so far)",
                RuntimeWarning,
                stacklevel=2,
            )
            return torch.full((m,), 1.0 / m, dtype=torch.float64)
        factor = {0: 1.0, 1: 1.0 / (1.0 + self.c**2), 2: 1.0 / (1.0 + self.c)}[self.rescale]
        return w.to(torch.float64) * factor

    def _diagnostics(self) -> dict[str, Any]:
        out = super()._diagnostics()
        out["cagrad_failures"] = int(self.failures)
        return out

    def extra_repr(self) -> str:
        return f"num_clusters={self.num_clusters}, c={self.c}, rescale={self.rescale}"
