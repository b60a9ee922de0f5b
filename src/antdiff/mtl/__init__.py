"""Multi-task balancers on timestep clusters and the per-cluster gradient engine (paper §5).

>>> from antdiff.mtl import make_balancer
>>> make_balancer("uw", 5).param_groups()[0]["lr"]
0.025
"""

from .base import Balancer, ClusterLosses, GradientBalancer, cluster_losses, cluster_means
from .cagrad import CAGrad
from .continuous_uw import ContinuousUncertaintyWeighting
from .dwa import DynamicWeightAverage
from .engine import ENGINE_MODES, ClusterGradientEngine, StepResult, emit_sample_values
from .famo import FAMO
from .imtlg import IMTLG
from .mean import MeanBalancer
from .mgda import MGDA
from .nash import NashMTL, NashSolverWarning, solve_nash
from .pcgrad import PCGrad
from .registry import BALANCERS, balancer_hyperparameters, make_balancer
from .rlw import RandomLossWeighting
from .upgrad import UPGrad
from .uw import UncertaintyWeighting

__all__ = [
    "BALANCERS",
    "ENGINE_MODES",
    "FAMO",
    "IMTLG",
    "MGDA",
    "Balancer",
    "CAGrad",
    "ClusterGradientEngine",
    "ClusterLosses",
    "ContinuousUncertaintyWeighting",
    "DynamicWeightAverage",
    "GradientBalancer",
    "MeanBalancer",
    "NashMTL",
    "NashSolverWarning",
    "PCGrad",
    "RandomLossWeighting",
    "StepResult",
    "UPGrad",
    "UncertaintyWeighting",
    "balancer_hyperparameters",
    "cluster_losses",
    "cluster_means",
    "emit_sample_values",
    "make_balancer",
    "solve_nash",
]
