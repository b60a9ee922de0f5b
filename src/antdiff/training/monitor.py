"""What a run reports: ``metrics.jsonl`` lines, TensorBoard scalars/images, window statistics.

``RUN/metrics.jsonl`` has one JSON object per line. A training line (every ``train.log_every``
steps) is::

    {"step": 1000,                 # optimizer steps done
     "window": 50,                 # steps aggregated in this line
     "loss": 0.031,                # mean per-sample loss over the window's samples (all processes)
     "cluster_losses": [...k],     # mean loss of each cluster's samples in the window (null: none)
     "counts": [...k],             # samples per cluster summed over the window (all processes)
     "cluster_mse": [...k],        # weighted or hybrid loss only: the loss's parts per cluster,
     "cluster_vb": [...k],         # unweighted ε-MSE and λ·T·L_t (hybrid only), and the samples
     "parts_counts": [...k],       # they pool (see LossParts)
     "bin_mse": [...N],            # the same parts per fixed bin of t, averaged like
     "bin_vb": [...N],             # bin_losses (over t uniform in the bin)
     "weights": [...k],            # effective weight of each cluster's gradient at the last step
                                   # (the balancer's; n_i/B for vanilla training)
     "balancer": {...},            # the balancer's record() at the last step
     "lr": 1e-4, "grad_norm": 0.8, # at the last step (grad_norm before clipping)
     "it_per_s": 12.3, "img_per_s": 1574.4, "time": 81.2,   # time: training seconds so far
     "peak_mem_gib": 9.7}          # CUDA only: peak memory allocated in the window

An evaluation line is ``{"step": 1000, "eval": {"fid": ..., "n": ..., ...}, "eval_seconds":
{"sampling": ..., "metrics": ...}}`` (wall seconds of the EMA sampling and of the metrics; on CUDA
also ``"eval_peak_mem_gib"``, the evaluation's peak memory). Non-finite numbers
are written as ``null`` so that every line is strict JSON.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..mtl.engine import emit_sample_values
from .checkpoint import atomic_write_text

__all__ = ["LossParts", "MetricsLog", "TensorBoardLog", "WindowStats", "json_safe"]


def json_safe(x: Any) -> Any:
    """Numbers, lists and dicts with NaN/inf as None, tensors/arrays as lists."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        x = x.item() if x.ndim == 0 else x.tolist()
    if isinstance(x, np.ndarray):
        x = x.tolist()
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x


class LossParts:
    """The parts of the per-sample loss a training step computed, pooled per cluster for the log.

    A loss weighting or the hybrid loss makes the logged loss ``ℓ = w(t)·ℓ_mse + λ·T·L_t`` a
    mixture (``objective.LossTerms``); this keeps its unweighted ε-MSE ``ℓ_mse`` and, with learned
    variance, ``λ·T·L_t`` (``vb``) for every sample of the step, so that a log line shows which
    part a cluster's loss is made of (``cluster_mse``, ``cluster_vb``). Samples are recorded as
    the step's ``compute_losses`` computes them, in place (no device synchronisation, no extra
    forward pass). Inside a ``torch.func`` transform (the engine's ``vmap`` mode) the tensors
    have no plain values: they go to the engine (``emit_sample_values``), which returns them with
    the step in batch order (``StepResult.sample_values``), and the trainer records those.
    ``parts_counts`` says how many samples each cluster's parts pool. A padding copy of the
    padded ``split`` engine is its sample again and counts once (with dropout its values are
    another draw of that sample's).
    """

    def __init__(self, batch_size: int, hybrid: bool, device: torch.device | str) -> None:
        self.hybrid = hybrid
        self.mse = torch.zeros(batch_size, device=device)
        self.vb = torch.zeros(batch_size, device=device) if hybrid else None
        self.seen = torch.zeros(batch_size, device=device)
        self.active = False

    def start(self) -> None:
        """Begin a step: forget the previous step's samples and record from here on."""
        self.seen.zero_()
        self.active = True

    def stop(self) -> None:
        """End a step: later calls (a balancer's look at the updated model) record nothing."""
        self.active = False

    def record(
        self, index: torch.Tensor | None, mse: torch.Tensor, vb: torch.Tensor | None
    ) -> None:
        """Keep the parts of the samples at ``index`` (all of the batch when None)."""
        if not self.active:
            return
        if is_functorch_wrapped_tensor(mse):  # a vmap pass: the engine hands them back
            emit_sample_values(mse=mse, **({} if vb is None else {"vb": vb}))
            return
        sel: Any = slice(None) if index is None else index
        self.mse[sel] = mse.detach().float()
        if self.vb is not None and vb is not None:
            self.vb[sel] = vb.detach().float()
        self.seen[sel] = 1.0

    def bin_sums(
        self, bins: torch.Tensor, nbins: int, weights: torch.Tensor | None
    ) -> list[torch.Tensor]:
        """``[Σ w·ℓ_mse, (Σ w·vb,) Σ w]`` per fixed bin of t over the recorded samples, each
        ``[nbins]``: ``bins`` is each sample's bin, ``weights`` the importance weight 1/(T·p(t))
        that makes ``bin_losses`` a mean over t uniform in the bin (1 when None)."""
        w = self.seen if weights is None else self.seen * weights

        def per_bin(x: torch.Tensor) -> torch.Tensor:
            return torch.zeros(nbins, device=x.device).index_add(0, bins, x)

        out = [per_bin(self.mse * w)]
        if self.vb is not None:
            out.append(per_bin(self.vb * w))
        return [*out, per_bin(w)]

    def cluster_sums(self, cluster_ids: torch.Tensor, k: int) -> list[torch.Tensor]:
        """``[Σ ℓ_mse, (Σ vb,) n]`` per cluster over the recorded samples, each ``[k]``."""

        def per_cluster(x: torch.Tensor) -> torch.Tensor:
            return torch.zeros(k, device=x.device).index_add(0, cluster_ids, x)

        out = [per_cluster(self.mse * self.seen)]
        if self.vb is not None:
            out.append(per_cluster(self.vb * self.seen))
        return [*out, per_cluster(self.seen)]


def is_functorch_wrapped_tensor(x: torch.Tensor) -> bool:
    """True for a tensor of an active ``torch.func`` transform (vmap, grad): no plain values."""
    check = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", None)
    return bool(check(x)) if check is not None else False


class WindowStats:
    """Pools the per-cluster loss sums and sample counts of the steps between two log lines.

    ``loss`` is the pooled per-sample mean Σℓ/Σn (comparable across vanilla and every balancer)
    and ``cluster_losses[i]`` the pooled mean over the window's samples of cluster i. With
    ``bins`` > 0 the same for ``bins`` equal bins of t (``bin_losses``, ``bin_counts``): fixed
    for every run, so runs with other clusterings compare on the same timesteps. With
    ``bin_weights`` (Σ 1/(T·p(t)) of the bin's samples, their losses summed with the same weights)
    ``bin_losses`` = Σ wℓ / Σ w estimates the mean over t uniform in the bin whatever the sampler
    (marked ``"bin_mean": "uniform_t"`` in the line); without, it is the plain sample mean.
    With ``parts`` (the names of :class:`LossParts`' sums) the line also has ``cluster_<name>``,
    each part's pooled mean per cluster over ``parts_counts`` samples, and with bins
    ``bin_<name>``, each part's mean per bin with ``bin_losses``' weights: the unweighted loss of
    a weighted run, comparable bin by bin with an unweighted run's ``bin_losses``.
    """

    def __init__(self, k: int, bins: int = 0, parts: tuple[str, ...] = ()) -> None:
        self.k = k
        self.bins = bins
        self.parts = parts  # names of LossParts' sums, e.g. ("mse", "vb"): cluster_<name> lines
        self.reset()

    def reset(self) -> None:
        self.steps = 0
        self.sums = np.zeros(self.k)
        self.counts = np.zeros(self.k)
        self.bin_sums = np.zeros(self.bins)
        self.bin_counts = np.zeros(self.bins)
        self.bin_weights: np.ndarray | None = None
        self.part_sums = np.zeros((len(self.parts), self.k))
        self.part_counts = np.zeros(self.k)
        self.bin_part_sums = np.zeros((len(self.parts), self.bins))
        self.bin_part_weights = np.zeros(self.bins)

    def add(
        self,
        cluster_sums: Sequence[float],
        cluster_counts: Sequence[float],
        bin_sums: Sequence[float] | None = None,
        bin_counts: Sequence[float] | None = None,
        bin_weights: Sequence[float] | None = None,
        part_sums: Sequence[Sequence[float]] | None = None,
        part_counts: Sequence[float] | None = None,
        bin_part_sums: Sequence[Sequence[float]] | None = None,
        bin_part_weights: Sequence[float] | None = None,
    ) -> None:
        self.steps += 1
        if self.parts and part_sums is not None and part_counts is not None:
            self.part_sums += np.asarray(part_sums, dtype=np.float64).reshape(len(self.parts), -1)
            self.part_counts += np.asarray(part_counts, dtype=np.float64)
        if self.parts and self.bins and bin_part_sums is not None and bin_part_weights is not None:
            sums = np.asarray(bin_part_sums, dtype=np.float64).reshape(len(self.parts), -1)
            self.bin_part_sums += sums
            self.bin_part_weights += np.asarray(bin_part_weights, dtype=np.float64)
        self.sums += np.asarray(cluster_sums, dtype=np.float64)
        self.counts += np.asarray(cluster_counts, dtype=np.float64)
        if self.bins and bin_sums is not None and bin_counts is not None:
            self.bin_sums += np.asarray(bin_sums, dtype=np.float64)
            self.bin_counts += np.asarray(bin_counts, dtype=np.float64)
            if bin_weights is not None:
                w = np.asarray(bin_weights, dtype=np.float64)
                self.bin_weights = w if self.bin_weights is None else self.bin_weights + w

    @staticmethod
    def _means(sums: np.ndarray, counts: np.ndarray) -> list[float]:
        """Σ / count where count > 0, else NaN; a count may be a sum of importance weights < 1."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(counts > 0, sums / np.where(counts > 0, counts, 1), np.nan).tolist()

    def summary(self) -> dict[str, Any]:
        total = self.counts.sum()
        out: dict[str, Any] = {
            "window": self.steps,
            "loss": float(self.sums.sum() / total) if total > 0 else float("nan"),
            "cluster_losses": self._means(self.sums, self.counts),
            "counts": [int(round(c)) for c in self.counts],
        }
        if self.bins and self.bin_counts.sum() > 0:
            if self.bin_weights is not None:
                out["bin_losses"] = self._means(self.bin_sums, self.bin_weights)
                out["bin_mean"] = "uniform_t"
            else:
                out["bin_losses"] = self._means(self.bin_sums, self.bin_counts)
            out["bin_counts"] = [int(round(c)) for c in self.bin_counts]
        for name, sums in zip(self.parts, self.part_sums):
            out[f"cluster_{name}"] = self._means(sums, self.part_counts)
        if self.parts:
            out["parts_counts"] = [int(round(c)) for c in self.part_counts]
        if self.parts and self.bins and self.bin_part_weights.sum() > 0:
            for name, sums in zip(self.parts, self.bin_part_sums):
                out[f"bin_{name}"] = self._means(sums, self.bin_part_weights)
        return out


class MetricsLog:
    """Appends JSON lines to ``metrics.jsonl`` (flushed per line, so a crash loses nothing)."""

    def __init__(self, path: str | Path, resume_step: int | None = None) -> None:
        self.path = Path(path)
        if resume_step is not None and self.path.exists():
            # Lines written after the checkpoint we resume from describe steps that will be
            # redone; drop them so the file reads as one consistent run.
            kept = []
            for line in self.path.read_text().splitlines():
                try:
                    if int(json.loads(line).get("step", 0)) <= resume_step:
                        kept.append(line)
                except (ValueError, AttributeError):
                    continue  # a line cut short by a crash
            atomic_write_text(self.path, "".join(s + "\n" for s in kept))
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        self._f = self.path.open("a", buffering=1)

    def write(self, record: dict[str, Any]) -> None:
        self._f.write(json.dumps(json_safe(record), allow_nan=False) + "\n")

    def close(self) -> None:
        self._f.close()

    @staticmethod
    def read(path: str | Path) -> list[dict[str, Any]]:
        return [json.loads(s) for s in Path(path).read_text().splitlines() if s.strip()]


class TensorBoardLog:
    """Scalars and images under ``RUN/tb`` (events after a resumed step are purged)."""

    def __init__(self, logdir: str | Path, purge_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(logdir), purge_step=purge_step)

    def scalars(self, step: int, values: dict[str, Any], prefix: str = "") -> None:
        for name, v in values.items():
            tag = f"{prefix}{name}"
            if isinstance(v, dict):
                self.scalars(step, v, tag + "/")
            elif isinstance(v, (list, tuple)):
                for i, x in enumerate(v):
                    if isinstance(x, (int, float)) and x is not None and math.isfinite(x):
                        self.writer.add_scalar(f"{tag}/{i}", x, step)
            elif isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                self.writer.add_scalar(tag, v, step)

    def image(self, tag: str, image_hwc: np.ndarray, step: int) -> None:
        self.writer.add_image(tag, image_hwc, step, dataformats="HWC")

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()
