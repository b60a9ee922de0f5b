"""Task affinity of trained antdiff runs (what ``antdiff affinity`` does): load checkpoints,
draw the fixed image set from the run's data, wire the run's objective in as the loss, and
write the matrix, its metadata and the figures.

Orchestration only: the trainer and the data package are imported inside the functions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..schedule import NoiseSchedule
from .affinity import (
    DEFAULT_SKETCH_DIM,
    TaskAffinity,
    TimestepBins,
    loss_fn_from_objective,
    task_affinity,
)
from .ntg_pipeline import _load_for_inference, _resolve_device

__all__ = ["affinity_of_runs", "expand_checkpoints", "fixed_images", "write_affinity_outputs"]


def expand_checkpoints(paths: Sequence[str | Path], all_checkpoints: bool = False) -> list[Path]:
    """Checkpoint files from run directories (their latest, or every kept one) and files."""
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            raise ValueError(
                f"path {str(p)!r} does not exist (give run directories or checkpoint files)"
            )
        if p.is_file():
            out.append(p)
            continue
        ck = p / "checkpoints" if (p / "checkpoints").is_dir() else p
        files = sorted(ck.glob("step_*.pt"))
        if not files:
            raise ValueError(
                f"run directory {str(p)!r} holds no checkpoint (expected {ck}/step_*.pt)"
            )
        if all_checkpoints:
            out.extend(files)
        else:
            latest = ck / "latest.txt"
            name = latest.read_text().strip() if latest.is_file() else ""
            out.append(ck / name if name and (ck / name).is_file() else files[-1])
    return out


def fixed_images(
    data_cfg: dict[str, Any],
    n: int,
    seed: int,
    spec: str | None = None,
    class_conditional: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``n`` training images (float CHW in [−1, 1], no flips) drawn without replacement after a
    seeded shuffle — archives are often sorted by class — and their labels when the model is
    class-conditional. ``data_cfg`` is the run's ``data`` section; ``spec`` overrides its path."""
    from ..data import open_dataset

    d = dict(data_cfg or {})
    ds = open_dataset(
        spec or d.get("spec", "digits"),
        resolution=d.get("resolution"),
        channels=d.get("channels"),
        center_crop=d.get("center_crop", True),
        grey_to_rgb=d.get("grey_to_rgb", False),
    )
    N = len(ds)
    if n < 1:
        raise ValueError(f"the number of images must be >= 1, got {n}")
    if n > N:
        raise ValueError(f"asked for {n} images but the dataset has {N}; lower --images")
    idx = np.random.default_rng(seed).permutation(N)[:n]
    xs, ys = [], []
    for i in idx.tolist():
        x, y = ds[i]
        xs.append(torch.as_tensor(x))
        ys.append(int(y))
    labels = torch.tensor(ys, dtype=torch.long) if class_conditional else None
    if labels is not None and (labels < 0).any():
        raise ValueError("the model is class-conditional but the dataset has unlabelled images")
    return torch.stack(xs).float(), labels


def _encode(codec: Any, images: torch.Tensor, device: str, batch: int = 64) -> torch.Tensor:
    out = []
    with torch.no_grad():
        for s in range(0, images.shape[0], batch):
            out.append(codec.encode(images[s : s + batch].to(device)).float().cpu())
    return torch.cat(out)


def affinity_of_runs(
    runs_or_checkpoints: Sequence[str | Path],
    bins: int | Sequence[int] | TimestepBins = 10,
    *,
    num_images: int = 1000,
    mode: str = "auto",
    sketch_dim: int = DEFAULT_SKETCH_DIM,
    data: str | None = None,
    batch_size: int = 64,
    seed: int = 0,
    device: str = "auto",
    use_ema: bool = False,
    all_checkpoints: bool = False,
    max_gradient_bytes: int = 4 << 30,
    train_mode: bool = False,
    progress: Callable[[str], None] | None = None,
    load_fn: Callable[[Path, bool, str], Any] | None = None,
    split_half: bool = False,
) -> TaskAffinity:
    """Task affinity averaged over the given checkpoints (raw weights by default: the gradient
    is taken where the optimiser was; ``use_ema=True`` for the EMA weights); ``split_half``: also
    the two image halves' matrices and their agreement (:func:`task_affinity`)."""
    dev = _resolve_device(device)
    load = load_fn or _load_for_inference
    ckpts = expand_checkpoints(runs_or_checkpoints, all_checkpoints)
    first = load(ckpts[0], use_ema, dev)
    cfg = first.config if isinstance(first.config, dict) else {}
    objective = first.objective
    schedule: NoiseSchedule = objective.schedule
    model0 = first.model
    cond = bool(getattr(model0, "class_conditional", False))
    images, labels = fixed_images(cfg.get("data", {}), num_images, seed, data, cond)
    if first.codec is not None:
        images = _encode(first.codec, images, dev)
    expected = (int(getattr(model0, "in_channels", images.shape[1])),)
    if images.shape[1] != expected[0]:
        raise ValueError(
            f"the images have {images.shape[1]} channels but the model takes {expected[0]}; "
            "pass --data with the run's training data"
        )

    def models() -> Iterator[torch.nn.Module]:
        for k, c in enumerate(ckpts):
            b = first if k == 0 else load(c, use_ema, dev)
            if b.objective.schedule.num_timesteps != schedule.num_timesteps:
                raise ValueError(f"checkpoint {c} has a different number of timesteps")
            m = b.model
            m.requires_grad_(True)
            yield m
            del b, m

    res = task_affinity(
        models(),
        loss_fn_from_objective(objective),
        images,
        bins,
        num_timesteps=schedule.num_timesteps,
        mode=mode,
        sketch_dim=sketch_dim,
        batch_size=batch_size,
        seed=seed,
        labels=labels,
        max_gradient_bytes=max_gradient_bytes,
        train_mode=train_mode,
        checkpoint_names=[str(c) for c in ckpts],
        schedule=schedule,
        progress=progress,
        split_half=split_half,
    )
    res.meta["weights"] = "ema" if use_ema else "raw"
    res.meta["data"] = data or (cfg.get("data") or {}).get("spec")
    res.meta["objective"] = objective.to_dict() if hasattr(objective, "to_dict") else None
    return res


def write_affinity_outputs(aff: TaskAffinity, out_dir: str | Path) -> dict[str, Path]:
    """``affinity.npy`` + ``affinity.json`` + per-checkpoint stack + the two figures."""
    from .. import plots

    paths = aff.save(out_dir)
    sch = NoiseSchedule.from_dict(aff.meta["schedule"]) if aff.meta.get("schedule") else None
    paths["heatmap"] = plots.plot_affinity(aff, Path(out_dir) / "affinity.png", sch)
    paths["gap"] = plots.plot_affinity_vs_distance(aff, Path(out_dir) / "affinity_gap.png", sch)
    return paths
