"""FID, KID and precision/recall on feature arrays (float64, memory-bounded, no SciPy).

All functions take features ``[N, D]`` (NumPy or torch) and are independent of the network that
made them. Conventions that peers got wrong at some point are fixed by keyword-only arguments:
``precision_recall(real=..., generated=...)`` and ``kernel_inception_distance(real=...,
generated=...)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "GaussianStats",
    "KIDResult",
    "PrecisionRecall",
    "StatsAccumulator",
    "frechet_distance",
    "gaussian_stats",
    "kernel_inception_distance",
    "manifold_radii",
    "polynomial_kernel",
    "precision_recall",
    "trace_sqrt_product",
]

# Upper bound on the elements of one block of pairwise distances (float64: 256 MiB).
_BLOCK_ELEMENTS = 1 << 25


def _as_2d_float64(x: Any, name: str) -> np.ndarray:
    a = x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D feature array [N, D], got shape {a.shape}")
    a = a.astype(np.float64, copy=False)
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains non-finite values")
    return a


# ----------------------------------------------------------------------------------------------
# Gaussian statistics and the Fréchet distance


@dataclass(frozen=True)
class GaussianStats:
    """Mean ``mu [D]`` and unbiased covariance ``sigma [D, D]`` (float64) of ``n`` features."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int

    def __post_init__(self) -> None:
        d = self.mu.shape[0]
        if self.mu.ndim != 1 or self.sigma.shape != (d, d):
            raise ValueError(
                f"inconsistent statistics: mu {self.mu.shape}, sigma {self.sigma.shape}"
            )


class StatsAccumulator:
    """Streaming mean/covariance in float64, batch by batch.

    Sums are taken around a fixed shift (the first batch's mean), which keeps the one-pass
    covariance ``(Σ (x−s)(x−s)ᵀ − n (μ−s)(μ−s)ᵀ) / (n − 1)`` free of cancellation.
    """

    def __init__(self) -> None:
        self.n = 0
        self._shift: np.ndarray | None = None
        self._sum: np.ndarray | None = None
        self._outer: np.ndarray | None = None

    def update(self, features: Any) -> None:
        x = _as_2d_float64(features, "features")
        if x.shape[0] == 0:
            return
        if self._shift is None:
            self._shift = x.mean(axis=0)
            d = x.shape[1]
            self._sum = np.zeros(d)
            self._outer = np.zeros((d, d))
        elif x.shape[1] != self._shift.shape[0]:
            raise ValueError(
                f"feature dimension changed from {self._shift.shape[0]} to {x.shape[1]}"
            )
        c = x - self._shift
        self._sum += c.sum(axis=0)
        self._outer += c.T @ c
        self.n += x.shape[0]

    def finalize(self) -> GaussianStats:
        if self.n < 2 or self._shift is None:
            raise ValueError(f"need at least 2 feature vectors for a covariance, got {self.n}")
        mean_c = self._sum / self.n
        sigma = (self._outer - self.n * np.outer(mean_c, mean_c)) / (self.n - 1)
        sigma = 0.5 * (sigma + sigma.T)
        return GaussianStats(mu=self._shift + mean_c, sigma=sigma, n=self.n)


def _on_accelerator(device: str | torch.device | None) -> bool:
    return device is not None and torch.device(device).type != "cpu"


def gaussian_stats(features: Any, device: str | torch.device | None = None) -> GaussianStats:
    """Mean and unbiased (``n − 1``) covariance of ``features [N, D]`` in float64.

    On a GPU ``device`` the product ``XᵀX`` (20 GFLOP for 5,000 × 2,048 features) runs there in
    float64; elsewhere in NumPy, which competes for the host's cores with everything else."""
    if not _on_accelerator(device):
        acc = StatsAccumulator()
        acc.update(features)
        return acc.finalize()
    assert device is not None
    return _gaussian_stats_torch(features, device)


def _gaussian_stats_torch(features: Any, device: str | torch.device) -> GaussianStats:
    """:func:`gaussian_stats` in float64 torch on ``device`` (centred on the mean)."""
    x = torch.from_numpy(_as_2d_float64(features, "features")).to(device)
    if x.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors for a covariance, got {x.shape[0]}")
    mu = x.mean(dim=0)
    c = x - mu
    sigma = c.T @ c / (x.shape[0] - 1)
    sigma = 0.5 * (sigma + sigma.T)
    return GaussianStats(mu=mu.cpu().numpy(), sigma=sigma.cpu().numpy(), n=int(x.shape[0]))


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(0.5 * (sigma + sigma.T))
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def _trace_sqrt_product_torch(sigma1: Any, sigma2: Any, device: str | torch.device) -> float:
    """:func:`trace_sqrt_product` in float64 torch on ``device`` (the same two ``eigh``)."""
    s1 = torch.as_tensor(np.asarray(sigma1, dtype=np.float64), device=device)
    s2 = torch.as_tensor(np.asarray(sigma2, dtype=np.float64), device=device)
    w, v = torch.linalg.eigh(0.5 * (s1 + s1.T))
    s1h = (v * w.clamp_min(0.0).sqrt()) @ v.T
    m = s1h @ s2 @ s1h
    eig = torch.linalg.eigvalsh(0.5 * (m + m.T))
    return float(eig.clamp_min(0.0).sqrt().sum())


def trace_sqrt_product(
    sigma1: np.ndarray, sigma2: np.ndarray, device: str | torch.device | None = None
) -> float:
    """``tr((Σ1 Σ2)^{1/2})`` for symmetric PSD ``Σ1, Σ2``, via symmetric eigendecompositions.

    ``Σ1 Σ2`` is similar to the symmetric PSD ``M = Σ1^{1/2} Σ2 Σ1^{1/2}``, so the trace is
    ``Σ_i √λ_i(M)``. Both steps use ``eigh`` (real by construction) and clip round-off negatives
    to zero: no ``scipy.linalg.sqrtm``, no imaginary parts, stable for singular Σ (n < D).
    On a GPU ``device`` both run there in float64 (two 2,048² ``eigh`` take seconds of a busy
    host's CPU, a fraction of a second on the GPU); otherwise in NumPy.
    """
    if _on_accelerator(device):
        assert device is not None
        return _trace_sqrt_product_torch(sigma1, sigma2, device)
    s1h = _psd_sqrt(np.asarray(sigma1, dtype=np.float64))
    m = s1h @ np.asarray(sigma2, dtype=np.float64) @ s1h
    eig = np.linalg.eigvalsh(0.5 * (m + m.T))
    return float(np.sqrt(np.clip(eig, 0.0, None)).sum())


def frechet_distance(
    mu1: np.ndarray,
    sigma1: np.ndarray,
    mu2: np.ndarray,
    sigma2: np.ndarray,
    device: str | torch.device | None = None,
) -> float:
    """Fréchet distance between ``N(μ1, Σ1)`` and ``N(μ2, Σ2)`` (Heusel et al., 2017):

    ``FID = ‖μ1 − μ2‖² + tr(Σ1) + tr(Σ2) − 2 tr((Σ1 Σ2)^{1/2})``, in float64 (the square-root
    trace on ``device`` when that is a GPU, see :func:`trace_sqrt_product`).
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(
            f"statistics of different dimension: mu {mu1.shape} vs {mu2.shape}, "
            f"sigma {sigma1.shape} vs {sigma2.shape}"
        )
    diff = mu1 - mu2
    value = (
        diff @ diff
        + np.trace(sigma1)
        + np.trace(sigma2)
        - 2.0 * trace_sqrt_product(sigma1, sigma2, device)
    )
    # Round-off can push an exact zero slightly negative; the distance is non-negative.
    return max(float(value), 0.0)


# ----------------------------------------------------------------------------------------------
# KID


@dataclass(frozen=True)
class KIDResult:
    """Mean and standard deviation of the unbiased MMD² over ``num_subsets`` subsets."""

    mean: float
    std: float
    subset_size: int
    num_subsets: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _on(a: np.ndarray, device: str | torch.device | None) -> np.ndarray | Tensor:
    """NumPy on the CPU, a float64 torch tensor on a GPU.

    NumPy's BLAS runs small products on one thread, whereas torch's CPU thread pool can stall
    for milliseconds per call on a busy machine; on a GPU, torch is far faster for the large
    products (10k × 10k distances) of a real evaluation.
    """
    return torch.from_numpy(a).to(device) if _on_accelerator(device) else a


def polynomial_kernel(x: np.ndarray | Tensor, y: np.ndarray | Tensor) -> np.ndarray | Tensor:
    """``k(x, y) = (xᵀy / d + 1)³``, the KID kernel (Bińkowski et al., 2018)."""
    d = x.shape[1]
    return (x @ y.T / d + 1.0) ** 3


def _mmd2_unbiased(x: np.ndarray | Tensor, y: np.ndarray | Tensor) -> float:
    m = x.shape[0]
    kxx = polynomial_kernel(x, x)
    kyy = polynomial_kernel(y, y)
    kxy = polynomial_kernel(x, y)
    sum_xx = kxx.sum() - kxx.trace()
    sum_yy = kyy.sum() - kyy.trace()
    return float((sum_xx + sum_yy) / (m * (m - 1)) - 2.0 * kxy.sum() / (m * m))


def kernel_inception_distance(
    *,
    real: Any,
    generated: Any,
    subset_size: int = 1000,
    num_subsets: int = 100,
    seed: int = 0,
    device: str | torch.device | None = "cpu",
) -> KIDResult:
    """KID: unbiased MMD² with the cubic polynomial kernel, averaged over random subsets.

    For each of ``num_subsets`` subsets, ``m = min(subset_size, N_real, N_gen)`` rows are drawn
    without replacement from each set and
    ``MMD²_u = Σ_{i≠j} k(x_i,x_j)/(m(m−1)) + Σ_{i≠j} k(y_i,y_j)/(m(m−1)) − 2 Σ_{i,j} k(x_i,y_j)/m²``.
    Returns the mean and (population) standard deviation over subsets, as torch-fidelity and
    clean-fid report them. Float64 throughout; ``device`` may be a GPU.
    """
    r = _as_2d_float64(real, "real")
    g = _as_2d_float64(generated, "generated")
    if r.shape[1] != g.shape[1]:
        raise ValueError(f"feature dimensions differ: real {r.shape[1]}, generated {g.shape[1]}")
    if subset_size < 2 or num_subsets < 1:
        raise ValueError("KID needs subset_size >= 2 and num_subsets >= 1")
    m = min(subset_size, r.shape[0], g.shape[0])
    if m < 2:
        raise ValueError(
            f"KID needs at least 2 real and 2 generated features, got {r.shape[0]} and {g.shape[0]}"
        )
    rng = np.random.default_rng(seed)
    rd, gd = _on(r, device), _on(g, device)
    values = []
    for _ in range(num_subsets):
        ir = rng.choice(r.shape[0], m, replace=False)
        ig = rng.choice(g.shape[0], m, replace=False)
        values.append(_mmd2_unbiased(rd[ir], gd[ig]))
    v = np.asarray(values)
    return KIDResult(
        mean=float(v.mean()), std=float(v.std()), subset_size=m, num_subsets=num_subsets
    )


# ----------------------------------------------------------------------------------------------
# precision / recall (Kynkäänniemi et al., 2019)


@dataclass(frozen=True)
class PrecisionRecall:
    """``precision``: fraction of generated samples inside the real manifold (fidelity);
    ``recall``: fraction of real samples inside the generated manifold (coverage)."""

    precision: float
    recall: float
    k: int
    n_real: int
    n_generated: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _sq_dists(a, b, b_sq):
    """Squared Euclidean distances ``[len(a), len(b)]`` (NumPy or torch), clipped at 0."""
    d = (a * a).sum(1)[:, None] + b_sq[None, :] - 2.0 * (a @ b.T)
    return d.clamp_min_(0.0) if isinstance(d, Tensor) else np.maximum(d, 0.0, out=d)


def manifold_radii(
    features: Any, k: int = 3, *, device: str | torch.device | None = "cpu"
) -> np.ndarray:
    """Squared distance from each point to its k-th nearest *other* point (float64 ``[N]``).

    Computed in row blocks so that memory stays bounded (``≤ 2^25`` distances at a time).
    """
    x = _on(_as_2d_float64(features, "features"), device)
    n = x.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"k-NN radii need 1 <= k < N, got k={k}, N={n}")
    x_sq = (x * x).sum(1)
    block = max(1, _BLOCK_ELEMENTS // n)
    out = np.empty(n, dtype=np.float64)
    for s in range(0, n, block):
        d = _sq_dists(x[s : s + block], x, x_sq)
        # The point itself is at distance 0 and is the smallest: the (k+1)-th smallest is the
        # k-th neighbour (Kynkäänniemi et al.'s reference code partitions at index k likewise).
        if isinstance(d, Tensor):
            out[s : s + block] = d.kthvalue(k + 1, dim=1).values.cpu().numpy()
        else:
            out[s : s + block] = np.partition(d, k, axis=1)[:, k]
    return out


def _fraction_inside(points, centres, radii_sq: np.ndarray) -> float:
    """Fraction of ``points`` within ``radius_i`` of at least one ``centre_i``."""
    c_sq = (centres * centres).sum(1)
    r = (
        radii_sq
        if not isinstance(centres, Tensor)
        else torch.from_numpy(radii_sq).to(centres.device)
    )
    block = max(1, _BLOCK_ELEMENTS // centres.shape[0])
    inside = 0
    for s in range(0, points.shape[0], block):
        d = _sq_dists(points[s : s + block], centres, c_sq)
        inside += int((d <= r[None, :]).any(1).sum())
    return inside / points.shape[0]


def precision_recall(
    *,
    real: Any,
    generated: Any,
    k: int = 3,
    device: str | torch.device | None = "cpu",
) -> PrecisionRecall:
    """Improved precision and recall (Kynkäänniemi et al., 2019) with k-NN manifolds.

    The real manifold is the union of balls around each real feature with radius its distance to
    its ``k``-th nearest real neighbour; likewise for the generated manifold. Then

    * ``precision = (1/N_gen) Σ_g 1[g ∈ manifold(real)]`` — a mode-collapsed generator that
      copies part of the data scores ≈ 1;
    * ``recall = (1/N_real) Σ_r 1[r ∈ manifold(generated)]`` — the same generator scores low.

    Distances are exact (float64), computed in blocks of bounded memory.
    """
    r = _as_2d_float64(real, "real")
    g = _as_2d_float64(generated, "generated")
    if r.shape[1] != g.shape[1]:
        raise ValueError(f"feature dimensions differ: real {r.shape[1]}, generated {g.shape[1]}")
    if min(r.shape[0], g.shape[0]) <= k:
        raise ValueError(
            f"precision/recall with k={k} need more than {k} real and generated samples, "
            f"got {r.shape[0]} and {g.shape[0]}"
        )
    radii_r = manifold_radii(r, k, device=device)
    radii_g = manifold_radii(g, k, device=device)
    r, g = _on(r, device), _on(g, device)
    precision = _fraction_inside(g, r, radii_r)
    recall = _fraction_inside(r, g, radii_g)
    return PrecisionRecall(precision, recall, k=k, n_real=r.shape[0], n_generated=g.shape[0])
