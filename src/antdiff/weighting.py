"""Per-sample loss weightings over timesteps: none, P2, Min-SNR-γ and EDM.

A weighting is a function ``w(t)`` that multiplies the per-sample regression loss of the chosen
prediction type (ε, v or x0). Each published weighting is defined on one *reference* loss; we
convert it so that the effective objective, written in terms of the model's implied ε (or x0), is
the same whatever the prediction type. With ``x_t`` fixed, the three squared errors are related by

    ‖x̂0 − x0‖² = ‖ε̂ − ε‖² / SNR(t),      ‖v̂ − v‖² = ‖ε̂ − ε‖² · (1 + SNR(t)) / SNR(t),

so a weight ``w_x0`` on the x0-MSE equals ``w_x0 / SNR`` on the ε-MSE and ``w_x0 / (1 + SNR)`` on
the v-MSE. Every weighting below is therefore first written as ``w_x0(SNR)`` (the x0-equivalent
weight) and divided by ``c_pred(SNR)`` with ``c_ε = SNR``, ``c_v = 1 + SNR``, ``c_x0 = 1``;
the formulas are simplified by hand so that they stay finite at ``SNR = 0`` where possible.

* ``none``     — ``w = 1`` on the chosen prediction's MSE (no conversion: "vanilla" training).
* ``p2``       — Choi et al. 2022, on the ε-MSE: ``w_ε = 1 / (k + SNR)^γ`` (defaults γ = 1, k = 1).
* ``min_snr``  — Hang et al. 2023: ``w_x0 = min(SNR, γ)``, i.e. ``w_ε = min(SNR, γ)/SNR``,
  ``w_v = min(SNR, γ)/(SNR + 1)`` (default γ = 5).
* ``edm``      — Karras et al. 2022: ``λ(σ) = (σ² + σ_d²)/(σ σ_d)²`` on the denoiser (x0) error,
  with ``σ² = 1/SNR``, i.e. ``w_x0 = SNR + 1/σ_d²``, ``w_ε = 1 + 1/(σ_d² SNR)``,
  ``w_v = (SNR + 1/σ_d²)/(SNR + 1)`` (default σ_d = 0.5). Only EDM's loss weight is reproduced,
  not its log-normal distribution of σ (timesteps come from :class:`antdiff.TimestepSampler`).

``normalize=True`` divides the weights by their mean over all ``T`` timesteps, so that under
uniform timestep sampling the average weight is 1 and the learning rate keeps its meaning.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np
import torch

from .schedule import NoiseSchedule

__all__ = [
    "PREDICTION_TYPES",
    "WEIGHTINGS",
    "EDMWeighting",
    "LossWeighting",
    "MinSNRWeighting",
    "NoWeighting",
    "P2Weighting",
    "canonical_prediction",
    "make_weighting",
]

#: Prediction types, named as diffusers' ``prediction_type``.
PREDICTION_TYPES: tuple[str, ...] = ("epsilon", "v_prediction", "sample")

_PREDICTION_ALIASES = {
    "epsilon": "epsilon",
    "eps": "epsilon",
    "noise": "epsilon",
    "v_prediction": "v_prediction",
    "v": "v_prediction",
    "sample": "sample",
    "x0": "sample",
    "x_0": "sample",
}


def canonical_prediction(prediction: str) -> str:
    """Map ``eps``/``v``/``x0`` and diffusers' names onto ``epsilon``/``v_prediction``/``sample``."""
    try:
        return _PREDICTION_ALIASES[str(prediction).lower()]
    except KeyError:
        raise ValueError(
            f"unknown prediction type {prediction!r}; choose one of epsilon (eps), "
            "v_prediction (v) or sample (x0)"
        ) from None


class LossWeighting(ABC):
    """Per-sample weights ``w(t)`` multiplying the per-sample loss (see the module docstring).

    ``weighting(t, schedule, prediction)`` returns a float32 tensor ``[B]`` on ``t``'s device.
    The per-timestep table is computed once in float64 per (schedule, prediction) and cached.
    """

    name: ClassVar[str]

    def __init__(self, normalize: bool = False) -> None:
        self.normalize = bool(normalize)
        self._cache: dict[tuple[int, str, str], tuple[NoiseSchedule, torch.Tensor]] = {}

    @abstractmethod
    def from_snr(self, snr: np.ndarray, prediction: str) -> np.ndarray:
        """Unnormalised weights for an array of SNR values (float64; may contain 0 or +inf)."""

    def table(self, schedule: NoiseSchedule, prediction: str) -> np.ndarray:
        """Weights for every timestep ``t = 0 … T-1`` (float64, normalised if requested)."""
        prediction = canonical_prediction(prediction)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            w = np.asarray(self.from_snr(schedule.snr, prediction), dtype=np.float64)
        bad = ~np.isfinite(w)
        if bad.any():
            ts = np.nonzero(bad)[0]
            raise ValueError(
                f"{self!r} gives non-finite weights for prediction {prediction!r} at timesteps "
                f"{ts[:5].tolist()} (SNR = {schedule.snr[ts[:5]].tolist()}); change the weighting's "
                "parameters, the prediction type or the noise schedule"
            )
        if self.normalize:
            mean = float(w.mean())
            if mean <= 0:
                raise ValueError(f"{self!r}: cannot normalise weights whose mean is {mean}")
            w = w / mean
        return w

    def __call__(
        self, t: torch.Tensor, schedule: NoiseSchedule, prediction: str = "epsilon"
    ) -> torch.Tensor:
        prediction = canonical_prediction(prediction)
        key = (id(schedule), prediction, str(t.device))
        hit = self._cache.get(key)
        if hit is None or hit[0] is not schedule:
            tab = torch.as_tensor(self.table(schedule, prediction), dtype=torch.float32)
            # The entry keeps the (frozen) schedule alive, so its id cannot be reused.
            hit = self._cache[key] = (schedule, tab.to(t.device))
        return hit[1][t.long()]

    def params(self) -> dict[str, Any]:
        return {}

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, **self.params()}
        if self.normalize:
            d["normalize"] = True
        return d

    def __repr__(self) -> str:
        args = ", ".join(
            f"{k}={v!r}" for k, v in {**self.params(), "normalize": self.normalize}.items()
        )
        return f"{type(self).__name__}({args})"


class NoWeighting(LossWeighting):
    """``w(t) = 1``: the plain MSE of the chosen prediction type (vanilla training)."""

    name = "none"

    def from_snr(self, snr: np.ndarray, prediction: str) -> np.ndarray:
        return np.ones_like(snr, dtype=np.float64)


class P2Weighting(LossWeighting):
    """Perception-prioritised weighting (Choi et al. 2022), defined on the ε-MSE:

        w_ε(t) = 1 / (k + SNR(t))^γ,   w_x0 = SNR · w_ε,   w_v = SNR/(1 + SNR) · w_ε.

    The paper's settings are (γ, k) = (1, 1) (default) and (0.5, 1); γ = 0 is vanilla.
    """

    name = "p2"

    def __init__(self, gamma: float = 1.0, k: float = 1.0, normalize: bool = False) -> None:
        super().__init__(normalize)
        if not gamma >= 0:
            raise ValueError(f"P2 gamma must be >= 0, got {gamma}")
        if not k >= 0:
            raise ValueError(f"P2 k must be >= 0 (the paper uses k = 1), got {k}")
        self.gamma = float(gamma)
        self.k = float(k)

    def from_snr(self, snr: np.ndarray, prediction: str) -> np.ndarray:
        w_eps = (self.k + snr) ** (-self.gamma)
        if prediction == "epsilon":
            return w_eps
        if prediction == "v_prediction":
            # SNR/(1+SNR) written as 1/(1 + 1/SNR) stays exact at SNR = inf.
            return w_eps / (1.0 + 1.0 / snr)
        return snr * w_eps

    def params(self) -> dict[str, Any]:
        return {"gamma": self.gamma, "k": self.k}


class MinSNRWeighting(LossWeighting):
    """Min-SNR-γ (Hang et al. 2023): ``w_x0 = min(SNR, γ)``, converted per prediction type:

        ε:  min(SNR, γ)/SNR   (= 1 for SNR ≤ γ, so 1 at SNR = 0),
        v:  min(SNR, γ)/(SNR + 1),
        x0: min(SNR, γ).

    Default γ = 5 (the paper's choice).
    """

    name = "min_snr"

    def __init__(self, gamma: float = 5.0, normalize: bool = False) -> None:
        super().__init__(normalize)
        if not gamma > 0:
            raise ValueError(f"Min-SNR gamma must be > 0 (the paper uses 5), got {gamma}")
        self.gamma = float(gamma)

    def from_snr(self, snr: np.ndarray, prediction: str) -> np.ndarray:
        clipped = np.minimum(snr, self.gamma)
        if prediction == "epsilon":
            # min(SNR, γ)/SNR written without 0/0 at zero-terminal SNR.
            return np.where(snr <= self.gamma, 1.0, self.gamma / np.maximum(snr, self.gamma))
        if prediction == "v_prediction":
            return clipped / (snr + 1.0)
        return clipped

    def params(self) -> dict[str, Any]:
        return {"gamma": self.gamma}


class EDMWeighting(LossWeighting):
    """EDM's loss weight (Karras et al. 2022) ``λ(σ) = (σ² + σ_d²)/(σ σ_d)²`` on the x0 error.

    A VP sample ``x_t = √ᾱ x0 + √(1−ᾱ) ε`` is ``√ᾱ (x0 + σ ε)`` with ``σ² = (1−ᾱ)/ᾱ = 1/SNR``, so
    EDM's denoiser error is the x0 error and

        w_x0 = λ = SNR + 1/σ_d²,   w_ε = w_x0/SNR = 1 + 1/(σ_d² SNR),
        w_v = w_x0/(1 + SNR) = (SNR + 1/σ_d²)/(SNR + 1).

    With σ_d = 1 the v weight is exactly 1: v-prediction's plain MSE *is* EDM's weighting.
    The ε form is infinite at SNR = 0 (ε-prediction cannot recover x0 there).
    """

    name = "edm"

    def __init__(self, sigma_data: float = 0.5, normalize: bool = False) -> None:
        super().__init__(normalize)
        if not sigma_data > 0:
            raise ValueError(f"EDM sigma_data must be > 0 (EDM uses 0.5), got {sigma_data}")
        self.sigma_data = float(sigma_data)

    def from_snr(self, snr: np.ndarray, prediction: str) -> np.ndarray:
        inv_sd2 = 1.0 / self.sigma_data**2
        if prediction == "epsilon":
            return 1.0 + inv_sd2 / snr
        if prediction == "v_prediction":
            return np.where(np.isinf(snr), 1.0, (snr + inv_sd2) / (snr + 1.0))
        return snr + inv_sd2

    def params(self) -> dict[str, Any]:
        return {"sigma_data": self.sigma_data}


#: Weighting classes by name, for :func:`make_weighting`.
WEIGHTINGS: dict[str, type[LossWeighting]] = {
    cls.name: cls for cls in (NoWeighting, P2Weighting, MinSNRWeighting, EDMWeighting)
}
_ALIASES = {"vanilla": "none", "min-snr": "min_snr", "minsnr": "min_snr", "p2weight": "p2"}


def make_weighting(
    name: str | dict[str, Any] | LossWeighting | None = "none", **kw: Any
) -> LossWeighting:
    """Build a weighting by name (``none``, ``p2``, ``min_snr``, ``edm``) with its parameters.

    Also accepts a dict from :meth:`LossWeighting.to_dict`, an existing weighting (returned as
    is) or ``None`` (no weighting).
    """
    if isinstance(name, LossWeighting):
        if kw:
            raise ValueError("parameters were given together with an already built weighting")
        return name
    if name is None:
        name = "none"
    if isinstance(name, dict):
        d = dict(name)
        if "name" not in d:
            raise ValueError("a weighting dict needs a 'name' key (none, p2, min_snr, edm)")
        return make_weighting(d.pop("name"), **{**d, **kw})
    key = _ALIASES.get(str(name).lower(), str(name).lower())
    cls = WEIGHTINGS.get(key)
    if cls is None:
        raise ValueError(f"unknown loss weighting {name!r}; choose one of {', '.join(WEIGHTINGS)}")
    try:
        return cls(**kw)
    except TypeError as e:
        import inspect

        allowed = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        raise ValueError(
            f"bad parameters {sorted(kw)} for weighting {key!r}: {e}; it takes {allowed}"
        ) from None
