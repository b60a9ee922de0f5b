"""Capturing and restoring every random stream a run uses, for bit-exact resumption.

The trainer draws its own randomness (data order, flips, label dropout, timesteps, noise) from
explicit ``torch.Generator`` objects that are saved by name. The global streams (torch CPU and CUDA,
numpy, Python's ``random``) are saved too, because library code (dropout inside a model, a
dataset's augmentation) may use them. Everything is stored as tensors and plain Python values so
that checkpoints load with ``weights_only=True``.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

__all__ = ["capture_rng_state", "restore_rng_state", "seed_everything"]


def seed_everything(seed: int) -> None:
    """Seed the global torch (CPU + CUDA), numpy and Python streams."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - the global stream third-party code uses
    torch.manual_seed(seed)


def capture_rng_state(generators: dict[str, torch.Generator] | None = None) -> dict[str, Any]:
    np_state = np.random.get_state()  # noqa: NPY002 - saving the legacy global stream
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": np_state[0],
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
        "generators": {name: g.get_state() for name, g in (generators or {}).items()},
    }
    return state


def restore_rng_state(
    state: dict[str, Any], generators: dict[str, torch.Generator] | None = None
) -> None:
    """Restore what :func:`capture_rng_state` saved; generators are restored in place by name."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (
            n["kind"],
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:  # a different machine: restore what maps, per device index
            for i, s in enumerate(cuda[: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(s, i)
    saved = state.get("generators", {})
    for name, g in (generators or {}).items():
        if name not in saved:
            raise ValueError(f"the checkpoint has no state for the random generator {name!r}")
        g.set_state(saved[name].to(dtype=torch.uint8, device="cpu"))
