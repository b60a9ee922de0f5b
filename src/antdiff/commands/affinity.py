"""``antdiff affinity``: task affinity (gradient cosine) between denoising tasks of trained runs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from . import refuse_to_replace

if TYPE_CHECKING:
    from ..analysis.affinity import TaskAffinity

HELP = "task-affinity matrix (gradient cosines between timestep bins) of trained checkpoints (O1)"


def register(sub: argparse._SubParsersAction) -> None:
    from ..analysis.affinity import DEFAULT_SKETCH_DIM

    p = sub.add_parser(
        "affinity",
        help=HELP,
        description=HELP
        + ". Each bin's gradient is that of the mean loss over a fixed image set with timesteps "
        "spread evenly over the bin (fresh seeded noise per bin); the matrix is averaged over "
        "the checkpoints. Writes affinity.npy (feeds `antdiff cluster --cost affinity "
        "--affinity`), affinity.json, affinity.png and affinity_gap.png.",
    )
    p.add_argument(
        "runs",
        nargs="+",
        metavar="RUN_OR_CHECKPOINT",
        help="run directories (latest checkpoint) or checkpoint files; or outputs of earlier "
        "`antdiff affinity` calls with the same settings, pooled over all their checkpoints "
        "(e.g. the mean of two training seeds' matrices) without computing anything",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument(
        "--force", action="store_true", help="replace an affinity result already in --out"
    )
    p.add_argument(
        "--bins",
        type=int,
        default=10,
        help="number of equal timestep bins (default 10; T for every timestep)",
    )
    p.add_argument(
        "--timesteps",
        default=None,
        metavar="T1,T2,...",
        help="single timesteps instead of bins (0-indexed)",
    )
    p.add_argument(
        "--images", type=int, default=1000, help="fixed training images per bin (default 1000)"
    )
    p.add_argument(
        "--mode",
        choices=("auto", "exact", "sketch"),
        default="auto",
        help="exact: full fp32 gradients (streamed when they do not all fit --max-memory-gb); "
        "sketch: count sketch to --sketch-dim dims; auto: exact if all bins fit, else sketch",
    )
    p.add_argument(
        "--sketch-dim",
        type=int,
        default=None,
        metavar="D",
        help=f"sketch dimension (implies --mode sketch unless --mode is given; default {DEFAULT_SKETCH_DIM})",
    )
    p.add_argument(
        "--max-memory-gb",
        type=float,
        default=4.0,
        help="budget for stored gradients in exact mode (default 4)",
    )
    p.add_argument(
        "--data", default=None, metavar="SPEC", help="training data (default: the run's data.spec)"
    )
    p.add_argument(
        "--all-checkpoints",
        action="store_true",
        help="average over every kept checkpoint of each run",
    )
    p.add_argument(
        "--ema",
        action="store_true",
        help="use the EMA weights (default: the raw weights the optimiser visited)",
    )
    p.add_argument(
        "--train-mode",
        action="store_true",
        help="model.train() during the gradients (dropout), as the official script",
    )
    p.add_argument(
        "--batch-size", type=int, default=64, help="samples per forward/backward (default 64)"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the image subset, timesteps, noise and sketch"
    )
    p.add_argument(
        "--split-half",
        action="store_true",
        help="also the matrices of each half of the images (affinity_halves.npy) and their "
        "agreement: how much of the matrix is the measurement's draw (reliability of the whole, "
        "by Spearman-Brown); no extra gradient passes, exact mode stores two vectors per bin",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..analysis.affinity import DEFAULT_SKETCH_DIM, TaskAffinity, affinity_metadata_path
    from ..analysis.affinity_pipeline import affinity_of_runs, write_affinity_outputs

    refuse_to_replace(Path(args.out) / "affinity.json", "an affinity result", args.force)
    earlier = [affinity_metadata_path(r) for r in args.runs]
    if any(earlier):
        if not all(earlier):
            others = [r for r, e in zip(args.runs, earlier) if e is None]
            raise ValueError(
                f"{', '.join(map(repr, others))} not affinity outputs, the others are: give "
                "either runs/checkpoints (to compute a matrix) or affinity outputs (to pool them)"
            )
        pooled = TaskAffinity.pooled(
            [TaskAffinity.load(e) for e in earlier],  # type: ignore[arg-type]
            sources=[str(e) for e in earlier],
        )
        print(f"pooled {len(earlier)} affinity results ({pooled.num_checkpoints} checkpoints)")
        _summarize(pooled, write_affinity_outputs(pooled, args.out))
        return 0

    mode = args.mode
    if args.sketch_dim is not None and mode == "auto":
        mode = "sketch"
    if args.sketch_dim is not None and mode == "exact":
        raise ValueError("--sketch-dim is for the sketch mode; drop it or use --mode sketch")
    if args.max_memory_gb <= 0:
        raise ValueError(f"--max-memory-gb must be > 0, got {args.max_memory_gb}")
    bins: object = args.bins
    if args.timesteps:
        try:
            bins = sorted({int(t) for t in args.timesteps.split(",") if t.strip()})
        except ValueError:
            raise ValueError(
                f"--timesteps must be comma-separated integers, got {args.timesteps!r}"
            ) from None
    tty = sys.stderr.isatty()

    def progress(msg: str) -> None:
        if tty:
            print(f"\r\033[Kaffinity: {msg}", end="", file=sys.stderr, flush=True)

    aff = affinity_of_runs(
        args.runs,
        bins,  # type: ignore[arg-type]
        num_images=args.images,
        mode=mode,
        sketch_dim=args.sketch_dim or DEFAULT_SKETCH_DIM,
        data=args.data,
        batch_size=args.batch_size,
        seed=args.seed,
        device=args.device,
        use_ema=args.ema,
        all_checkpoints=args.all_checkpoints,
        max_gradient_bytes=int(args.max_memory_gb * 2**30),
        train_mode=args.train_mode,
        progress=progress,
        split_half=args.split_half,
    )
    if tty:
        print(file=sys.stderr)
    _summarize(aff, write_affinity_outputs(aff, args.out))
    return 0


def _summarize(aff: TaskAffinity, paths: dict[str, Path]) -> None:
    """What was measured and written, O1's statistics, and how to cluster with the matrix."""
    from ..schedule import NoiseSchedule

    sch = NoiseSchedule.from_dict(aff.meta["schedule"]) if aff.meta.get("schedule") else None
    corr = aff.distance_correlation(sch)
    n = len(aff.bins)
    d = f", d={aff.sketch_dim}" if aff.sketch_dim else ""
    print(
        f"task affinity: {n}×{n} bins, {aff.num_images} images, {aff.num_checkpoints} checkpoint(s), {aff.mode}{d}"
    )
    if "gradient_evaluations" in aff.meta:  # computed now (a pooled result computed nothing)
        print(
            f"  {aff.meta['gradient_evaluations']} bin gradients in {aff.meta['seconds']:.1f} s; memory bound {aff.meta['memory']['bytes'] / 2**20:.0f} MiB"
        )
    for key, label in (("timestep", "|Δt|"), ("logsnr", "|Δlog-SNR|")):
        r = corr.get(key, {}).get("spearman")
        if r is not None:
            print(f"  Spearman ρ(affinity, {label}) = {r:+.3f} (p = {corr[key]['p_value']:.2g})")
    if n > 1:
        gaps = ", ".join(f"{g}: {v:+.2f}" for g, v in aff.mean_at_gaps().items())
        print(f"  mean affinity by gap in bins: {gaps}")
        shares = " / ".join(f"{100 * v:.1f}%" for v in aff.share_below().values())
        print(f"  pairs below 0 / -0.2 / -0.3: {shares}")
    half = aff.meta.get("split_half")
    if half and half.get("r") is not None:
        a, b = half["images"]
        print(
            f"  split-half: the matrices of {a} and {b} images agree at r = {half['r']:.2f}; "
            f"reliability of the whole (Spearman-Brown) {half['spearman_brown']:.2f}"
        )
    for k, v in paths.items():
        print(f"  {k}: {v}")
    matrix = paths.get("full", paths["matrix"])
    sched = f" --schedule {sch.name}" if sch is not None and sch.name != "custom" else ""
    print(
        f"cluster with: antdiff cluster --cost affinity --affinity {matrix}{sched} "
        f"-T {aff.bins.num_timesteps}"
    )
