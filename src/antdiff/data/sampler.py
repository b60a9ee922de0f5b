"""A seeded, shardable, exactly resumable sampler of dataset indices."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sized
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

__all__ = ["ResumableSampler"]


class ResumableSampler(Sampler[int]):
    """Seeded epoch shuffling whose whole state is ``(seed, cursor)``.

    Each epoch ``e`` is a permutation of ``0 … N-1`` drawn from a generator seeded with
    ``(seed, e)`` (identical on every rank). With ``world_size > 1`` it is padded by repeating
    its start to a multiple of ``world_size`` (or truncated with ``drop_last=True``) and rank
    ``r`` takes positions ``r, r + W, r + 2W, …``, as ``DistributedSampler`` does. The sampler
    yields this rank's stream epoch after epoch (forever, unless ``infinite=False``), starting at
    ``cursor``; the k-th index of the stream is a pure function of ``(seed, k)``.

    ``cursor`` counts indices of this rank handed out since the start of training; ``epoch``
    and ``position`` (within the epoch) derive from it. Iterating advances it as items are
    yielded. A ``DataLoader`` with workers prefetches ahead of what the model has consumed, so a
    trainer should save ``state_dict(consumed=samples_this_rank_consumed)`` (e.g. ``step ×
    per-rank batch``) rather than rely on the running cursor; ``load_state_dict`` then continues
    at exactly the next unconsumed sample.

    With an :class:`antdiff.data.ImageDataset` (``accepts_epoch_tags``) it yields
    ``epoch · N + item`` so that the dataset's random flip changes with the epoch; pass
    ``epoch_tags=False`` for plain indices.
    """

    def __init__(
        self,
        data_source: Sized | int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        infinite: bool = True,
        epoch_tags: bool | None = None,
    ) -> None:
        n = int(data_source) if isinstance(data_source, int) else len(data_source)
        if n < 1:
            raise ValueError("ResumableSampler needs a non-empty dataset")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}"
            )
        if drop_last and n < world_size:
            raise ValueError(
                f"drop_last with {n} items and {world_size} ranks leaves nothing to sample"
            )
        self.num_items = n
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.drop_last = bool(drop_last)
        self.infinite = bool(infinite)
        if epoch_tags is None:
            epoch_tags = bool(getattr(data_source, "accepts_epoch_tags", False))
        self.epoch_tags = bool(epoch_tags)
        self.cursor = 0
        self._perm_epoch = -1
        self._perm: np.ndarray | None = None

    # ------------------------------------------------------------------ geometry
    @property
    def per_rank(self) -> int:
        """Indices this rank draws per epoch."""
        if self.drop_last:
            return self.num_items // self.world_size
        return -(-self.num_items // self.world_size)

    def __len__(self) -> int:
        """One epoch of this rank (the stream itself is endless when ``infinite``)."""
        return self.per_rank

    @property
    def epoch(self) -> int:
        return self.cursor // self.per_rank

    @property
    def position(self) -> int:
        return self.cursor % self.per_rank

    def _rank_indices(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            if self.shuffle:
                g = torch.Generator().manual_seed(
                    int(
                        np.random.SeedSequence([self.seed, epoch]).generate_state(1, np.uint64)[0]
                        >> 1
                    )
                )
                perm = torch.randperm(self.num_items, generator=g).numpy()
            else:
                perm = np.arange(self.num_items)
            total = self.per_rank * self.world_size
            if total > self.num_items:
                perm = np.concatenate([perm, np.resize(perm, total - self.num_items)])
            else:
                perm = perm[:total]
            self._perm = perm[self.rank :: self.world_size]
            self._perm_epoch = epoch
        assert self._perm is not None
        return self._perm

    def index_at(self, k: int) -> int:
        """The k-th index of this rank's stream (epoch-tagged if ``epoch_tags``)."""
        epoch, pos = divmod(k, self.per_rank)
        item = int(self._rank_indices(epoch)[pos])
        return epoch * self.num_items + item if self.epoch_tags else item

    # ------------------------------------------------------------------ iteration
    def __iter__(self) -> Iterator[int]:
        end_epoch = None if self.infinite else self.epoch + 1
        while True:
            epoch, pos = divmod(self.cursor, self.per_rank)
            if end_epoch is not None and epoch >= end_epoch:
                return
            idx = self._rank_indices(epoch)
            for p in range(pos, len(idx)):
                item = int(idx[p])
                self.cursor += 1
                yield epoch * self.num_items + item if self.epoch_tags else item
            if end_epoch is not None and not self.infinite:
                return

    # ------------------------------------------------------------------ state
    def state_dict(self, consumed: int | None = None) -> dict[str, Any]:
        """``{"seed", "cursor", "epoch", "position", …}``; ``consumed`` overrides the cursor."""
        cursor = self.cursor if consumed is None else int(consumed)
        if cursor < 0:
            raise ValueError(f"consumed must be >= 0, got {consumed}")
        return {
            "seed": self.seed,
            "cursor": cursor,
            "epoch": cursor // self.per_rank,
            "position": cursor % self.per_rank,
            "num_items": self.num_items,
            "world_size": self.world_size,
            "shuffle": self.shuffle,
            "drop_last": self.drop_last,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly where ``state`` left off (same data, seed and world size).

        A different dataset size is an error; a different world size continues from the same
        global sample count, which is as close as possible but not bit-exact (warned).
        """
        if int(state["num_items"]) != self.num_items:
            raise ValueError(
                f"sampler state is for a dataset of {state['num_items']} items, this one has "
                f"{self.num_items}; resume with the same data (and max_items)"
            )
        if bool(state.get("shuffle", True)) != self.shuffle:
            raise ValueError("sampler state was saved with a different shuffle setting")
        self.seed = int(state["seed"])
        cursor = int(state["cursor"])
        old_ws = int(state.get("world_size", 1))
        if old_ws != self.world_size:
            warnings.warn(
                f"resuming a data order saved with world_size={old_ws} on world_size="
                f"{self.world_size}: the sample order continues approximately, not bit-exactly",
                stacklevel=2,
            )
            old_per_rank = (
                self.num_items // old_ws if state.get("drop_last") else -(-self.num_items // old_ws)
            )
            epoch, pos = divmod(cursor, old_per_rank)
            cursor = epoch * self.per_rank + min(-(-pos * old_ws // self.world_size), self.per_rank)
        self.cursor = cursor

    def __repr__(self) -> str:
        return (
            f"ResumableSampler(n={self.num_items}, seed={self.seed}, rank={self.rank}/"
            f"{self.world_size}, epoch={self.epoch}, position={self.position})"
        )
