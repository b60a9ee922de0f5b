"""Discrete noise schedules and their signal-to-noise ratio.

Convention (diffusers): timesteps are ``t = 0 … T-1``; ``alphas_cumprod[t]`` is
``ᾱ_t = ∏_{s≤t} (1 − β_s)``, so ``t = 0`` is the cleanest and ``t = T-1`` the noisiest task.
The paper numbers timesteps ``1 … T``; its ``t`` is our ``t + 1``.

    x_t = sqrt(ᾱ_t) x_0 + sqrt(1 − ᾱ_t) ε,     SNR(t) = ᾱ_t / (1 − ᾱ_t),     λ(t) = log SNR(t).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = ["SCHEDULE_NAMES", "NoiseSchedule", "make_betas"]

#: Named schedules understood by :meth:`NoiseSchedule.from_name`.
SCHEDULE_NAMES = ("linear", "scaled_linear", "squaredcos_cap_v2")

_DEFAULT_BETAS = {
    # DDPM / ADM (Ho et al. 2020).
    "linear": (1e-4, 0.02),
    # LDM "sqrt-linear" (Stable Diffusion 0.00085 → 0.012). FFHQ-LDM uses 0.0015 → 0.0195.
    "scaled_linear": (0.00085, 0.012),
}


def make_betas(
    name: str,
    num_timesteps: int = 1000,
    beta_start: float | None = None,
    beta_end: float | None = None,
) -> np.ndarray:
    """β_t for a named schedule, in float64, exactly as diffusers' ``DDPMScheduler`` builds them.

    * ``linear``: β linear from ``beta_start`` to ``beta_end`` (default 1e-4 → 0.02).
    * ``scaled_linear``: √β linear (default 0.00085 → 0.012; pass 0.0015 → 0.0195 for FFHQ-LDM).
    * ``squaredcos_cap_v2``: Nichol & Dhariwal's cosine, ᾱ(t) = cos²((t/T + s)/(1 + s)·π/2),
      s = 0.008, β capped at 0.999.
    """
    if name not in SCHEDULE_NAMES:
        raise ValueError(
            f"unknown noise schedule {name!r}; choose one of {', '.join(SCHEDULE_NAMES)} "
            "or pass alphas_cumprod / a diffusers scheduler"
        )
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
    if name == "squaredcos_cap_v2":
        if beta_start is not None or beta_end is not None:
            raise ValueError("squaredcos_cap_v2 takes no beta_start/beta_end")

        def abar(u: float) -> float:
            return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

        n = num_timesteps
        return np.array(
            [min(1 - abar((i + 1) / n) / abar(i / n), 0.999) for i in range(n)], dtype=np.float64
        )
    start, end = _DEFAULT_BETAS[name]
    start = start if beta_start is None else beta_start
    end = end if beta_end is None else beta_end
    if not 0 < start <= end < 1:
        raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {start} and {end}")
    # diffusers computes in float32; we keep float64 (difference < 1e-7, tested).
    if name == "linear":
        return np.linspace(start, end, num_timesteps, dtype=np.float64)
    return np.linspace(start**0.5, end**0.5, num_timesteps, dtype=np.float64) ** 2


@dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """A discrete variance-preserving schedule given by ᾱ_t for t = 0 … T-1.

    Build it with :meth:`from_name`, :meth:`from_diffusers` or directly from ``alphas_cumprod``.
    All derived quantities are float64 numpy arrays (``snr``, ``logsnr``) or float32 torch
    tensors (``*_tensor``) for use inside training code.
    """

    alphas_cumprod: np.ndarray
    name: str = "custom"
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        a = np.asarray(self.alphas_cumprod, dtype=np.float64).reshape(-1)
        if a.size < 1:
            raise ValueError("alphas_cumprod is empty")
        if not np.all(np.isfinite(a)) or np.any(a <= 0) or np.any(a > 1):
            raise ValueError("alphas_cumprod must be finite and in (0, 1]")
        if np.any(np.diff(a) > 0):
            raise ValueError("alphas_cumprod must be non-increasing in t (t = 0 is the cleanest)")
        object.__setattr__(self, "alphas_cumprod", a)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_name(
        cls,
        name: str,
        num_timesteps: int = 1000,
        beta_start: float | None = None,
        beta_end: float | None = None,
    ) -> NoiseSchedule:
        betas = make_betas(name, num_timesteps, beta_start, beta_end)
        params: dict[str, Any] = {"num_timesteps": num_timesteps}
        if beta_start is not None:
            params["beta_start"] = beta_start
        if beta_end is not None:
            params["beta_end"] = beta_end
        return cls(np.cumprod(1.0 - betas), name=name, params=params)

    @classmethod
    def from_betas(cls, betas: Sequence[float] | np.ndarray | torch.Tensor) -> NoiseSchedule:
        b = np.asarray(torch.as_tensor(betas, dtype=torch.float64).cpu().numpy())
        if np.any(b <= 0) or np.any(b >= 1):
            raise ValueError("betas must lie in (0, 1)")
        return cls(np.cumprod(1.0 - b), name="custom")

    @classmethod
    def from_diffusers(cls, scheduler: Any) -> NoiseSchedule:
        """From any diffusers scheduler that has ``alphas_cumprod`` (DDPM, DDIM, …)."""
        ac = getattr(scheduler, "alphas_cumprod", None)
        if ac is None:
            raise TypeError(
                f"{type(scheduler).__name__} has no alphas_cumprod; pass a discrete "
                "diffusers scheduler such as DDPMScheduler or DDIMScheduler"
            )
        cfg = getattr(scheduler, "config", {})
        name = cfg.get("beta_schedule", "custom") if hasattr(cfg, "get") else "custom"
        return cls(np.asarray(torch.as_tensor(ac).double().cpu().numpy()), name=str(name))

    @classmethod
    def coerce(cls, obj: Any, num_timesteps: int = 1000) -> NoiseSchedule:
        """Accept a schedule, a schedule name, a diffusers scheduler or an ᾱ array."""
        if isinstance(obj, NoiseSchedule):
            return obj
        if isinstance(obj, str):
            return cls.from_name(obj, num_timesteps)
        if hasattr(obj, "alphas_cumprod") and not isinstance(obj, (np.ndarray, torch.Tensor)):
            return cls.from_diffusers(obj)
        return cls(np.asarray(torch.as_tensor(obj, dtype=torch.float64).cpu().numpy()))

    # ------------------------------------------------------------------ quantities
    @property
    def num_timesteps(self) -> int:
        return int(self.alphas_cumprod.size)

    def __len__(self) -> int:
        return self.num_timesteps

    @property
    def betas(self) -> np.ndarray:
        prev = np.concatenate([[1.0], self.alphas_cumprod[:-1]])
        return 1.0 - self.alphas_cumprod / prev

    @property
    def snr(self) -> np.ndarray:
        """SNR(t) = ᾱ_t / (1 − ᾱ_t); +inf where ᾱ_t = 1."""
        a = self.alphas_cumprod
        with np.errstate(divide="ignore"):
            return a / (1.0 - a)

    @property
    def logsnr(self) -> np.ndarray:
        """λ(t) = log ᾱ_t − log(1 − ᾱ_t), computed stably."""
        a = self.alphas_cumprod
        with np.errstate(divide="ignore"):
            return np.log(a) - np.log1p(-a)

    @property
    def sigmas(self) -> np.ndarray:
        """EDM-style σ(t) = sqrt((1 − ᾱ_t)/ᾱ_t) = SNR^{-1/2}."""
        a = self.alphas_cumprod
        return np.sqrt((1.0 - a) / a)

    def tensor(self, name: str = "alphas_cumprod", device: Any = None) -> torch.Tensor:
        """A float32 tensor of ``alphas_cumprod``, ``snr``, ``logsnr``, ``betas`` or ``sigmas``."""
        return torch.as_tensor(getattr(self, name), dtype=torch.float32, device=device)

    def to_diffusers(self) -> Any:
        """A diffusers ``DDPMScheduler`` with exactly these betas (``trained_betas``)."""
        from diffusers import DDPMScheduler

        return DDPMScheduler(
            num_train_timesteps=self.num_timesteps, trained_betas=self.betas.tolist()
        )

    def to_dict(self) -> dict[str, Any]:
        if self.name in SCHEDULE_NAMES:
            return {"name": self.name, **self.params}
        return {"name": "custom", "alphas_cumprod": self.alphas_cumprod.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NoiseSchedule:
        d = dict(d)
        name = d.pop("name", "custom")
        if name == "custom":
            return cls(np.asarray(d["alphas_cumprod"], dtype=np.float64))
        return cls.from_name(name, **d)

    def __repr__(self) -> str:
        return f"NoiseSchedule(name={self.name!r}, T={self.num_timesteps}, params={self.params})"
