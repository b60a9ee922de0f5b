"""UPGrad: unconflicting projection of gradients (Quinton & Rey, "Jacobian descent for
multi-objective optimization", 2024), through torchjd."""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import nnls
from torch import Tensor
from torchjd.aggregation import UPGradWeighting
from torchjd.linalg import DualConeProjector

from .base import GradientBalancer, check_positive

__all__ = ["NNLSDualConeProjector", "UPGrad"]


class NNLSDualConeProjector(DualConeProjector):
    """torchjd's dual-cone projection ``min_v vᵀGv s.t. v ≥ u`` solved exactly as a non-negative
    least-squares problem, so that UPGrad needs no extra QP package (torchjd's default projector
    needs ``qpsolvers`` + ``quadprog``, which antdiff does not depend on).

    Same pre-processing as torchjd's ``QuadprogProjector``: G is trace-normalised and ``reg_eps·I``
    is added (positive definite). With ``G = LLᵀ`` (Cholesky) and ``v = u + z``:
    ``vᵀGv = ‖Lᵀz + Lᵀu‖²``, so ``z = NNLS(Lᵀ, −Lᵀu)`` (Lawson–Hanson, exact active set).
    """

    def __init__(self, *, norm_eps: float = 1e-4, reg_eps: float = 1e-4) -> None:
        self.norm_eps = check_positive("norm_eps", norm_eps, allow_zero=True)
        self.reg_eps = check_positive("reg_eps", reg_eps)

    def __call__(self, U: Tensor, G: Tensor) -> Tensor:
        g = G.detach().cpu().double().numpy()
        trace = float(np.trace(g))
        g = np.zeros_like(g) if trace < self.norm_eps else g / trace
        g = g + self.reg_eps * np.eye(g.shape[0])
        lt = np.linalg.cholesky(0.5 * (g + g.T)).T  # Lᵀ
        u = U.detach().cpu().double().numpy()
        flat = u.reshape(-1, u.shape[-1])
        out = np.empty_like(flat)
        for r, row in enumerate(flat):
            z, _ = nnls(lt, -lt @ row)
            out[r] = row + z
        return torch.as_tensor(out.reshape(u.shape), dtype=G.dtype, device=G.device)

    def __repr__(self) -> str:
        return f"NNLSDualConeProjector(norm_eps={self.norm_eps}, reg_eps={self.reg_eps})"


class UPGrad(GradientBalancer):
    """Each cluster gradient (scaled by the preference ``1/m``) is projected onto the dual cone of
    all cluster gradients (the set of directions that conflict with none of them) and the
    projections are summed: the update never increases any cluster loss to first order. torchjd's
    ``UPGradWeighting`` with the mean preference vector, with the projection solved by
    :class:`NNLSDualConeProjector`. Without conflicts the update is the plain mean (up to the
    ``reg_eps`` regularisation).
    """

    name = "upgrad"

    def __init__(
        self,
        num_clusters: int,
        *,
        norm_eps: float = 1e-4,
        reg_eps: float = 1e-4,
        max_grad_norm: float | None = None,
    ) -> None:
        super().__init__(num_clusters, max_grad_norm=max_grad_norm)
        self.weighting = UPGradWeighting(
            projector=NNLSDualConeProjector(norm_eps=norm_eps, reg_eps=reg_eps)
        )

    def _solve(self, gramian: Tensor, losses: Tensor, clusters: Tensor) -> Tensor:
        return self.weighting(gramian)
