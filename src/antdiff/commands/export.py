"""``antdiff export``: write a trained run in the diffusers format."""

from __future__ import annotations

import argparse
import json

HELP = "export a trained run (EMA weights) as a diffusers pipeline directory"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help=HELP,
        description=HELP
        + ": DDPMPipeline (pixel UNet), DiTPipeline (DiT + VAE) or LDMPipeline (latent UNet + "
        "VAE); class-conditional UNets get their parts only. See docs/training.md.",
    )
    p.add_argument("run", metavar="RUN_OR_CHECKPOINT", help="run directory or checkpoint file")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--no-ema", action="store_true", help="export the raw weights, not the EMA")
    p.add_argument("--force", action="store_true", help="replace a non-empty output directory")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..training.export import export_diffusers

    try:
        info = export_diffusers(args.run, args.out, use_ema=not args.no_ema, overwrite=args.force)
    except FileExistsError as e:
        raise ValueError(str(e)) from None
    print(json.dumps({"out": args.out, "pipeline": info["pipeline"], "notes": info["notes"]}))
    return 0
