"""IMTL-G: impartial multi-task learning, gradient part (Liu et al., ICLR 2021)."""

from __future__ import annotations

from torch import Tensor
from torchjd.aggregation import IMTLGWeighting

from .base import GradientBalancer

__all__ = ["IMTLG"]


class IMTLG(GradientBalancer):
    """Weights ``w`` (Σw = 1) such that the update ``g = Σ w_i g_i`` has the same projection on
    every unit cluster gradient ``u_i = g_i/‖g_i‖``. From ``g·u_i = (Gw)_i/‖g_i‖ = const``:
    ``w ∝ G⁻¹ d`` with ``d_i = ‖g_i‖`` — the paper's closed form ``g_1 Uᵀ (D Uᵀ)⁻¹`` written
    with the Gramian. torchjd's ``IMTLGWeighting`` (pseudo-inverse, so linearly dependent
    cluster gradients are allowed; all-zero weights if ``Σ G⁺d = 0``).
    """

    name = "imtlg"

    def __init__(self, num_clusters: int, *, max_grad_norm: float | None = None) -> None:
        super().__init__(num_clusters, max_grad_norm=max_grad_norm)
        self.weighting = IMTLGWeighting()

    def _solve(self, gramian: Tensor, losses: Tensor, clusters: Tensor) -> Tensor:
        return self.weighting(gramian)
