"""Build a balancer by name: ``make_balancer("uw", k, lr=0.025)``."""

from __future__ import annotations

import difflib
import inspect
from typing import Any

from .base import Balancer
from .cagrad import CAGrad
from .continuous_uw import ContinuousUncertaintyWeighting
from .dwa import DynamicWeightAverage
from .famo import FAMO
from .imtlg import IMTLG
from .mean import MeanBalancer
from .mgda import MGDA
from .nash import NashMTL
from .pcgrad import PCGrad
from .rlw import RandomLossWeighting
from .upgrad import UPGrad
from .uw import UncertaintyWeighting

__all__ = ["BALANCERS", "balancer_hyperparameters", "make_balancer"]

#: Every balancer by its canonical name.
BALANCERS: dict[str, type[Balancer]] = {
    cls.name: cls
    for cls in (
        MeanBalancer,
        UncertaintyWeighting,
        NashMTL,
        PCGrad,
        FAMO,
        IMTLG,
        MGDA,
        CAGrad,
        UPGrad,
        DynamicWeightAverage,
        RandomLossWeighting,
        ContinuousUncertaintyWeighting,
    )
}

_ALIASES = {
    "vanilla": "mean",
    "ew": "mean",
    "equal": "mean",
    "uncertainty": "uw",
    "nashmtl": "nash",
    "nash_mtl": "nash",
    "imtl": "imtlg",
    "imtl_g": "imtlg",
    "edm2": "continuous_uw",
    "edm2_uw": "continuous_uw",
    "cuw": "continuous_uw",
}


def _canonical(name: str) -> str:
    key = str(name).strip().lower().replace("-", "_")
    return _ALIASES.get(key, key)


def balancer_hyperparameters(name: str) -> dict[str, Any]:
    """Keyword hyper-parameters of a balancer and their defaults (``inspect.Parameter.empty``
    when required)."""
    cls = BALANCERS[_canonical(name)]
    sig = inspect.signature(cls.__init__)
    return {
        p.name: p.default
        for p in sig.parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }


def make_balancer(name: str, num_clusters: int, **hyper: Any) -> Balancer:
    """The balancer ``name`` for ``num_clusters`` clusters, with keyword hyper-parameters.

    Unknown names and unknown or invalid hyper-parameters raise a ``ValueError`` that names
    the accepted values.
    """
    key = _canonical(name)
    if key not in BALANCERS:
        choices = sorted(BALANCERS)
        close = difflib.get_close_matches(key, choices + sorted(_ALIASES), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown balancer {name!r}{hint}; choose one of {', '.join(choices)}")
    accepted = balancer_hyperparameters(key)
    unknown = sorted(set(hyper) - set(accepted))
    if unknown:
        raise ValueError(
            f"unknown hyper-parameter(s) {', '.join(unknown)} for balancer {key!r}; accepted: "
            f"{', '.join(sorted(accepted)) or 'none'}"
        )
    return BALANCERS[key](num_clusters, **hyper)
