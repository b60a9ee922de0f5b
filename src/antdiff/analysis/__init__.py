"""Analysis of negative transfer between denoising tasks: task affinity (O1), the negative
transfer gap (O2) with its timestep-switching hybrid sampler, and readers of the trainer's MTL
logs. Core code: never imports the trainer, the evaluation package or matplotlib at import time."""

from .affinity import (
    AFFINITY_MODES,
    DEFAULT_SKETCH_DIM,
    TaskAffinity,
    TimestepBins,
    epsilon_mse_loss,
    loss_fn_from_objective,
    task_affinity,
)
from .hybrid import TimestepSwitchingDenoiser
from .logs import TrainingLog, read_training_log
from .ntg import FIDMeasurement, NTGRow, NTGTable, compute_ntg
from .sketch import CountSketch

__all__ = [
    "AFFINITY_MODES",
    "DEFAULT_SKETCH_DIM",
    "CountSketch",
    "FIDMeasurement",
    "NTGRow",
    "NTGTable",
    "TaskAffinity",
    "TimestepBins",
    "TimestepSwitchingDenoiser",
    "TrainingLog",
    "compute_ntg",
    "epsilon_mse_loss",
    "loss_fn_from_objective",
    "read_training_log",
    "task_affinity",
]
