"""The negative transfer gap (the paper's observation O2, Figure 2, and §6.7 after MTL training).

For a timestep interval I, with θ the jointly trained model and φ_I a specialist of the same
architecture and budget trained only on the tasks t ∈ I (paper §3.1):

    NTG(I) = FID(sampler using φ_I for the steps t ∈ I and θ elsewhere) − FID(sampler using θ).

NTG < 0 means the specialist does the steps in I better than the joint model: **negative
transfer** on I. NTG > 0 means the joint model benefits from learning the other tasks (positive
transfer). A joint model trained with an MTL method that mitigates negative transfer shows a
*higher* NTG than the vanilla model (§6.7).

Conventions of this module:

* Pairing. Each hybrid FID is paired with the joint FID of the **same sampling seed** (same
  initial noise; common random numbers cancel most of the sampling noise), so one measurement
  of NTG is ``FID(hybrid, I, specialist r, seed s) − FID(joint, seed s)``.
* Spread. An interval's NTG is the mean over its (specialist seed × sampling seed) pairs, with
  the sample standard deviation (ddof = 1) and the standard error ``std/√n``. With one pair the
  spread is unknown (reported as ``None``).
* Verdict. ``negative transfer`` when the mean is below 0 by more than two standard errors,
  ``positive transfer`` when above 0 by more than two, ``within noise`` otherwise,
  ``single measurement`` without spread.
* Floor. The FID floor (real against real at the same n, from :mod:`antdiff.evaluation`) is
  reported beside the table: it is the FID a perfect model would get at that sample count, so
  it says how much of any FID is finite-sample bias.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_write_text
from ..clustering import TaskClusters

__all__ = ["FIDMeasurement", "NTGRow", "NTGTable", "compute_ntg", "mean_std"]

Interval = tuple[int, int]


@dataclass(frozen=True)
class FIDMeasurement:
    """One FID of one sampler run. ``interval=None`` is the joint model alone; otherwise the
    hybrid with the specialist for ``interval`` (0-indexed, inclusive)."""

    fid: float
    sampling_seed: int
    interval: Interval | None = None
    specialist_seed: int | None = None
    n: int | None = None
    floor: float | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if not math.isfinite(float(self.fid)):
            raise ValueError(f"FID must be finite, got {self.fid}")
        if self.interval is not None:
            a, b = (int(v) for v in self.interval)
            if b < a:
                raise ValueError(f"empty interval {self.interval}")
            object.__setattr__(self, "interval", (a, b))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["interval"] = None if self.interval is None else list(self.interval)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FIDMeasurement:
        d = dict(d)
        if d.get("interval") is not None:
            d["interval"] = tuple(d["interval"])
        return cls(**d)


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof = 1; ``None`` for fewer than 2 values)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("no values")
    return float(v.mean()), (float(v.std(ddof=1)) if v.size > 1 else None)


@dataclass(frozen=True)
class NTGRow:
    """NTG of one interval over its paired measurements."""

    interval: Interval
    values: tuple[float, ...]
    fid_hybrid: tuple[float, ...]
    pairs: tuple[tuple[int | None, int], ...]  # (specialist seed, sampling seed) of each value

    @property
    def mean(self) -> float:
        return mean_std(self.values)[0]

    @property
    def std(self) -> float | None:
        return mean_std(self.values)[1]

    @property
    def sem(self) -> float | None:
        s = self.std
        return None if s is None else s / math.sqrt(len(self.values))

    @property
    def fid_hybrid_mean(self) -> float:
        return mean_std(self.fid_hybrid)[0]

    @property
    def fid_hybrid_std(self) -> float | None:
        return mean_std(self.fid_hybrid)[1]

    @property
    def verdict(self) -> str:
        sem = self.sem
        if sem is None:
            return "single measurement"
        if self.mean < -2 * sem:
            return "negative transfer"
        if self.mean > 2 * sem:
            return "positive transfer"
        return "within noise"

    @property
    def paper_label(self) -> str:
        """The paper's 1-indexed label, e.g. ``[1, 200]`` for (0, 199)."""
        return f"[{self.interval[0] + 1}, {self.interval[1] + 1}]"

    def to_dict(self) -> dict[str, Any]:
        return {
            "interval": list(self.interval),
            "paper_interval": [self.interval[0] + 1, self.interval[1] + 1],
            "ntg_mean": self.mean,
            "ntg_std": self.std,
            "ntg_sem": self.sem,
            "ntg_values": list(self.values),
            "fid_hybrid_mean": self.fid_hybrid_mean,
            "fid_hybrid_std": self.fid_hybrid_std,
            "fid_hybrid_values": list(self.fid_hybrid),
            "pairs": [list(p) for p in self.pairs],
            "verdict": self.verdict,
        }


@dataclass
class NTGTable:
    """NTG per interval for one joint model, with the joint FID, sample count and FID floor."""

    rows: list[NTGRow]
    fid_joint: dict[int, float]  # sampling seed -> FID of the joint model alone
    n: int | None = None
    floor: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    measurements: list[FIDMeasurement] = field(default_factory=list)

    @property
    def intervals(self) -> list[Interval]:
        return [r.interval for r in self.rows]

    @property
    def fid_joint_mean(self) -> float:
        return mean_std(list(self.fid_joint.values()))[0]

    @property
    def fid_joint_std(self) -> float | None:
        return mean_std(list(self.fid_joint.values()))[1]

    def ntg(self) -> np.ndarray:
        """Mean NTG per interval (in row order)."""
        return np.array([r.mean for r in self.rows])

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "antdiff.ntg/1",
            "definition": "NTG(I) = FID(hybrid: specialist on I, joint elsewhere) - FID(joint); "
            "< 0 = negative transfer",
            "n": self.n,
            "fid_floor": self.floor,
            "fid_joint": {str(k): v for k, v in sorted(self.fid_joint.items())},
            "fid_joint_mean": self.fid_joint_mean,
            "fid_joint_std": self.fid_joint_std,
            "rows": [r.to_dict() for r in self.rows],
            "meta": self.meta,
            "measurements": [m.to_dict() for m in self.measurements],
        }

    def save(self, path: str | Path) -> Path:
        p = Path(path)
        if p.suffix != ".json":
            p = p / "ntg.json"
        atomic_write_text(p, json.dumps(self.to_dict(), indent=2) + "\n")
        return p

    @classmethod
    def load(cls, path: str | Path) -> NTGTable:
        p = Path(path)
        if p.is_dir():
            p = p / "ntg.json"
        if not p.exists():
            raise ValueError(f"NTG results {str(p)!r} do not exist")
        d = json.loads(p.read_text())
        if d.get("format") != "antdiff.ntg/1":
            raise ValueError(f"file {str(p)!r} is not an antdiff NTG file")
        ms = [FIDMeasurement.from_dict(m) for m in d.get("measurements", [])]
        if ms:
            table = compute_ntg(ms, [tuple(r["interval"]) for r in d["rows"]])
            table.meta = d.get("meta", {})
            table.floor = d.get("fid_floor", table.floor)
            table.n = d.get("n", table.n)
            return table
        rows = [
            NTGRow(
                tuple(r["interval"]),
                tuple(r["ntg_values"]),
                tuple(r["fid_hybrid_values"]),
                tuple(tuple(p) for p in r["pairs"]),
            )
            for r in d["rows"]
        ]
        return cls(
            rows,
            {int(k): v for k, v in d["fid_joint"].items()},
            d.get("n"),
            d.get("fid_floor"),
            d.get("meta", {}),
        )

    def to_markdown(self, digits: int = 2) -> str:
        """A Markdown table: interval (paper and 0-indexed), NTG mean ± std, hybrid FID, pairs,
        verdict; the joint FID, n and floor in a header line."""

        def pm(m: float, s: float | None) -> str:
            return f"{m:+.{digits}f}" + ("" if s is None else f" ± {s:.{digits}f}")

        js = self.fid_joint_std
        head = (
            f"Joint FID {self.fid_joint_mean:.{digits}f}"
            + ("" if js is None else f" ± {js:.{digits}f}")
            + f" over {len(self.fid_joint)} sampling seed(s)"
            + (f", n = {self.n}" if self.n else "")
            + (
                f", FID floor at this n = {self.floor:.{digits}f}"
                if self.floor is not None
                else ", FID floor not measured"
            )
            + ". NTG < 0 = negative transfer; ± is the std over (specialist seed × sampling seed) pairs."
        )
        lines = [
            head,
            "",
            "| interval (paper, 1-indexed) | t (0-indexed) | NTG (FID) | FID hybrid | pairs | verdict |",
            "|---|---|---|---|---|---|",
        ]
        for r in self.rows:
            hs = r.fid_hybrid_std
            lines.append(
                f"| {r.paper_label} | {r.interval[0]}–{r.interval[1]} | {pm(r.mean, r.std)} | "
                f"{r.fid_hybrid_mean:.{digits}f}{'' if hs is None else f' ± {hs:.{digits}f}'} | "
                f"{len(r.values)} | {r.verdict} |"
            )
        return "\n".join(lines) + "\n"


def compute_ntg(
    measurements: Iterable[FIDMeasurement],
    intervals: Sequence[Interval] | TaskClusters | None = None,
    meta: dict[str, Any] | None = None,
) -> NTGTable:
    """Build the NTG table from FID measurements of the joint model and the hybrids.

    Every hybrid measurement is paired with the joint measurement of the same sampling seed
    (an error if it is missing). ``intervals`` fixes the row order and checks that every
    interval was measured (default: the measured intervals, sorted).
    """
    ms = list(measurements)
    joint: dict[int, float] = {}
    hybrid: dict[Interval, list[FIDMeasurement]] = defaultdict(list)
    for m in ms:
        if m.interval is None:
            if m.sampling_seed in joint and joint[m.sampling_seed] != m.fid:
                raise ValueError(f"two different joint FIDs for sampling seed {m.sampling_seed}")
            joint[m.sampling_seed] = float(m.fid)
        else:
            hybrid[m.interval].append(m)
    if not joint:
        raise ValueError("no FID of the joint model alone: NTG needs FID(joint) as its baseline")
    if isinstance(intervals, TaskClusters):
        intervals = list(intervals.intervals)
    order = (
        [tuple(int(v) for v in iv) for iv in intervals] if intervals is not None else sorted(hybrid)
    )
    unknown = sorted(set(hybrid) - set(order))
    if unknown:
        raise ValueError(
            f"measurements for intervals {unknown} that are not in the requested intervals"
        )
    rows: list[NTGRow] = []
    for iv in order:
        got = hybrid.get(iv)
        if not got:
            raise ValueError(f"no hybrid FID for interval {iv}: train or pass its specialist")
        seen: set[tuple[int | None, int]] = set()
        vals, fids, pairs = [], [], []
        for m in sorted(
            got,
            key=lambda m: (
                m.specialist_seed if m.specialist_seed is not None else -1,
                m.sampling_seed,
            ),
        ):
            key = (m.specialist_seed, m.sampling_seed)
            if key in seen:
                raise ValueError(
                    f"interval {iv}: duplicate measurement for (specialist seed, sampling seed) {key}"
                )
            seen.add(key)
            if m.sampling_seed not in joint:
                raise ValueError(
                    f"interval {iv}: no joint FID for sampling seed {m.sampling_seed} to pair with; "
                    "measure the joint model with the same seeds"
                )
            vals.append(float(m.fid) - joint[m.sampling_seed])
            fids.append(float(m.fid))
            pairs.append(key)
        rows.append(NTGRow(iv, tuple(vals), tuple(fids), tuple(pairs)))
    ns = {m.n for m in ms if m.n is not None}
    if len(ns) > 1:
        raise ValueError(
            f"FIDs were measured with different sample counts {sorted(ns)}; NTG needs one n"
        )
    floors = [m.floor for m in ms if m.floor is not None]
    return NTGTable(
        rows=rows,
        fid_joint=joint,
        n=ns.pop() if ns else None,
        floor=float(np.mean(floors)) if floors else None,
        meta=dict(meta or {}),
        measurements=ms,
    )
