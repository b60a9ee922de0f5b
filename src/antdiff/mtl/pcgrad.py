"""PCGrad, gradient surgery (Yu et al., NeurIPS 2020), as in ANT/LibMTL (paper §5.2)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .base import GradientBalancer, check_positive, new_generator

__all__ = ["PCGrad"]


class PCGrad(GradientBalancer):
    """For every cluster i, starting from ``g̃_i = g_i``, for j in a random permutation of the
    clusters (i included, as LibMTL/ANT: harmless): if ``g̃_i·g_j < 0`` then
    ``g̃_i ← g̃_i − (g̃_i·g_j)/(‖g_j‖² + ε) g_j``; the update is ``Σ_i g̃_i``.

    Every projection is onto an *original* ``g_j``, so ``g̃_i = Σ_j c_ij g_j`` with coefficients
    that only need the Gramian: the update is ``Σ_j w_j g_j`` with ``w = Σ_i c_i``. As ANT, the
    cluster gradients are those of ``L_i/k`` (``divide_by_k``), so ``w`` is returned for ``g_i``
    already divided by k. ε = 1e-8 as LibMTL (the ANT copy has none). The permutations come from a
    seeded CPU generator saved in ``state_dict()`` (identical on every DDP rank; exact resume).
    """

    name = "pcgrad"

    def __init__(
        self,
        num_clusters: int,
        *,
        seed: int = 0,
        eps: float = 1e-8,
        divide_by_k: bool = True,
        max_grad_norm: float | None = None,
    ) -> None:
        super().__init__(num_clusters, max_grad_norm=max_grad_norm)
        self.eps = check_positive("eps", eps, allow_zero=True)
        self.divide_by_k = bool(divide_by_k)
        self.seed = seed
        self._generator = new_generator(seed)
        self._conflicts: list[list[int]] = []

    def _solve(self, gramian: Tensor, losses: Tensor, clusters: Tensor) -> Tensor:
        m = gramian.shape[0]
        scale = 1.0 / self.num_clusters if self.divide_by_k else 1.0
        g = gramian * scale**2  # Gramian of the g_i/k that ANT projects
        total = torch.zeros(m, dtype=torch.float64)
        for i in range(m):
            perm = torch.randperm(m, generator=self._generator).tolist()
            c = torch.zeros(m, dtype=torch.float64)
            c[i] = 1.0
            for j in perm:
                dot = float(g[j] @ c)  # g̃_i · g_j
                if dot < 0.0:
                    c[j] -= dot / (float(g[j, j]) + self.eps)
            total += c
        ids = clusters.tolist()
        self._conflicts = [
            [ids[a], ids[b]] for a in range(m) for b in range(a + 1, m) if float(gramian[a, b]) < 0
        ]
        return total * scale

    def _diagnostics(self) -> dict[str, Any]:
        out = super()._diagnostics()
        out["conflicts"] = self._conflicts
        out["num_conflicts"] = len(self._conflicts)
        return out

    def get_extra_state(self) -> dict[str, Any]:
        return {"generator": self._generator.get_state()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self._generator.set_state(state["generator"])

    def extra_repr(self) -> str:
        return f"num_clusters={self.num_clusters}, seed={self.seed}, divide_by_k={self.divide_by_k}"
