"""Host-to-device copies that do not make the host wait for the GPU.

``tensor.to("cuda")`` from ordinary (pageable) host memory synchronises the CUDA stream: the host
waits until every queued kernel has finished, which in a launch-bound training step throws away
the overlap of host and device. Staging the data in pinned memory and copying with
``non_blocking=True`` lets the host run ahead; PyTorch's caching host allocator keeps the pinned
block alive until the copy has completed on its stream, and the block is a private copy, so the
caller may change the source at once.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["to_device"]


def to_device(t: torch.Tensor, device: Any, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``t.to(device, dtype)`` without a host synchronisation for CPU → CUDA copies."""
    device = torch.device(device)
    if device.type == "cuda" and t.device.type == "cpu":
        src = t if dtype is None else t.to(dtype)
        return src.pin_memory().to(device, non_blocking=True)
    return t.to(device) if dtype is None else t.to(device, dtype)
