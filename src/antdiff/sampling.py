"""Drawing a batch of timesteps together with their cluster ids (the paper's §5.1).

Three modes:

* ``stratified`` — each of the k clusters gets ⌊B/k⌋ samples, the B mod k leftover samples go to
  distinct clusters chosen at random; inside a cluster t is uniform. This is the official scheme
  (``sample_t_batch``) made valid for every batch size. With non-uniform clusters it re-weights
  the tasks: every cluster gets the same share whatever its width.
* ``uniform`` — t ~ U{0 … T-1} and the cluster id is looked up; per-cluster counts vary.
* ``proportional`` — cluster i gets B·wᵢ/T samples in expectation (systematic rounding), so the
  marginal of t is uniform as in vanilla training, but the per-cluster counts barely vary.

Samples are returned grouped by cluster (cluster 0 first), so a cluster's sub-batch is a
contiguous slice. Everything is deterministic given the ``torch.Generator``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from ._device import to_device
from .clustering import TaskClusters

__all__ = ["SAMPLING_MODES", "TimestepBatch", "TimestepSampler"]

SamplingMode = Literal["stratified", "uniform", "proportional"]
SAMPLING_MODES: tuple[str, ...] = ("stratified", "uniform", "proportional")


@dataclass(frozen=True)
class TimestepBatch:
    """Timesteps of one batch with their clusters.

    ``timesteps`` and ``cluster_ids`` are LongTensors of shape ``[B]``; ``counts[i]`` is the
    number of samples of cluster i (sums to B). ``num_clusters`` is k, also when some count is 0.
    """

    timesteps: torch.Tensor
    cluster_ids: torch.Tensor
    counts: torch.Tensor
    num_clusters: int

    def __post_init__(self) -> None:
        if self.timesteps.shape != self.cluster_ids.shape or self.timesteps.ndim != 1:
            raise ValueError("timesteps and cluster_ids must be 1-D tensors of the same length")
        if self.counts.shape != (self.num_clusters,):
            raise ValueError(f"counts must have shape ({self.num_clusters},)")

    @classmethod
    def from_timesteps(cls, timesteps: torch.Tensor, clusters: TaskClusters) -> TimestepBatch:
        """Wrap timesteps drawn elsewhere (e.g. by the user's own sampler)."""
        t = torch.as_tensor(timesteps).long().reshape(-1)
        ids = clusters.cluster_of(t)
        counts = torch.bincount(ids, minlength=clusters.k)
        return cls(t, ids, counts, clusters.k)

    @property
    def batch_size(self) -> int:
        return int(self.timesteps.numel())

    def __len__(self) -> int:
        return self.batch_size

    @property
    def present(self) -> torch.Tensor:
        """Bool ``[k]``: which clusters have at least one sample in this batch."""
        return self.counts > 0

    def indices(self, cluster: int) -> torch.Tensor:
        """Batch positions of the samples of one cluster."""
        return torch.nonzero(self.cluster_ids == cluster, as_tuple=False).reshape(-1)

    def select(self, index: torch.Tensor) -> TimestepBatch:
        """The sub-batch at ``index`` (counts recomputed)."""
        ids = self.cluster_ids[index]
        return TimestepBatch(
            self.timesteps[index],
            ids,
            torch.bincount(ids, minlength=self.num_clusters).to(self.counts.device),
            self.num_clusters,
        )

    def to(self, device: Any) -> TimestepBatch:
        """The batch on ``device``; CPU → CUDA copies do not synchronise (``antdiff._device``)."""
        return TimestepBatch(
            to_device(self.timesteps, device),
            to_device(self.cluster_ids, device),
            to_device(self.counts, device),
            self.num_clusters,
        )


class TimestepSampler:
    """Draw ``B`` timesteps and their cluster ids from k task clusters.

    >>> from antdiff import TaskClusters
    >>> s = TimestepSampler(TaskClusters.uniform(1000, 5), "stratified")
    >>> b = s.sample(7, generator=torch.Generator().manual_seed(0))
    >>> b.counts.sum().item(), b.counts.max().item() - b.counts.min().item() <= 1
    (7, True)
    """

    def __init__(self, clusters: TaskClusters, mode: SamplingMode | str = "stratified") -> None:
        if mode not in SAMPLING_MODES:
            raise ValueError(
                f"unknown sampling mode {mode!r}; choose one of {', '.join(SAMPLING_MODES)}"
            )
        self.clusters = clusters
        self.mode: str = mode
        self._starts = torch.as_tensor(clusters.starts)
        self._widths = torch.as_tensor(clusters.widths)

    @property
    def num_clusters(self) -> int:
        return self.clusters.k

    def probabilities(self) -> torch.Tensor:
        """p(t): the probability that one sample of a batch is timestep t (float64 ``[T]``).

        ``stratified`` gives every cluster the share 1/k whatever its width (the leftover B mod k
        samples go to clusters drawn at random, so the share is 1/k exactly in expectation):
        p(t) = 1 / (k·w_c) for t in cluster c of width w_c. ``uniform`` and ``proportional`` keep
        vanilla's marginal, p(t) = 1/T. A mean over the samples of a set of timesteps weighted by
        1/(T·p(t)) estimates the mean over t uniform in that set (the trainer's ``bin_losses``).
        """
        T, k = self.clusters.num_timesteps, self.clusters.k
        if self.mode != "stratified":
            return torch.full((T,), 1.0 / T, dtype=torch.float64)
        return torch.repeat_interleave(1.0 / (k * self._widths.double()), self._widths)

    def counts(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Samples per cluster for one batch (LongTensor ``[k]``, sums to ``batch_size``)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        k = self.clusters.k
        if self.mode == "stratified":
            counts = torch.full((k,), batch_size // k, dtype=torch.long)
            r = batch_size % k
            if r:
                extra = torch.randperm(k, generator=generator)[:r]
                counts[extra] += 1
            return counts
        if self.mode == "proportional":
            T = self.clusters.num_timesteps
            share = self._widths.double() * batch_size / T
            base = torch.floor(share).long()
            frac = share - base
            # Systematic rounding: cluster i gets one extra with probability frac_i exactly.
            u = torch.rand((), generator=generator, dtype=torch.float64)
            cum = torch.cumsum(frac, 0)
            hi = torch.ceil(cum - u - 1e-12)
            lo = torch.ceil(torch.cat([cum.new_zeros(1), cum[:-1]]) - u - 1e-12)
            counts = base + (hi - lo).long()
            # Guard against float drift in the last place.
            counts[-1] += batch_size - int(counts.sum())
            return counts
        t = torch.randint(0, self.clusters.num_timesteps, (batch_size,), generator=generator)
        return torch.bincount(self.clusters.cluster_of(t), minlength=k)

    def sample(
        self,
        batch_size: int,
        generator: torch.Generator | None = None,
        device: Any = None,
    ) -> TimestepBatch:
        """A :class:`TimestepBatch` of ``batch_size`` timesteps, grouped by cluster."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        k = self.clusters.k
        if self.mode == "uniform":
            t = torch.randint(0, self.clusters.num_timesteps, (batch_size,), generator=generator)
            t, _ = torch.sort(t)  # grouped by cluster, as in the other modes
            ids = self.clusters.cluster_of(t)
            counts = torch.bincount(ids, minlength=k)
        else:
            counts = self.counts(batch_size, generator)
            ids = torch.repeat_interleave(torch.arange(k), counts)
            u = torch.rand(batch_size, generator=generator, dtype=torch.float64)
            w = self._widths[ids]
            t = self._starts[ids] + torch.minimum((u * w).long(), w - 1)
        batch = TimestepBatch(t.long(), ids.long(), counts.long(), k)
        return batch if device is None else batch.to(device)

    def __repr__(self) -> str:
        return f"TimestepSampler(k={self.clusters.k}, mode={self.mode!r})"
