"""``antdiff report``: one Markdown report of runs, task affinity and NTG results."""

from __future__ import annotations

import argparse

HELP = "Markdown report (figures + tables) of runs, `antdiff affinity` and `antdiff ntg` outputs"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help=HELP,
        description=HELP
        + ": clusters, per-cluster losses, balancer weights (UW ½e^{−s_i}, Nash α), gradient "
        "conflicts, FID curves, task affinity and NTG. Parts the inputs cannot support are "
        "listed as missing.",
    )
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="RUN",
        help="run directories and/or affinity / NTG output directories",
    )
    p.add_argument(
        "--out", required=True, metavar="DIR", help="output directory (report.md + figures/)"
    )
    p.add_argument("--title", default="antdiff report", help="title of the report")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..report import write_report

    path = write_report(args.inputs, args.out, title=args.title)
    print(f"written: {path}")
    return 0
