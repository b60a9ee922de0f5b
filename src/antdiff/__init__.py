"""antdiff: diffusion training as multi-task learning (ANT, Go et al., NeurIPS 2023).

The core (this package's top level, :mod:`antdiff.mtl`, :mod:`antdiff.analysis` computations)
never imports the trainer or the CLI.
"""

from .clustering import (
    COST_NAMES,
    TaskClusters,
    cluster_timesteps,
    interval_cluster,
    make_interval_cost,
)
from .sampling import SAMPLING_MODES, TimestepBatch, TimestepSampler
from .schedule import SCHEDULE_NAMES, NoiseSchedule

__version__ = "0.1.0"

__all__ = [
    "COST_NAMES",
    "SAMPLING_MODES",
    "SCHEDULE_NAMES",
    "NoiseSchedule",
    "TaskClusters",
    "TimestepBatch",
    "TimestepSampler",
    "__version__",
    "cluster_timesteps",
    "interval_cluster",
    "make_interval_cost",
]
