"""The layout of a run directory (the contract with ``antdiff sample``, the analysis and the docs).

::

    RUN/config.yaml                       the resolved configuration
    RUN/clusters.json                     the task clusters (TaskClusters.to_json)
    RUN/metrics.jsonl                     one JSON object per logged step (see MetricsLog)
    RUN/checkpoints/step_000001000.pt     the last N checkpoints, + checkpoints/latest.txt
    RUN/samples/step_000001000.png        EMA sample grids
    RUN/tb/                               TensorBoard event files
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["RunDirectory"]


@dataclass(frozen=True)
class RunDirectory:
    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root).expanduser())

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def clusters(self) -> Path:
        return self.root / "clusters.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def samples(self) -> Path:
        return self.root / "samples"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tb"

    def sample_grid(self, step: int) -> Path:
        return self.samples / f"step_{step:09d}.png"

    def create(self) -> None:
        for d in (self.root, self.checkpoints, self.samples):
            d.mkdir(parents=True, exist_ok=True)
