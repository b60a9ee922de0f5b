"""Continuous uncertainty weighting: a learned log-variance u(log-SNR) (EDM2-style).

An antdiff extension, not part of the ANT paper: UW over a continuum of noise levels instead of k
discrete clusters, following the learned uncertainty of Karras et al., "Analyzing and Improving
the Training Dynamics of Diffusion Models" (EDM2, CVPR 2024).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..sampling import TimestepBatch
from ..schedule import NoiseSchedule
from .base import (
    Balancer,
    ClusterLosses,
    _check_per_sample,
    check_positive,
    check_positive_int,
    cluster_means,
    new_generator,
)
from .distributed import world_size

__all__ = ["ContinuousUncertaintyWeighting"]


class ContinuousUncertaintyWeighting(Balancer):
    """Per-sample loss ``ℓ_b · e^{−u(λ_b)} + u(λ_b)`` averaged over the batch, with

        u(λ) = wᵀ φ(−λ/8) + b,     φ(x) = √2 · cos(2π (f x + p)),   f ~ N(0, 1), p ~ U[0, 1),

    where ``λ_b = log SNR(t_b)`` comes from the noise schedule (``−λ/8 = ln σ / 4`` is EDM2's
    ``c_noise``), ``f, p`` are ``num_features`` fixed random Fourier frequencies and phases
    (EDM2's ``MPFourier``) drawn from ``seed`` and saved in the state, and ``w, b`` are learned,
    initialised to 0 (so ``u ≡ 0`` at the start, like UW's ``s = 0``). For fixed losses the optimum
    is ``e^{u(λ)} = E[ℓ | λ]``: each noise level is divided by a smooth running estimate of its own
    loss. Unlike EDM2 the learned part is a plain linear layer with a bias (EDM2 uses its
    magnitude-preserving layer without bias), trained in its own parameter group
    (:meth:`param_groups`, default lr 0.025 as ANT-UW, no weight decay).

    Clusters only matter for logging: ``last_weights[i]`` is the effective coefficient of ``L_i``,
    ``(n_i/B) · mean_{b∈i} e^{−u_b}``. Under DDP the per-sample gradients of ``w, b`` differ between
    ranks: the engine averages them (:meth:`sync_gradients`); in your own loop call
    ``balancer.sync_gradients(group)`` after ``backward()``.
    """

    name = "continuous_uw"

    def __init__(
        self,
        num_clusters: int,
        *,
        schedule: NoiseSchedule | str | None = None,
        num_features: int = 128,
        lr: float = 0.025,
        seed: int = 0,
        max_grad_norm: float | None = None,
    ) -> None:
        super().__init__(num_clusters, max_grad_norm=max_grad_norm)
        if schedule is None:
            raise ValueError(
                "continuous_uw needs the noise schedule to map timesteps to log-SNR: pass "
                "schedule=NoiseSchedule.from_name('linear') (or the schedule you train with)"
            )
        self.schedule = NoiseSchedule.coerce(schedule)
        self.num_features = check_positive_int("num_features", num_features)
        self.lr = check_positive("lr", lr)
        self.seed = seed
        logsnr = np.clip(self.schedule.logsnr, -30.0, 30.0)  # ᾱ_t = 1 would give +inf
        self.register_buffer(
            "logsnr", torch.as_tensor(logsnr, dtype=torch.float32), persistent=False
        )
        g = new_generator(seed)
        self.register_buffer("frequencies", torch.randn(self.num_features, generator=g))
        self.register_buffer("phases", torch.rand(self.num_features, generator=g))
        self.linear = nn.Linear(self.num_features, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def features(self, timesteps: Tensor) -> Tensor:
        x = -self.logsnr[timesteps.long()] / 8.0
        return math.sqrt(2.0) * torch.cos(
            2 * math.pi * (x[:, None] * self.frequencies + self.phases)
        )

    def log_variance(self, timesteps: Tensor) -> Tensor:
        """``u(λ(t))`` for a LongTensor of timesteps (``[B]``)."""
        t = timesteps.to(self.logsnr.device)
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.logsnr.numel()):
            raise ValueError(
                f"timesteps must lie in [0, {self.logsnr.numel() - 1}] for this noise schedule"
            )
        return self.linear(self.features(t))[:, 0]

    def loss(
        self,
        per_sample: Tensor,
        batch: TimestepBatch,
        *,
        process_group: Any | None = None,
    ) -> Tensor:
        _check_per_sample(per_sample, batch)
        u = self.log_variance(batch.timesteps).to(per_sample.device)
        ell = per_sample.float()
        v = ell * torch.exp(-u) + u
        stacked = torch.stack([v, ell, torch.exp(-u).detach()], dim=1)
        means, counts, sums = cluster_means(stacked, batch, process_group)
        n = counts.sum().clamp_min(1.0)
        # Σ_i (N_i/N) · mean_i(v): value = global mean of v, DDP-averaged gradient exact.
        total = (means[:, 0] * counts).sum() / n
        self.last_cluster_losses = ClusterLosses(
            means[:, 1], counts, counts > 0, (sums[:, 1].sum() / n).detach()
        )
        self._set_weights(sums[:, 2] / n)
        return total

    def combine(self, cl: ClusterLosses) -> Tensor:
        raise TypeError("continuous_uw weights individual samples: call loss(per_sample, batch)")

    def sync_gradients(self, process_group: Any | None) -> None:
        """Average the gradients of ``w, b`` over ``process_group`` (after ``backward()``)."""
        w = world_size(process_group)
        if w == 1:
            return
        import torch.distributed as dist

        for p in self.linear.parameters():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad, group=process_group)
            p.grad.div_(w)

    def param_groups(self) -> list[dict[str, Any]]:
        return [{"params": list(self.linear.parameters()), "lr": self.lr, "weight_decay": 0.0}]

    def _diagnostics(self) -> dict[str, Any]:
        # u at the first timestep of each decile of the schedule, for a quick look at the curve.
        t = torch.linspace(0, self.logsnr.numel() - 1, 11).round().long().to(self.logsnr.device)
        with torch.no_grad():
            u = self.log_variance(t)
        return {"u_timesteps": [int(x) for x in t.tolist()], "u": [float(x) for x in u.tolist()]}

    def extra_repr(self) -> str:
        return (
            f"num_clusters={self.num_clusters}, schedule={self.schedule.name!r}, "
            f"num_features={self.num_features}, lr={self.lr}"
        )
