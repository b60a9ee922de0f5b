"""Evaluate generated images against reference statistics: FID, KID, precision/recall, floor.

Every result states the sample counts (``n_gen``, ``n_real``), the real-vs-real FID floor at
``n_gen`` and the extractor (name, checksum, preprocessing), because an FID without them cannot
be interpreted: on CIFAR-10, 2k real images already score ≈ 14 against the training set.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .inception import InceptionFeatures, resolve_device
from .metrics import frechet_distance, gaussian_stats, kernel_inception_distance, precision_recall
from .reference import ReferenceStats, compute_reference_stats, is_reference_file

__all__ = [
    "METRICS",
    "Evaluator",
    "evaluate",
    "evaluate_features",
    "load_reference",
    "load_samples",
    "parse_metrics",
]

METRICS = ("fid", "kid", "pr")


def parse_metrics(metrics: str | Iterable[str]) -> tuple[str, ...]:
    """``"fid,kid"`` or ``["fid", "kid"]`` → validated, de-duplicated tuple in input order."""
    items = metrics.split(",") if isinstance(metrics, str) else list(metrics)
    out: list[str] = []
    for raw in items:
        m = raw.strip().lower()
        if not m:
            continue
        if m not in METRICS:
            raise ValueError(f"unknown metric {raw!r}; choose from {', '.join(METRICS)}")
        if m not in out:
            out.append(m)
    if not out:
        raise ValueError(f"no metric selected; choose from {', '.join(METRICS)}")
    return tuple(out)


# ----------------------------------------------------------------------------------------------
# inputs


def _check_images(images: np.ndarray, source: str) -> np.ndarray:
    if images.dtype != np.uint8:
        raise ValueError(
            f"{source}: expected uint8 images in [0, 255] (like ADM/DiT sample .npz files), got "
            f"{images.dtype}; convert [-1, 1] floats with ((x + 1) * 127.5).round().clip(0, 255)"
            ".astype(np.uint8)"
        )
    if images.ndim not in (3, 4) or images.shape[0] == 0:
        raise ValueError(
            f"{source}: expected a non-empty image array [N, H, W, C], got {images.shape}"
        )
    return images


def load_samples(path: str | Path) -> np.ndarray:
    """Generated images as uint8 ``[N, H, W, C]``.

    A ``.npz`` is read at key ``samples``, else ``arr_0`` (what ``np.savez(path, x)`` and the
    ADM/DiT sampling scripts write). Anything else — ``.npy``, an image folder, a tar archive of
    images — is read with :func:`antdiff.data.load_images_uint8` (which also lets a held-out real
    split stand in for samples, e.g. to check the floor).
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise ValueError(f"samples {str(p)!r} do not exist (expected a .npz, .npy or image folder)")
    if p.suffix == ".npz":
        with np.load(p, allow_pickle=False) as z:
            for key in ("samples", "arr_0"):
                if key in z.files:
                    return _check_images(z[key], f"{p}[{key}]")
            raise ValueError(
                f"{p} has no array 'samples' or 'arr_0' (keys: {', '.join(z.files) or 'none'}); "
                "save generated images with np.savez(path, samples=uint8_NHWC)"
            )
    from ..data import load_images_uint8

    return _check_images(load_images_uint8(str(p)), str(p))


def load_reference(
    spec: str | Path,
    extractor: InceptionFeatures,
    *,
    n: int | None = None,
    max_features: int = 10_000,
    seed: int = 0,
    resolution: int | None = None,
    progress: bool = False,
) -> ReferenceStats:
    """A reference ``.npz`` from :meth:`ReferenceStats.save`, or statistics computed now from a
    data set spec (anything :func:`antdiff.data.load_images_uint8` reads; ``n`` images, shuffled
    with ``seed``, resized to ``resolution`` if given)."""
    p = Path(spec).expanduser()
    if is_reference_file(p):
        return ReferenceStats.load(p)
    if p.suffix == ".npz" and p.is_file():
        with np.load(p, allow_pickle=False) as z:
            if {"mu", "sigma"} <= set(z.files):
                return ReferenceStats.load(p)  # raises the "foreign statistics" error
    from ..data import load_images_uint8

    images = load_images_uint8(str(spec), n=n, seed=seed, resolution=resolution)
    return compute_reference_stats(
        images,
        extractor,
        max_features=max_features,
        seed=seed,
        dataset=str(spec),
        resolution=resolution,
        progress=progress,
    )


# ----------------------------------------------------------------------------------------------
# evaluation


def evaluate_features(
    generated: np.ndarray,
    ref: ReferenceStats,
    *,
    extractor_info: Mapping[str, Any] | None = None,
    metrics: str | Iterable[str] = METRICS,
    seed: int = 0,
    kid_subset_size: int = 1000,
    kid_subsets: int = 100,
    pr_k: int = 3,
    floor: bool = True,
    floor_method: str = "disjoint",
    device: str | Any = "cpu",
) -> dict[str, Any]:
    """Metrics of generated *features* ``[N, D]`` against ``ref`` (see :func:`evaluate`)."""
    chosen = parse_metrics(metrics)
    info = dict(extractor_info) if extractor_info is not None else dict(ref.extractor)
    ref.check_compatible(info)
    gen = np.asarray(generated, dtype=np.float64)
    if gen.ndim != 2 or gen.shape[1] != ref.dim:
        raise ValueError(
            f"generated features {gen.shape} do not match the reference dimension {ref.dim}"
        )
    n_gen = gen.shape[0]
    real = ref.features.astype(np.float64)
    result: dict[str, Any] = {
        "n": n_gen,
        "n_gen": n_gen,
        "n_real": ref.n,
        "n_real_features": int(real.shape[0]),
    }
    notes: list[str] = []
    if n_gen < ref.dim:
        notes.append(
            f"n_gen={n_gen} < feature dimension {ref.dim}: the sample covariance is singular and "
            "FID is strongly biased upwards; compare only with the floor at the same n"
        )
    if "fid" in chosen:
        if n_gen < 2:
            raise ValueError(f"FID needs at least 2 generated samples, got {n_gen}")
        g = gaussian_stats(gen, device=device)
        result["fid"] = frechet_distance(g.mu, g.sigma, ref.mu, ref.sigma, device=device)
        if floor:
            try:
                fl = ref.floor(n_gen, method=floor_method, seed=seed, device=device)
                result.update(floor=fl.value, floor_method=fl.method, floor_n_ref=fl.n_ref)
            except ValueError as e:
                result.update(floor=None, floor_method=floor_method, floor_n_ref=None)
                notes.append(f"floor unavailable: {e}")
    if "kid" in chosen:
        kid = kernel_inception_distance(
            real=real,
            generated=gen,
            subset_size=kid_subset_size,
            num_subsets=kid_subsets,
            seed=seed,
            device=device,
        )
        result.update(
            kid=kid.mean,
            kid_std=kid.std,
            kid_subset_size=kid.subset_size,
            kid_subsets=kid.num_subsets,
        )
    if "pr" in chosen:
        # Kynkäänniemi et al. compare equal numbers of real and generated samples: the k-NN
        # radii shrink as a set grows, so unequal sizes would tilt precision against recall.
        m = min(n_gen, real.shape[0])
        rng = np.random.default_rng(seed)
        r_idx = rng.choice(real.shape[0], m, replace=False) if m < real.shape[0] else slice(None)
        g_idx = rng.choice(n_gen, m, replace=False) if m < n_gen else slice(None)
        pr = precision_recall(real=real[r_idx], generated=gen[g_idx], k=pr_k, device=device)
        result.update(precision=pr.precision, recall=pr.recall, pr_k=pr.k, pr_n=m)
    result["extractor"] = info
    result["preprocessing"] = info.get("preprocessing")
    result["reference"] = {
        "path": ref.path,
        "dataset": ref.dataset,
        "n": ref.n,
        "checksum": ref.checksum,
    }
    result["seed"] = seed
    result["notes"] = notes
    return result


def evaluate(
    samples_uint8: np.ndarray,
    ref: ReferenceStats | str | Path,
    metrics: str | Iterable[str] = METRICS,
    n: int | None = None,
    extractor: InceptionFeatures | None = None,
    *,
    seed: int = 0,
    device: str | None = "auto",
    batch_size: int | None = None,
    kid_subset_size: int = 1000,
    kid_subsets: int = 100,
    pr_k: int = 3,
    floor: bool = True,
    floor_method: str = "disjoint",
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluate uint8 generated images ``[N, H, W, C]`` against reference statistics.

    ``ref`` is a :class:`ReferenceStats` or the path of a reference ``.npz``; ``n`` takes the
    first ``n`` samples (all if ``None``); ``extractor`` defaults to
    :meth:`InceptionFeatures.resolve` and must match the reference's network (checked before any
    image is embedded). Returns a JSON-serialisable dict with ``fid``, ``kid``/``kid_std``,
    ``precision``/``recall``, ``n``/``n_gen``, ``n_real``, ``floor`` (real-vs-real FID at
    ``n_gen``), the extractor, preprocessing and reference.
    """
    chosen = parse_metrics(metrics)
    reference = ref if isinstance(ref, ReferenceStats) else ReferenceStats.load(ref)
    if extractor is None:
        extractor = InceptionFeatures.resolve(device=device, batch_size=batch_size)
    reference.check_compatible(extractor)
    images = _check_images(np.asarray(samples_uint8), "samples")
    if n is not None:
        if n < 2:
            raise ValueError(f"n must be >= 2, got {n}")
        if n > images.shape[0]:
            raise ValueError(
                f"asked to evaluate n={n} samples but only {images.shape[0]} were given; "
                f"generate more or pass n={images.shape[0]}"
            )
        images = images[:n]
    feats = extractor(images, progress=progress)
    return evaluate_features(
        feats,
        reference,
        extractor_info=extractor.describe(),
        metrics=chosen,
        seed=seed,
        kid_subset_size=kid_subset_size,
        kid_subsets=kid_subsets,
        pr_k=pr_k,
        floor=floor,
        floor_method=floor_method,
        device=extractor.device,
    )


class Evaluator:
    """Evaluation hook for the trainer: reference and network loaded once, reused every call.

    ``Evaluator(ref_path, n, metrics, device, batch_size)(images_uint8) -> dict`` (see
    :func:`evaluate`). ``n`` is the number of samples to generate per evaluation (``None``: use
    whatever is passed). The network is loaded — and checked against the reference — at
    construction, so that a missing or mismatched file fails before training starts.
    """

    def __init__(
        self,
        ref_path: str | Path,
        n: int | None = 10_000,
        metrics: str | Sequence[str] = ("fid",),
        device: str | None = "auto",
        batch_size: int | None = None,
        *,
        inception: str | Path | None = None,
        seed: int = 0,
    ) -> None:
        self.ref = ReferenceStats.load(ref_path)
        self.n = n
        self.metrics = parse_metrics(metrics)
        self.seed = seed
        self.device = resolve_device(device)
        self.extractor = InceptionFeatures.resolve(
            inception, device=self.device, batch_size=batch_size
        )
        self.ref.check_compatible(self.extractor)

    def __call__(self, images_uint8: np.ndarray) -> dict[str, Any]:
        return evaluate(
            images_uint8,
            self.ref,
            self.metrics,
            n=self.n,
            extractor=self.extractor,
            seed=self.seed,
        )
