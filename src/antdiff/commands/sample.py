"""``antdiff sample``: draw images from a trained run or checkpoint into an ``.npz``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .._io import atomic_target
from . import refuse_to_replace

HELP = "sample images from a trained run (EMA weights) into samples.npz (uint8 NHWC)"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sample",
        help=HELP,
        description=HELP
        + ". The .npz holds 'samples' (uint8 [N, H, W, C]) and, for class-conditional models, "
        "'labels'; it is what `antdiff eval` reads. Unset options come from the run's config "
        "(its 'sample' section).",
    )
    p.add_argument("run", metavar="RUN_OR_CHECKPOINT", help="run directory or checkpoint file")
    p.add_argument("--n", type=int, default=10000, help="number of images (default 10000)")
    p.add_argument("--sampler", choices=("ddpm", "ddim"), default=None, help="reverse process")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (respaced when < T)")
    p.add_argument("--batch", type=int, default=None, help="images per batch")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling noise (default 0)")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale")
    p.add_argument("--eta", type=float, default=None, help="DDIM eta (0 = deterministic)")
    p.add_argument(
        "--class-label",
        type=int,
        default=None,
        help="class-conditional models: sample only this class (default: classes in turn)",
    )
    p.add_argument("--out", default="samples.npz", help="output .npz (default samples.npz)")
    p.add_argument("--force", action="store_true", help="replace an existing --out file")
    p.add_argument("--grid", default=None, metavar="PNG", help="also write a grid of the first 64")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from ..training.distributed import resolve_device
    from ..training.images import save_grid
    from ..training.inference import load_for_inference

    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    if args.batch is not None and args.batch < 1:
        raise ValueError(f"--batch must be >= 1, got {args.batch}")
    out = Path(args.out)
    if out.suffix != ".npz":
        raise ValueError(f"--out must end in .npz, got {out}")
    refuse_to_replace(out, "samples", args.force)
    bundle = load_for_inference(
        args.run, use_ema=not args.no_ema, device=resolve_device(args.device)
    )
    labels = None
    if bundle.num_classes is not None:
        if args.class_label is not None:
            if not 0 <= args.class_label < bundle.num_classes:
                raise ValueError(
                    f"--class-label must be in 0 … {bundle.num_classes - 1}, got {args.class_label}"
                )
            labels = torch.full((args.n,), args.class_label, dtype=torch.long)
        else:
            labels = bundle.default_labels(args.n)
    elif args.class_label is not None or (args.guidance or 1.0) > 1.0:
        raise ValueError("--class-label/--guidance need a class-conditional model; this one is not")
    images = bundle.sample(
        args.n,
        sampler=args.sampler,
        steps=args.steps,
        batch_size=args.batch,
        seed=args.seed,
        class_labels=labels,
        guidance=args.guidance,
        eta=args.eta,
        progress=sys.stderr.isatty(),
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"samples": images}
    if labels is not None:
        arrays["labels"] = labels.numpy().astype(np.int64)
    with atomic_target(out) as f:  # an interrupted write keeps any earlier file
        np.savez(f, **arrays)
    if args.grid:
        save_grid(images[:64], args.grid, scale=max(1, 64 // images.shape[1]))
    s = bundle.config.get("sample", {})
    print(
        json.dumps(
            {
                "out": str(out),
                "n": int(images.shape[0]),
                "shape": list(images.shape[1:]),
                "checkpoint": str(bundle.checkpoint),
                "step": bundle.step,
                "ema": bundle.use_ema,
                "sampler": args.sampler or s.get("sampler"),
                "steps": args.steps or s.get("steps"),
                "seed": args.seed,
            }
        )
    )
    return 0
