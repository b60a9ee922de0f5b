"""``antdiff cluster``: exact interval clustering of a noise schedule's denoising tasks."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from ..clustering import COST_NAMES, cluster_timesteps, interval_costs, make_interval_cost
from ..schedule import SCHEDULE_NAMES, NoiseSchedule

HELP = "cluster the T denoising tasks into k contiguous intervals (exact DP)"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "cluster",
        help=HELP,
        description=HELP + ". Intervals are printed 0-indexed and inclusive "
        "(the paper's 1-indexed timesteps are ours + 1).",
    )
    p.add_argument(
        "--schedule", default="linear", help=f"one of {', '.join(SCHEDULE_NAMES)} (default linear)"
    )
    p.add_argument(
        "--timesteps", "-T", type=int, default=1000, help="number of timesteps T (default 1000)"
    )
    p.add_argument("--beta-start", type=float, default=None, help="override the schedule's first β")
    p.add_argument("--beta-end", type=float, default=None, help="override the schedule's last β")
    p.add_argument("--k", "-k", type=int, default=5, help="number of clusters (default 5)")
    p.add_argument(
        "--cost", default="logsnr", help=f"one of {', '.join(COST_NAMES)} (default logsnr)"
    )
    p.add_argument(
        "--affinity",
        default=None,
        help="task-affinity matrix (.npy, T×T or bins×bins) for --cost affinity",
    )
    p.add_argument("--min-size", type=int, default=1, help="minimum cluster width")
    p.add_argument("--max-size", type=int, default=None, help="maximum cluster width")
    p.add_argument(
        "--json", action="store_true", help="print exactly one JSON object instead of the table"
    )
    p.add_argument(
        "--plot",
        default=None,
        metavar="PNG",
        help="write a figure of the clusters over t and log-SNR",
    )
    p.add_argument(
        "--out", default=None, metavar="JSON", help="also save the clusters (TaskClusters JSON)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.cost not in COST_NAMES:
        raise ValueError(f"unknown --cost {args.cost!r}; choose one of {', '.join(COST_NAMES)}")
    if args.affinity is not None and args.cost != "affinity":
        raise ValueError("--affinity is only used with --cost affinity")
    if args.cost == "affinity" and args.affinity is None:
        raise ValueError("--cost affinity needs --affinity A.npy (see `antdiff affinity`)")
    if args.k <= 0:
        raise ValueError(f"--k must be a positive integer, got {args.k}")
    if args.affinity is not None and not Path(args.affinity).is_file():
        raise ValueError(f"affinity file {args.affinity!r} does not exist")
    schedule = NoiseSchedule.from_name(
        args.schedule, args.timesteps, args.beta_start, args.beta_end
    )
    cost = make_interval_cost(args.cost, schedule.num_timesteps, schedule, args.affinity)
    clusters = cluster_timesteps(
        schedule,
        args.k,
        cost,
        min_size=args.min_size,
        max_size=args.max_size,
    )
    if args.out:
        clusters.to_json(args.out, indent=2)
    if args.plot:
        from ..plots import plot_clusters

        plot_clusters(clusters, schedule, args.plot)
    per = interval_costs(clusters, cost)
    lam = schedule.logsnr
    if args.json:
        obj = {
            "intervals": [list(iv) for iv in clusters.intervals],
            "cost": clusters.cost,
            "cost_name": args.cost,
            "k": clusters.k,
            "num_timesteps": clusters.num_timesteps,
            "widths": clusters.widths.tolist(),
            "interval_costs": per.tolist(),
            "logsnr_ranges": [[float(lam[a]), float(lam[b])] for a, b in clusters.intervals],
            "schedule": schedule.to_dict(),
        }
        json.dump(obj, sys.stdout)
        sys.stdout.write("\n")
        return 0
    total = float(np.sum(per))
    print(
        f"{clusters.k} clusters of T={clusters.num_timesteps} ({args.schedule} schedule, "
        f"{args.cost} cost, total {clusters.cost:.6g}); intervals 0-indexed, inclusive"
    )
    header = f"{'#':>3}  {'interval':>13}  {'width':>6}  {'log-SNR range':>17}  {'cost share':>10}"
    print(header)
    print("-" * len(header))
    for i, (a, b) in enumerate(clusters.intervals):
        share = per[i] / total if total else float("nan")
        print(
            f"{i:>3}  {f'[{a}, {b}]':>13}  {b - a + 1:>6}  "
            f"{f'{lam[a]:+.2f} … {lam[b]:+.2f}':>17}  {share:>10.1%}"
        )
    if args.cost == "snr" and clusters.widths.max() > 0.9 * clusters.num_timesteps:
        print(
            f"note: the raw-SNR cost puts {clusters.widths.max() / clusters.num_timesteps:.0%} of "
            "the steps in one cluster (SNR spans orders of magnitude); --cost logsnr is usually wanted."
        )
    return 0
