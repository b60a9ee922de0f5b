"""Cost and accuracy of the task-affinity computation (``antdiff.analysis.task_affinity``).

Two modes, both printing a table and writing ``affinity_cost.json`` (+ figures) to ``--out``:

``--error-table`` (CPU is fine; what docs/analysis.md quotes)
    Cosine error of the count sketch against the exact affinity as a function of the sketch
    dimension d, on a stated small model: the ``unet-small`` preset (3-level diffusers UNet) on
    16×16 scikit-learn digits, briefly trained so that gradients of different timesteps really
    differ, 10 uniform bins, 64 images, several sketch seeds. Also the exact/sketch wall time.

``--run RUN [RUN ...]`` (GPU; for the lead's CIFAR-10 run)
    Affinity of trained runs exactly and sketched: wall time, gradient evaluations, peak CUDA
    memory, the memory bound stated by the library, sketch error against exact, Spearman's ρ
    of affinity against |Δt| and |Δlog-SNR|, the heat-map and gap figures. For a short CIFAR-10
    vanilla run (e.g. the joint run of ``benchmarks/ntg_cifar.py``)::

        python benchmarks/affinity_cost.py --run runs/ntg_cifar/joint --bins 10 --images 1000 --out $OUT

    and, for the per-timestep-group cost the official script could not afford::

        python benchmarks/affinity_cost.py --run runs/ntg_cifar/joint --bins 100 --images 256 --modes sketch --out $OUT
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from pathlib import Path

import numpy as np
import torch


def _git_commit() -> str | None:
    try:
        return subprocess.check_output(
            ["git", "rev-parse", "HEAD"], text=True, stderr=subprocess.DEVNULL
        ).strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"


# ============================================================================ error table
def error_table(args: argparse.Namespace) -> dict:
    from sklearn.datasets import load_digits

    from antdiff import NoiseSchedule
    from antdiff.analysis import task_affinity
    from antdiff.analysis.affinity import loss_fn_from_objective
    from antdiff.objective import DiffusionObjective
    from antdiff.training.models import build_denoiser

    torch.manual_seed(0)
    schedule = NoiseSchedule.from_name("linear", 1000)
    objective = DiffusionObjective(schedule)
    model = build_denoiser("unet-small", sample_size=16, in_channels=1, out_channels=1, seed=0)
    P = sum(p.numel() for p in model.parameters())
    x8 = torch.tensor(load_digits().images, dtype=torch.float32)[:, None] / 8.0 - 1.0
    x = torch.nn.functional.interpolate(x8, size=16, mode="bilinear", align_corners=False)
    loss_fn = loss_fn_from_objective(objective)
    # A short training run: at initialisation (zero output conv) all gradients look alike.
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    t0 = time.perf_counter()
    for _ in range(args.train_steps):
        idx = torch.randint(0, x.shape[0], (64,), generator=g)
        t = torch.randint(0, 1000, (64,), generator=g)
        loss = loss_fn(model, x[idx], t, torch.randn((64, 1, 16, 16), generator=g)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    train_s = time.perf_counter() - t0
    images = x[torch.randperm(x.shape[0], generator=g)[: args.images]]
    rows = []
    exact_s = []
    for seed in range(args.seeds):
        t0 = time.perf_counter()
        ex = task_affinity(
            model, loss_fn, images, args.bins, mode="exact", batch_size=args.images, seed=seed
        )
        exact_s.append(time.perf_counter() - t0)
        iu = np.triu_indices(args.bins, 1)
        for d in args.dims:
            t0 = time.perf_counter()
            sk = task_affinity(
                model,
                loss_fn,
                images,
                args.bins,
                mode="sketch",
                sketch_dim=d,
                batch_size=args.images,
                seed=seed,
            )
            err = np.abs(sk.matrix - ex.matrix)[iu]
            rows.append(
                {
                    "d": d,
                    "seed": seed,
                    "max_err": float(err.max()),
                    "mean_err": float(err.mean()),
                    "seconds": time.perf_counter() - t0,
                }
            )
        if seed == 0:
            off = ex.matrix[iu]
            cos_range = [float(off.min()), float(off.max())]
    table = []
    for d in args.dims:
        r = [x for x in rows if x["d"] == d]
        table.append(
            {
                "d": d,
                "max_abs_err_worst_seed": max(x["max_err"] for x in r),
                "max_abs_err_mean_over_seeds": float(np.mean([x["max_err"] for x in r])),
                "mean_abs_err": float(np.mean([x["mean_err"] for x in r])),
                "sketch_seconds": float(np.median([x["seconds"] for x in r])),
                "theory_std_at_cos0": 1 / np.sqrt(d),
            }
        )
    print(
        f"model: unet-small, P = {P:,} parameters; {args.bins} bins, {args.images} images, {args.train_steps} training steps ({train_s:.0f} s)"
    )
    print(
        f"off-diagonal exact cosines span [{cos_range[0]:+.2f}, {cos_range[1]:+.2f}]; {args.seeds} seeds; device {_device_name()}"
    )
    print(f"exact: {np.median(exact_s):.2f} s (median)")
    print(
        f"{'d':>8} | {'max |err| (worst seed)':>22} | {'max |err| (mean)':>16} | {'mean |err|':>10} | {'1/sqrt(d)':>9} | {'s':>6}"
    )
    for r in table:
        print(
            f"{r['d']:>8} | {r['max_abs_err_worst_seed']:>22.4f} | {r['max_abs_err_mean_over_seeds']:>16.4f} | "
            f"{r['mean_abs_err']:>10.4f} | {r['theory_std_at_cos0']:>9.4f} | {r['sketch_seconds']:>6.2f}"
        )
    return {
        "mode": "error_table",
        "model": {
            "preset": "unet-small",
            "num_parameters": P,
            "data": "sklearn digits 16x16",
            "train_steps": args.train_steps,
        },
        "bins": args.bins,
        "images": args.images,
        "seeds": args.seeds,
        "exact_cosine_range": cos_range,
        "exact_seconds_median": float(np.median(exact_s)),
        "table": table,
        "rows": rows,
    }


# ============================================================================ runs (GPU)
def run_mode(args: argparse.Namespace) -> dict:
    from antdiff.analysis.affinity_pipeline import affinity_of_runs, write_affinity_outputs

    out = Path(args.out)
    results = {}
    mats = {}
    # Warm-up (CUDA context, cuDNN autotuning, the data loading caches): not timed.
    affinity_of_runs(
        args.run,
        2,
        num_images=min(args.images, 2 * args.batch_size),
        mode="sketch",
        sketch_dim=1024,
        batch_size=args.batch_size,
        device=args.device,
        data=args.data,
    )
    for mode in args.modes:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        aff = affinity_of_runs(
            args.run,
            args.bins,
            num_images=args.images,
            mode=mode,
            sketch_dim=args.sketch_dim,
            batch_size=args.batch_size,
            device=args.device,
            data=args.data,
            max_gradient_bytes=int(args.max_memory_gb * 2**30),
        )
        wall = time.perf_counter() - t0
        mats[mode] = aff.matrix
        paths = write_affinity_outputs(aff, out / f"affinity_{mode}") if args.figures else {}
        from antdiff import NoiseSchedule

        sch = NoiseSchedule.from_dict(aff.meta["schedule"])
        results[mode] = {
            "wall_seconds": wall,
            "compute_seconds": aff.meta["seconds"],
            "gradient_evaluations": aff.meta["gradient_evaluations"],
            "peak_cuda_bytes": aff.meta.get("peak_cuda_bytes"),
            "memory_bound": aff.meta["memory"],
            "num_parameters": aff.meta["model"]["num_parameters"],
            "sketch_dim": aff.sketch_dim,
            "spearman": aff.distance_correlation(sch),
            "files": {k: str(v) for k, v in paths.items()},
        }
        pk = results[mode]["peak_cuda_bytes"]
        print(
            f"{mode:>6}: {aff.meta['seconds']:7.1f} s computing ({wall:.1f} s with loading), "
            f"{aff.meta['gradient_evaluations']} bin gradients, "
            f"peak CUDA {pk / 2**30 if pk else float('nan'):.2f} GiB, bound {aff.meta['memory']['bytes'] / 2**30:.2f} GiB, "
            f"ρ(|Δt|) = {results[mode]['spearman']['timestep']['spearman']}"
        )
    if "exact" in mats and "sketch" in mats:
        iu = np.triu_indices(mats["exact"].shape[0], 1)
        err = np.abs(mats["exact"] - mats["sketch"])[iu]
        results["sketch_vs_exact"] = {
            "max_abs_err": float(err.max()),
            "mean_abs_err": float(err.mean()),
        }
        print(f"sketch vs exact: max |err| {err.max():.4f}, mean {err.mean():.4f}")
    return {
        "mode": "runs",
        "runs": [str(r) for r in args.run],
        "bins": args.bins,
        "images": args.images,
        "results": results,
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--error-table", action="store_true", help="sketch error vs d on a small model (CPU)"
    )
    ap.add_argument("--run", nargs="+", default=None, help="run directories/checkpoints (GPU mode)")
    ap.add_argument("--bins", type=int, default=10)
    ap.add_argument(
        "--images", type=int, default=None, help="default 64 (error table) / 1000 (runs)"
    )
    ap.add_argument("--dims", default="256,1024,4096,16384,65536,262144")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--train-steps", type=int, default=150)
    ap.add_argument("--modes", nargs="+", default=["exact", "sketch"], choices=["exact", "sketch"])
    ap.add_argument("--sketch-dim", type=int, default=65536)
    ap.add_argument("--batch-size", type=int, default=250)
    ap.add_argument("--max-memory-gb", type=float, default=16.0)
    ap.add_argument("--device", default="auto")
    ap.add_argument(
        "--data",
        default=None,
        help="override the run's data.spec (e.g. a carried CIFAR-10 archive)",
    )
    ap.add_argument("--no-figures", dest="figures", action="store_false")
    ap.add_argument("--out", default=os.environ.get("OUT", "benchmarks/results"))
    args = ap.parse_args()
    if not args.error_table and not args.run:
        ap.error("choose --error-table or --run RUN")
    args.dims = [int(v) for v in args.dims.split(",")]
    if args.images is None:
        args.images = 64 if args.error_table else 1000
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res = error_table(args) if args.error_table else run_mode(args)
    res.update({"device": _device_name(), "torch": torch.__version__, "git_commit": _git_commit()})
    name = "affinity_error_table.json" if args.error_table else "affinity_cost.json"
    (out / name).write_text(json.dumps(res, indent=2, default=float) + "\n")
    print(f"written: {out / name}")


if __name__ == "__main__":
    main()
