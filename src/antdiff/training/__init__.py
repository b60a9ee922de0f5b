"""The reference trainer (upper layer): config, models, checkpoints, the training loop, sampling,
export. The core (``antdiff/*.py``, :mod:`antdiff.mtl`, :mod:`antdiff.analysis`) never imports it.

Sub-modules are imported on use (``from antdiff.training.config import load_config``) so that
``import antdiff.training`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

#: Public names, imported from their sub-module on first use (PEP 562).
_LAZY = {
    "Config": "config",
    "ConfigError": "config",
    "load_config": "config",
    "train": "trainer",
    "TrainResult": "trainer",
    "TrainingDiverged": "trainer",
    "sample_images": "sampling",
    "InferenceBundle": "inference",
    "load_for_inference": "inference",
    "export_diffusers": "export",
    "run_demo": "demo",
    "CheckpointManager": "checkpoint",
    "load_checkpoint": "checkpoint",
    "EMA": "ema",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
