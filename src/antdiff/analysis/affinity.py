"""Task affinity between denoising tasks (the paper's observation O1, Figure 1).

For two tasks (timesteps, or bins of timesteps) ``a`` and ``b`` the task-affinity score is the
cosine similarity of their loss gradients w.r.t. the model parameters θ, averaged over a set of
checkpoints 𝒩 (paper §2.1):

    TAS(a, b) = (1/|𝒩|) Σ_{n∈𝒩}  ⟨∇_θ L^a(θ_n), ∇_θ L^b(θ_n)⟩ / (‖∇_θ L^a(θ_n)‖ ‖∇_θ L^b(θ_n)‖).

**The loss of a bin.** A bin ``B = [first, last]`` of width ``w`` has the loss

    L^B(θ) = (1/N) Σ_{i=1}^{N} ℓ(θ; x0_i, t_i^B, ε_i^B),

the mean per-sample loss over the N fixed images ``x0_i`` (the same images for every bin and every
checkpoint), where the timesteps ``t_i^B`` are spread evenly over the bin — the multiset
``{first + ⌊(j + ½)·w/N⌋ : j = 0 … N−1}``, so every timestep of the bin appears ⌊N/w⌋ or ⌈N/w⌉
times — and assigned to the images by a seeded permutation; ``ε_i^B`` is fresh Gaussian noise.
For a one-timestep bin this is exactly the paper's per-timestep gradient. Timesteps, noise and
their assignment are pure functions of ``(seed, first, last)``: the same for every checkpoint
(common random numbers make the checkpoint average less noisy) and independent of the batch
size and of which other bins are computed.

**Memory** (P = number of parameters, n_b = number of bins, fp32):

* ``exact``: the model's own ``.grad`` (4P bytes) plus a store of ``m`` flattened gradients,
  ``min(n_b, m + 1)·4P`` bytes, with ``m + 1 = ⌊max_gradient_bytes / 4P⌋``. When all n_b fit
  (``m ≥ n_b``) each bin's gradient is computed once; otherwise the Gram matrix is streamed block
  by block, recomputing later bins' gradients (``n_b + Σ_blocks (bins after the block)`` ≈
  ``n_b + n_b²/(2m)`` gradient evaluations). Never T×P.
* ``sketch``: ``.grad`` (4P) + the count-sketch hash table (4P, int32) + ``n_b·d`` float64
  sketches. Every bin's gradient is computed once and projected to d dimensions in O(P).

The official script keeps every full gradient (T×P floats: about 132 GB for DiT-S/2).

**How much of a matrix is the measurement's** (``split_half=True``). With N images the matrix
is an estimate: another draw of images, timesteps and noise gives another matrix (two draws of
one CIFAR-10 model at N = 1,000 and 100 bins agreed at r = 0.71 over their off-diagonal entries,
docs/reproduction-log.md, slice 8). The split-half estimate measures this from one run: each bin's
gradient is also accumulated over the first ⌊N/2⌋ images and the rest separately (the same
samples: the full gradient is their sum, so the matrix itself does not change), the two half
matrices' off-diagonal entries are correlated (r_half), and the Spearman–Brown formula
2·r_half/(1 + r_half) estimates the reliability of the matrix of all N images — the expected
correlation with an independent draw of the same size. It costs no extra forward or backward
pass; ``exact`` mode stores two vectors per bin instead of one (half as many bins per block).
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from .._io import atomic_target, atomic_write_text
from ..clustering import TaskClusters
from ..schedule import NoiseSchedule
from .sketch import CountSketch, derive_seed

__all__ = [
    "AFFINITY_MODES",
    "DEFAULT_SKETCH_DIM",
    "LossFn",
    "TaskAffinity",
    "TimestepBins",
    "affinity_metadata_path",
    "epsilon_mse_loss",
    "is_affinity_json",
    "loss_fn_from_objective",
    "split_half_reliability",
    "task_affinity",
]

#: ``exact``: full gradients (bounded memory, streamed Gram); ``sketch``: count sketch to d dims;
#: ``auto``: exact when every bin's gradient fits ``max_gradient_bytes``, else sketch.
AFFINITY_MODES = ("exact", "sketch", "auto")

#: Default sketch dimension. The cosine error is about (1 − cos²)/√d per pair; at d = 65536 the
#: largest error over all pairs stays below 0.01 on the models measured in docs/analysis.md, and
#: the sketches cost only n_b·d·8 bytes (5 MB for 10 bins).
DEFAULT_SKETCH_DIM = 65536

_NOISE_CHUNK = 64  # images per seeded noise stream: noise is independent of the batch size
_TAG_T, _TAG_NOISE = 0x7A, 0x0E


class LossFn(Protocol):
    """``loss_fn(model, x0, t, noise[, class_labels=…]) -> per-sample losses [B]``."""

    def __call__(
        self, model: Any, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, /, **kw: Any
    ) -> torch.Tensor: ...


# ============================================================================ bins
@dataclass(frozen=True)
class TimestepBins:
    """Groups of timesteps whose pooled gradient is one "task" for the affinity matrix.

    ``groups`` are ``(first, last)`` inclusive, 0-indexed, sorted and disjoint; they need not
    cover ``0 … T−1`` (e.g. a few single timesteps). ``uniform(T, n)`` puts t in bin ⌊t·n/T⌋,
    the mapping the ``affinity`` clustering cost uses for a binned matrix.
    """

    groups: tuple[tuple[int, int], ...]
    num_timesteps: int
    kind: str = "custom"

    def __post_init__(self) -> None:
        g = tuple((int(a), int(b)) for a, b in self.groups)
        T = int(self.num_timesteps)
        if not g:
            raise ValueError("need at least one timestep bin")
        for a, b in g:
            if not 0 <= a <= b < T:
                raise ValueError(f"bin {(a, b)} is not inside [0, {T - 1}] or is empty")
        for (_, b), (c, _) in zip(g, g[1:]):
            if c <= b:
                raise ValueError(f"bins must be sorted and disjoint; got {g}")
        object.__setattr__(self, "groups", g)
        object.__setattr__(self, "num_timesteps", T)

    @classmethod
    def uniform(cls, num_timesteps: int, num_bins: int) -> TimestepBins:
        """n bins; t belongs to bin ⌊t·n/T⌋, i.e. bin b = [⌈bT/n⌉, ⌈(b+1)T/n⌉ − 1]."""
        T, n = int(num_timesteps), int(num_bins)
        if n < 1 or n > T:
            raise ValueError(f"the number of bins must be in [1, T={T}], got {n}")
        starts = [-((-b * T) // n) for b in range(n + 1)]
        return cls(tuple((starts[b], starts[b + 1] - 1) for b in range(n)), T, "uniform")

    @classmethod
    def from_clusters(cls, clusters: TaskClusters) -> TimestepBins:
        return cls(clusters.intervals, clusters.num_timesteps, "clusters")

    @classmethod
    def singletons(cls, timesteps: Iterable[int], num_timesteps: int) -> TimestepBins:
        ts = sorted({int(t) for t in timesteps})
        return cls(tuple((t, t) for t in ts), num_timesteps, "timesteps")

    @classmethod
    def coerce(cls, obj: Any, num_timesteps: int | None = None) -> TimestepBins:
        """From bins, clusters, a number of uniform bins (needs T) or a list of timesteps."""
        if isinstance(obj, TimestepBins):
            if num_timesteps is not None and obj.num_timesteps != num_timesteps:
                raise ValueError(f"bins are for T={obj.num_timesteps}, not T={num_timesteps}")
            return obj
        if isinstance(obj, TaskClusters):
            return cls.from_clusters(obj)
        T = 1000 if num_timesteps is None else int(num_timesteps)
        if isinstance(obj, (int, np.integer)) and not isinstance(obj, bool):
            return cls.uniform(T, int(obj))
        if isinstance(obj, (Sequence, np.ndarray, torch.Tensor)) and not isinstance(obj, str):
            return cls.singletons([int(t) for t in obj], T)
        raise TypeError(
            "timesteps_or_bins must be a number of bins, a list of timesteps, TaskClusters or "
            f"TimestepBins, not {type(obj).__name__}"
        )

    # ---------------------------------------------------------------- views
    def __len__(self) -> int:
        return len(self.groups)

    @property
    def firsts(self) -> np.ndarray:
        return np.array([a for a, _ in self.groups], dtype=np.int64)

    @property
    def lasts(self) -> np.ndarray:
        return np.array([b for _, b in self.groups], dtype=np.int64)

    @property
    def widths(self) -> np.ndarray:
        return self.lasts - self.firsts + 1

    @property
    def centres(self) -> np.ndarray:
        """Mean timestep of each bin (float)."""
        return (self.firsts + self.lasts) / 2.0

    @property
    def covers_all(self) -> bool:
        return (
            self.groups[0][0] == 0
            and self.groups[-1][1] == self.num_timesteps - 1
            and all(c == b + 1 for (_, b), (c, _) in zip(self.groups, self.groups[1:]))
        )

    @property
    def is_uniform(self) -> bool:
        """True when bin b is exactly {t: ⌊t·n/T⌋ = b} (what the clustering expects of A.npy)."""
        n = len(self)
        return (
            n <= self.num_timesteps
            and self.groups == TimestepBins.uniform(self.num_timesteps, n).groups
        )

    def logsnr_centres(self, schedule: NoiseSchedule) -> np.ndarray:
        """Mean log-SNR λ(t) over each bin's timesteps."""
        lam = self._logsnr(schedule)
        return np.array([lam[a : b + 1].mean() for a, b in self.groups])

    def logsnr_ranges(self, schedule: NoiseSchedule) -> np.ndarray:
        """``[n, 2]``: λ at each bin's last and first timestep (λ decreases with t)."""
        lam = self._logsnr(schedule)
        return np.array([[lam[b], lam[a]] for a, b in self.groups])

    def _logsnr(self, schedule: NoiseSchedule) -> np.ndarray:
        if schedule.num_timesteps != self.num_timesteps:
            raise ValueError(
                f"schedule has T={schedule.num_timesteps} but the bins are for T={self.num_timesteps}"
            )
        lam = schedule.logsnr
        if not np.all(np.isfinite(lam)):
            raise ValueError("the schedule has an infinite log-SNR (ᾱ_t = 1); drop that timestep")
        return lam

    def bin_of(self, t: np.ndarray) -> np.ndarray:
        """Bin index of each timestep, −1 for timesteps in no bin."""
        t = np.asarray(t, dtype=np.int64)
        i = np.searchsorted(self.lasts, t, side="left")
        ok = (i < len(self)) & (t >= self.firsts[np.minimum(i, len(self) - 1)])
        return np.where(ok, i, -1)

    def sample_timesteps(self, index: int, n: int, seed: int) -> torch.Tensor:
        """The N timesteps of bin ``index``: spread evenly over the bin, seeded assignment."""
        a, b = self.groups[index]
        w = b - a + 1
        strat = a + torch.div(
            (2 * torch.arange(n, dtype=torch.int64) + 1) * w, 2 * n, rounding_mode="floor"
        )
        g = torch.Generator().manual_seed(derive_seed(seed, _TAG_T, a, b, n))
        return strat[torch.randperm(n, generator=g)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "groups": [list(g) for g in self.groups],
            "num_timesteps": self.num_timesteps,
            "kind": self.kind,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TimestepBins:
        return cls(
            tuple(tuple(g) for g in d["groups"]), int(d["num_timesteps"]), d.get("kind", "custom")
        )


# ============================================================================ loss functions
def loss_fn_from_objective(objective: Any) -> Callable[..., torch.Tensor]:
    """Adapt a :class:`antdiff.objective.DiffusionObjective` (or anything with ``q_sample`` and
    ``per_sample_loss``) to the ``loss_fn(model, x0, t, noise)`` of :func:`task_affinity`. The
    model is called as ``model(x_t, t, class_labels)`` (the :class:`Denoiser` signature)."""

    def loss_fn(
        model: Any,
        x0: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor,
        class_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x_t = objective.q_sample(x0, t, noise)
        out = model(x_t, t, class_labels) if class_labels is not None else model(x_t, t)
        out = getattr(out, "sample", out)  # a raw diffusers model returns an output object
        return objective.per_sample_loss(out, x0, x_t, t, noise)

    return loss_fn


def epsilon_mse_loss(schedule: NoiseSchedule | str) -> Callable[..., torch.Tensor]:
    """Plain L_simple for any ``model(x_t, t) -> ε̂``: ``‖ε − ε̂(√ᾱ_t x0 + √(1−ᾱ_t) ε, t)‖²``
    averaged over pixels (for models used outside the antdiff trainer)."""
    from ..objective import DiffusionObjective

    return loss_fn_from_objective(DiffusionObjective(NoiseSchedule.coerce(schedule)))


# ============================================================================ result
@dataclass
class TaskAffinity:
    """The affinity matrix and how it was made.

    ``matrix[a, b]`` is the checkpoint-averaged cosine of bins a and b (float64, symmetric, 1 on
    the diagonal); ``per_checkpoint`` has one matrix per checkpoint; ``grad_norms[c, b]`` is
    ‖∇L^b‖ at checkpoint c (exact, or its sketch estimate).
    """

    matrix: np.ndarray
    per_checkpoint: np.ndarray
    grad_norms: np.ndarray
    bins: TimestepBins
    mode: str
    sketch_dim: int | None
    num_images: int
    seed: int
    meta: dict[str, Any] = field(default_factory=dict)
    #: ``[2, n_b, n_b]``: the checkpoint-averaged matrices of the two image halves
    #: (``split_half=True``; ``meta["split_half"]`` holds their agreement), else None.
    halves: np.ndarray | None = None

    @property
    def num_checkpoints(self) -> int:
        return int(self.per_checkpoint.shape[0])

    def expand(self) -> np.ndarray:
        """The T×T matrix (t, t') ↦ matrix[bin(t), bin(t')]; needs bins covering 0 … T−1."""
        if not self.bins.covers_all:
            raise ValueError("these bins do not cover every timestep; a T×T matrix is undefined")
        idx = self.bins.bin_of(np.arange(self.bins.num_timesteps))
        return self.matrix[np.ix_(idx, idx)]

    def clustering_matrix(self) -> np.ndarray:
        """The matrix to give ``cluster_timesteps(cost="affinity")``: bins×bins for uniform bins
        (the clustering maps t → ⌊t·n/T⌋ itself), T×T otherwise."""
        return self.matrix if self.bins.is_uniform else self.expand()

    def distance_pairs(self, schedule: NoiseSchedule | None = None) -> dict[str, np.ndarray]:
        """Off-diagonal pairs a < b: their affinity, |Δt| of bin centres and |Δλ| of mean λ."""
        n = len(self.bins)
        ia, ib = np.triu_indices(n, k=1)
        c = self.bins.centres
        out = {"a": ia, "b": ib, "affinity": self.matrix[ia, ib], "dt": np.abs(c[ia] - c[ib])}
        if schedule is not None:
            lam = self.bins.logsnr_centres(schedule)
            out["dlogsnr"] = np.abs(lam[ia] - lam[ib])
        return out

    def distance_correlation(self, schedule: NoiseSchedule | None = None) -> dict[str, Any]:
        """Spearman's ρ of affinity against |Δt| (and |Δlog-SNR| with a schedule) over all pairs
        of distinct bins. O1 ("affinity falls as the noise-level gap grows") holds when ρ is
        clearly negative."""
        from scipy.stats import spearmanr

        pairs = self.distance_pairs(schedule)
        res: dict[str, Any] = {"num_pairs": int(pairs["affinity"].size)}
        for key, name in (("dt", "timestep"), ("dlogsnr", "logsnr")):
            if key not in pairs:
                continue
            if (
                pairs["affinity"].size < 3
                or np.ptp(pairs[key]) == 0
                or np.ptp(pairs["affinity"]) == 0
            ):
                res[name] = {"spearman": None, "p_value": None}
                continue
            r = spearmanr(pairs["affinity"], pairs[key])
            res[name] = {"spearman": float(r.statistic), "p_value": float(r.pvalue)}
        return res

    @classmethod
    def pooled(cls, results: Sequence[TaskAffinity], sources: Sequence[str] = ()) -> TaskAffinity:
        """One affinity over the checkpoints of several results: TAS(a, b) averaged over the
        union 𝒩 = 𝒩_1 ∪ 𝒩_2 ∪ … (each checkpoint counts once), exactly what one ``task_affinity``
        call over all those checkpoints gives, since every checkpoint's matrix depends only on
        the bins, images, seed and mode. E.g. the mean of two training seeds' matrices. Refused
        unless those settings agree (another draw of images or noise is not the same TAS)."""
        if len(results) < 2:
            raise ValueError(f"pooling needs at least two affinity results, got {len(results)}")
        first = results[0]
        for i, r in enumerate(results[1:], start=1):
            differ = [
                name
                for name, a, b in (
                    ("bins", r.bins, first.bins),
                    ("mode", r.mode, first.mode),
                    ("sketch dimension", r.sketch_dim, first.sketch_dim),
                    ("number of images", r.num_images, first.num_images),
                    ("seed", r.seed, first.seed),
                    ("schedule", r.meta.get("schedule"), first.meta.get("schedule")),
                )
                if a != b
            ]
            if differ:
                raise ValueError(
                    f"affinity result {i} differs from result 0 in its {', '.join(differ)}: "
                    "pool only results of one measurement setting, or compute them together "
                    "(`antdiff affinity RUN_A RUN_B ...`)"
                )
        stack = np.concatenate([r.per_checkpoint for r in results])
        meta = {
            key: first.meta[key]
            for key in (
                "schedule",
                "model",
                "bin_loss",
                "weights",
                "objective",
                "train_mode",
                "data",
                "batch_size",
            )  # fmt: skip
            if key in first.meta and all(r.meta.get(key) == first.meta[key] for r in results)
        }
        meta["checkpoints"] = [c for r in results for c in r.meta.get("checkpoints", [])]
        meta["pooled_from"] = list(sources) or [f"result {i}" for i in range(len(results))]
        halves = None
        if all(r.halves is not None for r in results):  # checkpoint-weighted, as the matrix
            w = np.array([r.num_checkpoints for r in results], dtype=np.float64)
            halves = np.tensordot(w / w.sum(), np.stack([r.halves for r in results]), axes=1)
            meta["split_half"] = {
                "images": results[0].meta.get("split_half", {}).get("images"),
                **split_half_reliability(halves[0], halves[1]),
            }
        return cls(
            matrix=stack.mean(axis=0),
            per_checkpoint=stack,
            grad_norms=np.concatenate([np.atleast_2d(r.grad_norms) for r in results]),
            bins=first.bins,
            mode=first.mode,
            sketch_dim=first.sketch_dim,
            num_images=first.num_images,
            seed=first.seed,
            meta=meta,
            halves=halves,
        )

    def mean_at_gaps(self, gaps: Iterable[int] | None = None) -> dict[int, float]:
        """The decay profile: mean affinity of the bin pairs (a, a + g) for each gap g in bins,
        (1/(n_b − g)) Σ_a TAS(a, a + g). O1 says it falls as g grows. Default gaps: 1, 2, 5, 10,
        20, 50 (those below n_b) and n_b − 1, the cleanest bin against the noisiest."""
        n = len(self.bins)
        if gaps is None:
            gaps = sorted(
                {g for g in (1, 2, 5, 10, 20, 50) if g < n} | ({n - 1} if n > 1 else set())
            )
        out = {}
        for g in gaps:
            if not 0 < g < n:
                raise ValueError(
                    f"a gap of {g} bins does not exist among {n} bins (use 1 … {n - 1})"
                )
            out[int(g)] = float(np.diagonal(self.matrix, offset=g).mean())
        return out

    def share_below(self, thresholds: Iterable[float] = (0.0, -0.2, -0.3)) -> dict[float, float]:
        """Fraction of the pairs of distinct bins whose affinity is below each threshold: the
        stronger form of O1 (distant tasks *conflict*, not only ignore each other)."""
        aff = self.matrix[np.triu_indices(len(self.bins), k=1)]
        if aff.size == 0:
            raise ValueError("one bin has no pairs of distinct bins")
        return {float(c): float((aff < c).mean()) for c in thresholds}

    def block_mean(self, rows: tuple[int, int], cols: tuple[int, int]) -> float:
        """Mean affinity between the bins lying wholly in timesteps [rows[0], rows[1]) and those
        lying wholly in [cols[0], cols[1]) (e.g. the cleanest tasks against the noisy half)."""

        def inside(lo: int, hi: int) -> np.ndarray:
            idx = np.flatnonzero((self.bins.firsts >= lo) & (self.bins.lasts < hi))
            if idx.size == 0:
                raise ValueError(f"no bin lies wholly in timesteps [{lo}, {hi})")
            return idx

        a, b = inside(*rows), inside(*cols)
        if np.intersect1d(a, b).size:
            raise ValueError(f"timestep ranges {rows} and {cols} overlap; give disjoint ranges")
        return float(self.matrix[np.ix_(a, b)].mean())

    # ---------------------------------------------------------------- files
    def to_metadata(self) -> dict[str, Any]:
        return {
            "format": "antdiff.task_affinity/1",
            "bins": self.bins.to_dict(),
            "mode": self.mode,
            "sketch_dim": self.sketch_dim,
            "num_images": self.num_images,
            "seed": self.seed,
            "num_checkpoints": self.num_checkpoints,
            "grad_norms": self.grad_norms.tolist(),
            **self.meta,
        }

    def save(self, out_dir: str | Path, name: str = "affinity") -> dict[str, Path]:
        """Write ``{name}.npy`` (bins×bins, feeds ``antdiff cluster --cost affinity``), the
        per-checkpoint stack, ``{name}_full.npy`` (T×T, only for non-uniform covering bins) and
        ``{name}.json`` (metadata)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {
            "matrix": out / f"{name}.npy",
            "per_checkpoint": out / f"{name}_per_checkpoint.npy",
        }
        # each file atomically, the metadata last: a reader (load) never sees a half-written
        # matrix, and an interrupted save leaves no metadata pointing at a missing one
        arrays = [("matrix", self.matrix), ("per_checkpoint", self.per_checkpoint)]
        if self.halves is not None:
            paths["halves"] = out / f"{name}_halves.npy"
            arrays.append(("halves", self.halves))
        for key, array in arrays:
            with atomic_target(paths[key]) as f:
                np.save(f, array)
        meta = self.to_metadata()
        meta["clustering_matrix"] = paths["matrix"].name
        if not self.bins.is_uniform and self.bins.covers_all:
            paths["full"] = out / f"{name}_full.npy"
            with atomic_target(paths["full"]) as f:
                np.save(f, self.expand())
            meta["clustering_matrix"] = paths["full"].name
        paths["metadata"] = out / f"{name}.json"
        atomic_write_text(
            paths["metadata"], json.dumps(meta, indent=2, default=_json_default) + "\n"
        )
        return paths

    @classmethod
    def load(cls, path: str | Path) -> TaskAffinity:
        """From an output directory, its ``.json`` or its ``.npy``."""
        p = Path(path)
        if p.is_dir():
            cands = sorted(p.glob("*.json"))
            cands = [c for c in cands if is_affinity_json(c)]
            if not cands:
                raise ValueError(f"no task-affinity metadata (.json) in {str(p)!r}")
            p = cands[0]
        if p.suffix == ".npy":
            p = p.with_suffix(".json")
        if not p.exists():
            raise ValueError(f"task-affinity metadata {str(p)!r} does not exist")
        meta = json.loads(p.read_text())
        if meta.get("format") != "antdiff.task_affinity/1":
            raise ValueError(f"file {str(p)!r} is not an antdiff task-affinity file")
        stem = p.with_suffix("")
        matrix = np.load(f"{stem}.npy")
        per = (
            np.load(f"{stem}_per_checkpoint.npy")
            if Path(f"{stem}_per_checkpoint.npy").exists()
            else matrix[None]
        )
        keys = {
            "format",
            "bins",
            "mode",
            "sketch_dim",
            "num_images",
            "seed",
            "num_checkpoints",
            "grad_norms",
            "clustering_matrix",
        }
        return cls(
            matrix=matrix,
            per_checkpoint=per,
            grad_norms=np.asarray(meta.get("grad_norms", []), dtype=np.float64),
            bins=TimestepBins.from_dict(meta["bins"]),
            mode=meta["mode"],
            sketch_dim=meta.get("sketch_dim"),
            num_images=int(meta["num_images"]),
            seed=int(meta["seed"]),
            meta={k: v for k, v in meta.items() if k not in keys},
            halves=np.load(f"{stem}_halves.npy") if Path(f"{stem}_halves.npy").exists() else None,
        )


def split_half_reliability(half_a: np.ndarray, half_b: np.ndarray) -> dict[str, float | None]:
    """Agreement of two half-sample affinity matrices: Pearson's r over their off-diagonal
    entries (a < b, both finite) and the Spearman–Brown estimate 2r/(1 + r) of the reliability
    of the matrix over all images (its expected correlation with an independent draw of as many
    images). None where fewer than three pairs or no spread."""
    n = half_a.shape[0]
    ia, ib = np.triu_indices(n, k=1)
    x, y = half_a[ia, ib], half_b[ia, ib]
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return {"r": None, "spearman_brown": None}
    r = float(np.corrcoef(x, y)[0, 1])
    return {"r": r, "spearman_brown": 2 * r / (1 + r) if r > -1 else None}


def affinity_metadata_path(path: str | Path) -> Path | None:
    """The ``affinity.json`` of an ``antdiff affinity`` output given as its directory, its
    ``.json`` or its ``.npy``; None when ``path`` is none of these (e.g. a run directory)."""
    p = Path(path)
    if p.is_dir():
        return next((c for c in sorted(p.glob("*.json")) if is_affinity_json(c)), None)
    if p.suffix == ".npy":
        p = p.with_suffix(".json")
    return p if p.suffix == ".json" and p.is_file() and is_affinity_json(p) else None


def is_affinity_json(p: str | Path) -> bool:
    """Whether ``p`` is the metadata file of an ``antdiff affinity`` output (its ``format`` is
    ``antdiff.task_affinity/1``); False for any other file, unreadable or not JSON."""
    try:
        p = Path(p)
        return json.loads(p.read_text()).get("format") == "antdiff.task_affinity/1"
    except (OSError, ValueError, AttributeError):
        return False


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# ============================================================================ computation
class _BinGradients:
    """Computes the gradient of one bin's loss into the parameters' ``.grad`` (fp32 sum)."""

    def __init__(
        self,
        model: nn.Module,
        params: list[nn.Parameter],
        loss_fn: Callable[..., torch.Tensor],
        images: torch.Tensor,
        labels: torch.Tensor | None,
        bins: TimestepBins,
        batch_size: int,
        seed: int,
        device: torch.device,
    ) -> None:
        self.model, self.params, self.loss_fn = model, params, loss_fn
        self.images, self.labels, self.bins = images, labels, bins
        self.batch_size, self.seed, self.device = batch_size, seed, device
        self.n = int(images.shape[0])
        self.evaluations = 0
        self.received = torch.zeros(len(params), dtype=torch.bool)
        #: with a split (``split_at``): the first ``split_at`` images' part of the last bin's
        #: gradient, a copy of ``.grad`` taken when they are done
        self.split_at: int | None = None
        self.first_part: list[torch.Tensor | None] = []

    def _noise(self, index: int, start: int, stop: int) -> torch.Tensor:
        a, b = self.bins.groups[index]
        shape = tuple(self.images.shape[1:])
        parts = []
        for c in range(start // _NOISE_CHUNK, (stop - 1) // _NOISE_CHUNK + 1):
            c0 = c * _NOISE_CHUNK
            m = min(_NOISE_CHUNK, self.n - c0)
            g = torch.Generator().manual_seed(derive_seed(self.seed, _TAG_NOISE, a, b, c))
            chunk = torch.randn((m, *shape), generator=g)
            lo, hi = max(start, c0) - c0, min(stop, c0 + m) - c0
            parts.append(chunk[lo:hi])
        return torch.cat(parts)

    def __call__(self, index: int) -> list[torch.Tensor | None]:
        for p in self.params:
            p.grad = None
        t_all = self.bins.sample_timesteps(index, self.n, self.seed)
        cuts = [0, self.n] if self.split_at is None else [0, self.split_at, self.n]
        spans = [
            (s, min(hi, s + self.batch_size))
            for lo, hi in zip(cuts[:-1], cuts[1:])
            for s in range(lo, hi, self.batch_size)
        ]
        for s, e in spans:
            if s == self.split_at:  # batches never straddle the split
                self.first_part = [
                    None if p.grad is None else p.grad.detach().clone() for p in self.params
                ]
            x0 = self.images[s:e].to(self.device, non_blocking=True)
            t = t_all[s:e].to(self.device)
            noise = self._noise(index, s, e).to(self.device, dtype=x0.dtype)
            kw = {} if self.labels is None else {"class_labels": self.labels[s:e].to(self.device)}
            losses = self.loss_fn(self.model, x0, t, noise, **kw)
            if not isinstance(losses, torch.Tensor) or losses.shape != (e - s,):
                got = getattr(losses, "shape", type(losses).__name__)
                raise ValueError(
                    f"loss_fn must return per-sample losses of shape [{e - s}], got {got}; "
                    "reduce over every dimension but the batch"
                )
            if not torch.isfinite(losses).all():
                raise ValueError(
                    f"non-finite loss in bin {self.bins.groups[index]}; check the model/checkpoint"
                )
            # d/dθ of the bin's mean loss, accumulated over batches in fp32 .grad.
            (losses.float().sum() / self.n).backward()
        self.evaluations += 1
        grads = [p.grad for p in self.params]
        for k, g in enumerate(grads):
            if g is not None:
                self.received[k] = True
        return grads


def _flatten_into(
    grads: Sequence[torch.Tensor | None], out: torch.Tensor, offsets: Sequence[int]
) -> None:
    for g, a, b in zip(grads, offsets[:-1], offsets[1:]):
        if g is None:
            out[a:b].zero_()
        else:
            out[a:b].copy_(g.detach().reshape(-1))


def _dot64(rows: torch.Tensor, v: torch.Tensor, chunk: int = 1 << 22) -> torch.Tensor:
    """``rows @ v`` accumulated in float64 over column chunks (immune to TF32 matmul settings and
    to fp32 round-off over millions of terms)."""
    acc = torch.zeros(rows.shape[0], dtype=torch.float64, device=rows.device)
    for a in range(0, v.numel(), chunk):
        acc += rows[:, a : a + chunk].double() @ v[a : a + chunk].double()
    return acc


def _bin_parts(grad_of: _BinGradients, j: int, out: torch.Tensor, offsets: Sequence[int]) -> None:
    """Bin j's gradient into ``out`` (``[parts, P]``): one row, or with a split the first
    images' part and the rest's (their sum is the gradient)."""
    grads = grad_of(j)
    _flatten_into(grads, out[-1], offsets)
    if out.shape[0] == 2:
        _flatten_into(grad_of.first_part, out[0], offsets)
        out[1] -= out[0]


def _exact_gram(
    grad_of: _BinGradients,
    nb: int,
    offsets: Sequence[int],
    capacity_rows: int,
    storage: torch.device,
    progress: Callable[[str], None],
    parts: int = 1,
) -> np.ndarray:
    """``D[u, v, a, b]`` = ⟨part u of bin a's gradient, part v of bin b's⟩ (float64), for one
    part (the gradient) or two (a split's halves; the gradient's Gram is the sum over u, v).
    ``capacity_rows`` stored vectors: blocks of ``m`` bins, later bins streamed."""
    P = offsets[-1]
    D = np.zeros((parts, parts, nb, nb), dtype=np.float64)
    bins_fit = capacity_rows // parts
    if bins_fit >= nb:
        m, temp = nb, None
    else:
        m = bins_fit - 1
        temp = torch.empty((parts, P), dtype=torch.float32, device=storage)
    store = torch.empty((parts, m, P), dtype=torch.float32, device=storage)

    def dots(rows: slice, new: torch.Tensor, j: int, first: int) -> None:
        for u in range(parts):
            for v in range(parts):
                d = _dot64(store[u, rows], new[v]).cpu().numpy()
                D[u, v, first : first + d.size, j] = d
                D[v, u, j, first : first + d.size] = d

    for b0 in range(0, nb, m):
        block = list(range(b0, min(nb, b0 + m)))
        for r, j in enumerate(block):
            _bin_parts(grad_of, j, store[:, r], offsets)
            dots(slice(0, r + 1), store[:, r], j, b0)
            progress(f"bin {j + 1}/{nb}")
        for j in range(block[-1] + 1, nb):
            assert temp is not None
            _bin_parts(grad_of, j, temp, offsets)
            dots(slice(0, len(block)), temp, j, b0)
            progress(f"block {b0 // m + 1}: streamed bin {j + 1}/{nb}")
    return D


def _cosines(G: np.ndarray, bins: TimestepBins) -> np.ndarray:
    norms = np.sqrt(np.clip(np.diag(G), 0.0, None))
    zero = norms <= 0
    if zero.any():
        bad = [bins.groups[i] for i in np.flatnonzero(zero)]
        warnings.warn(
            f"zero gradient for bins {bad}: their affinity is undefined (NaN)",
            RuntimeWarning,
            stacklevel=3,
        )
    with np.errstate(divide="ignore", invalid="ignore"):
        C = G / np.outer(norms, norms)
    C = np.clip(C, -1.0, 1.0)
    C[zero, :] = np.nan
    C[:, zero] = np.nan
    np.fill_diagonal(C, np.where(zero, np.nan, 1.0))
    return C


def _iter_models(model: Any) -> Iterator[nn.Module]:
    if isinstance(model, nn.Module):
        yield model
        return
    if isinstance(model, Iterable):
        for m in model:
            if not isinstance(m, nn.Module):
                raise TypeError(f"checkpoints must be nn.Modules, got {type(m).__name__}")
            yield m
        return
    raise TypeError(
        f"model must be an nn.Module or an iterable of them, not {type(model).__name__}"
    )


def task_affinity(
    model: nn.Module | Iterable[nn.Module],
    loss_fn: Callable[..., torch.Tensor],
    images: torch.Tensor,
    timesteps_or_bins: int | Sequence[int] | TaskClusters | TimestepBins = 10,
    *,
    num_timesteps: int | None = None,
    mode: str = "exact",
    sketch_dim: int = DEFAULT_SKETCH_DIM,
    batch_size: int = 64,
    seed: int = 0,
    labels: torch.Tensor | None = None,
    parameters: Callable[[str, nn.Parameter], bool] | None = None,
    max_gradient_bytes: int = 4 << 30,
    storage_device: torch.device | str | None = None,
    train_mode: bool = False,
    checkpoint_names: Sequence[str] | None = None,
    schedule: NoiseSchedule | None = None,
    progress: Callable[[str], None] | None = None,
    split_half: bool = False,
) -> TaskAffinity:
    """Task-affinity matrix of the bins' loss gradients, averaged over checkpoints (paper §2.1).

    Args:
        model: one ``nn.Module`` or an iterable of them (the checkpoints; a generator loads one
            at a time). Each is evaluated on the device its parameters are on.
        loss_fn: ``loss_fn(model, x0, t, noise[, class_labels=…]) -> [B]`` per-sample losses
            (e.g. :func:`loss_fn_from_objective`).
        images: ``[N, …]`` fixed training images in the model's input space (latents for a
            latent model), the same for every bin and checkpoint.
        timesteps_or_bins: number of uniform bins over ``num_timesteps`` (default 1000, or the
            schedule's T), a list of single timesteps, ``TaskClusters`` or ``TimestepBins``.
        mode: ``exact`` | ``sketch`` | ``auto`` (see the module docstring for memory).
        sketch_dim: d of the count sketch (``sketch`` mode).
        batch_size: samples per forward/backward.
        seed: seeds the timestep assignment, the noise and the sketch.
        labels: ``[N]`` class labels passed as ``class_labels`` to ``loss_fn``.
        parameters: ``filter(name, param) -> bool`` restricting θ (default: every parameter
            with ``requires_grad``; parameters that never receive a gradient are reported).
        max_gradient_bytes: budget for stored fp32 gradients in ``exact`` mode.
        storage_device: where gradients/sketches are kept (default: the model's device).
        train_mode: run the model in ``train()`` mode (dropout, label dropout) as the official
            script does; the default ``eval()`` gives the gradient of the deterministic model.
        split_half: also the matrices of the first ⌊N/2⌋ images and of the rest
            (``TaskAffinity.halves``) and their agreement, ``meta["split_half"]`` (module
            docstring); the matrix itself is unchanged. Needs N ≥ 2.
    """
    if mode not in AFFINITY_MODES:
        raise ValueError(
            f"unknown affinity mode {mode!r}; choose one of {', '.join(AFFINITY_MODES)}"
        )
    if not isinstance(images, torch.Tensor) or images.ndim < 2 or images.shape[0] < 1:
        raise ValueError("images must be a tensor [N, ...] with N >= 1 (the fixed training images)")
    if not images.is_floating_point():
        raise ValueError(
            f"images must be floating point in the model's input range, got {images.dtype}"
        )
    if labels is not None and (labels.ndim != 1 or labels.shape[0] != images.shape[0]):
        raise ValueError(f"labels must have shape [{images.shape[0]}], got {tuple(labels.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if split_half and images.shape[0] < 2:
        raise ValueError("split_half needs at least 2 images (one per half)")
    parts = 2 if split_half else 1
    if mode != "exact" and sketch_dim < 1:
        raise ValueError(f"sketch_dim must be >= 1, got {sketch_dim}")
    if num_timesteps is None and schedule is not None:
        num_timesteps = schedule.num_timesteps
    bins = TimestepBins.coerce(timesteps_or_bins, num_timesteps)
    nb = len(bins)
    say = progress or (lambda _msg: None)

    t_start = time.perf_counter()
    per_ckpt: list[np.ndarray] = []
    half_ckpt: list[np.ndarray] = []  # [2, n_b, n_b] per checkpoint (split_half)
    norms: list[np.ndarray] = []
    info: dict[str, Any] = {}
    resolved_mode = mode
    evaluations = 0
    peak_cuda = 0
    for c, m in enumerate(_iter_models(model)):
        named = [(n, p) for n, p in m.named_parameters() if p.requires_grad]
        if parameters is not None:
            named = [(n, p) for n, p in named if parameters(n, p)]
        if not named:
            raise ValueError("no trainable parameters selected for the task-affinity gradients")
        params = [p for _, p in named]
        device = params[0].device
        storage = torch.device(storage_device) if storage_device is not None else device
        numels = [p.numel() for p in params]
        offsets = np.concatenate([[0], np.cumsum(numels)]).tolist()
        P = int(offsets[-1])
        capacity = max_gradient_bytes // (4 * P)
        if c == 0:
            if mode == "auto":
                resolved_mode = "exact" if capacity >= nb else "sketch"
            if resolved_mode == "exact" and capacity < 2 * parts:
                need = 2 * parts
                raise ValueError(
                    f"exact task affinity needs room for at least {need} gradients ({need}·4·P = "
                    f"{need * 4 * P / 2**20:.0f} MiB for P={P:,} parameters"
                    f"{', two halves per bin with split_half' if split_half else ''}) but "
                    f"max_gradient_bytes is {max_gradient_bytes / 2**20:.0f} MiB; "
                    "raise it or use the sketch mode"
                )
            info = {
                "model": {
                    "class": type(m).__name__,
                    "num_parameters": P,
                    "num_tensors": len(params),
                },
                "memory": _memory_statement(resolved_mode, P, nb, capacity, sketch_dim, parts),
            }
            first_names = [n for n, _ in named]
        elif [n for n, _ in named] != first_names:
            raise ValueError(f"checkpoint {c} has different parameters from checkpoint 0")
        was_training = m.training
        m.train(train_mode)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        grad_of = _BinGradients(m, params, loss_fn, images, labels, bins, batch_size, seed, device)
        if split_half:
            grad_of.split_at = int(images.shape[0]) // 2
        try:
            if resolved_mode == "exact":
                D = _exact_gram(
                    grad_of,
                    nb,
                    offsets,
                    capacity,
                    storage,
                    lambda s, c=c: say(f"checkpoint {c + 1}: {s}"),
                    parts=parts,
                )
                halves_gram = [D[0, 0], D[1, 1]] if split_half else []
                G = D.sum(axis=(0, 1))
            else:
                sketcher = CountSketch(numels, sketch_dim, seed, storage)
                S = torch.empty((parts, nb, sketch_dim), dtype=torch.float64, device=storage)
                for j in range(nb):
                    S[-1, j] = sketcher(grad_of(j))
                    if split_half:  # the sketch is linear: the rest's is the difference
                        S[0, j] = sketcher(grad_of.first_part)
                        S[1, j] -= S[0, j]
                    say(f"checkpoint {c + 1}: bin {j + 1}/{nb}")
                whole = S.sum(dim=0)
                G = (whole @ whole.T).cpu().numpy()
                halves_gram = (
                    [(S[u] @ S[u].T).cpu().numpy() for u in range(parts)] if split_half else []
                )
                del S, whole, sketcher
        finally:
            for p in params:
                p.grad = None
            m.train(was_training)
        if device.type == "cuda":
            peak_cuda = max(peak_cuda, int(torch.cuda.max_memory_allocated(device)))
        missing = [n for (n, _), ok in zip(named, grad_of.received.tolist()) if not ok]
        if missing:
            info.setdefault("parameters_without_gradient", missing[:50])
        evaluations += grad_of.evaluations
        grad_of.first_part = []
        per_ckpt.append(_cosines(G, bins))
        if split_half:
            half_ckpt.append(np.stack([_cosines(H, bins) for H in halves_gram]))
        norms.append(np.sqrt(np.clip(np.diag(G), 0.0, None)))
    if not per_ckpt:
        raise ValueError("no checkpoints were given (the model iterable is empty)")
    stack = np.stack(per_ckpt)
    names = (
        list(checkpoint_names)
        if checkpoint_names is not None
        else [f"checkpoint_{i}" for i in range(len(per_ckpt))]
    )
    if len(names) != len(per_ckpt):
        raise ValueError(f"{len(names)} checkpoint names for {len(per_ckpt)} checkpoints")
    info.update(
        {
            "checkpoints": names,
            "batch_size": batch_size,
            "train_mode": train_mode,
            "gradient_evaluations": evaluations,
            "seconds": round(time.perf_counter() - t_start, 3),
            "peak_cuda_bytes": peak_cuda or None,
            "bin_loss": "mean per-sample loss over the N images, timesteps spread evenly over the bin",
        }
    )
    if schedule is not None:
        info["schedule"] = schedule.to_dict()
    halves = None
    if split_half:
        halves = np.stack(half_ckpt).mean(axis=0)
        n = int(images.shape[0])
        info["split_half"] = {
            "images": [n // 2, n - n // 2],
            **split_half_reliability(halves[0], halves[1]),
        }
    return TaskAffinity(
        matrix=stack.mean(axis=0),
        per_checkpoint=stack,
        grad_norms=np.stack(norms),
        bins=bins,
        mode=resolved_mode,
        sketch_dim=None if resolved_mode == "exact" else int(sketch_dim),
        num_images=int(images.shape[0]),
        seed=int(seed),
        meta=info,
        halves=halves,
    )


_ACTIVATIONS = "the model, and the activations of one forward/backward batch (batch_size samples)"


def _memory_statement(
    mode: str, P: int, nb: int, capacity: int, d: int, parts: int = 1
) -> dict[str, Any]:
    """Bytes held for gradients (``parts`` = 2: split-half, two vectors per bin and a copy of
    ``.grad`` at the split)."""
    grad = 4 * P
    copy = "" if parts == 1 else " + 4P (.grad copied at the split)"
    if mode == "exact":
        fit = capacity // parts  # bins whose vectors fit
        streamed = fit < nb
        m = nb if not streamed else fit - 1
        rows = parts * (nb if not streamed else fit)
        evals = nb + sum(max(0, nb - (b0 + m)) for b0 in range(0, nb, m))
        per_bin = "" if parts == 1 else "2·"
        return {
            "formula": f"4P (.grad){copy} + {per_bin}min(n_b, m+1)·4P (stored fp32 gradients"
            f"{'' if parts == 1 else ', two halves per bin'})",
            "excludes": _ACTIVATIONS,
            "bytes": parts * grad + rows * grad,
            "stored_gradients": rows,
            "streamed": streamed,
            "gradient_evaluations_per_checkpoint": evals,
        }
    return {
        "formula": f"4P (.grad){copy} + 4P (int32 hash table) + {parts}·n_b·d·8 (float64 sketches)",
        "excludes": _ACTIVATIONS,
        "bytes": parts * grad + grad + parts * nb * d * 8,
        "gradient_evaluations_per_checkpoint": nb,
    }


def sketch_error_bound(d: int, cos: float = 0.0) -> float:
    """Approximate standard error of a sketched cosine, (1 − cos²)/√d (Gaussian-projection theory)."""
    return (1.0 - cos * cos) / math.sqrt(d)
