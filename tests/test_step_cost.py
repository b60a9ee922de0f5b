"""benchmarks/step_cost.py: the attention-backend choice (``--sdpa``) and a CPU smoke run with it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from torch.nn.attention import SDPBackend

from _bench import load_benchmark

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "step_cost.py"


def _module():
    return load_benchmark("step_cost")


def test_sdpa_backends_maps_names_in_order_and_names_the_known_ones_on_error():
    step_cost = _module()
    assert step_cost.sdpa_backends("flash, efficient,math") == [
        SDPBackend.FLASH_ATTENTION,
        SDPBackend.EFFICIENT_ATTENTION,
        SDPBackend.MATH,
    ]
    assert step_cost.sdpa_backends("cudnn") == [SDPBackend.CUDNN_ATTENTION]
    with pytest.raises(ValueError, match=r"unknown backend\(s\) \['fast'\].*flash, efficient"):
        step_cost.sdpa_backends("flash,fast")
    with pytest.raises(ValueError, match="none given"):
        step_cost.sdpa_backends(" , ")


def test_smoke_run_with_sdpa_records_the_choice_and_rejects_a_bad_one(tmp_path):
    out = tmp_path / "cost.json"
    cmd = [sys.executable, str(SCRIPT), "--smoke", "--models", "unet", "--configs", "pcgrad[vmap]"]
    proc = subprocess.run(
        [*cmd, "--sdpa", "flash,efficient,math", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["args"]["sdpa"] == "flash,efficient,math"
    assert {r["label"] for r in report["results"]} == {"vanilla", "pcgrad[vmap]"}
    assert all(r["error"] is None and r["median_ms"] > 0 for r in report["results"])
    bad = subprocess.run(
        [*cmd, "--sdpa", "cudnn,fast"], capture_output=True, text=True, timeout=300
    )
    assert bad.returncode == 2 and "unknown backend(s) ['fast']" in bad.stderr
