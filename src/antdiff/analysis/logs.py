"""Reading a run's ``metrics.jsonl`` for the MTL-behaviour analysis (the paper's Figure 4):
per-cluster losses, the balancers' weights (UW's ½e^{−s_i}, Nash's α), PCGrad's gradient
conflicts per cluster pair, and evaluation (FID) curves.

The trainer writes one training line every ``train.log_every`` steps (window means of the
losses, the balancer's ``record()`` at the window's last step) and one evaluation line per
evaluation (see :mod:`antdiff.training.monitor`). A conflict frequency computed here is therefore
the fraction of *logged* steps at which a pair of cluster gradients had a negative inner product
— an unbiased sub-sample of all steps. A line cut short by a crash is skipped (and counted).
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..clustering import TaskClusters
from ..sampling import TimestepSampler

__all__ = ["TrainingLog", "adam_step_scale", "read_training_log"]

#: balancer-record keys that hold a k×k matrix whose negative off-diagonal entries are conflicts
_SIGNED_MATRIX_KEYS = ("cosine", "cosines", "cos", "gram", "gramian")
#: keys that hold a k×k 0/1 (or bool) conflict matrix, or a list of conflicting pairs [i, j]
_CONFLICT_KEYS = ("conflicts", "conflict_matrix", "conflict_pairs")


def _num(x: Any) -> float:
    return float("nan") if x is None else float(x)


def _vec(x: Any, k: int) -> np.ndarray:
    out = np.full(k, np.nan)
    if isinstance(x, (list, tuple)):
        for i, v in enumerate(x[:k]):
            out[i] = _num(v)
    return out


def _trailing_nanmean(x: np.ndarray, window: int) -> np.ndarray:
    """Mean over the trailing ``window`` rows (the row itself and the ones before it; the first
    rows average fewer), ignoring NaN; NaN where a window holds no finite value."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    n = x.shape[0]
    valid = np.isfinite(x)
    cs = np.concatenate([np.zeros((1, *x.shape[1:])), np.cumsum(np.where(valid, x, 0.0), axis=0)])
    cv = np.concatenate([np.zeros((1, *x.shape[1:])), np.cumsum(valid, axis=0)])
    lo = np.maximum(np.arange(n) + 1 - window, 0)
    num = cs[np.arange(n) + 1] - cs[lo]
    den = cv[np.arange(n) + 1] - cv[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.maximum(den, 1), np.nan)


@dataclass
class TrainingLog:
    """The numeric series of one run. Arrays have one row per training line; missing values
    are NaN. ``evals`` holds ``(step, eval dict)`` of the evaluation lines."""

    path: Path
    steps: np.ndarray
    loss: np.ndarray
    cluster_losses: np.ndarray
    weights: np.ndarray
    counts: np.ndarray
    lr: np.ndarray
    grad_norm: np.ndarray
    it_per_s: np.ndarray
    peak_mem_gib: np.ndarray  # CUDA peak per log window (NaN where not logged: CPU, older runs)
    balancer: list[dict[str, Any]]
    evals: list[tuple[int, dict[str, Any]]]
    skipped_lines: int = 0
    clusters: TaskClusters | None = None
    config: dict[str, Any] = field(default_factory=dict)
    # mean loss in the run's fixed bins of t (`train.log_loss_bins`), one row per training line;
    # zero columns for runs logged before it existed
    bin_losses: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    # every line with bins says "bin_mean": "uniform_t" (means over t uniform in the bin); older
    # logs hold plain sample means, comparable only where the sampler drew t evenly in the bin
    bin_mean_uniform_t: bool = False
    # the parts of a weighted or hybrid loss per cluster (trainer's LossParts): unweighted ε-MSE
    # and λ·T·L_t, one row per training line; zero columns where not logged (ε-MSE without a
    # weighting, where the loss is the MSE; runs logged before the parts existed)
    cluster_mse: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    cluster_vb: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    # the same parts per fixed bin of t, with bin_losses' weights; zero columns where not logged
    bin_mse: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    bin_vb: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))

    @property
    def k(self) -> int:
        return int(self.cluster_losses.shape[1]) if self.cluster_losses.ndim == 2 else 0

    @property
    def balancer_name(self) -> str | None:
        ant = self.config.get("ant", {}) if isinstance(self.config, dict) else {}
        if ant.get("enabled"):
            return str(ant.get("balancer"))
        return None if not ant else "vanilla"

    @property
    def _diffusion(self) -> dict[str, Any]:
        d = self.config.get("diffusion", {}) if isinstance(self.config, dict) else {}
        return d if isinstance(d, dict) else {}

    @property
    def loss_weighted(self) -> bool:
        """True for a run with a loss weighting w(t) (P2, Min-SNR, ...): its logged losses are
        w(t)·loss, not comparable with another weighting's."""
        return self._diffusion.get("weighting", "none") not in (None, "none")

    @property
    def loss_kind(self) -> str:
        """``"hybrid"`` (learned σ: ε-MSE + λ·T·L_t) or ``"eps"`` (ε-MSE)."""
        return "hybrid" if self._diffusion.get("learned_variance") else "eps"

    def __len__(self) -> int:
        return int(self.steps.size)

    # ---------------------------------------------------------------- fixed bins of t
    def bin_intervals(self) -> list[tuple[int, int]]:
        """The fixed bins of ``bin_losses`` as inclusive intervals of t, ``[j·T/N, (j+1)·T/N − 1]``
        (the trainer's bin of t is ``t·N // T``), T from the run's clusters or config (1000
        when neither says); empty for a run that logged no bins."""
        nb = self.bin_losses.shape[1] if self.bin_losses.ndim == 2 else 0
        T = self._num_timesteps()
        return [(b * T // nb, (b + 1) * T // nb - 1) for b in range(nb)]

    def _num_timesteps(self) -> int:
        """T from the run's clusters or config (1000 when neither says)."""
        if self.clusters is not None:
            return int(self.clusters.num_timesteps)
        diffusion = self.config.get("diffusion", {}) if isinstance(self.config, dict) else {}
        return int(diffusion.get("num_timesteps") or 1000)

    def timestep_probabilities(self) -> np.ndarray | None:
        """p(t), the probability that one training sample is timestep t (``[T]``), from the
        run's config and clusters: 1/T for vanilla training and for ANT's ``uniform`` and
        ``proportional`` sampling, 1/(k·w_c) under ``stratified`` sampling
        (:meth:`antdiff.sampling.TimestepSampler.probabilities`); ``None`` when an ANT run's
        clusters are unknown."""
        ant = self.config.get("ant", {}) if isinstance(self.config, dict) else {}
        if not ant.get("enabled") or ant.get("sampling", "stratified") != "stratified":
            T = self._num_timesteps()
            return np.full(T, 1.0 / T)
        if self.clusters is None:
            return None
        return TimestepSampler(self.clusters, "stratified").probabilities().numpy()

    def uneven_bins(self) -> np.ndarray:
        """Boolean ``[N]``: the bins of ``bin_losses`` that are plain sample means over an uneven
        draw of t (a log from before ``"bin_mean": "uniform_t"`` whose stratified sampler gave
        the bin's timesteps different probabilities: clusters of other widths meet inside it).
        Such a mean leans to the oversampled timesteps (raw-SNR clusters: t ≤ 17 in the first of
        10 bins), so it is not comparable with another run's. All True when p(t) is unknown."""
        intervals = self.bin_intervals()
        if self.bin_mean_uniform_t or not intervals:
            return np.zeros(len(intervals), dtype=bool)
        p = self.timestep_probabilities()
        if p is None:
            return np.ones(len(intervals), dtype=bool)
        return np.array([p[lo : hi + 1].max() > p[lo : hi + 1].min() * (1 + 1e-9)
                         for lo, hi in intervals])  # fmt: skip

    def comparable_bin_losses(self) -> np.ndarray:
        """``bin_losses`` with the :meth:`uneven_bins` set to NaN: every value left is the
        window's mean loss over t uniform in its bin, comparable across runs and clusterings."""
        b = np.array(self.bin_losses, dtype=np.float64, copy=True)
        if b.ndim == 2 and b.shape[1]:
            b[:, self.uneven_bins()] = np.nan
        return b

    def unweighted_bin_losses(self) -> np.ndarray | None:
        """The run's *unweighted* loss per fixed bin of t (ε-MSE, plus λ·T·L_t with learned σ),
        one row per training line, NaN where :meth:`uneven_bins`: ``bin_losses`` itself when the
        run has no loss weighting, else the logged parts ``bin_mse`` (+ ``bin_vb``); ``None``
        for a weighted run that logged no bin parts (its ``bin_losses`` are w(t)·loss, not
        comparable with another weighting's) or a run without bins."""
        if not self.loss_weighted:
            b = self.comparable_bin_losses()
            return b if b.ndim == 2 and b.shape[1] else None
        if self.bin_mse.ndim != 2 or not self.bin_mse.shape[1]:
            return None
        hybrid = self.bin_vb.ndim == 2 and self.bin_vb.shape[1] == self.bin_mse.shape[1]
        b = self.bin_mse + self.bin_vb if hybrid else self.bin_mse.copy()
        b[:, self.uneven_bins()] = np.nan
        return b

    @property
    def bins_are_weighted(self) -> bool:
        """True when :meth:`bin_loss_profile` can only give w(t)·loss: a weighted run (P2,
        Min-SNR) that logged no unweighted parts per bin."""
        return self.loss_weighted and self.unweighted_bin_losses() is None

    def bin_loss_profile(
        self, last: float = 0.1, steps: np.ndarray | None = None
    ) -> np.ndarray | None:
        """Mean loss per fixed bin of t over the last ``last`` fraction of the training lines
        (at least one; with ``steps``, over the lines at those steps instead, e.g. the steps two
        runs share), ignoring empty bins' NaN: the unweighted loss
        (:meth:`unweighted_bin_losses`) where the run logged it, else the logged ``bin_losses``
        (:attr:`bins_are_weighted` says when those are w(t)·loss); NaN for a bin whose logged
        value is a sample mean over an uneven draw of t; ``None`` when the run logged no bins
        (``train.log_loss_bins = 0`` or a run older than the option)."""
        if not 0 < last <= 1:
            raise ValueError(f"last must be in (0, 1], got {last}")
        b = self.unweighted_bin_losses()
        if b is None:
            b = self.comparable_bin_losses()
        if b.ndim != 2 or b.shape[1] == 0 or b.shape[0] == 0:
            return None
        if steps is not None:
            rows = b[np.isin(self.steps, steps)]
            if not rows.shape[0]:
                return None
        else:
            rows = b[-max(1, int(math.ceil(last * b.shape[0]))) :]
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN bin stays NaN
            return np.nanmean(rows, axis=0)

    # ---------------------------------------------------------------- balancer series
    def balancer_series(self, key: str) -> np.ndarray | None:
        """``[n, k]`` of a per-cluster list in the balancer records (NaN where absent), or
        ``None`` if no line has it."""
        if not any(key in b for b in self.balancer):
            return None
        return (
            np.stack([_vec(b.get(key), self.k) for b in self.balancer]) if self.balancer else None
        )

    def uw_weights(self) -> np.ndarray | None:
        """UW's ½e^{−s_i} per cluster over training (from ``uw_weights`` or ``log_vars``)."""
        w = self.balancer_series("uw_weights")
        if w is not None:
            return w
        s = self.balancer_series("log_vars")
        return None if s is None else 0.5 * np.exp(-s)

    @property
    def uw_divides_by_k(self) -> bool:
        """Whether the run's UW used ANT's ``/k`` (``ant.balancer_params.divide_by_k``, default
        true)."""
        ant = self.config.get("ant", {}) if isinstance(self.config, dict) else {}
        return (ant.get("balancer_params") or {}).get("divide_by_k", True) is not False

    def uw_stationary_weights(self, window: int = 5) -> np.ndarray | None:
        """Where UW's weights would sit for the logged cluster losses. UW minimises
        L = Σ_i ½(e^{−s_i}·L_i/k + s_i) over s (§5.4); ∂L/∂s_i = 0 at e^{s_i} = L_i/k, so its
        weight ½e^{−s_i} settles at k/(2·L_i) (1/(2·L_i) with ``divide_by_k: false``): UW is an
        inverse-loss weighting once s has caught up with the losses. ``L_i`` is the mean of the
        last ``window`` log windows (a trailing mean; the first rows average fewer). ``[n, k]``,
        NaN where a loss is missing or not positive; ``None`` unless the run used ``uw``."""
        if self.balancer_name != "uw" or self.k == 0 or not len(self):
            return None
        scale = float(self.k) if self.uw_divides_by_k else 1.0
        loss = np.where(self.cluster_losses > 0, self.cluster_losses, np.nan)
        return scale / (2.0 * _trailing_nanmean(loss, window))

    def nash_alpha(self) -> np.ndarray | None:
        """Nash-MTL's α per cluster over training."""
        return self.balancer_series("alpha")

    def conflicts(self) -> np.ndarray | None:
        """``[n, k, k]``: 1 where the two clusters' gradients conflicted (negative inner
        product) at the logged step, 0 where not, NaN where unknown; ``None`` if the run never
        logged conflicts (only gradient balancers such as PCGrad can)."""
        k = self.k
        if not self.balancer or k < 2:
            return None
        out = np.full((len(self.balancer), k, k), np.nan)
        found = False
        for n, rec in enumerate(self.balancer):
            m = _conflict_matrix(rec, k)
            if m is not None:
                out[n] = m
                found = True
        return out if found else None

    def conflict_frequency(self, window: int | None = None) -> tuple[np.ndarray, np.ndarray] | None:
        """``(steps, freq[n, k, k])``: fraction of logged steps with a conflict, over a trailing
        window of ``window`` lines (default: a tenth of the run, at least 1) — the conflict
        frequency over training."""
        c = self.conflicts()
        if c is None:
            return None
        w = max(1, c.shape[0] // 10) if window is None else int(window)
        return self.steps, _trailing_nanmean(c, w)

    def conflict_vs_distance(
        self, clusters: TaskClusters | None = None
    ) -> dict[str, np.ndarray] | None:
        """For each cluster pair i < j: the distance of their centres (in timesteps) and the
        conflict frequency over the whole run."""
        c = self.conflicts()
        cl = clusters or self.clusters
        if c is None or cl is None:
            return None
        if cl.k != self.k:
            raise ValueError(f"the log has k={self.k} clusters but the clusters have k={cl.k}")
        valid = np.isfinite(c)
        num, den = np.where(valid, c, 0.0).sum(axis=0), valid.sum(axis=0)
        total = np.where(den > 0, num / np.maximum(den, 1), np.nan)
        ia, ib = np.triu_indices(self.k, 1)
        centres = (cl.starts + cl.ends) / 2.0
        return {
            "a": ia,
            "b": ib,
            "distance": np.abs(centres[ia] - centres[ib]),
            "frequency": total[ia, ib],
        }

    # ---------------------------------------------------------------- optimiser
    @property
    def grad_clip(self) -> float | None:
        """The run's gradient-norm clip (``optim.grad_clip``; None when off)."""
        optim = self.config.get("optim", {}) if isinstance(self.config, dict) else {}
        clip = optim.get("grad_clip")
        return float(clip) if clip else None

    def clipped_grad_norm(self) -> np.ndarray:
        """The logged gradient norm (before clipping) capped at :attr:`grad_clip`: the norm of
        the gradient the optimiser was given."""
        clip = self.grad_clip
        return self.grad_norm if clip is None else np.minimum(self.grad_norm, clip)

    def adam_step_scale(self, smooth: int = 1) -> np.ndarray:
        """Adam's step relative to its steady state at each logged step
        (:func:`adam_step_scale` with the run's clip and β₂ = ``optim.betas[1]``, 0.999 when
        not set), averaged over the trailing ``smooth`` log lines: one logged norm is one
        step's, and a single small one reads as a dip of Adam's step that the steps around it
        do not share."""
        optim = self.config.get("optim", {}) if isinstance(self.config, dict) else {}
        betas = optim.get("betas") or (0.9, 0.999)
        scale = adam_step_scale(self.steps, self.grad_norm, self.grad_clip, float(betas[1]))
        return scale if smooth <= 1 else _trailing_nanmean(scale, smooth)

    # ---------------------------------------------------------------- evaluation
    def eval_series(self, metric: str = "fid") -> tuple[np.ndarray, np.ndarray]:
        """Steps and values of one evaluation metric (possibly empty arrays)."""
        pts = [
            (s, e[metric])
            for s, e in self.evals
            if isinstance(e, dict) and e.get(metric) is not None
        ]
        if not pts:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        s, v = zip(*pts)
        return np.asarray(s, dtype=np.int64), np.asarray(v, dtype=np.float64)

    def eval_metrics(self) -> list[str]:
        names: list[str] = []
        for _, e in self.evals:
            for key, v in e.items():
                if (
                    isinstance(v, (int, float))
                    and not isinstance(v, bool)
                    and key not in names
                    and key not in ("n", "n_real", "n_gen", "step", "seconds")
                ):
                    names.append(key)
        return names


def _conflict_matrix(rec: dict[str, Any], k: int) -> np.ndarray | None:
    """Conflicts of one balancer record. The signed k×k matrix (``cosine``, which every
    gradient balancer logs, with null for clusters absent from the batch) is preferred: it marks
    absent clusters unknown, where a list of conflicting pairs cannot."""
    for key in _SIGNED_MATRIX_KEYS:
        v = rec.get(key)
        if not isinstance(v, list) or len(v) != k:
            continue
        m = np.array([[_num(x) for x in row] for row in v], dtype=np.float64)
        if m.shape != (k, k):
            continue
        out = np.where(np.isfinite(m), (m < 0).astype(np.float64), np.nan)
        np.fill_diagonal(out, np.nan)
        return out
    for key in _CONFLICT_KEYS:
        v = rec.get(key)
        if not isinstance(v, list):
            continue
        if len(v) == k and all(isinstance(r, list) and len(r) == k for r in v) and k != 2:
            # A k×k 0/1 matrix (k = 2 is read as pairs: a 2×2 matrix and two pairs look alike,
            # and with two clusters there is only one pair).
            m = np.array([[_num(x) for x in row] for row in v], dtype=np.float64)
            m = np.where(np.isfinite(m), (m > 0).astype(np.float64), np.nan)
            np.fill_diagonal(m, np.nan)
            return m
        if all(isinstance(p, (list, tuple)) and len(p) == 2 for p in v):
            m = np.zeros((k, k))
            for i, j in v:
                m[int(i), int(j)] = m[int(j), int(i)] = 1.0
            np.fill_diagonal(m, np.nan)
            return m
    return None


def adam_step_scale(
    steps: np.ndarray, grad_norm: np.ndarray, clip: float | None, beta2: float = 0.999
) -> np.ndarray:
    """Adam's step at each logged step relative to its steady state, from the logged gradient
    norms: s_t = ĝ_t / sqrt(v̂_t), v_t = β₂ v_{t−1} + (1 − β₂) ĝ_t², v̂_t = v_t / (1 − β₂^t), with
    ĝ = min(‖g‖, clip) the clipped norm. Adam divides each update by such a running RMS (per
    coordinate; this is its global-norm proxy), so after a fall of the gradient norm by a
    factor r its steps stay about r times below the learning rate for ~1/(1 − β₂) steps, and a
    rise makes them larger for as long. Each logged norm (a window's last step) stands for
    every step of its window; a line without a norm carries the previous one (NaN before the
    first)."""
    g = np.asarray(grad_norm, dtype=float)
    if clip:
        g = np.minimum(g, clip)
    out = np.full(g.shape, np.nan)
    v, t, prev_step, last = 0.0, 0, 0, math.nan
    for i, (step, norm) in enumerate(zip(np.asarray(steps, dtype=int), g)):
        last = norm if np.isfinite(norm) else last
        if not np.isfinite(last):
            prev_step = int(step)
            continue
        n = max(1, int(step) - prev_step)
        prev_step = int(step)
        decay = beta2**n  # n steps at the same norm: v ← β₂ⁿ v + (1 − β₂ⁿ) ĝ²
        v = decay * v + (1 - decay) * last**2
        t += n
        out[i] = last / math.sqrt(v / (1 - beta2**t)) if v > 0 else math.nan
    return out


def read_training_log(run_or_file: str | Path) -> TrainingLog:
    """Parse ``RUN/metrics.jsonl`` (or the file itself); also reads ``RUN/clusters.json`` and
    ``RUN/config.yaml`` when present."""
    p = Path(run_or_file)
    run = p if p.is_dir() else p.parent
    f = p / "metrics.jsonl" if p.is_dir() else p
    if not f.exists():
        raise ValueError(f"no metrics.jsonl in {str(run)!r}: is it an antdiff run directory?")
    train: list[dict[str, Any]] = []
    evals: list[tuple[int, dict[str, Any]]] = []
    skipped = 0
    for line in f.read_text().splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            skipped += 1  # a line cut short by a crash or a concurrent write
            continue
        if not isinstance(rec, dict) or "step" not in rec:
            skipped += 1
            continue
        if isinstance(rec.get("eval"), dict):
            e = dict(rec["eval"])
            if isinstance(rec.get("eval_seconds"), dict):  # what the evaluation cost
                e["seconds"] = rec["eval_seconds"]
            if rec.get("eval_peak_mem_gib") is not None:  # CUDA only
                e["peak_mem_gib"] = rec["eval_peak_mem_gib"]
            evals.append((int(rec["step"]), e))
        else:
            train.append(rec)
    clusters = None
    if (run / "clusters.json").exists():
        try:
            clusters = TaskClusters.from_json(run / "clusters.json")
        except Exception:
            clusters = None
    config: dict[str, Any] = {}
    if (run / "config.yaml").exists():
        import yaml

        try:
            config = yaml.safe_load((run / "config.yaml").read_text()) or {}
        except yaml.YAMLError:
            config = {}
    k = max((len(r.get("cluster_losses") or []) for r in train), default=0)
    if k == 0 and clusters is not None:
        k = clusters.k

    def col(key: str) -> np.ndarray:
        return np.array(
            [
                _num(r.get(key)) if not isinstance(r.get(key), (list, dict)) else math.nan
                for r in train
            ]
        )

    def mat(key: str, width: int = k) -> np.ndarray:
        return np.stack([_vec(r.get(key), width) for r in train]) if train else np.zeros((0, width))

    nbins = max((len(r.get("bin_losses") or []) for r in train), default=0)

    def parts(key: str) -> np.ndarray:
        return mat(key) if any(key in r for r in train) else np.zeros((0, 0))

    return TrainingLog(
        path=f,
        steps=np.array([int(r["step"]) for r in train], dtype=np.int64),
        loss=col("loss"),
        cluster_losses=mat("cluster_losses"),
        weights=mat("weights"),
        counts=mat("counts"),
        lr=col("lr"),
        grad_norm=col("grad_norm"),
        it_per_s=col("it_per_s"),
        peak_mem_gib=col("peak_mem_gib"),
        balancer=[r.get("balancer") if isinstance(r.get("balancer"), dict) else {} for r in train],
        evals=evals,
        skipped_lines=skipped,
        clusters=clusters,
        config=config if isinstance(config, dict) else {},
        bin_losses=mat("bin_losses", nbins),
        bin_mean_uniform_t=any("bin_losses" in r for r in train)
        and all(r.get("bin_mean") == "uniform_t" for r in train if "bin_losses" in r),
        cluster_mse=parts("cluster_mse"),
        cluster_vb=parts("cluster_vb"),
        bin_mse=mat("bin_mse", nbins) if any("bin_mse" in r for r in train) else np.zeros((0, 0)),
        bin_vb=mat("bin_vb", nbins) if any("bin_vb" in r for r in train) else np.zeros((0, 0)),
    )


def pair_labels(k: int) -> list[str]:
    return [f"{i}-{j}" for i, j in zip(*np.triu_indices(k, 1))]


def summarise_series(
    x: np.ndarray, fractions: Sequence[float] = (0.1, 0.5, 1.0)
) -> list[np.ndarray]:
    """Rows of ``x`` at fractions of the run (for report tables)."""
    n = x.shape[0]
    return [x[min(n - 1, max(0, int(math.ceil(f * n)) - 1))] for f in fractions] if n else []
