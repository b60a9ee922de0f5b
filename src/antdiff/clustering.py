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
from collections.abc import Callable, Sequence
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
    "interval_costs",
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
    # Two clusterings are equal when their intervals are (whatever cost produced them).
    cost: float | None = field(default=None, compare=False)
    cost_name: str | None = field(default=None, compare=False)
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        iv = tuple((int(a), int(b)) for a, b in self.intervals)
        if not iv:
            raise ValueError("TaskClusters needs at least one interval")
        if iv[0][0] != 0:
            raise ValueError(f"the first interval must start at t=0, got {iv[0]}")
        for (a, b), (c, _) in zip(iv, iv[1:]):
            if c != b + 1:
                raise ValueError(
                    f"intervals must be contiguous and ordered: {(a, b)} then {(c, _)}"
                )
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

    ``block(l0, l1, h0, h1)`` returns the matrix ``C[b, a] = cost(l0 + a, h0 + b)`` — one row
    per *last* index, one column per *first* index — for the contiguous ranges ``l0 ≤ first < l1``
    and ``h0 ≤ last < h1``; entries with first > last are ``inf``. The DP only ever calls
    ``block``; rows are lasts because reductions along contiguous rows are ~20× faster.
    """

    def __init__(self, num_timesteps: int, name: str) -> None:
        self.num_timesteps = num_timesteps
        self.name = name

    def block(self, l0: int, l1: int, h0: int, h1: int) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, first: int, last: int) -> float:
        return float(self.block(first, first + 1, last, last + 1)[0, 0])

    @staticmethod
    def _mask_invalid(C: np.ndarray, l0: int, h0: int) -> np.ndarray:
        """Set C[b, a] = inf where first l0 + a > last h0 + b (in place)."""
        nb, na = C.shape
        a_min = max(h0 + 1 - l0, 0)  # columns with first > h0 can be invalid
        if a_min < na:
            sub = C[:, a_min:]
            b = np.arange(nb)[:, None] + h0
            a = np.arange(a_min, na)[None, :] + l0
            sub[a > b] = np.inf
        return C


def _hankel(x: np.ndarray, offset: int, nrows: int, ncols: int) -> np.ndarray:
    """Read-only view H[i, j] = x[offset + i + j] (no copy)."""
    x = np.ascontiguousarray(x)
    assert offset >= 0 and offset + nrows + ncols - 2 < x.size
    s = x.strides[0]
    return np.lib.stride_tricks.as_strided(
        x[offset:], shape=(nrows, ncols), strides=(s, s), writeable=False
    )


class _MedianL1Cost(IntervalCost):
    """Σ_{t∈[l,r]} |v_t − v_c|, c = (l+r+1)//2, for monotone v, in O(1) per interval.

    With prefix sums S and s = l + r (so c = ⌈s/2⌉ and 2c − s = s mod 2):

        cost(l, r) = S[r+1] + S[l] − G[l + r],   G[s] = S[c+1] + S[c] − (s mod 2)·v_c,

    so a block of costs is a row vector + a column vector − a Hankel matrix (a strided view).
    """

    def __init__(self, values: np.ndarray, name: str, tie_break: bool = False) -> None:
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
        s = np.arange(2 * v.size - 1)
        c = (s + 1) // 2
        self._G = self._S[c + 1] + self._S[c] - (s % 2) * self._v[c]
        # Integer-valued costs (the timestep cost) tie a lot: many partitions reach the optimum.
        # A penalty ε·width² < 1/2 in total picks the most balanced optimum (uniform widths)
        # without ever changing the optimal integer cost.
        self._eps = 0.25 / (v.size**2 + 1) if tie_break else 0.0

    def block(self, l0: int, l1: int, h0: int, h1: int) -> np.ndarray:
        na, nb = l1 - l0, h1 - h0
        C = self._S[None, l0:l1] + self._S[h0 + 1 : h1 + 1, None]
        C -= _hankel(self._G, l0 + h0, nb, na)
        np.maximum(C, 0.0, out=C)  # rounding can leave -1e-12 on singletons
        if self._eps:
            w = (np.arange(h0, h1)[:, None] - np.arange(l0, l1)[None, :] + 1).astype(np.float64)
            C += self._eps * w * w
        return self._mask_invalid(C, l0, h0)

    def exact(self, first: int, last: int) -> float:
        """The cost without the tie-break term."""
        C = self._S[first] + self._S[last + 1] - self._G[first + last]
        return max(float(C), 0.0)


class _AffinityCost(IntervalCost):
    """−Σ_{t∈[l,r]} A[c, t] with row prefix sums P of A (O(T²) memory, O(1) per interval)."""

    def __init__(self, affinity: np.ndarray, num_timesteps: int | None = None) -> None:
        A = _load_matrix(affinity, "affinity")
        if A.shape[0] != A.shape[1]:
            raise ValueError(f"the affinity matrix must be square, got shape {A.shape}")
        n = A.shape[0]
        T = n if num_timesteps is None else int(num_timesteps)
        if T != n:
            if T < n:
                raise ValueError(
                    f"affinity matrix is {n}×{n} but only T={T} timesteps were asked for"
                )
            # A binned matrix: timestep t belongs to bin ⌊t·n/T⌋.
            bins = (np.arange(T) * n) // T
            A = A[np.ix_(bins, bins)]
        if not np.all(np.isfinite(A)):
            raise ValueError("the affinity matrix contains NaN or inf")
        super().__init__(T, "affinity")
        self._P = np.concatenate([np.zeros((T, 1)), np.cumsum(A, axis=1)], axis=1)

    def block(self, l0: int, l1: int, h0: int, h1: int) -> np.ndarray:
        # cost(l, r) = P[c, l] − P[c, r+1] with c = (l+r+1)//2. Within one parity class of
        # (r, l), stepping r or l by 2 moves c by exactly 1, so both terms are regular strided
        # views of the flattened P: no index arrays, no gathers.
        T = self.num_timesteps
        Pf = self._P.reshape(-1)
        e = Pf.strides[0]
        row = T + 1
        C = np.empty((h1 - h0, l1 - l0))
        for pr in (0, 1):
            for pl in (0, 1):
                r_s, l_s = h0 + pr, l0 + pl
                ni, nj = len(range(r_s, h1, 2)), len(range(l_s, l1, 2))
                if ni == 0 or nj == 0:
                    continue
                c_s = (l_s + r_s + 1) // 2
                first = np.lib.stride_tricks.as_strided(
                    Pf[c_s * row + l_s :], (ni, nj), (row * e, (row + 2) * e), writeable=False
                )
                second = np.lib.stride_tricks.as_strided(
                    Pf[c_s * row + r_s + 1 :], (ni, nj), ((row + 2) * e, row * e), writeable=False
                )
                np.subtract(first, second, out=C[pr::2, pl::2])
        return self._mask_invalid(C, l0, h0)


class _MatrixCost(IntervalCost):
    def __init__(self, C: np.ndarray, name: str = "matrix") -> None:
        C = _load_matrix(C, "cost")
        if C.ndim != 2 or C.shape[0] != C.shape[1]:
            raise ValueError(f"a cost matrix must be T×T, got shape {C.shape}")
        iu = np.triu_indices(C.shape[0])
        if np.isnan(C[iu]).any():
            raise ValueError("the cost matrix contains NaN on a valid interval (first <= last)")
        super().__init__(C.shape[0], name)
        self._C = C

    def block(self, l0: int, l1: int, h0: int, h1: int) -> np.ndarray:
        return self._mask_invalid(self._C[l0:l1, h0:h1].T.copy(), l0, h0)


def _load_matrix(obj: Any, what: str) -> np.ndarray:
    if isinstance(obj, (str, Path)):
        p = Path(obj)
        try:
            A = np.load(p, allow_pickle=False)
        except FileNotFoundError:
            raise ValueError(f"{what} file {str(p)!r} does not exist") from None
        except Exception as e:
            raise ValueError(f"cannot read {what} file {str(p)!r} as a .npy array: {e}") from None
        if isinstance(A, np.lib.npyio.NpzFile):
            raise ValueError(f"{what} file {str(p)!r} is an .npz archive; pass a .npy matrix")
        obj = A
    A = (
        np.asarray(torch.as_tensor(obj).double().cpu().numpy())
        if isinstance(obj, torch.Tensor)
        else np.asarray(obj, dtype=np.float64)
    )
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
            raise ValueError(
                f"unknown clustering cost {cost!r}; choose one of {', '.join(COST_NAMES)}"
            )
        if cost == "timestep":
            if num_timesteps is None:
                if schedule is None:
                    raise ValueError("the timestep cost needs num_timesteps or a schedule")
                num_timesteps = NoiseSchedule.coerce(schedule).num_timesteps
            return _MedianL1Cost(
                np.arange(num_timesteps, dtype=np.float64), "timestep", tie_break=True
            )
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
            raise ValueError(
                "the affinity cost needs a task-affinity matrix (affinity=A or a .npy path)"
            )
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
        raise ValueError(
            f"k·max_size = {k}·{max_size} = {k * max_size} is less than T={T}: infeasible"
        )


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
    for i0 in range(0, T, block_size):
        i1 = min(T, i0 + block_size)
        nb = i1 - i0
        # Only starts l with last - max_w + 1 <= l <= last - min_size + 1 are ever useful.
        l0 = max(0, i0 - max_w + 1)
        l1 = i1 - min_size + 1
        if l1 <= l0:
            continue
        C = cost.block(l0, l1, i0, i1)  # C[b, a] = cost(l0 + a, i0 + b)
        if min_size > 1 or max_size is not None:
            w = np.arange(i0, i1)[:, None] - np.arange(l0, l1)[None, :] + 1
            C[(w < min_size) | (w > max_w)] = INF
        if l0 == 0:  # one cluster: the interval must start at 0
            D[0, i0:i1] = C[:, 0]
        rows = np.arange(nb)
        buf = np.empty_like(C)
        for m in range(1, k):
            # The last cluster starts at l >= max(m, 1); clusters 1..m cover 0..l-1.
            a0 = max(m - l0, 0)
            if l0 + a0 >= l1:
                break
            prev = D[m - 1, l0 + a0 - 1 : l1 - 1]
            tot = np.add(C[:, a0:], prev[None, :], out=buf[:, a0:])
            arg = np.argmin(tot, axis=1)
            D[m, i0:i1] = tot[rows, arg]
            S[m, i0:i1] = l0 + a0 + arg
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
    if isinstance(ic, _MedianL1Cost) and ic._eps:
        total = float(sum(ic.exact(a, b) for a, b in intervals))
    meta: dict[str, Any] = {"min_size": min_size, "max_size": max_size}
    if sch is not None:
        meta["schedule"] = sch.to_dict() if sch.name != "custom" else {"name": "custom"}
    return TaskClusters(tuple(intervals), cost=total, cost_name=ic.name, meta=meta)


def interval_costs(clusters: TaskClusters, cost: IntervalCost) -> np.ndarray:
    """The cost of each interval of ``clusters`` under ``cost`` (without tie-break terms)."""
    f = cost.exact if isinstance(cost, _MedianL1Cost) else cost
    return np.array([f(a, b) for a, b in clusters.intervals])
