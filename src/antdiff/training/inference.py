"""Loading a trained model for sampling, evaluation, analysis and export.

>>> bundle = load_for_inference("runs/demo_ant_uw")            # doctest: +SKIP
>>> images = bundle.sample(64, steps=50, sampler="ddim")       # uint8 [64, H, W, C]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..clustering import TaskClusters
from ..objective import DiffusionObjective
from .checkpoint import load_checkpoint, resolve_checkpoint
from .sampling import sample_images

__all__ = ["InferenceBundle", "load_for_inference"]


@dataclass
class InferenceBundle:
    """A trained denoiser with everything needed to sample from it.

    ``model`` is the :class:`~antdiff.training.models.Denoiser` (EMA weights unless loaded with
    ``use_ema=False``) in eval mode; ``image_shape`` is ``(C, H, W)`` of the space it denoises
    (latents when ``codec`` is set).
    """

    model: Any
    objective: DiffusionObjective
    codec: Any
    config: dict[str, Any]
    clusters: TaskClusters | None
    step: int
    checkpoint: Path
    use_ema: bool
    class_names: list[str] | None = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        m = self.model
        return (m.in_channels, m.sample_size, m.sample_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def num_classes(self) -> int | None:
        return self.model.num_classes

    def sample(
        self,
        n: int,
        *,
        sampler: str | None = None,
        steps: int | None = None,
        batch_size: int | None = None,
        seed: int = 0,
        class_labels: Any = None,
        guidance: float | None = None,
        eta: float | None = None,
        progress: bool = False,
    ) -> np.ndarray:
        """``n`` uint8 ``[n, H, W, C]`` images; unset options come from the run's ``sample`` config.

        A class-conditional model without ``class_labels`` samples labels ``i mod num_classes``.
        """
        s = self.config.get("sample", {})
        if class_labels is None and self.num_classes is not None:
            class_labels = self.default_labels(n)
        return sample_images(
            self.model,
            self.objective,
            n,
            image_shape=self.image_shape,
            sampler=sampler or s.get("sampler", "ddpm"),
            steps=steps or s.get("steps", 250),
            batch_size=batch_size or s.get("batch_size", 256),
            seed=seed,
            class_labels=class_labels,
            guidance=s.get("guidance", 1.0) if guidance is None else guidance,
            null_class_label=self.model.null_class,
            eta=s.get("eta", 0.0) if eta is None else eta,
            codec=self.codec,
            device=self.device,
            progress=progress,
        )

    def default_labels(self, n: int) -> torch.Tensor | None:
        if self.num_classes is None:
            return None
        return torch.arange(n) % self.num_classes


def load_for_inference(
    run_or_checkpoint: str | Path, use_ema: bool = True, device: str | torch.device = "cpu"
) -> InferenceBundle:
    """Rebuild the denoiser, objective, codec and clusters of a run (its latest checkpoint) or of
    one checkpoint file, with the EMA weights by default."""
    from .models import Denoiser, LatentCodec

    path = resolve_checkpoint(run_or_checkpoint)
    ckpt = load_checkpoint(path)
    model = Denoiser.from_config(ckpt["model_config"])
    model.load_state_dict(ckpt["ema"]["model"] if use_ema else ckpt["model"])
    model.to(device).eval().requires_grad_(False)
    objective = DiffusionObjective.from_dict(ckpt["objective"])
    codec = None
    if ckpt.get("codec"):
        codec = LatentCodec.from_spec(ckpt["codec"]).to(device)
    clusters = TaskClusters.from_dict(ckpt["clusters"]) if ckpt.get("clusters") else None
    return InferenceBundle(
        model=model,
        objective=objective,
        codec=codec,
        config=ckpt["config"],
        clusters=clusters,
        step=int(ckpt["step"]),
        checkpoint=path,
        use_ema=use_ema,
        class_names=ckpt.get("class_names"),
    )
