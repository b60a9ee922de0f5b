"""Small helpers for running the balancers and the engine under ``torch.distributed``.

Convention used throughout :mod:`antdiff.mtl`: ``process_group=None`` means *no* reduction (a
single process, or a deliberately local computation). To reduce over all processes pass
``torch.distributed.group.WORLD`` (or any sub-group) explicitly. This differs from
``torch.distributed`` itself, where ``group=None`` means the world group; we make the choice
explicit so that a balancer used on one rank (e.g. for evaluation) can never block waiting for
the others.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

__all__ = ["all_reduce_sum", "is_ddp", "unwrap_model", "world_size"]


def world_size(process_group: Any | None) -> int:
    """Number of processes in ``process_group`` (1 for ``None`` or without an initialised PG)."""
    if process_group is None or not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(process_group)


def all_reduce_sum(tensor: torch.Tensor, process_group: Any | None) -> torch.Tensor:
    """Sum ``tensor`` in place over ``process_group`` (no-op for one process); returns it."""
    if world_size(process_group) > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=process_group)
    return tensor


def is_ddp(model: nn.Module) -> bool:
    return isinstance(model, DistributedDataParallel)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module that owns the parameters (``model.module`` for a DDP wrapper)."""
    return model.module if is_ddp(model) else model
