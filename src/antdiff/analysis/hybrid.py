"""A denoiser that hands the reverse steps of some timestep intervals to specialist models (the
sampler behind the negative transfer gap, paper §3.1).

``TimestepSwitchingDenoiser(joint, {(first, last): specialist})`` is called like a
:class:`~antdiff.training.models.Denoiser`, ``model(x_t, t, class_labels=None)``; each sample is
denoised by the specialist whose interval contains its timestep ``t`` (0-indexed, inclusive) and
by the joint model otherwise. The decision is taken from the ``t`` the scheduler passes at each
step, so it works unchanged with DDPM (every t), DDIM and any other discrete sampler (only the
sampled t's; an interval that contains none of them is never handed over, which
:meth:`TimestepSwitchingDenoiser.steps_in` lets the caller check before sampling).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..clustering import TaskClusters

__all__ = ["TimestepSwitchingDenoiser"]

ModelFn = Callable[..., torch.Tensor]


class TimestepSwitchingDenoiser(nn.Module):
    """Route each sample to the model responsible for its timestep.

    Args:
        joint: the model used outside every interval (the jointly trained model).
        specialists: ``{(first, last): model}`` or a sequence of ``((first, last), model)``;
            intervals are 0-indexed, inclusive and must not overlap.
        num_timesteps: T, to validate the intervals and the timesteps seen (optional).
        record: count the ``(model index, t)`` of every call in :attr:`calls` (0 = joint,
            i ≥ 1 = the i-th specialist in interval order), for checks and tests.

    A batch whose samples fall in different intervals is split and reassembled in order.
    Models may be any callables ``f(x_t, t[, class_labels])``; ``nn.Module`` ones are registered
    as sub-modules so ``.to()``/``.eval()`` reach them.
    """

    def __init__(
        self,
        joint: ModelFn,
        specialists: Mapping[tuple[int, int], ModelFn] | Sequence[tuple[tuple[int, int], ModelFn]],
        num_timesteps: int | None = None,
        record: bool = False,
    ) -> None:
        super().__init__()
        items = list(specialists.items()) if isinstance(specialists, Mapping) else list(specialists)
        items = [((int(a), int(b)), m) for (a, b), m in items]
        items.sort(key=lambda it: it[0][0])
        for (a, b), _ in items:
            if b < a or a < 0 or (num_timesteps is not None and b >= num_timesteps):
                raise ValueError(
                    f"specialist interval {(a, b)} is empty or outside [0, {(num_timesteps or 0) - 1}]"
                    if num_timesteps is not None
                    else f"specialist interval {(a, b)} is empty or negative"
                )
        for ((a, b), _), ((c, d), _) in zip(items, items[1:]):
            if c <= b:
                raise ValueError(f"specialist intervals {(a, b)} and {(c, d)} overlap")
        self.intervals: tuple[tuple[int, int], ...] = tuple(iv for iv, _ in items)
        self.num_timesteps = num_timesteps
        self._fns: list[ModelFn] = [joint] + [m for _, m in items]
        # Register modules so .to()/.eval()/.parameters() see them; plain callables are kept as is.
        self.models = nn.ModuleList([f for f in self._fns if isinstance(f, nn.Module)])
        self._firsts = torch.tensor([a for a, _ in self.intervals], dtype=torch.long)
        self._lasts = torch.tensor([b for _, b in self.intervals], dtype=torch.long)
        self.record = record
        self.calls: Counter[tuple[int, int]] = Counter()

    @classmethod
    def for_clusters(
        cls, joint: ModelFn, clusters: TaskClusters, specialists: Mapping[int, ModelFn], **kw: Any
    ) -> TimestepSwitchingDenoiser:
        """Specialists keyed by cluster index: ``{2: model}`` serves ``clusters.intervals[2]``."""
        return cls(
            joint,
            {clusters.intervals[i]: m for i, m in specialists.items()},
            num_timesteps=clusters.num_timesteps,
            **kw,
        )

    # ---------------------------------------------------------------- routing
    def route(self, t: torch.Tensor) -> torch.Tensor:
        """Model index for each timestep (0 = joint, i = i-th specialist)."""
        t = torch.as_tensor(t)
        if t.is_floating_point():
            r = t.round()
            if not torch.equal(r, t):
                raise ValueError(
                    "the hybrid sampler needs integer timesteps (a discrete DDPM/DDIM scheduler); "
                    f"got {t.flatten()[:4].tolist()}"
                )
            t = r
        t = t.long().cpu().contiguous()
        if (
            self.num_timesteps is not None
            and t.numel()
            and (int(t.min()) < 0 or int(t.max()) >= self.num_timesteps)
        ):
            raise ValueError(
                f"timestep outside [0, {self.num_timesteps - 1}]: {t.flatten()[:4].tolist()}"
            )
        if not self.intervals:
            return torch.zeros_like(t)
        i = torch.searchsorted(self._lasts, t, right=False)
        inside = (i < len(self.intervals)) & (
            t >= self._firsts[i.clamp(max=len(self.intervals) - 1)]
        )
        return torch.where(inside, i + 1, torch.zeros_like(i))

    def steps_in(self, timesteps: Sequence[int] | np.ndarray | torch.Tensor) -> list[int]:
        """How many of a sampler's timesteps fall in each specialist interval (e.g. pass
        ``scheduler.timesteps`` after ``set_timesteps``)."""
        idx = self.route(torch.as_tensor(np.asarray(timesteps)))
        return [int((idx == i + 1).sum()) for i in range(len(self.intervals))]

    def forward(
        self, x_t: torch.Tensor, t: torch.Tensor | int, class_labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        B = x_t.shape[0]
        tt = torch.as_tensor(t, device="cpu")
        if tt.ndim == 0:
            tt_b = tt.expand(B)
        elif tt.shape == (B,):
            tt_b = tt
        else:
            raise ValueError(f"t must be a scalar or have shape [{B}], got {tuple(tt.shape)}")
        which = self.route(tt_b)
        if self.record:
            for w, s in zip(
                which.tolist(),
                tt_b.round().long().tolist() if tt_b.is_floating_point() else tt_b.tolist(),
            ):
                self.calls[(w, s)] += 1
        used = torch.unique(which).tolist()
        if len(used) == 1:
            return self._call(used[0], x_t, t, class_labels)
        # Mixed batch: split by model, keep order.
        out: torch.Tensor | None = None
        t_dev = torch.as_tensor(t, device=x_t.device)
        for w in used:
            sel = torch.nonzero(which == w, as_tuple=False).reshape(-1)
            sel_d = sel.to(x_t.device)
            t_sel = t_dev if t_dev.ndim == 0 else t_dev[sel_d]
            y = self._call(
                w, x_t[sel_d], t_sel, None if class_labels is None else class_labels[sel_d]
            )
            if out is None:
                out = y.new_empty((B, *y.shape[1:]))
            out[sel_d] = y
        assert out is not None
        return out

    def _call(
        self, w: int, x: torch.Tensor, t: Any, class_labels: torch.Tensor | None
    ) -> torch.Tensor:
        fn = self._fns[w]
        out = fn(x, t) if class_labels is None else fn(x, t, class_labels)
        return getattr(out, "sample", out)

    def describe(self) -> dict[str, Any]:
        return {
            "intervals": [list(iv) for iv in self.intervals],
            "num_timesteps": self.num_timesteps,
        }
