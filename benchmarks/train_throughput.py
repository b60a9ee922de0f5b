"""Training throughput of the antdiff trainer against a plain diffusers-style loop (one GPU).

Measures steady-state iterations per second on the CIFAR-10 preset (``configs/cifar10/``: the
35.7M-parameter DDPM UNet, batch 128, bf16 autocast, channels-last, AdamW, gradient clipping,
EMA) for:

* ``plain``: the loop of diffusers' ``train_unconditional.py`` stripped to its core — the same
  ``UNet2DModel``, ``DDPMScheduler.add_noise``, MSE on ε, AdamW, ``clip_grad_norm_``, diffusers'
  ``EMAModel``, ``loss.item()`` each step, a ``DataLoader`` over the same decoded images;
* ``vanilla``: ``antdiff train configs/cifar10/vanilla.yaml`` (in process);
* ``ant_uw``: ``antdiff train configs/cifar10/ant_timestep_uw.yaml``;
* optionally more antdiff variants (``--variants vanilla,ant_uw,ant_pcgrad,ant_nash``).

Each variant runs for about ``--seconds`` (default 90); the rate is measured over the steps after
``--warmup`` steps (cuDNN autotuning, allocator growth, ``torch.compile``). The plain loop runs
first and its rate sizes the antdiff runs. Results: a table on stdout and
``$OUT/train_throughput.json`` (card name, torch/diffusers versions, it/s, img/s, ratio to the
plain loop, peak memory).

Usage on a GPU machine with antdiff and diffusers installed (the data archive carried beside the
repository, e.g. ``mkdir -p .data && cp ../shared/data/cifar10/cifar10-train-jpeg.tar.xz .data/``)::

    python benchmarks/train_throughput.py --data .data/cifar10-train-jpeg.tar.xz
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
PRESETS = {
    "vanilla": "cifar10/vanilla.yaml",
    "ant_uw": "cifar10/ant_timestep_uw.yaml",
    "ant_pcgrad": "cifar10/ant_timestep_pcgrad.yaml",
    "ant_nash": "cifar10/ant_timestep_nash.yaml",
    "p2": "cifar10/p2.yaml",
    "min_snr": "cifar10/min_snr.yaml",
}


def _say(msg: str) -> None:
    print(f"[train_throughput {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _autocast(precision: str) -> Any:
    if precision == "fp32":
        return torch.autocast("cuda", enabled=False)
    return torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def plain_loop(cfg: Any, seconds: float, warmup: int) -> dict[str, Any]:
    """diffusers' unconditional training loop, core only, on the preset's model and settings."""
    from diffusers import DDPMScheduler
    from diffusers.training_utils import EMAModel
    from torch.utils.data import DataLoader

    from antdiff.training.build import build_objective, open_training_dataset
    from antdiff.training.models import build_denoiser

    dev = torch.device("cuda")
    objective = build_objective(cfg)
    dataset = open_training_dataset(cfg)
    unet = build_denoiser(
        cfg.model.preset,
        sample_size=dataset.resolution,
        in_channels=dataset.channels,
        out_channels=dataset.channels,
        seed=cfg.run.seed,
        **cfg.model.overrides,
    ).inner.to(dev)
    if cfg.train.channels_last:
        unet = unet.to(memory_format=torch.channels_last)
    scheduler = DDPMScheduler(
        num_train_timesteps=objective.num_timesteps, trained_betas=objective.schedule.betas.tolist()
    )
    opt = torch.optim.AdamW(
        unet.parameters(),
        lr=cfg.optim.lr,
        betas=tuple(cfg.optim.betas),
        weight_decay=cfg.optim.weight_decay,
    )
    ema = EMAModel(unet.parameters(), decay=cfg.ema.decay)
    ema.to(dev)
    loader = DataLoader(
        dataset,
        batch_size=cfg.optim.batch_size,
        shuffle=True,
        num_workers=cfg.data.num_workers,
        pin_memory=True,
        drop_last=True,
        persistent_workers=cfg.data.num_workers > 0,
    )
    torch.backends.cuda.matmul.allow_tf32 = cfg.train.tf32
    torch.backends.cudnn.allow_tf32 = cfg.train.tf32
    torch.cuda.reset_peak_memory_stats()
    steps, t0, t_measure, measured = 0, time.perf_counter(), None, 0
    while True:
        for images, _ in loader:
            x0 = images.to(dev, non_blocking=True)
            if cfg.train.channels_last:
                x0 = x0.contiguous(memory_format=torch.channels_last)
            noise = torch.randn_like(x0)
            t = torch.randint(0, objective.num_timesteps, (x0.shape[0],), device=dev)
            noisy = scheduler.add_noise(x0, noise, t)
            with _autocast(cfg.train.precision):
                pred = unet(noisy, t).sample
            loss = torch.nn.functional.mse_loss(pred.float(), noise.float())
            loss.backward()
            torch.nn.utils.clip_grad_norm_(unet.parameters(), cfg.optim.grad_clip or float("inf"))
            opt.step()
            opt.zero_grad(set_to_none=True)
            ema.step(unet.parameters())
            loss.detach().item()  # the example logs the loss every step
            steps += 1
            if steps == warmup:
                torch.cuda.synchronize()
                t_measure = time.perf_counter()
            elif t_measure is not None:
                measured += 1
                if time.perf_counter() - t0 > seconds:
                    torch.cuda.synchronize()
                    dt = time.perf_counter() - t_measure
                    return {
                        "it_per_s": measured / dt,
                        "img_per_s": measured * cfg.optim.batch_size / dt,
                        "steps_measured": measured,
                        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30,
                    }


def steady_rate(
    lines: list[dict[str, Any]], warmup: int, batch: int, *, stopped_at: int, interrupted: bool
) -> dict[str, Any]:
    """The rate over the log windows that start after ``warmup`` steps (it/s excludes logging
    and checkpoint time), with when the first window ended (start-up and compilation) and every
    window's end and rate (``windows``: when a start-up phase, e.g. CUDA-graph recording, ends).

    A run that stopped before any such window (a ``timeout`` sends SIGTERM: the trainer
    checkpoints and returns) gets ``it_per_s`` None and the reason, not a division by zero: the
    windows it did log still say how far compilation got.
    """
    train_lines = [r for r in lines if "eval" not in r]
    steady = [r for r in train_lines if r["step"] - r["window"] >= warmup]
    first = train_lines[0] if train_lines else None
    out: dict[str, Any] = {
        "stopped_at_step": stopped_at,
        "interrupted": interrupted,
        "first_window_end": (
            {"step": first["step"], "time_s": first["time"]} if first is not None else None
        ),
        "last_loss": train_lines[-1]["loss"] if train_lines else None,
        "windows": [
            {"step": r["step"], "time_s": r["time"], "it_per_s": r["it_per_s"]} for r in train_lines
        ],
    }
    if not steady:
        out.update(
            it_per_s=None,
            img_per_s=None,
            steps_measured=0,
            why_no_rate=(
                f"training stopped at step {stopped_at}"
                + (" (interrupted: a signal, e.g. the command's timeout)" if interrupted else "")
                + f" before a log window past the {warmup}-step warm-up ended; give it more time"
                " or a smaller --warmup"
            ),
        )
        return out
    steps = sum(r["window"] for r in steady)
    secs = sum(r["window"] / r["it_per_s"] for r in steady)
    out.update(it_per_s=steps / secs, img_per_s=steps * batch / secs, steps_measured=steps)
    return out


def antdiff_run(cfg: Any, warmup: int) -> dict[str, Any]:
    """``antdiff.training.train`` on the config; the rate comes from metrics.jsonl windows."""
    from antdiff.training.monitor import MetricsLog
    from antdiff.training.trainer import train

    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    result = train(cfg, log=_say)  # its messages (e.g. a stop request) land in this log
    wall = time.perf_counter() - t0
    lines = list(MetricsLog.read(Path(cfg.run.dir) / "metrics.jsonl"))
    rate = steady_rate(
        lines,
        warmup,
        cfg.optim.batch_size,
        stopped_at=result.step,
        interrupted=result.interrupted,
    )
    train_lines = [r for r in lines if "loss" in r]
    last = train_lines[-1] if train_lines else {}
    return {
        **rate,
        "peak_mem_gib": training_peak(lines, torch.cuda.max_memory_allocated() / 2**30),
        "wall_s": wall,
        # a weighted or hybrid loss's parts in the last window (train.log_loss_parts), if logged
        "loss_parts": {
            k: last[k]
            for k in ("cluster_losses", "cluster_mse", "cluster_vb", "parts_counts")
            if k in last
        },
    }


def training_peak(lines: list[dict[str, Any]], since_last_window: float) -> float:
    """Peak CUDA memory (GiB) of a trainer run: the largest of its log windows' peaks and of what
    came after the last window. The trainer resets the peak at every window (it logs each
    window's own), so ``max_memory_allocated`` after ``train`` covers only the tail — slice 13's
    probe printed 1.44 GiB for a run whose windows peaked at ~18 GiB."""
    windows = [
        r["peak_mem_gib"]
        for r in lines
        if "eval" not in r and isinstance(r.get("peak_mem_gib"), (int, float))
    ]
    return max([since_last_window, *windows])


def format_table(info: dict) -> str:
    """The printed summary: one line per variant; a dash where nothing was measured (no plain
    baseline with --skip-plain, no window past the warm-up) instead of "nan"."""

    def cell(value: float | None, width: int, fmt: str) -> str:
        return f"{value:>{width}{fmt}}" if value else f"{'—':>{width}}"

    lines = [
        f"\n{info['card']}, batch {info['batch']}, {info['precision']}, torch {info['torch']}",
        f"{'variant':<12}{'it/s':>9}{'img/s':>10}{'vs plain':>10}{'peak GiB':>10}",
    ]
    for name, r in info["results"].items():
        lines.append(
            f"{name:<12}{cell(r['it_per_s'], 9, '.2f')}{cell(r['img_per_s'], 10, '.0f')}"
            f"{cell(r['ratio_to_plain'], 10, '.3f')}{r['peak_mem_gib']:>10.2f}"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="CIFAR-10 training images (archive or folder)")
    ap.add_argument(
        "--variants", default="vanilla,ant_uw", help=f"antdiff variants: {','.join(PRESETS)}"
    )
    ap.add_argument("--seconds", type=float, default=90.0, help="measured time per variant")
    ap.add_argument("--warmup", type=int, default=50, help="steps excluded from the rate")
    ap.add_argument("--batch", type=int, default=None, help="override optim.batch_size")
    ap.add_argument("--precision", default=None, choices=("fp32", "bf16", "fp16"))
    ap.add_argument("--workers", type=int, default=None, help="override data.num_workers")
    ap.add_argument("--compile", action="store_true", help="train.compile=true for antdiff runs")
    ap.add_argument(
        "--compile-mode",
        default="default",
        choices=("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
        help="train.compile_mode with --compile (reduce-overhead: CUDA graphs)",
    )
    ap.add_argument(
        "--set",
        dest="overrides",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="extra config overrides for every run (e.g. train.channels_last=false)",
    )
    ap.add_argument("--skip-plain", action="store_true", help="no plain loop (give --steps)")
    ap.add_argument("--steps", type=int, default=None, help="antdiff steps (default: from plain)")
    ap.add_argument("--out", default=os.environ.get("OUT", "."), help="output folder ($OUT)")
    ap.add_argument(
        "--tag", default="", help="suffix of the JSON file name (several runs in one $OUT)"
    )
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("train_throughput.py measures GPU throughput: no CUDA device found")
    from antdiff.training.config import load_config

    common = [
        f"data.spec={args.data}",
        "train.device=cuda",
        "train.tensorboard=false",
        "train.progress=false",
    ]
    if args.batch:
        common.append(f"optim.batch_size={args.batch}")
    if args.precision:
        common.append(f"train.precision={args.precision}")
    if args.workers is not None:
        common.append(f"data.num_workers={args.workers}")
    common += args.overrides
    root = Path(tempfile.mkdtemp(prefix="antdiff_tp_"))
    results: dict[str, Any] = {}
    if args.skip_plain:
        if not args.steps:
            raise SystemExit("--skip-plain needs --steps N (the plain loop's rate sizes the runs)")
        steps = args.steps
    else:
        cfg = load_config(
            ROOT / "configs" / PRESETS["vanilla"], [*common, f"run.dir={root / 'plain'}"]
        )
        _say(
            f"plain diffusers loop: {cfg.model.preset}, batch {cfg.optim.batch_size}, "
            f"{cfg.train.precision}"
        )
        results["plain"] = plain_loop(cfg, args.seconds, args.warmup)
        _say(f"plain: {results['plain']['it_per_s']:.2f} it/s")
        steps = args.steps or args.warmup + int(results["plain"]["it_per_s"] * args.seconds)
    for name in [v for v in args.variants.split(",") if v]:
        if name not in PRESETS:
            raise SystemExit(f"unknown variant {name!r}; choose from {', '.join(PRESETS)}")
        extra = [
            f"run.dir={root / name}",
            f"train.steps={steps}",
            "train.log_every=25",
            f"train.ckpt_every={steps + 1}",
            "train.sample_every=0",
            "train.sample_n=4",
            "sample.steps=2",
            f"train.compile={str(args.compile).lower()}",
            f"train.compile_mode={args.compile_mode}",
        ]
        cfg = load_config(ROOT / "configs" / PRESETS[name], [*common, *extra])
        _say(f"antdiff {name}: {steps} steps")
        results[name] = antdiff_run(cfg, args.warmup)
        r = results[name]
        _say(
            f"{name}: {r['it_per_s']:.2f} it/s" if r["it_per_s"] else f"{name}: {r['why_no_rate']}"
        )
    shutil.rmtree(root, ignore_errors=True)
    base = results["plain"]["it_per_s"] if "plain" in results else None
    for r in results.values():
        r["ratio_to_plain"] = r["it_per_s"] / base if base and r["it_per_s"] else None  # no NaN
    import diffusers

    info = {
        "card": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "python": platform.python_version(),
        "preset": "configs/cifar10 (unet-ddpm-cifar10)",
        "batch": cfg.optim.batch_size,
        "precision": cfg.train.precision,
        "channels_last": cfg.train.channels_last,
        "compile": args.compile,
        "compile_mode": args.compile_mode if args.compile else None,
        "overrides": args.overrides,
        "workers": cfg.data.num_workers,
        "seconds_per_variant": args.seconds,
        "warmup_steps": args.warmup,
        "results": results,
    }
    print(format_table(info))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"train_throughput{'_' + args.tag if args.tag else ''}.json"
    (out / name).write_text(json.dumps(info, indent=1) + "\n")
    _say(f"wrote {out / name}")


if __name__ == "__main__":
    main()
