"""Reference statistics of a real data set, cached to ``.npz``, and the real-vs-real FID floor.

A reference file holds everything a later evaluation needs without the data set:

* ``mu`` ``[D]`` and ``sigma`` ``[D, D]`` (float64) of all ``n`` real features (for FID);
* ``features`` ``[m, D]`` (float32), a seeded uniformly random subset of those same ``n``
  features, ``m = min(n, max_features)`` (for KID, precision/recall and the floor);
* ``meta``: the extractor (name, weights checksum, file sha256, format, preprocessing), the data
  set spec, the seed, the antdiff version and the creation time.

Statistics made by a different network or preprocessing are refused (:meth:`ReferenceStats.
check_compatible`), and ``.npz`` files of other tools (pytorch-fid's ``mu``/``sigma``) are refused
because nothing in them says which network made them.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_target
from .inception import InceptionFeatures
from .metrics import GaussianStats, StatsAccumulator, frechet_distance, gaussian_stats

__all__ = [
    "FLOOR_METHODS",
    "STATS_FORMAT_VERSION",
    "Floor",
    "ReferenceStats",
    "compute_reference_stats",
    "is_reference_file",
    "real_floor",
]

STATS_FORMAT_VERSION = 1
_MARKER = "antdiff_reference_stats"
#: Images embedded per chunk when computing statistics (bounds host memory for large sets).
_CHUNK = 4096

FLOOR_METHODS = ("disjoint", "subset")


def _version() -> str:
    from .. import __version__

    return __version__


@dataclass(frozen=True)
class Floor:
    """FID of ``n`` real features against real statistics of ``n_ref`` features.

    ``method="disjoint"``: the ``n`` features are removed from the reference set and the rest's
    statistics are used (what an ideal generator drawing fresh samples would score, up to
    ``n_ref = N − n`` instead of ``N``). ``method="subset"``: the ``n`` features are a subset of
    the reference set itself (slightly optimistic; how the CIFAR-10 floors in the data README were
    measured: n train images against train-50k).
    """

    value: float
    n: int
    n_ref: int
    method: str
    seed: int


@dataclass
class ReferenceStats:
    """Gaussian statistics plus a stored feature subset of a real data set."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int
    features: np.ndarray
    extractor: dict[str, Any]
    dataset: str = ""
    seed: int = 0
    resolution: int | None = None
    created: str = ""
    antdiff_version: str = ""
    path: str | None = None
    _floors: dict[tuple[int, str, int], Floor] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.mu = np.asarray(self.mu, dtype=np.float64)
        self.sigma = np.asarray(self.sigma, dtype=np.float64)
        self.features = np.asarray(self.features, dtype=np.float32)
        d = self.mu.shape[0]
        if self.mu.ndim != 1 or self.sigma.shape != (d, d):
            raise ValueError(
                f"inconsistent statistics: mu {self.mu.shape}, sigma {self.sigma.shape}"
            )
        if self.features.ndim != 2 or self.features.shape[1] != d:
            raise ValueError(f"stored features {self.features.shape} do not match dimension {d}")
        if self.features.shape[0] > self.n:
            raise ValueError(f"{self.features.shape[0]} stored features but n = {self.n}")
        for key in ("checksum", "preprocessing"):
            if not self.extractor.get(key):
                raise ValueError(f"reference statistics lack the extractor's {key}")

    # -- identity -------------------------------------------------------------------------------

    @property
    def dim(self) -> int:
        return int(self.mu.shape[0])

    @property
    def checksum(self) -> str:
        return str(self.extractor["checksum"])

    @property
    def preprocessing(self) -> str:
        return str(self.extractor["preprocessing"])

    @property
    def gaussian(self) -> GaussianStats:
        return GaussianStats(self.mu, self.sigma, self.n)

    def check_compatible(self, extractor: Mapping[str, Any] | InceptionFeatures) -> None:
        """Raise ``ValueError`` unless ``extractor`` is the network + preprocessing of these stats."""
        info = extractor.describe() if isinstance(extractor, InceptionFeatures) else dict(extractor)
        where = self.path or "the reference statistics"
        if info.get("checksum") != self.checksum:
            raise ValueError(
                f"{where} were computed with {self.extractor.get('name', '?')} (weights checksum "
                f"{self.checksum[:12]}…), but the samples are embedded with {info.get('name', '?')} "
                f"(checksum {str(info.get('checksum'))[:12]}…); features of different networks are "
                f"not comparable. Pass --inception {self.extractor.get('path', 'PATH')} or recompute "
                "the reference with `antdiff stats DATASET --out REF.npz --inception PATH`"
            )
        if info.get("preprocessing") != self.preprocessing:
            raise ValueError(
                f"{where} used the preprocessing {self.preprocessing!r}, the samples "
                f"{info.get('preprocessing')!r}; recompute the reference with this antdiff version"
            )
        if info.get("dim") not in (None, self.dim):
            raise ValueError(
                f"{where} hold {self.dim}-d features, the extractor gives {info['dim']}-d"
            )

    # -- floor ----------------------------------------------------------------------------------

    def floor(self, n: int, method: str = "disjoint", seed: int = 0, device: Any = None) -> Floor:
        """Cached :func:`real_floor` (``device``: where its linear algebra runs)."""
        key = (n, method, seed)
        if key not in self._floors:
            self._floors[key] = real_floor(self, n, method=method, seed=seed, device=device)
        return self._floors[key]

    # -- persistence ----------------------------------------------------------------------------

    def meta(self) -> dict[str, Any]:
        return {
            "format_version": STATS_FORMAT_VERSION,
            "extractor": self.extractor,
            "dataset": self.dataset,
            "seed": self.seed,
            "resolution": self.resolution,
            "created": self.created,
            "antdiff_version": self.antdiff_version,
            "n": self.n,
            "n_features": int(self.features.shape[0]),
            "features_note": (
                "features are a uniformly random subset (seeded) of the n features behind mu/sigma"
            ),
        }

    def save(self, path: str | Path) -> Path:
        """Write an uncompressed ``.npz`` (float data barely compresses; loading stays fast)."""
        p = Path(path).expanduser()
        if p.suffix != ".npz":
            raise ValueError(f"reference statistics are saved as .npz, got {str(p)!r}")
        if not p.parent.exists():
            raise ValueError(f"output folder {str(p.parent)!r} does not exist")
        with atomic_target(p) as f:  # an interrupted save keeps the earlier file
            np.savez(
                f,
                **{_MARKER: np.array(STATS_FORMAT_VERSION)},
                mu=self.mu,
                sigma=self.sigma,
                n=np.array(self.n, dtype=np.int64),
                features=self.features,
                meta=np.array(json.dumps(self.meta())),
            )
        self.path = str(p)
        return p

    @classmethod
    def load(cls, path: str | Path) -> ReferenceStats:
        p = Path(path).expanduser()
        if not p.is_file():
            raise ValueError(f"reference statistics {str(p)!r} do not exist")
        try:
            archive = np.load(p, allow_pickle=False)
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise ValueError("a single array, not an .npz archive")
        except (OSError, ValueError, EOFError) as e:
            raise ValueError(
                f"{p} is not an antdiff reference statistics file ({e}); make one with `antdiff stats`"
            ) from None
        try:
            with archive as z:
                keys = set(z.files)
                if _MARKER not in keys:
                    if {"mu", "sigma"} <= keys:
                        raise ValueError(
                            f"{p} holds mu/sigma without the network that made them (pytorch-fid "
                            "or clean-fid statistics?); antdiff cannot check they match its "
                            "extractor. Recompute them with `antdiff stats DATASET --out REF.npz`"
                        )
                    raise ValueError(
                        f"{p} is not an antdiff reference statistics file (keys: "
                        f"{', '.join(sorted(keys)) or 'none'}); make one with `antdiff stats`"
                    )
                version = int(z[_MARKER])
                if version > STATS_FORMAT_VERSION:
                    raise ValueError(
                        f"{p} has statistics format {version}; this antdiff reads up to "
                        f"{STATS_FORMAT_VERSION}: upgrade antdiff"
                    )
                meta = json.loads(str(z["meta"]))
                data = {k: z[k] for k in ("mu", "sigma", "features", "n")}
        except (OSError, EOFError, KeyError, json.JSONDecodeError) as e:
            raise ValueError(f"{p}: unreadable reference statistics ({e})") from None
        return cls(
            mu=data["mu"],
            sigma=data["sigma"],
            n=int(data["n"]),
            features=data["features"],
            extractor=meta["extractor"],
            dataset=meta.get("dataset", ""),
            seed=int(meta.get("seed", 0)),
            resolution=meta.get("resolution"),
            created=meta.get("created", ""),
            antdiff_version=meta.get("antdiff_version", ""),
            path=str(p),
        )


def is_reference_file(path: str | Path) -> bool:
    """True if ``path`` is an ``.npz`` written by :meth:`ReferenceStats.save`."""
    p = Path(path)
    if not (p.is_file() and p.suffix == ".npz"):
        return False
    try:
        with np.load(p, allow_pickle=False) as z:
            return _MARKER in z.files
    except (OSError, ValueError, EOFError):
        return False


def _extractor_info(extractor: InceptionFeatures | Mapping[str, Any] | None) -> dict[str, Any]:
    if isinstance(extractor, InceptionFeatures):
        return extractor.describe()
    if extractor is None:
        raise ValueError("features given without extractor_info: say which network made them")
    return dict(extractor)


def compute_reference_stats(
    data: np.ndarray,
    extractor: InceptionFeatures | None = None,
    *,
    extractor_info: Mapping[str, Any] | None = None,
    max_features: int = 10_000,
    seed: int = 0,
    dataset: str = "",
    resolution: int | None = None,
    progress: bool = False,
) -> ReferenceStats:
    """Statistics of real data: uint8 images (embedded with ``extractor``, default
    :meth:`InceptionFeatures.resolve`) or an already computed float feature array ``[N, D]``
    (then ``extractor`` or ``extractor_info`` must say which network made it).

    ``mu``/``sigma`` use all ``N`` features; ``min(N, max_features)`` of them, drawn uniformly
    with ``seed``, are stored for KID, precision/recall and the floor. Features are rounded to
    float32 before any statistic, so that the stored subset is exactly part of the set behind
    ``mu``/``sigma`` (which the disjoint floor relies on).
    """
    data = np.asarray(data)
    if max_features < 0:
        raise ValueError(f"max_features must be >= 0, got {max_features}")
    is_features = data.ndim == 2 and np.issubdtype(data.dtype, np.floating)
    if is_features:
        info = _extractor_info(extractor if extractor is not None else extractor_info)
    else:
        if data.dtype != np.uint8:
            raise ValueError(
                f"expected uint8 images or a float feature array [N, D], got {data.dtype} {data.shape}"
            )
        if extractor is None:
            extractor = InceptionFeatures.resolve()
        info = None
    n = data.shape[0]
    if n < 2:
        raise ValueError(f"reference statistics need at least 2 real samples, got {n}")
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(n, size=min(n, max_features), replace=False))
    acc = StatsAccumulator()
    kept: list[np.ndarray] = []
    bar = None
    if progress and not is_features:
        from tqdm import tqdm

        bar = tqdm(total=n, unit="img", desc="reference features")
    for start in range(0, n, _CHUNK):
        chunk = data[start : start + _CHUNK]
        feats = (chunk if is_features else extractor(chunk)).astype(np.float32)
        if not np.isfinite(feats).all():
            raise ValueError("features contain non-finite values")
        acc.update(feats)
        sel = keep[(keep >= start) & (keep < start + chunk.shape[0])] - start
        kept.append(feats[sel])
        if bar is not None:
            bar.update(chunk.shape[0])
    if bar is not None:
        bar.close()
    if info is None:
        info = extractor.describe()
    stats = acc.finalize()
    return ReferenceStats(
        mu=stats.mu,
        sigma=stats.sigma,
        n=n,
        features=np.concatenate(kept, axis=0),
        extractor=info,
        dataset=dataset,
        seed=seed,
        resolution=resolution,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        antdiff_version=_version(),
    )


def real_floor(
    ref: ReferenceStats, n: int, *, method: str = "disjoint", seed: int = 0, device: Any = None
) -> Floor:
    """Real-vs-real FID at sample count ``n``: what a perfect generator would score.

    ``n`` of the stored real features are drawn (seeded). ``"disjoint"`` compares them with the
    statistics of the *other* ``N − n`` reference features, obtained exactly by removing their
    contribution from ``mu``/``sigma`` (so only the ``n`` drawn features need to be stored);
    ``"subset"`` compares them with the full reference statistics. Raises ``ValueError`` when the
    reference stores fewer than ``n`` features (rebuild it with a larger ``max_features``).
    On a GPU ``device`` the drawn features' covariance and the square-root trace run there
    (float64).
    """
    if method not in FLOOR_METHODS:
        raise ValueError(f"unknown floor method {method!r}; expected one of {FLOOR_METHODS}")
    m = ref.features.shape[0]
    if n < 2:
        raise ValueError(f"the floor needs n >= 2, got {n}")
    if n > m:
        raise ValueError(
            f"the reference stores {m} features, fewer than n={n}; rebuild it with "
            f"`antdiff stats ... --max-features {n}` (or more) to get the floor at this n"
        )
    rng = np.random.default_rng(seed)
    idx = rng.choice(m, size=n, replace=False) if n < m else np.arange(m)
    a = ref.features[idx].astype(np.float64)
    stats_a = gaussian_stats(a, device=device)
    if method == "subset":
        fid = frechet_distance(stats_a.mu, stats_a.sigma, ref.mu, ref.sigma, device=device)
        return Floor(fid, n, ref.n, method, seed)
    n_b = ref.n - n
    if n_b < 2:
        raise ValueError(
            f"a disjoint floor at n={n} needs at least {n + 2} reference samples, the reference has {ref.n}"
        )
    # Remove A from the reference set R, centred on mu_R: with Ã = A − μ_R,
    # Σ_B (x−μ_R) = −Σ Ã  and  Σ_B (x−μ_R)(x−μ_R)ᵀ = (N−1) Σ_R − ÃᵀÃ.
    centred = a - ref.mu
    s_b = -centred.sum(axis=0)
    c_b = (ref.n - 1) * ref.sigma - centred.T @ centred
    mu_b = ref.mu + s_b / n_b
    sigma_b = (c_b - np.outer(s_b, s_b) / n_b) / (n_b - 1)
    sigma_b = 0.5 * (sigma_b + sigma_b.T)
    fid = frechet_distance(stats_a.mu, stats_a.sigma, mu_b, sigma_b, device=device)
    return Floor(fid, n, n_b, method, seed)
