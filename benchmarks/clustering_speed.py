"""Wall time of exact interval clustering (issue 2's benchmark; not a timed test).

Targets on a 2-core CPU: T=1000, k=5 ≤ 20 ms for each cost; T=10,000, k=8 ≤ 2 s.
Each number is the median of several runs after one warm-up, end to end through
``cluster_timesteps`` (cost precomputation + DP + backtracking).

    python benchmarks/clustering_speed.py [--repeats 7] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np

from antdiff import NoiseSchedule, cluster_timesteps


def affinity_like(T: int, seed: int = 0) -> np.ndarray:
    """A synthetic affinity matrix with the paper's structure (decays with |Δt|)."""
    t = np.arange(T)
    rng = np.random.default_rng(seed)
    A = np.exp(-np.abs(t[:, None] - t[None, :]) / (0.15 * T)) + 0.01 * rng.standard_normal((T, T))
    return (A + A.T) / 2


def bench(T: int, k: int, cost: str, repeats: int) -> float:
    sch = NoiseSchedule.from_name("linear", T)
    A = affinity_like(T) if cost == "affinity" else None
    cluster_timesteps(sch, k, cost, affinity=A)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        cluster_timesteps(sch, k, cost, affinity=A)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    rows = []
    for T, k, limit in ((1000, 5, 0.020), (10_000, 8, 2.0)):
        for cost in ("timestep", "snr", "logsnr", "affinity"):
            reps = args.repeats if T <= 1000 else max(1, args.repeats // 3)
            sec = bench(T, k, cost, reps)
            rows.append(
                {"T": T, "k": k, "cost": cost, "seconds": sec, "target": limit, "ok": sec <= limit}
            )
    cpu = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    print(f"| T | k | cost | median wall time | target | met |  ({cpu})")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['T']} | {r['k']} | {r['cost']} | {r['seconds'] * 1000:.1f} ms | "
            f"≤ {r['target'] * 1000:.0f} ms | {'yes' if r['ok'] else 'NO'} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cpu": cpu, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
