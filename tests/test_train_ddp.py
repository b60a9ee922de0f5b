"""`torchrun --nproc_per_node 2 antdiff train ...` (gloo, CPU) gives the single-process result.

The trainer draws timesteps, noise and label dropout for the global batch and every process keeps
the samples the data sampler gives it, so two processes with batch B/2 each follow the same
trajectory as one process with batch B, up to floating-point summation order.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from antdiff.training.checkpoint import CheckpointManager, load_checkpoint
from antdiff.training.config import load_config
from antdiff.training.monitor import MetricsLog
from antdiff.training.trainer import train

pytestmark = pytest.mark.ddp

ARGS = [
    "model.preset=unet-tiny",
    "data.resolution=8",
    "optim.batch_size=10",
    "optim.lr=1e-3",
    "train.steps=3",
    "train.log_every=1",
    "train.ckpt_every=3",
    "train.progress=false",
    "train.tensorboard=false",
    "train.sample_n=2",
    "train.device=cpu",
    "sample.steps=2",
    "sample.sampler=ddim",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    "extra",
    [
        ["data.class_conditional=true", "diffusion.learned_variance=true"],
        ["ant.enabled=true", "ant.balancer=pcgrad"],
    ],
    ids=["vanilla-classcond-hybrid", "ant-pcgrad"],
)
def test_two_gloo_processes_match_one(tmp_path: Path, extra: list[str]) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(load_config(None, [f"run.dir={tmp_path / 'one'}", *ARGS, *extra]), log=None)
    finally:
        torch.set_num_threads(threads)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
        f"--master_port={free_port()}", "-m", "antdiff.cli", "train",
        "--set", f"run.dir={tmp_path / 'two'}", *ARGS, *extra,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = load_checkpoint(CheckpointManager(tmp_path / "one" / "checkpoints").latest())
    two = load_checkpoint(CheckpointManager(tmp_path / "two" / "checkpoints").latest())
    assert two["world_size"] == 2 and len(two["rng"]) == 2
    for key, a in one["model"].items():
        torch.testing.assert_close(two["model"][key], a, rtol=1e-4, atol=1e-6, msg=key)
    if one["balancer"] is not None:
        for key, a in one["balancer"].items():
            if torch.is_tensor(a) and a.is_floating_point():
                torch.testing.assert_close(two["balancer"][key], a, rtol=1e-4, atol=1e-6)
    la = MetricsLog.read(tmp_path / "one" / "metrics.jsonl")
    lb = MetricsLog.read(tmp_path / "two" / "metrics.jsonl")  # rank 0 wrote, once per step
    assert [r["step"] for r in lb] == [1, 2, 3]
    assert [r["counts"] for r in la] == [r["counts"] for r in lb]
    for ra, rb in zip(la, lb):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-5)
        # the hybrid loss's parts per cluster pool both processes' samples (LossParts)
        assert ("cluster_vb" in rb) == ("learned_variance=true" in " ".join(extra))
        # and so do their means per fixed bin of t
        assert ("bin_mse" in rb) == ("bin_mse" in ra) == ("cluster_mse" in ra)
        for key in ("cluster_mse", "cluster_vb", "bin_mse", "bin_vb"):
            if key in ra:
                assert rb["parts_counts"] == ra["parts_counts"] == ra["counts"]
                assert rb[key] == pytest.approx(ra[key], rel=1e-4, nan_ok=True)


def test_batch_not_divisible_by_processes_fails_clearly(tmp_path: Path) -> None:
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
        f"--master_port={free_port()}", "-m", "antdiff.cli", "train",
        "--set", f"run.dir={tmp_path / 'r'}", *ARGS, "optim.batch_size=9",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "global batch 9 is not divisible by the 2 processes" in proc.stderr
    assert not (tmp_path / "r" / "checkpoints").exists()
