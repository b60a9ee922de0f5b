"""Offline evaluation: the standard FID Inception network, FID, KID, precision/recall.

Typical use::

    from antdiff.evaluation import InceptionFeatures, compute_reference_stats, evaluate

    net = InceptionFeatures.resolve()  # --inception / $ANTDIFF_INCEPTION / installed package
    ref = compute_reference_stats(real_uint8, net, dataset="cifar10-train")
    ref.save("cifar10-train.npz")
    result = evaluate(samples_uint8, "cifar10-train.npz", extractor=net)
    # {"fid": ..., "floor": ..., "n_gen": ..., "n_real": ..., "extractor": {...}, ...}

Nothing here downloads anything: see :mod:`antdiff.evaluation.inception` for where the weights
come from. ``docs/evaluation.md`` gives the formulas and conventions.
"""

from __future__ import annotations

from .evaluate import (
    METRICS,
    Evaluator,
    evaluate,
    evaluate_features,
    load_reference,
    load_samples,
    parse_metrics,
)
from .inception import (
    ENV_VAR,
    FORMATS,
    PREPROCESSING,
    InceptionFeatures,
    default_inception_path,
    export_fp16_inception,
)
from .metrics import (
    GaussianStats,
    KIDResult,
    PrecisionRecall,
    StatsAccumulator,
    frechet_distance,
    gaussian_stats,
    kernel_inception_distance,
    manifold_radii,
    precision_recall,
    trace_sqrt_product,
)
from .pytorch_fid_net import FIDInceptionV3, nvidia_to_pytorch_fid_state_dict
from .reference import (
    FLOOR_METHODS,
    Floor,
    ReferenceStats,
    compute_reference_stats,
    is_reference_file,
    real_floor,
)

__all__ = [
    "ENV_VAR",
    "FLOOR_METHODS",
    "FORMATS",
    "METRICS",
    "PREPROCESSING",
    "Evaluator",
    "FIDInceptionV3",
    "Floor",
    "GaussianStats",
    "InceptionFeatures",
    "KIDResult",
    "PrecisionRecall",
    "ReferenceStats",
    "StatsAccumulator",
    "compute_reference_stats",
    "default_inception_path",
    "evaluate",
    "evaluate_features",
    "export_fp16_inception",
    "frechet_distance",
    "gaussian_stats",
    "is_reference_file",
    "kernel_inception_distance",
    "load_reference",
    "load_samples",
    "manifold_radii",
    "nvidia_to_pytorch_fid_state_dict",
    "parse_metrics",
    "precision_recall",
    "real_floor",
    "trace_sqrt_product",
]
