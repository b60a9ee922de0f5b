"""Exact interval clustering of denoising tasks (the paper's §4).

The T timesteps ``0 … T-1`` are split into k contiguous intervals ``I_1 … I_k`` that minimise

    Σ_i L_cluster(I_i)

by dynamic programming (Nielsen & Nock's optimal interval clustering). With ``D(i, m)`` the best
cost of covering ``0 … i`` by ``m`` intervals,

    D(i, 1) = L([0, i]),      D(i, m) = min_{m-1 ≤ j < i} D(j, m-1) + L([j+1, i]),

and the answer is ``D(T-1, k)``. Interval costs are O(1) after an O(T) prefix-sum (value costs) or
O(T²) (matrix costs) precomputation, so the whole DP is O(k·T²) vectorised array work — for T = 1000,
k = 5 a few milliseconds (see ``benchmarks/clustering_speed.py``), where the official script is
O(k·T³) and also misses the optimum (paper digest §7.3, items 1–5).

Costs (``c(I)`` is the centre of ``I = [l, r]``, the median member, for even sizes the upper middle
index ``(l + r + 1) // 2``):

* ``timestep``: Σ_{t∈I} |t − c(I)|
* ``snr``:      Σ_{t∈I} |SNR(t) − SNR(c(I))|       (the paper's / official cost)
* ``logsnr``:   Σ_{t∈I} |λ(t) − λ(c(I))|           (the default; see ``docs/clustering.md``)
* ``affinity``: −Σ_{t∈I} A[c(I), t]                for a T×T (or binned) task-affinity matrix A
* any callable ``cost(first, last)`` or a T×T matrix ``C[first, last]``.

Because t, SNR(t) and λ(t) are monotone in t, the median minimises the L1 distance, so the first
three are exactly the 1-D k-medians L1 cost of the points ``{v(t)}``: the optimum is well defined
and independent of which middle index of an even interval is taken as the centre.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, overload

import numpy as np
import torch

from .schedule import NoiseSchedule

__all__ = [
    "COST_NAMES",
    "IntervalCost",
    "TaskClusters",
    "cluster_timesteps",
    "interval_cluster",
    "make_interval_cost",
]

COST_NAMES = ("timestep", "snr", "logsnr", "affinity")

_T = TypeVar("_T", int, np.ndarray, torch.Tensor)


# ============================================================================ result object
@dataclass(frozen=True)
class TaskClusters:
    """k contiguous timestep intervals, 0-indexed and inclusive: ``((first, last), …)``.

    ``cost`` is the total clustering cost (``None`` for hand-made clusters), ``cost_name`` the
    cost it minimised. ``cluster_of(t)`` maps timesteps to cluster ids, vectorised.
    """

    intervals: tuple[tuple[int, int], ...]
    cost: float | None = None
    cost_name: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        iv = tuple((int(a), int(b)) for a, b in self.intervals)
        if not iv:
            raise ValueError("TaskClusters needs at least one interval")
        if iv[0][0] != 0:
            raise ValueError(f"the first interval must start at t=0, got {iv[0]}")
        for (a, b), (c, _) in zip(iv, iv[1:]):
            if c != b + 1:
                raise ValueError(f"intervals must be contiguous and ordered: {(a, b)} then {(c, _)}")
        for a, b in iv:
            if b < a:
                raise ValueError(f"empty interval {(a, b)}")
        object.__setattr__(self, "intervals", iv)
        ends = np.array([b for _, b in iv], dtype=np.int64)
        object.__setattr__(self, "_ends", ends)

    # ---------------------------------------------------------------- constructors
    @classmethod
    def uniform(cls, num_timesteps: int, k: int) -> TaskClusters:
        """k equal-width intervals (the official "timestep"/uniform clusters).

        Interval i is ``[⌊iT/k⌋, ⌊(i+1)T/k⌋ − 1]``; when k does not divide T the widths differ by
        at most one. For T = 1000, k = 5 this is the paper's [1,200] … [801,1000].
        """
        _check_k(num_timesteps, k)
        b = [(i * num_timesteps) // k for i in range(k + 1)]
        return cls(tuple((b[i], b[i + 1] - 1) for i in range(k)), cost_name="uniform")

    @classmethod
    def from_boundaries(cls, starts: Sequence[int], num_timesteps: int) -> TaskClusters:
        """From the first timestep of each cluster, e.g. ``[0, 200, 400, 600, 800]``."""
        s = [int(x) for x in starts]
        if not s or s[0] != 0 or any(b <= a for a, b in zip(s, s[1:])) or s[-1] >= num_timesteps:
            raise ValueError(f"starts must be increasing, begin at 0 and stay below T: {s}")
        ends = [x - 1 for x in s[1:]] + [num_timesteps - 1]
        return cls(tuple(zip(s, ends)))

    # ---------------------------------------------------------------- views
    @property
    def k(self) -> int:
        return len(self.intervals)

    def __len__(self) -> int:
        return self.k

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.intervals)

    @property
    def num_timesteps(self) -> int:
        return self.intervals[-1][1] + 1

    @property
    def starts(self) -> np.ndarray:
        return np.array([a for a, _ in self.intervals], dtype=np.int64)

    @property
    def ends(self) -> np.ndarray:
        return self._ends.copy()  # type: ignore[attr-defined]

    @property
    def widths(self) -> np.ndarray:
        return self.ends - self.starts + 1

    def half_open(self) -> list[tuple[int, int]]:
        """``[(first, last + 1), …]`` for ``torch.randint``/``range`` style code."""
        return [(a, b + 1) for a, b in self.intervals]

    def one_indexed(self) -> list[tuple[int, int]]:
        """The paper's convention: timesteps 1 … T, inclusive."""
        return [(a + 1, b + 1) for a, b in self.intervals]

    @overload
    def cluster_of(self, t: int) -> int: ...
    @overload
    def cluster_of(self, t: np.ndarray) -> np.ndarray: ...
    @overload
    def cluster_of(self, t: torch.Tensor) -> torch.Tensor: ...
    def cluster_of(self, t):  # type: ignore[no-untyped-def]
        """Cluster id of each timestep; works on ints, numpy arrays and tensors (any device)."""
        if isinstance(t, torch.Tensor):
            ends = torch.as_tensor(self._ends, device=t.device)  # type: ignore[attr-defined]
            if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.num_timesteps):
                raise ValueError(f"timesteps must lie in [0, {self.num_timesteps - 1}]")
            return torch.searchsorted(ends, t.long(), right=False)
        arr = np.asarray(t)
        if arr.size and (arr.min() < 0 or arr.max() >= self.num_timesteps):
            raise ValueError(f"timesteps must lie in [0, {self.num_timesteps - 1}]")
        out = np.searchsorted(self._ends, arr, side="left")  # type: ignore[attr-defined]
        return int(out) if np.ndim(t) == 0 else out

    def lookup_table(self, device: Any = None) -> torch.Tensor:
        """A LongTensor of length T with the cluster id of every timestep."""
        return torch.repeat_interleave(
            torch.arange(self.k, device=device), torch.as_tensor(self.widths, device=device)
        )

    # ---------------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "intervals": [list(p) for p in self.intervals],
            "num_timesteps": self.num_timesteps,
            "k": self.k,
            "cost": self.cost,
            "cost_name": self.cost_name,
        }
        if self.meta:
            d["meta"] = self.meta
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TaskClusters:
        if "intervals" not in d:
            raise ValueError("cluster JSON needs an 'intervals' list of [first, last] pairs")
        out = cls(
            tuple(tuple(p) for p in d["intervals"]),  # type: ignore[misc]
            cost=d.get("cost"),
            cost_name=d.get("cost_name"),
            meta=dict(d.get("meta", {})),
        )
        if "num_timesteps" in d and int(d["num_timesteps"]) != out.num_timesteps:
            raise ValueError("cluster JSON: num_timesteps disagrees with the intervals")
        return out

    def to_json(self, path: str | Path | None = None, **kw: Any) -> str:
        s = json.dumps(self.to_dict(), **kw)
        if path is not None:
            Path(path).write_text(s + "\n")
        return s

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> TaskClusters:
        p = Path(text_or_path)
        text = (
            p.read_text()
            if not str(text_or_path).lstrip().startswith("{") and p.exists()
            else str(text_or_path)
        )
        return cls.from_dict(json.loads(text))

    def __repr__(self) -> str:
        c = "" if self.cost is None else f", cost={self.cost:.6g}"
        n = "" if self.cost_name is None else f", cost_name={self.cost_name!r}"
        return f"TaskClusters({list(self.intervals)}{c}{n})"


# ============================================================================ interval costs
class IntervalCost:
    """An interval cost with O(1) vectorised evaluation ``cost(first, last)``.

    ``block(firsts, lasts)`` returns the cost matrix for all pairs (``inf`` where first > last);
    the DP only ever calls ``block``.
    """

    def __init__(self, num_timesteps: int, name: str) -> None:
        self.num_timesteps = num_timesteps
        self.name = name

    def block(self, firsts: np.ndarray, lasts: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, first: int, last: int) -> float:
        return float(self.block(np.array([first]), np.array([last]))[0, 0])


class _MedianL1Cost(IntervalCost):
    """Σ_{t∈[l,r]} |v_t − v_c|, c = (l+r+1)//2, for monotone v: prefix sums make it O(1)."""

    def __init__(self, values: np.ndarray, name: str) -> None:
        v = np.asarray(values, dtype=np.float64).reshape(-1)
        if not np.all(np.isfinite(v)):
            raise ValueError(
                f"{name} values are not finite (a schedule with ᾱ = 1 has infinite SNR); "
                "use a schedule with ᾱ < 1 everywhere or the 'timestep' cost"
            )
        d = np.diff(v)
        if not (np.all(d >= 0) or np.all(d <= 0)):
            raise ValueError(f"{name} values must be monotone in t for the median L1 cost")
        super().__init__(v.size, name)
        # Work on increasing values: |·| of a sum of same-sign terms is the sum of |·|.
        self._v = v if v.size < 2 or v[-1] >= v[0] else -v
        self._S = np.concatenate([[0.0], np.cumsum(self._v)])

    def block(self, firsts: np.ndarray, lasts: np.ndarray) -> np.ndarray:
        lo = firsts[:, None].astype(np.int64)
        hi = lasts[None, :].astype(np.int64)
        valid = lo <= hi
        c = np.where(valid, (lo + hi + 1) // 2, 0)
        hi_ = np.where(valid, hi, 0)
        lo_ = np.where(valid, lo, 0)
        vc = self._v[c]
        S = self._S
        upper = (S[hi_ + 1] - S[c + 1]) - (hi_ - c) * vc
        lower = (c - lo_) * vc - (S[c] - S[lo_])
        out = upper + lower
        return np.where(valid, np.maximum(out, 0.0), np.inf)


class _AffinityCost(IntervalCost):
    """−Σ_{t∈[l,r]} A[c, t] with row prefix sums of A (O(T²) memory, O(1) per interval)."""

    def __init__(self, affinity: np.ndarray, num_timesteps: int | None = None) -> None:
        A = _load_matrix(affinity, "affinity")
        if A.shape[0] != A.shape[1]:
            raise ValueError(f"the affinity matrix must be square, got shape {A.shape}")
        n = A.shape[0]
        T = n if num_timesteps is None else int(num_timesteps)
        if T != n:
            if T < n:
                raise ValueError(f"affinity matrix is {n}×{n} but only T={T} timesteps were asked for")
            # A binned matrix: timestep t belongs to bin ⌊t·n/T⌋.
            bins = (np.arange(T) * n) // T
            A = A[np.ix_(bins, bins)]
        if not np.all(np.isfinite(A)):
            raise ValueError("the affinity matrix contains NaN or inf")
        super().__init__(T, "affinity")
        self._P = np.concatenate([np.zeros((T, 1)), np.cumsum(A, axis=1)], axis=1)

    def block(self, firsts: np.ndarray, lasts: np.ndarray) -> np.ndarray:
        lo = firsts[:, None].astype(np.int64)
        hi = lasts[None, :].astype(np.int64)
        valid = lo <= hi
        c = np.where(valid, (lo + hi + 1) // 2, 0)
        hi_ = np.where(valid, hi, 0)
        lo_ = np.where(valid, lo, 0)
        out = -(self._P[c, hi_ + 1] - self._P[c, lo_])
        return np.where(valid, out, np.inf)


class _MatrixCost(IntervalCost):
    def __init__(self, C: np.ndarray, name: str = "matrix") -> None:
        C = _load_matrix(C, "cost")
        if C.ndim != 2 or C.shape[0] != C.shape[1]:
            raise ValueError(f"a cost matrix must be T×T, got shape {C.shape}")
        super().__init__(C.shape[0], name)
        self._C = C

    def block(self, firsts: np.ndarray, lasts: np.ndarray) -> np.ndarray:
        out = self._C[np.ix_(firsts, lasts)].copy()
        out[firsts[:, None] > lasts[None, :]] = np.inf
        if np.isnan(out).any():
            raise ValueError("the cost matrix contains NaN on a valid interval")
        return out


def _load_matrix(obj: Any, what: str) -> np.ndarray:
    if isinstance(obj, (str, Path)):
        p = Path(obj)
        try:
            A = np.load(p, allow_pickle=False)
        except FileNotFoundError:
            raise ValueError(f"{what} file {str(p)!r} does not exist") from None
        except Exception as e:  # noqa: BLE001 - any unreadable file gets one clear message
            raise ValueError(f"cannot read {what} file {str(p)!r} as a .npy array: {e}") from None
        if isinstance(A, np.lib.npyio.NpzFile):
            raise ValueError(f"{what} file {str(p)!r} is an .npz archive; pass a .npy matrix")
        obj = A
    A = np.asarray(torch.as_tensor(obj).double().cpu().numpy()) if isinstance(obj, torch.Tensor) else np.asarray(obj, dtype=np.float64)
    if A.ndim != 2:
        raise ValueError(f"the {what} matrix must be 2-D, got shape {A.shape}")
    return A


def make_interval_cost(
    cost: str | IntervalCost | Callable[[int, int], float] | np.ndarray | torch.Tensor,
    num_timesteps: int | None = None,
    schedule: NoiseSchedule | str | None = None,
    affinity: np.ndarray | torch.Tensor | str | Path | None = None,
) -> IntervalCost:
    """Turn a cost name, matrix or callable into an :class:`IntervalCost`.

    ``schedule`` is needed for ``snr``/``logsnr``; ``affinity`` for ``affinity``. A callable
    ``cost(first, last)`` is tabulated once (T²/2 calls), so it must be cheap.
    """
    if isinstance(cost, IntervalCost):
        return cost
    if isinstance(cost, str):
        if cost not in COST_NAMES:
            raise ValueError(f"unknown clustering cost {cost!r}; choose one of {', '.join(COST_NAMES)}")
        if cost == "timestep":
            if num_timesteps is None:
                if schedule is None:
                    raise ValueError("the timestep cost needs num_timesteps or a schedule")
                num_timesteps = NoiseSchedule.coerce(schedule).num_timesteps
            return _MedianL1Cost(np.arange(num_timesteps, dtype=np.float64), "timestep")
        if cost in ("snr", "logsnr"):
            if schedule is None:
                raise ValueError(f"the {cost} cost needs a noise schedule")
            sch = NoiseSchedule.coerce(schedule, num_timesteps or 1000)
            if num_timesteps is not None and sch.num_timesteps != num_timesteps:
                raise ValueError(
                    f"schedule has T={sch.num_timesteps} but num_timesteps={num_timesteps}"
                )
            return _MedianL1Cost(sch.snr if cost == "snr" else sch.logsnr, cost)
        if affinity is None:
            raise ValueError("the affinity cost needs a task-affinity matrix (affinity=A or a .npy path)")
        return _AffinityCost(affinity, num_timesteps)  # type: ignore[arg-type]
    if callable(cost):
        if num_timesteps is None:
            raise ValueError("a callable cost needs num_timesteps")
        T = int(num_timesteps)
        C = np.full((T, T), np.inf)
        for a in range(T):
            for b in range(a, T):
                C[a, b] = float(cost(a, b))
        return _MatrixCost(C, getattr(cost, "__name__", "callable"))
    C = _load_matrix(cost, "cost")
    if num_timesteps is not None and C.shape[0] != num_timesteps:
        raise ValueError(f"cost matrix is {C.shape[0]}×{C.shape[1]} but T={num_timesteps}")
    return _MatrixCost(C)


# ============================================================================ the DP
def _check_k(T: int, k: int, min_size: int = 1, max_size: int | None = None) -> None:
    if T < 1:
        raise ValueError(f"need at least one timestep, got T={T}")
    if k < 1:
        raise ValueError(f"the number of clusters k must be >= 1, got k={k}")
    if k > T:
        raise ValueError(f"cannot split T={T} timesteps into k={k} non-empty clusters (k > T)")
    if min_size < 1:
        raise ValueError(f"min_size must be >= 1, got {min_size}")
    if max_size is not None and max_size < min_size:
        raise ValueError(f"max_size={max_size} is smaller than min_size={min_size}")
    if k * min_size > T:
        raise ValueError(f"k·min_size = {k}·{min_size} = {k * min_size} exceeds T={T}: infeasible")
    if max_size is not None and k * max_size < T:
        raise ValueError(f"k·max_size = {k}·{max_size} = {k * max_size} is less than T={T}: infeasible")


def interval_cluster(
    cost: IntervalCost,
    k: int,
    min_size: int = 1,
    max_size: int | None = None,
    block_size: int = 1024,
) -> tuple[list[tuple[int, int]], float]:
    """Exact optimal partition of ``0 … T-1`` into k contiguous intervals for an interval cost.

    Returns ``(intervals, total_cost)``. Ties are broken towards the earliest boundary.
    Work is O(k·T²) vectorised, memory O(k·T + T·block_size).
    """
    T = cost.num_timesteps
    _check_k(T, k, min_size, max_size)
    max_w = T if max_size is None else max_size
    INF = np.inf
    # D[m, i]: best cost of 0..i with m+1 clusters; S[m, i]: start of the last cluster.
    D = np.full((k, T), INF)
    S = np.zeros((k, T), dtype=np.int64)
    firsts_all = np.arange(T, dtype=np.int64)
    for i0 in range(0, T, block_size):
        i1 = min(T, i0 + block_size)
        lasts = np.arange(i0, i1, dtype=np.int64)
        # Only starts l with last - max_w + 1 <= l <= last are ever useful.
        l_lo = max(0, i0 - max_w + 1)
        firsts = firsts_all[l_lo:i1]
        C = cost.block(firsts, lasts)  # (n_firsts, n_lasts); C[a, b] = cost(firsts[a], lasts[b])
        width = lasts[None, :] - firsts[:, None] + 1
        C = np.where((width >= min_size) & (width <= max_w), C, INF)
        # One cluster: the interval must start at 0.
        if l_lo == 0:
            D[0, i0:i1] = C[0]
            S[0, i0:i1] = 0
        for m in range(1, k):
            # Last cluster starts at l >= 1, previous m clusters cover 0..l-1.
            prev = np.full(firsts.size, INF)
            ok = firsts >= 1
            prev[ok] = D[m - 1, firsts[ok] - 1]
            tot = prev[:, None] + C
            arg = np.argmin(tot, axis=0)
            D[m, i0:i1] = tot[arg, np.arange(lasts.size)]
            S[m, i0:i1] = firsts[arg]
    best = D[k - 1, T - 1]
    if not np.isfinite(best):
        raise ValueError(
            f"no partition of T={T} into k={k} clusters satisfies min_size={min_size}, "
            f"max_size={max_size} with finite cost"
        )
    out: list[tuple[int, int]] = []
    i = T - 1
    for m in range(k - 1, -1, -1):
        l = int(S[m, i])
        out.append((l, i))
        i = l - 1
    out.reverse()
    assert out[0][0] == 0, out
    return out, float(best)


def cluster_timesteps(
    schedule: NoiseSchedule | str | Any | None = None,
    k: int = 5,
    cost: str | IntervalCost | Callable[[int, int], float] | np.ndarray | torch.Tensor = "logsnr",
    *,
    num_timesteps: int | None = None,
    affinity: np.ndarray | torch.Tensor | str | Path | None = None,
    min_size: int = 1,
    max_size: int | None = None,
) -> TaskClusters:
    """Cluster the T denoising tasks into k intervals, exactly (the paper's interval clustering).

    >>> cluster_timesteps("linear", k=5, cost="timestep").one_indexed()
    [(1, 200), (201, 400), (401, 600), (601, 800), (801, 1000)]
    """
    sch = None if schedule is None else NoiseSchedule.coerce(schedule, num_timesteps or 1000)
    if num_timesteps is None and sch is not None:
        num_timesteps = sch.num_timesteps
    ic = make_interval_cost(cost, num_timesteps, sch, affinity)
    if num_timesteps is not None and ic.num_timesteps != num_timesteps:
        raise ValueError(f"cost is defined on T={ic.num_timesteps} timesteps but T={num_timesteps}")
    intervals, total = interval_cluster(ic, k, min_size=min_size, max_size=max_size)
    meta: dict[str, Any] = {"min_size": min_size, "max_size": max_size}
    if sch is not None:
        meta["schedule"] = sch.to_dict() if sch.name != "custom" else {"name": "custom"}
    return TaskClusters(tuple(intervals), cost=total, cost_name=ic.name, meta=meta)


def interval_costs(clusters: TaskClusters, cost: IntervalCost) -> np.ndarray:
    """The cost of each interval of ``clusters`` under ``cost``."""
    return np.array([cost(a, b) for a, b in clusters.intervals])


def _as_list(x: Iterable[int]) -> list[int]:
    return [int(v) for v in x]
