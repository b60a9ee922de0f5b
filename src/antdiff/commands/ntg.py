"""``antdiff ntg``: the negative transfer gap of a jointly trained model (O2)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "negative transfer gap per timestep interval: FID(joint + specialist on I) − FID(joint) (O2)"


def _ints(s: str, what: str) -> list[int]:
    try:
        return [int(v) for v in s.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{what} must be comma-separated integers, got {s!r}") from None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ntg",
        help=HELP,
        description=HELP
        + ". NTG < 0 means negative transfer on I. Specialists copy the joint run's config with "
        "diffusion.timestep_range (same model, data and budget, no ANT balancer). Each FID is "
        "saved as it is measured, so an interrupted study resumes; results: ntg.json, ntg.md, ntg.png.",
    )
    p.add_argument(
        "--joint", required=True, metavar="RUN", help="the jointly trained run (vanilla or ANT)"
    )
    p.add_argument(
        "--intervals",
        default="uniform:5",
        help="uniform:K (default uniform:5 = the paper's [1,200]…[801,1000]), a clusters.json, "
        "a run directory, or 0-indexed first-last pairs such as 0-199,800-999",
    )
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument(
        "--train-specialists",
        action="store_true",
        help="train (or resume) one specialist per interval under OUT/specialists",
    )
    g.add_argument(
        "--specialists",
        nargs="+",
        metavar="RUN",
        help="existing specialist runs (matched by diffusion.timestep_range)",
    )
    p.add_argument(
        "--specialist-seeds",
        default=None,
        metavar="S1,S2",
        help="seeds of the trained specialists (default: the joint run's seed)",
    )
    p.add_argument(
        "--train-steps",
        type=int,
        default=None,
        help="specialist steps (default: the joint run's train.steps, the same budget)",
    )
    p.add_argument(
        "--train-only", action="store_true", help="train the specialists and stop (no sampling)"
    )
    p.add_argument(
        "--devices",
        default="auto",
        help="devices for specialist training, e.g. cuda:0,cuda:1 (one trainer each)",
    )
    p.add_argument(
        "--per-device", type=int, default=1, help="concurrent trainers per device (default 1)"
    )
    p.add_argument(
        "--time-limit",
        type=float,
        default=None,
        metavar="SEC",
        help="stop training after SEC seconds (checkpointed; rerun to continue)",
    )
    p.add_argument(
        "--ref",
        default=None,
        metavar="REF.npz",
        help="reference statistics (antdiff stats) for FID",
    )
    p.add_argument("--n", type=int, default=10_000, help="samples per FID (default 10000)")
    p.add_argument(
        "--seeds",
        default="0",
        metavar="S1,S2",
        help="sampling seeds; each hybrid is paired with the joint model's FID of the same seed",
    )
    p.add_argument(
        "--sampler",
        choices=("ddpm", "ddim"),
        default=None,
        help="default: the joint run's sample.sampler",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="sampling steps (default: the joint run's sample.steps)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="sampling batch (default: the joint run's sample.batch_size)",
    )
    p.add_argument("--device", default="auto", help="device for sampling and FID")
    p.add_argument(
        "--precision",
        choices=("fp32", "bf16", "fp16"),
        default="fp32",
        help="autocast for sampling (default fp32)",
    )
    p.add_argument(
        "--no-ema", action="store_true", help="sample the raw weights instead of the EMA"
    )
    p.add_argument(
        "--inception",
        default=None,
        metavar="PATH",
        help="FID Inception weights (default: installed)",
    )
    p.add_argument(
        "--shard",
        default="0/1",
        metavar="I/N",
        help="measure only part I of N of the FIDs (run N processes on N GPUs; the parts are "
        "contiguous and balanced for the sampling cost)",
    )
    p.add_argument(
        "--no-share-trajectory",
        action="store_true",
        help="sample every hybrid on its own instead of branching it off the joint model's "
        "trajectory above its interval (the same images either way; sharing holds a sampling "
        "seed's specialists in memory at once and runs about half the reverse steps)",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..analysis.ntg_pipeline import (
        NTGSetup,
        find_specialists,
        load_run_config,
        measure_ntg,
        parse_intervals,
        train_specialists,
    )

    out = Path(args.out)
    joint = Path(args.joint)
    cfg = load_run_config(joint)
    T = int((cfg.get("diffusion") or {}).get("num_timesteps", 1000))
    intervals = parse_intervals(args.intervals, T)
    try:
        i_shard, n_shard = (int(v) for v in args.shard.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like I/N, e.g. 0/4, got {args.shard!r}") from None

    def say(msg: str) -> None:
        print(f"ntg: {msg}", file=sys.stderr, flush=True)

    if args.train_specialists:
        seeds = (
            _ints(args.specialist_seeds, "--specialist-seeds") if args.specialist_seeds else None
        )
        specialists = train_specialists(
            joint,
            intervals,
            out / "specialists",
            seeds=seeds,
            devices=[d.strip() for d in args.devices.split(",") if d.strip()],
            per_device=args.per_device,
            steps=args.train_steps,
            time_limit=args.time_limit,
            progress=say,
        )
        from ..analysis.ntg_pipeline import run_finished

        unfinished = [
            str(r)
            for v in specialists.values()
            for _, r in v
            if not run_finished(r, int(load_run_config(r / "specialist.yaml")["train"]["steps"]))
        ]
        if unfinished:
            say(
                f"{len(unfinished)} specialist(s) not finished yet; run the same command again to continue"
            )
            return 0
        if args.train_only:
            say("specialists trained")
            return 0
    else:
        if args.train_only:
            raise ValueError("--train-only needs --train-specialists")
        specialists = find_specialists(args.specialists, intervals)
    if args.ref is None:
        raise ValueError(
            "--ref REF.npz (reference statistics from `antdiff stats`) is needed to measure FID"
        )
    sample_cfg = cfg.get("sample") or {}
    setup = NTGSetup(
        joint=joint,
        specialists=specialists,
        ref=Path(args.ref),
        n=args.n,
        sampling_seeds=_ints(args.seeds, "--seeds"),
        sampler=args.sampler or sample_cfg.get("sampler", "ddim"),
        steps=args.steps or int(sample_cfg.get("steps", 100)),
        batch_size=args.batch_size or int(sample_cfg.get("batch_size", 256)),
        device=args.device,
        use_ema=not args.no_ema,
        autocast=None if args.precision == "fp32" else args.precision,
        inception=args.inception,
    )
    table = measure_ntg(
        setup,
        out,
        shard=(i_shard, n_shard),
        progress=say,
        share_trajectory=not args.no_share_trajectory,
    )
    if table is None:
        return 0
    from .. import plots

    plots.plot_ntg(table, out / "ntg.png")
    print(table.to_markdown(), end="")
    print(f"written: {out / 'ntg.json'}, {out / 'ntg.md'}, {out / 'ntg.png'}")
    return 0
