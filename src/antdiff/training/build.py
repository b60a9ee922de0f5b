"""From a :class:`~antdiff.training.config.Config` to the objects of a run.

Each function builds one thing from its config section with the library's own constructors
(:class:`~antdiff.objective.DiffusionObjective`, :func:`~antdiff.clustering.cluster_timesteps`,
:func:`~antdiff.data.open_dataset`, :func:`~antdiff.training.models.build_denoiser`,
:func:`~antdiff.mtl.make_balancer`), so the trainer, ``antdiff sample`` and ``antdiff export``
rebuild exactly the same objects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..clustering import TaskClusters, cluster_timesteps
from ..objective import DiffusionObjective
from ..schedule import NoiseSchedule
from .config import Config, ConfigError

__all__ = [
    "build_balancer",
    "build_clusters",
    "build_codec",
    "build_objective",
    "denoiser_kwargs",
    "open_training_dataset",
]


def build_objective(cfg: Config) -> DiffusionObjective:
    d = cfg.diffusion
    schedule = NoiseSchedule.from_name(d.schedule, d.num_timesteps, d.beta_start, d.beta_end)
    weighting = None if d.weighting == "none" else {"name": d.weighting, **d.weighting_params}
    try:
        return DiffusionObjective(
            schedule,
            prediction=d.prediction,
            learned_variance=d.learned_variance,
            vlb_weight=d.vlb_weight,
            weighting=weighting,
            weight_vlb=d.weight_vlb,
        )
    except ValueError as e:
        raise ConfigError("diffusion", str(e)) from None


def build_clusters(cfg: Config, schedule: NoiseSchedule) -> TaskClusters:
    """The k task clusters: explicit ``ant.clusters``, or the exact interval clustering.

    Vanilla runs build them too, to log per-cluster losses comparable with ANT runs.
    """
    a = cfg.ant
    if a.clusters is not None:
        try:
            return TaskClusters(
                tuple((int(p[0]), int(p[1])) for p in a.clusters), cost_name="explicit"
            )
        except ValueError as e:
            raise ConfigError("ant.clusters", str(e)) from None
    affinity: Any = None
    if a.cost == "affinity":
        assert a.affinity is not None  # checked by Config.validate
        affinity = Path(a.affinity).expanduser()
        if not affinity.is_file():
            raise ConfigError(
                "ant.affinity",
                f"affinity file {str(affinity)!r} not found; compute one with `antdiff affinity` "
                "and pass its path",
            )
    try:
        return cluster_timesteps(
            schedule, a.k, a.cost, affinity=affinity, min_size=a.min_size, max_size=a.max_size
        )
    except ValueError as e:
        raise ConfigError("ant", f"cannot cluster the timesteps: {e}") from None


def open_training_dataset(cfg: Config) -> Any:
    """The training images (:class:`antdiff.data.ImageDataset`), flips seeded by ``run.seed``."""
    from ..data import open_dataset

    d = cfg.data
    try:
        return open_dataset(
            d.spec,
            resolution=d.resolution,
            channels=d.channels,
            center_crop=d.center_crop,
            random_flip=d.random_flip,
            grey_to_rgb=d.grey_to_rgb,
            max_items=d.max_items,
            seed=cfg.run.seed,
        )
    except FileNotFoundError as e:
        raise ConfigError("data.spec", str(e)) from None


def build_codec(cfg: Config) -> Any:
    """The latent autoencoder (:class:`~antdiff.training.models.LatentCodec`) or None."""
    if cfg.model.codec is None:
        return None
    from .models import LatentCodec

    try:
        return LatentCodec.from_spec(cfg.model.codec)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError("model.codec", str(e)) from None


def denoiser_kwargs(
    cfg: Config,
    *,
    data_channels: int,
    resolution: int,
    num_classes: int | None,
    objective: DiffusionObjective,
    codec: Any = None,
) -> dict[str, Any]:
    """Keyword arguments of :func:`~antdiff.training.models.build_denoiser` for this run."""
    if codec is not None:
        if data_channels != 3:
            raise ConfigError(
                "data.channels", f"the autoencoder needs RGB images, got {data_channels} channel(s)"
            )
        c, size, _ = codec.latent_shape(resolution)
    else:
        c, size = data_channels, resolution
    if cfg.data.class_conditional and num_classes is None:
        raise ConfigError(
            "data.class_conditional", f"the dataset {cfg.data.spec!r} has no class labels"
        )
    return {
        "preset": cfg.model.preset,
        "sample_size": size,
        "in_channels": c,
        "out_channels": objective.model_channels(c),
        "num_classes": num_classes if cfg.data.class_conditional else None,
        **cfg.model.overrides,
    }


def build_balancer(cfg: Config) -> Any:
    """The MTL balancer (``antdiff.mtl.make_balancer``) of an ANT run; clipping is the larger of
    ``optim.grad_clip`` and the balancer's own ``max_grad_norm`` (applied once, by the engine)."""
    from ..mtl import make_balancer

    a = cfg.ant
    k = len(a.clusters) if a.clusters is not None else a.k
    try:
        bal = make_balancer(a.balancer, k, **a.balancer_params)
    except ValueError as e:
        raise ConfigError("ant.balancer", str(e)) from None
    limits = [v for v in (cfg.optim.grad_clip, bal.max_grad_norm) if v is not None]
    bal.max_grad_norm = max(limits) if limits else None
    return bal
