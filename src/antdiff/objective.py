"""Per-sample diffusion training losses: ε-, v- and x0-prediction MSE and the iDDPM hybrid loss.

Forward process (0-indexed timesteps, :mod:`antdiff.schedule`):

    x_t = √ᾱ_t x0 + √(1 − ᾱ_t) ε,        v_t = √ᾱ_t ε − √(1 − ᾱ_t) x0   (Salimans & Ho 2022).

Simple loss (Ho et al. 2020), one value per sample, mean over the non-batch dimensions:

    ℓ_simple(b) = w(t_b) · mean_d (target_d − f_θ(x_t, t)_d)²,   target ∈ {ε, v, x0},

with ``w`` a :class:`antdiff.weighting.LossWeighting` (1 if none).

Learned variance (Nichol & Dhariwal 2021, "iDDPM"; the loss ADM and DiT train with): the model
outputs ``2C`` channels, the mean prediction and ``υ ∈ [-1, 1]`` that interpolates the reverse
variance in log space between the posterior variance β̃_t and β_t,

    log Σ_θ(x_t, t) = frac · log β_t + (1 − frac) · log β̃_t,   frac = (υ + 1)/2,

where ``log β̃_t`` is "clipped" (β̃_0 = 0 is replaced by β̃_1, as iDDPM does). The per-sample
hybrid loss is

    ℓ(b) = w(t_b) · ℓ_mse(b) + λ · T · L_{t_b},       λ = ``vlb_weight`` = 0.001,

    L_t = KL(q(x_{t-1} | x_t, x0) ‖ p_θ(x_{t-1} | x_t)) / (D ln 2)                  for t > 0,
    L_0 = −log p_θ(x0 | x_1) / (D ln 2)  (discretised Gaussian decoder, 256 bins)   for t = 0,

in bits per dimension, where p_θ's *mean* is computed from a stop-gradient copy of the mean
prediction, so the VB term trains only the variance. ``λ · T · L_t`` is an unbiased estimate of
``λ · L_vlb`` under uniform t; with T = 1000 and λ = 0.001 it is ADM/DiT's
``RESCALED_MSE`` ("rescale learned sigmas": VB × T/1000) exactly. By default the weighting
multiplies only the MSE term, as P2's and Min-SNR's reference code do; ``weight_vlb=True``
applies it to the whole hybrid loss instead. Either way the result is the per-sample loss that
the ANT balancers weight per cluster.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .schedule import NoiseSchedule
from .weighting import LossWeighting, canonical_prediction, make_weighting

__all__ = [
    "DiffusionObjective",
    "LossTerms",
    "approx_standard_normal_cdf",
    "discretized_gaussian_log_likelihood",
    "normal_kl",
]


# ----------------------------------------------------------------------------- Gaussian helpers
def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)) elementwise, in nats:

    ½ (−1 + logvar2 − logvar1 + e^{logvar1 − logvar2} + (mean1 − mean2)² e^{−logvar2}).
    """
    return 0.5 * (
        -1.0
        + logvar2
        - logvar1
        + torch.exp(logvar1 - logvar2)
        + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
    )


def approx_standard_normal_cdf(x: Tensor) -> Tensor:
    """Φ(x) ≈ ½ (1 + tanh(√(2/π) (x + 0.044715 x³))), the approximation iDDPM/ADM/DiT use."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x: Tensor, means: Tensor, log_scales: Tensor) -> Tensor:
    """log p(x) of data in [-1, 1] quantised to 256 bins of width 2/255 under N(means, e^{2 log_scales}).

    The bin of ``x`` is ``[x − 1/255, x + 1/255]``; the two edge bins extend to ∓∞ (x < −0.999
    or x > 0.999). Probabilities are clamped at 1e-12 before the log, as in iDDPM.
    """
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(
        x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta)
    )


def _mean_flat(x: Tensor) -> Tensor:
    return x.mean(dim=tuple(range(1, x.ndim))) if x.ndim > 1 else x


@dataclass(frozen=True)
class LossTerms:
    """The parts of one batch's per-sample loss, each ``[B]``.

    ``loss = weight · mse + vb`` (or ``weight · (mse + vb)`` with ``weight_vlb=True``);
    ``vb`` is already multiplied by ``λ·T`` and is ``None`` without learned variance.
    """

    loss: Tensor
    mse: Tensor
    weight: Tensor | None
    vb: Tensor | None


class DiffusionObjective:
    """The per-sample training loss of a discrete-time diffusion model (see the module docstring).

    >>> obj = DiffusionObjective(NoiseSchedule.from_name("linear"), "epsilon")
    >>> x0 = torch.zeros(2, 1, 4, 4); noise = torch.ones_like(x0); t = torch.tensor([0, 999])
    >>> x_t = obj.q_sample(x0, t, noise)
    >>> obj.per_sample_loss(noise, x0, x_t, t, noise).tolist()  # a perfect ε prediction
    [0.0, 0.0]
    """

    def __init__(
        self,
        schedule: NoiseSchedule | str = "linear",
        prediction: str = "epsilon",
        learned_variance: bool = False,
        vlb_weight: float = 0.001,
        weighting: LossWeighting | str | dict[str, Any] | None = None,
        weight_vlb: bool = False,
    ) -> None:
        self.schedule = NoiseSchedule.coerce(schedule)
        self.prediction = canonical_prediction(prediction)
        self.learned_variance = bool(learned_variance)
        if not (
            isinstance(vlb_weight, (int, float)) and math.isfinite(vlb_weight) and vlb_weight >= 0
        ):
            raise ValueError(
                f"vlb_weight must be a finite number >= 0 (ADM/DiT: 0.001), got {vlb_weight!r}"
            )
        self.vlb_weight = float(vlb_weight)
        self.weighting: LossWeighting | None = (
            None if weighting is None else make_weighting(weighting)
        )
        if (
            self.weighting is not None
            and self.weighting.name == "none"
            and not self.weighting.normalize
        ):
            self.weighting = None  # w = 1: skip the multiply
        self.weight_vlb = bool(weight_vlb)
        if self.weighting is not None:
            self.weighting.table(self.schedule, self.prediction)  # fail now on non-finite weights
        self._tables = self._build_tables()
        self._device_tables: dict[str, dict[str, Tensor]] = {}

    # ------------------------------------------------------------------ schedule tables
    def _build_tables(self) -> dict[str, np.ndarray]:
        ac = self.schedule.alphas_cumprod
        T = ac.size
        ac_prev = np.concatenate([[1.0], ac[:-1]])
        betas = 1.0 - ac / ac_prev
        tabs = {
            "sqrt_ac": np.sqrt(ac),
            "sqrt_1m_ac": np.sqrt(1.0 - ac),
        }
        if self.learned_variance:
            if T < 2:
                raise ValueError("learned variance needs at least 2 timesteps")
            if ac[0] >= 1.0 or np.any(betas <= 0):
                raise ValueError(
                    "learned variance needs β_t > 0 for every t (ᾱ strictly decreasing and ᾱ_0 < 1)"
                )
            post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
            tabs.update(
                log_betas=np.log(betas),
                # β̃_0 = 0: iDDPM replaces it by β̃_1 so that the log is finite.
                post_logvar_clipped=np.log(np.concatenate([[post_var[1]], post_var[1:]])),
                post_coef1=betas * np.sqrt(ac_prev) / (1.0 - ac),
                post_coef2=(1.0 - ac_prev) * np.sqrt(1.0 - betas) / (1.0 - ac),
            )
        return tabs

    def _tab(self, name: str, t: Tensor, ndim: int) -> Tensor:
        key = str(t.device)
        tabs = self._device_tables.get(key)
        if tabs is None:
            tabs = {
                k: torch.as_tensor(v, dtype=torch.float32).to(t.device)
                for k, v in self._tables.items()
            }
            self._device_tables[key] = tabs
        return tabs[name][t.long()].reshape(-1, *([1] * (ndim - 1)))

    @property
    def num_timesteps(self) -> int:
        return self.schedule.num_timesteps

    # ------------------------------------------------------------------ forward process
    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = √ᾱ_t x0 + √(1 − ᾱ_t) ε (in x0's dtype)."""
        self._check_t(t, x0)
        a = self._tab("sqrt_ac", t, x0.ndim).to(x0.dtype)
        s = self._tab("sqrt_1m_ac", t, x0.ndim).to(x0.dtype)
        return a * x0 + s * noise

    def target(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """The regression target: ε, v = √ᾱ ε − √(1−ᾱ) x0, or x0."""
        if self.prediction == "epsilon":
            return noise
        if self.prediction == "sample":
            return x0
        a = self._tab("sqrt_ac", t, x0.ndim)
        s = self._tab("sqrt_1m_ac", t, x0.ndim)
        return a * noise - s * x0

    def model_channels(self, data_channels: int) -> int:
        """Output channels the denoiser needs: ``2C`` with learned variance, else ``C``."""
        if data_channels < 1:
            raise ValueError(f"data_channels must be >= 1, got {data_channels}")
        return 2 * data_channels if self.learned_variance else data_channels

    def split_output(self, model_output: Tensor, channels: int) -> tuple[Tensor, Tensor | None]:
        """(mean prediction ``[B, C, …]``, variance values υ ``[B, C, …]`` or ``None``)."""
        expected = self.model_channels(channels)
        if model_output.ndim < 2 or model_output.shape[1] != expected:
            raise ValueError(
                f"model output has shape {tuple(model_output.shape)} but this objective needs "
                f"{expected} channels for {channels}-channel data"
                + (" (learned variance: mean + variance)" if self.learned_variance else "")
                + "; build the denoiser with out_channels=objective.model_channels(C)"
            )
        if not self.learned_variance:
            return model_output, None
        mean, var_values = torch.split(model_output, channels, dim=1)
        return mean, var_values

    # ------------------------------------------------------------------ reverse process
    def predict_eps_x0(self, model_output: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """(ε̂, x̂0) implied by the model's mean prediction (the variance half, if any, is ignored).

        ε: x̂0 = (x_t − √(1−ᾱ) ε̂)/√ᾱ;  x0: ε̂ = (x_t − √ᾱ x̂0)/√(1−ᾱ);
        v: x̂0 = √ᾱ x_t − √(1−ᾱ) v̂,  ε̂ = √(1−ᾱ) x_t + √ᾱ v̂.
        """
        self._check_t(t, x_t)
        out, _ = self.split_output(model_output, x_t.shape[1])
        a = self._tab("sqrt_ac", t, x_t.ndim)
        s = self._tab("sqrt_1m_ac", t, x_t.ndim)
        out, x_t = out.float(), x_t.float()
        if self.prediction == "epsilon":
            return out, (x_t - s * out) / a
        if self.prediction == "sample":
            return (x_t - a * out) / s, out
        return s * x_t + a * out, a * x_t - s * out

    def model_log_variance(self, var_values: Tensor, t: Tensor) -> Tensor:
        """log Σ_θ = frac·log β_t + (1 − frac)·log β̃_t (clipped), frac = (υ + 1)/2."""
        if not self.learned_variance:
            raise ValueError("model_log_variance needs learned_variance=True")
        frac = (var_values.float() + 1.0) / 2.0
        max_log = self._tab("log_betas", t, var_values.ndim)
        min_log = self._tab("post_logvar_clipped", t, var_values.ndim)
        return frac * max_log + (1.0 - frac) * min_log

    def q_posterior_mean(self, x0: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """Mean of q(x_{t-1} | x_t, x0) = c1_t x0 + c2_t x_t (needs learned_variance tables)."""
        c1 = self._tab("post_coef1", t, x_t.ndim)
        c2 = self._tab("post_coef2", t, x_t.ndim)
        return c1 * x0 + c2 * x_t

    def p_mean_variance(
        self, model_output: Tensor, x_t: Tensor, t: Tensor, clip_denoised: bool = False
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(mean, log-variance, x̂0) of p_θ(x_{t-1} | x_t) for a learned-variance model."""
        if not self.learned_variance:
            raise ValueError("p_mean_variance needs learned_variance=True")
        _, var_values = self.split_output(model_output, x_t.shape[1])
        assert var_values is not None
        _, x0_hat = self.predict_eps_x0(model_output, x_t, t)
        if clip_denoised:
            x0_hat = x0_hat.clamp(-1.0, 1.0)
        mean = self.q_posterior_mean(x0_hat, x_t.float(), t)
        return mean, self.model_log_variance(var_values, t), x0_hat

    def vb_terms_bpd(self, model_output: Tensor, x0: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """L_t in bits per dimension, ``[B]``: the posterior KL for t > 0, decoder NLL at t = 0.

        Gradients flow through ``model_output`` as given; :meth:`loss_terms` passes a copy whose
        mean half is detached, as iDDPM does.
        """
        x0, x_t = x0.float(), x_t.float()
        true_mean = self.q_posterior_mean(x0, x_t, t)
        true_logvar = self._tab("post_logvar_clipped", t, x_t.ndim)
        mean, logvar, _ = self.p_mean_variance(model_output, x_t, t, clip_denoised=False)
        kl = _mean_flat(normal_kl(true_mean, true_logvar, mean, logvar)) / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(x0, means=mean, log_scales=0.5 * logvar)
        nll = _mean_flat(nll) / math.log(2.0)
        return torch.where(t.to(kl.device) == 0, nll, kl)

    # ------------------------------------------------------------------ losses
    def loss_terms(
        self, model_output: Tensor, x0: Tensor, x_t: Tensor, t: Tensor, noise: Tensor
    ) -> LossTerms:
        """All parts of the per-sample loss (see :class:`LossTerms`)."""
        self._check_t(t, x0)
        C = x0.shape[1]
        mean, var_values = self.split_output(model_output, C)
        if mean.shape != x0.shape:
            raise ValueError(
                f"model output mean has shape {tuple(mean.shape)}, data has {tuple(x0.shape)}"
            )
        target = self.target(x0.float(), t, noise.float())
        mse = _mean_flat((target - mean.float()) ** 2)
        weight = None
        if self.weighting is not None:
            weight = self.weighting(t, self.schedule, self.prediction).to(mse.device)
        vb = None
        if var_values is not None:
            # Stop-gradient on the mean: the VB term only trains the variance.
            frozen = torch.cat([mean.detach(), var_values], dim=1)
            vb = self.vb_terms_bpd(frozen, x0, x_t, t) * (self.vlb_weight * self.num_timesteps)
        if weight is None:
            loss = mse if vb is None else mse + vb
        elif vb is None:
            loss = weight * mse
        else:
            loss = weight * (mse + vb) if self.weight_vlb else weight * mse + vb
        return LossTerms(loss=loss, mse=mse, weight=weight, vb=vb)

    def per_sample_loss(
        self, model_output: Tensor, x0: Tensor, x_t: Tensor, t: Tensor, noise: Tensor
    ) -> Tensor:
        """Per-sample loss ``[B]`` (float32), weighting applied, mean over non-batch dims."""
        return self.loss_terms(model_output, x0, x_t, t, noise).loss

    def _check_t(self, t: Tensor, x: Tensor) -> None:
        if not isinstance(t, Tensor) or t.ndim != 1 or t.shape[0] != x.shape[0]:
            shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(
                f"t must be a 1-D tensor with one timestep per sample ({x.shape[0]}), got {shape}"
            )
        if t.dtype.is_floating_point:
            raise ValueError("t must be an integer tensor of timesteps 0 … T-1")

    # ------------------------------------------------------------------ diffusers interop
    def diffusers_scheduler(self, kind: str = "ddpm", **kw: Any) -> Any:
        """A diffusers scheduler with exactly these betas and this prediction type.

        ``ddpm``: ``DDPMScheduler`` with ``variance_type="learned_range"`` when the variance is
        learned (its formula is ours, tested) and ``"fixed_small"`` otherwise; respaced steps are
        ``timestep_spacing="linspace"``, the iDDPM/ADM/DiT respacing (``"250"``).
        ``ddim``: ``DDIMScheduler`` (deterministic, ignores the variance half — pass it only the
        first C channels, see :meth:`split_output`), ``timestep_spacing="trailing"`` so that the
        first step starts at t = T-1, and ``set_alpha_to_one=True``.
        ``clip_sample`` defaults to True (pixel data in [-1, 1]); pass ``clip_sample=False`` for
        latents. Any keyword overrides these defaults.
        """
        from diffusers import DDIMScheduler, DDPMScheduler

        common: dict[str, Any] = {
            "num_train_timesteps": self.num_timesteps,
            "trained_betas": self.schedule.betas.tolist(),
            "prediction_type": self.prediction,
            "clip_sample": True,
        }
        kind = kind.lower()
        if kind == "ddpm":
            cfg = {
                **common,
                "variance_type": "learned_range" if self.learned_variance else "fixed_small",
                "timestep_spacing": "linspace",
            }
            return DDPMScheduler(**{**cfg, **kw})
        if kind == "ddim":
            cfg = {**common, "timestep_spacing": "trailing", "set_alpha_to_one": True}
            return DDIMScheduler(**{**cfg, **kw})
        raise ValueError(f"unknown scheduler kind {kind!r}; choose ddpm or ddim")

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        return {
            "schedule": self.schedule.to_dict(),
            "prediction": self.prediction,
            "learned_variance": self.learned_variance,
            "vlb_weight": self.vlb_weight,
            "weighting": None if self.weighting is None else self.weighting.to_dict(),
            "weight_vlb": self.weight_vlb,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DiffusionObjective:
        d = dict(d)
        unknown = set(d) - {
            "schedule",
            "prediction",
            "learned_variance",
            "vlb_weight",
            "weighting",
            "weight_vlb",
        }
        if unknown:
            raise ValueError(f"unknown DiffusionObjective keys {sorted(unknown)}")
        sched = d.pop("schedule", "linear")
        sched = NoiseSchedule.from_dict(sched) if isinstance(sched, dict) else sched
        return cls(sched, **d)

    def __repr__(self) -> str:
        return (
            f"DiffusionObjective({self.schedule!r}, prediction={self.prediction!r}, "
            f"learned_variance={self.learned_variance}, vlb_weight={self.vlb_weight}, "
            f"weighting={self.weighting!r}, weight_vlb={self.weight_vlb})"
        )
