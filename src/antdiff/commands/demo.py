"""``antdiff demo``: vanilla vs ANT-UW on the embedded digits, on a CPU, in a few minutes."""

from __future__ import annotations

import argparse

HELP = "train vanilla and ANT-UW on the embedded digits (CPU, a few minutes) and compare them"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help=HELP,
        description=HELP
        + ": sample grids from the same seeds, loss curves, per-cluster losses, the learned UW "
        "weights, and FID when the FID Inception network is installed (antdiff[eval]). "
        "Running it again continues the runs in --out instead of overwriting them.",
    )
    p.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    p.add_argument("--steps", type=int, default=None, help="training steps per run (default 600)")
    p.add_argument(
        "--quick", action="store_true", help="a tiny model and a few steps (a smoke test, no FID)"
    )
    p.add_argument("--no-fid", action="store_true", help="skip the FID comparison")
    p.add_argument(
        "--fid-samples", type=int, default=200, help="samples per model for FID (default 200)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..training.demo import run_demo

    if args.fid_samples < 2:
        raise ValueError(f"--fid-samples must be >= 2, got {args.fid_samples}")
    result = run_demo(
        args.out,
        steps=args.steps,
        quick=args.quick,
        fid=not args.no_fid,
        fid_samples=args.fid_samples,
    )
    print(f"done: {result.report}")
    return 0
