"""A seeded count sketch of a model's gradient: a random linear map ``S: R^P → R^d`` applied
parameter by parameter, without ever forming a P×d matrix.

Coordinate ``j`` of the flattened gradient is added, with a random sign ``s(j) ∈ {−1, +1}``, to
one random bucket ``h(j) ∈ {0 … d−1}`` (Charikar et al. 2002; the sparse Johnson–Lindenstrauss
transform with one non-zero per column):

    (S g)_m = Σ_{j: h(j) = m} s(j) g_j .

``E[⟨Sx, Sy⟩] = ⟨x, y⟩`` and ``Var[⟨Sx, Sy⟩] = (‖x‖²‖y‖² + ⟨x, y⟩² − 2 Σ_j x_j² y_j²) / d``, the
same as a dense Gaussian projection, so the cosine of two sketches estimates the cosine of the
gradients with a standard error of about ``(1 − cos²) / √d`` (see ``docs/analysis.md`` for the
measured table). Projecting costs O(P) (one ``index_add_`` per parameter tensor).

Memory: the hash table is one int32 per parameter (``4·P`` bytes, the size of one fp32 gradient),
drawn once from the seed on the CPU, so a sketch does not depend on the device it runs on.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["CountSketch", "derive_seed"]


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from a tuple of integers (numpy's SeedSequence: well mixed, no collisions in
    practice), so that every random stream is a pure function of its role and coordinates."""
    state = np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(
        2, np.uint32
    )
    return int((int(state[0]) << 31) ^ int(state[1])) & 0x7FFF_FFFF_FFFF_FFFF


class CountSketch:
    """Seeded count sketch of a list of tensors with fixed shapes (one per model parameter).

    >>> cs = CountSketch([3, 4], dim=8, seed=0)
    >>> x = [torch.randn(3), torch.randn(4)]
    >>> cs(x).shape
    torch.Size([8])
    """

    #: stream tag of the hash table, so it never coincides with another seeded stream
    _TAG = 0xC5

    def __init__(
        self,
        numels: Sequence[int],
        dim: int,
        seed: int = 0,
        device: torch.device | str | None = None,
    ) -> None:
        if dim < 1:
            raise ValueError(f"the sketch dimension must be >= 1, got {dim}")
        if dim >= 2**30:
            raise ValueError(f"sketch dimension {dim} is too large (int32 hash table)")
        self.dim = int(dim)
        self.seed = int(seed)
        self.numels = [int(n) for n in numels]
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        # One index in [0, 2d): bucket = idx mod d, sign = + below d and − from d on. Both are
        # uniform and independent, and a single int32 table serves for both.
        self._index: list[torch.Tensor] = []
        for k, n in enumerate(self.numels):
            g = torch.Generator().manual_seed(derive_seed(self.seed, self._TAG, k, n))
            idx = torch.randint(0, 2 * self.dim, (n,), generator=g, dtype=torch.int32)
            self._index.append(idx.to(self.device))

    @property
    def table_bytes(self) -> int:
        return 4 * sum(self.numels)

    def __call__(self, tensors: Sequence[torch.Tensor | None]) -> torch.Tensor:
        """The sketch ``S g`` (float64 ``[dim]``, on the sketch's device). ``None`` entries count
        as zero gradients."""
        if len(tensors) != len(self._index):
            raise ValueError(f"expected {len(self._index)} tensors, got {len(tensors)}")
        buf = torch.zeros(2 * self.dim, dtype=torch.float32, device=self.device)
        for k, (x, idx) in enumerate(zip(tensors, self._index)):
            if x is None:
                continue
            if x.numel() != self.numels[k]:
                raise ValueError(
                    f"tensor {k} has {x.numel()} elements, the sketch was built for {self.numels[k]}"
                )
            buf.index_add_(0, idx, x.detach().reshape(-1).to(self.device, torch.float32))
        buf64 = buf.double()
        return buf64[: self.dim] - buf64[self.dim :]
