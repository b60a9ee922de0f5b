"""FAMO: fast adaptive multitask optimisation (Liu, Liu, Jiang, Stone & Liu, NeurIPS 2023)."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

from .base import Balancer, ClusterLosses, check_positive

__all__ = ["FAMO"]


class FAMO(Balancer):
    """Loss-based balancing that equalises the rate of decrease of the log cluster losses, at the
    cost of one extra no-grad forward pass per step (official ``famo.py``, reproduced exactly).

    With logits ξ, ``z = softmax(ξ)``, ``D_i = L_i − m_i + ε`` (``m_i`` = ``min_losses``, 0 by
    default: diffusion losses are positive) and ``c = Σ_i z_i/D_i`` (no gradient):

        L = Σ_i z_i log D_i / c          ⇒   ∇_θ L = Σ_i w_i ∇_θ L_i,   w_i = (z_i/D_i)/c,  Σ w = 1.

    After ``optimizer.step()`` the losses on the *same* batch (same x, t and noise) are recomputed
    and :meth:`after_optimizer_step` moves ξ along ``δ = log D(before) − log D(after)``:
    ``ξ ← Adam(ξ; ∂softmax(ξ)ᵀ δ, lr = lr, weight_decay = gamma)``. The Adam state is kept in
    buffers so it is saved by ``state_dict()``; ξ is a buffer, not a parameter, so that the model
    optimiser can never touch it. With :class:`~antdiff.mtl.engine.ClusterGradientEngine` call
    ``engine.after_optimizer_step(compute_losses, batch)``.
    """

    name = "famo"
    needs_post_step_losses = True

    _BETAS = (0.9, 0.999)
    _ADAM_EPS = 1e-8

    def __init__(
        self,
        num_clusters: int,
        *,
        lr: float = 0.025,
        gamma: float = 0.01,
        eps: float = 1e-8,
        min_losses: list[float] | None = None,
        max_grad_norm: float | None = None,
    ) -> None:
        super().__init__(num_clusters, max_grad_norm=max_grad_norm)
        self.lr = check_positive("lr", lr)
        self.gamma = check_positive("gamma", gamma, allow_zero=True)
        self.eps = check_positive("eps", eps)
        k = num_clusters
        if min_losses is None:
            m = torch.zeros(k)
        else:
            m = torch.as_tensor(min_losses, dtype=torch.float32).reshape(-1)
            if m.numel() != k:
                raise ValueError(
                    f"min_losses must have {k} entries (one per cluster), got {m.numel()}"
                )
        self.register_buffer("min_losses", m.float())
        self.register_buffer("logits", torch.zeros(k))
        self.register_buffer("exp_avg", torch.zeros(k))
        self.register_buffer("exp_avg_sq", torch.zeros(k))
        self.register_buffer("adam_step", torch.zeros((), dtype=torch.long))
        self.register_buffer("prev_losses", torch.zeros(k))
        self.register_buffer("prev_present", torch.zeros(k, dtype=torch.bool))
        self._awaiting_update = False
        self._warned = False

    def _softmax(self, present: Tensor) -> Tensor:
        return torch.softmax(self.logits.masked_fill(~present, float("-inf")), dim=0)

    def combine(self, cl: ClusterLosses) -> Tensor:
        if self._awaiting_update and not self._warned:
            warnings.warn(
                "FAMO.loss() was called twice without after_optimizer_step(new_losses) in between: "
                "FAMO's weights only adapt if the cluster losses are recomputed on the same batch "
                "after optimizer.step() (engine.after_optimizer_step(compute_losses, batch))",
                RuntimeWarning,
                stacklevel=3,
            )
            self._warned = True
        present = cl.present.to(self.logits.device)
        if not bool(present.any()):
            self._set_weights(torch.zeros(self.num_clusters))
            return cl.losses.sum() * 0.0
        z = self._softmax(present).to(cl.losses.device)
        d = torch.where(
            cl.present,
            cl.losses - self.min_losses.to(cl.losses.device) + self.eps,
            torch.ones_like(cl.losses),
        )
        c = (z / d).sum().detach()
        loss = (z * d.log() / c).sum()
        self._set_weights((z / d).detach() / c)
        self.prev_losses.copy_(cl.losses.detach().to(self.prev_losses.device))
        self.prev_present.copy_(present)
        self._awaiting_update = True
        return loss

    @torch.no_grad()
    def after_optimizer_step(self, new_cluster_losses: Tensor | None = None) -> None:
        if new_cluster_losses is None:
            raise ValueError(
                "FAMO needs the cluster losses recomputed on the same batch after optimizer.step(): "
                "call engine.after_optimizer_step(compute_losses, batch), or "
                "balancer.after_optimizer_step(cluster_losses(new_per_sample, batch).losses)"
            )
        if not self._awaiting_update:
            raise RuntimeError("FAMO.after_optimizer_step() called before FAMO.loss() in this step")
        new = new_cluster_losses.detach().to(self.logits.device, torch.float32).reshape(-1)
        if new.numel() != self.num_clusters:
            raise ValueError(f"expected {self.num_clusters} cluster losses, got {new.numel()}")
        present = self.prev_present
        before = (self.prev_losses - self.min_losses + self.eps).clamp_min(1e-30).log()
        after = (new - self.min_losses + self.eps).clamp_min(1e-30).log()
        delta = torch.where(present, before - after, torch.zeros_like(before))
        z = self._softmax(present) if bool(present.any()) else torch.zeros_like(delta)
        # Vector-Jacobian product of softmax: ∂z/∂ξ^T δ = z ⊙ (δ − z·δ).
        grad = z * (delta - (z * delta).sum())
        self._adam(grad)
        self._awaiting_update = False

    def _adam(self, grad: Tensor) -> None:
        """One step of ``torch.optim.Adam(lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=gamma)``."""
        b1, b2 = self._BETAS
        self.adam_step += 1
        t = int(self.adam_step)
        g = grad + self.gamma * self.logits
        self.exp_avg.mul_(b1).add_(g, alpha=1 - b1)
        self.exp_avg_sq.mul_(b2).addcmul_(g, g, value=1 - b2)
        denom = (self.exp_avg_sq.sqrt() / (1 - b2**t) ** 0.5).add_(self._ADAM_EPS)
        self.logits.addcdiv_(self.exp_avg, denom, value=-self.lr / (1 - b1**t))

    def _diagnostics(self) -> dict[str, Any]:
        return {
            "famo_logits": [float(x) for x in self.logits.tolist()],
            "famo_softmax": [float(x) for x in torch.softmax(self.logits, 0).tolist()],
        }

    def extra_repr(self) -> str:
        return f"num_clusters={self.num_clusters}, lr={self.lr}, gamma={self.gamma}"
