"""The core never imports the trainer, the CLI, evaluation or plotting (docs/architecture.md)."""

import subprocess
import sys

CORE = [
    "antdiff",
    "antdiff.schedule",
    "antdiff.clustering",
    "antdiff.sampling",
    "antdiff.objective",
    "antdiff.weighting",
    "antdiff.mtl",
    "antdiff.analysis",
    "antdiff.data",
]
UPPER = (
    "antdiff.training",
    "antdiff.commands",
    "antdiff.cli",
    "antdiff.plots",
    "antdiff.report",
    "matplotlib",
)


def test_core_imports_no_upper_layer():
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in CORE)
        + f"bad = sorted(m for m in sys.modules if m.startswith({UPPER!r}))\n"
        + "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"core modules pulled in: {out.stdout.strip()}"
