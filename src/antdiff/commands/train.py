"""``antdiff train``: train (or resume) a diffusion model from one YAML config."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "train a diffusion model (vanilla, P2/Min-SNR/EDM weighting, or ANT) from a YAML config"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help=HELP,
        description=HELP
        + ". Settings come from the schema defaults, the CONFIG file (with its base: files) and "
        "--set overrides, in that order; see docs/training.md. Under `torchrun --nproc_per_node N` "
        "the same command trains with DDP.",
    )
    p.add_argument(
        "config",
        nargs="?",
        default=None,
        help="YAML config file, or the name of a shipped preset (e.g. cifar10/ant_timestep_uw; "
        "--presets lists them); optional with --resume (the run's own config.yaml is used)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="override config keys, values parsed as YAML: --set optim.lr=2e-4 train.steps=1000",
    )
    p.add_argument(
        "--resume",
        default=None,
        metavar="PATH|auto",
        help="continue a run: 'auto' (the run directory's latest checkpoint, or a fresh start if "
        "there is none), a checkpoint file or a run directory",
    )
    p.add_argument("--run-dir", default=None, help="shorthand for --set run.dir=DIR")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--presets", action="store_true", help="list the shipped presets and exit")
    p.add_argument(
        "--help-config",
        action="store_true",
        help="list every config key with its type, default and meaning, and exit",
    )
    p.set_defaults(func=run)


def resolve_config(args: argparse.Namespace):
    from ..training.checkpoint import load_checkpoint, resolve_checkpoint
    from ..training.config import Config, load_config

    overrides = list(args.overrides)
    if args.run_dir is not None:
        overrides.append(f"run.dir={args.run_dir}")
    if args.config is not None:
        return load_config(args.config, overrides)
    if args.resume is None or args.resume == "auto":
        return load_config(None, overrides)
    # Resuming without a config file: start from the checkpoint's own configuration.
    saved = load_checkpoint(resolve_checkpoint(args.resume))["config"]
    return load_config(None, overrides, defaults=Config.from_dict(saved).to_dict())


def run(args: argparse.Namespace) -> int:
    from ..training.config import PRESET_DIR, config_reference, list_presets

    if args.presets:
        for name in list_presets():
            print(name)
        print(f"(files in {PRESET_DIR}; `antdiff train NAME --print-config` shows one resolved)")
        return 0
    if args.help_config:
        for key, tp, default, doc in config_reference():
            print(f"{key} ({tp}, default {default!r})\n    {doc}")
        return 0
    cfg = resolve_config(args)
    if args.print_config:
        sys.stdout.write(cfg.to_yaml())
        return 0
    from ..training.trainer import TrainingDiverged, train

    try:
        result = train(cfg, resume=args.resume)
    except TrainingDiverged as e:
        print(f"antdiff train: error: {e}", file=sys.stderr)
        return 1
    state = "interrupted" if result.interrupted else "done"
    print(f"{state}: {Path(result.run_dir)} at step {result.step} (checkpoint {result.checkpoint})")
    return 0
