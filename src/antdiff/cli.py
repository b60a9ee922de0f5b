"""The ``antdiff`` command line. Each sub-command lives in ``antdiff.commands.<name>`` and
exposes ``register(subparsers)``; this module only dispatches and turns user errors into one
line on stderr with a non-zero exit status (never a traceback)."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

#: Sub-command modules, in the order ``antdiff --help`` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "demo",
    "cluster",
    "train",
    "sample",
    "export",
    "stats",
    "eval",
    "affinity",
    "ntg",
    "report",
)


class UserError(Exception):
    """An error caused by the user's input; printed as one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="antdiff",
        description="Diffusion training as multi-task learning (ANT): clustering, training, "
        "evaluation and analysis of negative transfer between denoising tasks.",
    )
    parser.add_argument("--version", action="version", version=f"antdiff {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"antdiff.commands.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = args.func(args)
    except (UserError, ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as e:
        if os.environ.get("ANTDIFF_DEBUG"):
            raise
        msg = str(e).strip().strip("'\"") or type(e).__name__
        print(f"antdiff {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"antdiff {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of our output went away (`antdiff cluster ... | head`): whatever the
        # command wrote to files is complete; stop quietly as other Unix tools do. Python would
        # otherwise fail again flushing stdout at exit, so point it at /dev/null first.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + 13  # killed by SIGPIPE, the shell's convention
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
