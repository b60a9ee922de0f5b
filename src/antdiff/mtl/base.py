"""The balancer protocol shared by every multi-task method, and DDP-aware per-cluster losses.

Each of the k timestep clusters is one task (paper §5). For a batch with per-sample diffusion
losses ``ℓ_b`` and cluster ids ``c_b`` the task losses are the cluster means

    L_i = (1/n_i) Σ_{b : c_b = i} ℓ_b,                                            (§5.1)

and a balancer turns ``L_1 … L_k`` (loss-based methods) or the cluster gradients
``g_i = ∇_θ L_i`` (gradient-based methods, through :class:`~antdiff.mtl.engine.ClusterGradientEngine`)
into one update ``Σ_i w_i ∇_θ L_i``. Clusters with no sample in the batch are *absent*: weight 0,
state untouched.

Every balancer reports ``last_weights``: the effective coefficient ``w_i`` of ``∇_θ L_i`` in the
update it produced, so that all methods can be compared on one scale in the logs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .._device import to_device
from ..sampling import TimestepBatch
from .distributed import all_reduce_sum, world_size

__all__ = [
    "Balancer",
    "ClusterLosses",
    "GradientBalancer",
    "cluster_losses",
    "cluster_means",
]


# ============================================================================ cluster losses
@dataclass(frozen=True)
class ClusterLosses:
    """Per-cluster losses of one (possibly distributed) batch.

    ``losses[i]`` has the *global* value ``L_i`` (mean over every process's samples of cluster i)
    and a gradient path through the local samples only, scaled so that after DDP's gradient
    averaging the gradient is exactly ``∇_θ L_i`` (see :func:`cluster_losses`). ``counts`` are the
    global sample counts (float), ``present = counts > 0``, ``mean`` is the global per-sample mean
    loss (the number a vanilla trainer would log), detached.
    """

    losses: Tensor
    counts: Tensor
    present: Tensor
    mean: Tensor

    @property
    def num_clusters(self) -> int:
        return int(self.losses.shape[0])


def _check_per_sample(per_sample: Tensor, batch: TimestepBatch) -> None:
    if not isinstance(batch, TimestepBatch):
        raise TypeError(
            f"batch must be an antdiff TimestepBatch, got {type(batch).__name__}; build one with "
            "TimestepSampler.sample(...) or TimestepBatch.from_timesteps(t, clusters)"
        )
    if not torch.is_tensor(per_sample) or per_sample.ndim != 1:
        shape = tuple(per_sample.shape) if torch.is_tensor(per_sample) else type(per_sample)
        raise ValueError(
            f"per-sample losses must be a 1-D tensor [B], got {shape}; compute the loss with "
            "reduction='none' and average over the non-batch dimensions"
        )
    if per_sample.shape[0] != batch.batch_size:
        raise ValueError(
            f"got {per_sample.shape[0]} per-sample losses for a batch of {batch.batch_size} "
            "timesteps; pass the TimestepBatch the losses were computed with"
        )
    if not per_sample.is_floating_point():
        raise ValueError(f"per-sample losses must be floating point, got {per_sample.dtype}")


def cluster_means(
    values: Tensor,
    batch: TimestepBatch,
    process_group: Any | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-cluster means of ``values`` (``[B]`` or ``[B, m]``), reduced over ``process_group``.

    Returns ``(means [k] or [k, m], counts [k], global_sums)``. With W processes, global counts
    ``N_i`` and local samples ``b ∈ r``, the returned mean is the *surrogate*

        M_i = S_i/N_i  (value, S_i the all-reduced sum)  +  (W/N_i) Σ_{b∈r, c_b=i} v_b − stop_grad(·)

    whose value is the global mean and whose local gradient is ``(W/N_i) Σ_{b∈r} ∇v_b``. DDP
    averages gradients over the W processes, so the synchronised gradient of any differentiable
    ``f(M)`` is ``Σ_i ∂f/∂M_i · (1/N_i) Σ_{all b ∈ i} ∇v_b = ∇ f(global means)`` exactly, also
    for non-linear ``f`` (FAMO's log) and unequal per-process counts. One all-reduce of
    ``k·(m+1)`` numbers per call.
    """
    squeeze = values.ndim == 1
    v = values.reshape(values.shape[0], -1).float()
    k = batch.num_clusters
    ids = to_device(batch.cluster_ids, v.device)  # no host sync (see antdiff._device)
    sums = v.new_zeros(k, v.shape[1]).index_add(0, ids, v)
    counts_local = to_device(batch.counts, v.device, v.dtype)  # TimestepBatch keeps them consistent
    w = world_size(process_group)
    if w == 1:
        counts = counts_local
        means = sums / counts.clamp_min(1.0)[:, None]
        global_sums = sums.detach()
    else:
        stats = torch.cat([sums.detach(), counts_local[:, None]], dim=1)
        all_reduce_sum(stats, process_group)
        global_sums, counts = stats[:, :-1], stats[:, -1]
        denom = counts.clamp_min(1.0)[:, None]
        local = sums * (w / denom)
        means = global_sums / denom + (local - local.detach())
    if squeeze:
        return means[:, 0], counts, global_sums[:, 0]
    return means, counts, global_sums


def cluster_losses(
    per_sample: Tensor,
    batch: TimestepBatch,
    process_group: Any | None = None,
) -> ClusterLosses:
    """Cluster losses ``L_i = (1/n_i) Σ_{c_b = i} ℓ_b`` of a batch (paper §5.1), DDP-aware.

    ``process_group=None`` computes local means (one process). Under DDP pass the group (e.g.
    ``torch.distributed.group.WORLD``): values become global means and gradients are scaled so
    that DDP's gradient averaging yields the exact global gradient (see :func:`cluster_means`).
    Absent clusters get ``L_i = 0`` with no gradient and ``present[i] = False``.
    """
    _check_per_sample(per_sample, batch)
    means, counts, sums = cluster_means(per_sample, batch, process_group)
    mean = sums.sum() / counts.sum().clamp_min(1.0)
    return ClusterLosses(means, counts, counts > 0, mean.detach())


# ============================================================================ hyper-parameter checks
def check_positive(name: str, value: Any, *, allow_zero: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return v


def check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def check_max_grad_norm(value: Any) -> float | None:
    if value is None:
        return None
    return check_positive("max_grad_norm", value)


# ============================================================================ protocol
class Balancer(nn.Module):
    """Base class of every multi-task method acting on the k timestep clusters.

    Loss-based methods (``needs_gradients = False``) implement :meth:`combine`; a training loop
    backpropagates ``balancer.loss(per_sample, batch)``. Gradient-based methods
    (:class:`GradientBalancer`) implement :meth:`GradientBalancer.weights` and are driven by
    :class:`~antdiff.mtl.engine.ClusterGradientEngine`.

    State that must survive a resume (learned log-variances, Nash α, random generators, loss
    histories, step counters) lives in ``state_dict()``.
    """

    name: ClassVar[str] = "balancer"
    #: True when the method needs the per-cluster gradients (or their Gramian).
    needs_gradients: ClassVar[bool] = False
    #: True when :meth:`after_optimizer_step` needs the cluster losses recomputed after the step
    #: on the same batch (FAMO).
    needs_post_step_losses: ClassVar[bool] = False

    def __init__(self, num_clusters: int, *, max_grad_norm: float | None = None) -> None:
        super().__init__()
        if isinstance(num_clusters, bool) or not isinstance(num_clusters, int) or num_clusters < 1:
            raise ValueError(f"num_clusters must be an integer >= 1, got {num_clusters!r}")
        self.num_clusters = num_clusters
        #: Clip the norm of the update to this value (applied by the engine); None: no clipping.
        self.max_grad_norm = check_max_grad_norm(max_grad_norm)
        self._last_weights = torch.zeros(num_clusters, dtype=torch.float32)
        #: Cluster losses seen by the last :meth:`loss` call (for logging), not saved.
        self.last_cluster_losses: ClusterLosses | None = None

    # ------------------------------------------------------------------ loss-based interface
    def loss(
        self,
        per_sample: Tensor,
        batch: TimestepBatch,
        *,
        process_group: Any | None = None,
    ) -> Tensor:
        """Scalar training loss for the per-sample losses ``[B]`` of ``batch``.

        Under DDP pass ``process_group`` (see :func:`cluster_losses`); the returned loss is then
        the same on every rank and its DDP-averaged gradient is the exact global one.
        """
        cl = cluster_losses(per_sample, batch, process_group)
        self.last_cluster_losses = cl
        return self.combine(cl)

    def combine(self, cl: ClusterLosses) -> Tensor:
        """Scalar loss from cluster losses; records the effective weights in ``last_weights``."""
        raise NotImplementedError(
            f"balancer {self.name!r} needs per-cluster gradients: drive it with "
            "antdiff.mtl.ClusterGradientEngine(model, balancer).step(compute_losses, batch)"
        )

    # ------------------------------------------------------------------ gradient interface
    def gradients_due(self) -> bool:
        """Whether the next step needs cluster gradients (NashMTL: only every N steps)."""
        return self.needs_gradients

    def weights(self, gramian: Tensor, cluster_losses: Tensor, present: Tensor) -> Tensor:
        raise TypeError(
            f"balancer {self.name!r} is loss-based (it has no weights(gramian, ...)); "
            "backpropagate balancer.loss(per_sample, batch) instead"
        )

    # ------------------------------------------------------------------ optional hooks
    def sync_gradients(self, process_group: Any | None) -> None:
        """Make the gradients of the balancer's own parameters identical on every rank.

        Only needed when they depend on per-sample values (continuous UW); for UW they depend on
        all-reduced cluster losses and are already identical. The engine calls it after backward.
        """

    def after_optimizer_step(self, new_cluster_losses: Tensor | None = None) -> None:
        """Called after ``optimizer.step()``; FAMO needs the new losses on the same batch."""

    def param_groups(self) -> list[dict[str, Any]]:
        """Optimiser parameter groups for learnable balancer parameters (UW: lr 0.025, wd 0).

        ``torch.optim.AdamW([{"params": model.parameters()}, *balancer.param_groups()], lr=…)``
        """
        return []

    def record(self) -> dict[str, Any]:
        """What the method decided at the last step, as JSON-ready numbers, for logging."""
        out: dict[str, Any] = {"weights": [float(x) for x in self.last_weights.tolist()]}
        out.update(self._diagnostics())
        return out

    def _diagnostics(self) -> dict[str, Any]:
        return {}

    @property
    def last_weights(self) -> Tensor:
        """``[k]`` effective coefficient of ``∇_θ L_i`` in the last update (float32, detached)."""
        return self._last_weights

    def _set_weights(self, w: Tensor) -> None:
        # Replaced, never written in place (no copy kernel, and results handed out stay valid).
        self._last_weights = w.detach().float()

    def extra_repr(self) -> str:
        return f"num_clusters={self.num_clusters}"


class GradientBalancer(Balancer):
    """A method whose update ``Σ w_i g_i`` has weights that are a function of the k×k Gramian
    ``G_ij = g_i·g_j`` of the cluster gradients (and possibly the losses and its own state).

    Subclasses implement :meth:`_solve` on the sub-Gramian of the present clusters. Weights are
    computed on the CPU in float64: k is tiny, and one host transfer is cheaper than the dozens of
    kernel launches and synchronisations an iterative solver would make on the GPU.
    """

    needs_gradients: ClassVar[bool] = True

    def weights(self, gramian: Tensor, cluster_losses: Tensor, present: Tensor) -> Tensor:
        """Weights ``w`` ``[k]`` (float64, CPU) of the update ``Σ_i w_i g_i``; 0 for absent clusters."""
        k = self.num_clusters
        if tuple(gramian.shape) != (k, k):
            raise ValueError(f"gramian must have shape ({k}, {k}), got {tuple(gramian.shape)}")
        if tuple(cluster_losses.shape) != (k,) or tuple(present.shape) != (k,):
            raise ValueError(f"cluster_losses and present must have shape ({k},)")
        g = gramian.detach().to("cpu", torch.float64)
        if not bool(torch.isfinite(g).all()):
            raise FloatingPointError(
                f"{self.name}: the Gramian of the cluster gradients is not finite; the gradients "
                "overflowed (use a GradScaler with fp16) or training diverged"
            )
        g = 0.5 * (g + g.T)
        self._last_gramian = g
        self._last_present = present.detach().cpu().bool()
        losses = cluster_losses.detach().to("cpu", torch.float64)
        idx = torch.nonzero(present.detach().cpu().bool(), as_tuple=False).reshape(-1)
        w = torch.zeros(k, dtype=torch.float64)
        if idx.numel() > 0:
            sub = self._solve(g[idx][:, idx], losses[idx], idx)
            w[idx] = sub.detach().to("cpu", torch.float64)
        self._set_weights(w)
        return w

    def _solve(self, gramian: Tensor, losses: Tensor, clusters: Tensor) -> Tensor:
        """Weights ``[m]`` for the ``m`` present clusters ``clusters`` (float64 CPU inputs)."""
        raise NotImplementedError

    def _diagnostics(self) -> dict[str, Any]:
        g = getattr(self, "_last_gramian", None)
        if g is None:
            return {}
        present = self._last_present
        norms = g.diagonal().clamp_min(0).sqrt()
        denom = norms[:, None] * norms[None, :]
        cos = torch.where(denom > 0, g / denom.clamp_min(1e-300), torch.zeros_like(g))
        k = self.num_clusters
        return {
            # Cluster-gradient norms and cosine similarities (None for absent clusters).
            "grad_norms": [float(norms[i]) if present[i] else None for i in range(k)],
            "cosine": [
                [float(cos[i, j]) if present[i] and present[j] else None for j in range(k)]
                for i in range(k)
            ],
        }


# ============================================================================ generator state
def new_generator(seed: int) -> torch.Generator:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    g = torch.Generator()
    g.manual_seed(seed)
    return g
