"""Real multi-GPU check of the trainer: ``torchrun --nproc_per_node 2 antdiff train`` (NCCL, one
process per GPU) against one process on one GPU with the same global batch.

The trainer draws timesteps, noise and label dropout for the global batch and each process keeps
its share, so both follow the same trajectory up to floating-point summation order. Runs in fp32
with TF32 off (exact arithmetic modes) on the embedded digits with the demo's small UNet, for
vanilla, ANT-UW (loss-based balancer, DDP-reduced cluster losses) and ANT-PCGrad (gradient
balancer, cluster gradients all-reduced once per step), and compares every parameter.

    python benchmarks/multi_gpu_check.py [--steps 20] [--out $OUT]
    python benchmarks/multi_gpu_check.py --cpu      # the same on 2 gloo CPU processes (smoke)

Writes ``multi_gpu_check.json`` (+ the trainers' logs on failure) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CASES = {
    "vanilla": [],
    "ant_uw": ["ant.enabled=true", "ant.balancer=uw"],
    "ant_pcgrad": ["ant.enabled=true", "ant.balancer=pcgrad"],
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _args(run_dir: Path, steps: int, device: str) -> list[str]:
    return [
        f"run.dir={run_dir}",
        f"train.steps={steps}",
        f"train.ckpt_every={steps}",
        "train.log_every=5",
        "train.progress=false",
        "train.tensorboard=false",
        "train.sample_every=0",
        "train.sample_n=4",
        "train.precision=fp32",
        "train.tf32=false",
        f"train.device={device}",
        "data.num_workers=0",
    ]


def _run(cmd: list[str], log: Path, env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{log.read_text()[-3000:]}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--root", default="/tmp/multi_gpu_check")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--cpu", action="store_true", help="2 gloo CPU processes instead of 2 GPUs")
    a = ap.parse_args()
    from antdiff.training.checkpoint import CheckpointManager, load_checkpoint

    root, out = Path(a.root), Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    device = "cpu" if a.cpu else "cuda"
    if not a.cpu and torch.cuda.device_count() < 2:
        raise SystemExit(f"needs 2 GPUs, found {torch.cuda.device_count()}")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    config = str(ROOT / "configs" / "demo.yaml")
    report: dict = {
        "devices": [torch.cuda.get_device_name(i) for i in range(2)] if not a.cpu else ["cpu"] * 2,
        "backend": "gloo" if a.cpu else "nccl",
        "torch": torch.__version__,
        "steps": a.steps,
        "cases": {},
    }
    for name, extra in CASES.items():
        one, two = root / name / "one", root / name / "two"
        single = [sys.executable, "-m", "antdiff.cli", "train", config, "--set",
                  *_args(one, a.steps, "cpu" if a.cpu else "cuda:0"), *extra]  # fmt: skip
        dist = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
                f"--master_port={_free_port()}", "-m", "antdiff.cli", "train", config, "--set",
                *_args(two, a.steps, device), *extra]  # fmt: skip
        t1 = _run(single, root / f"{name}_one.log", env)
        t2 = _run(dist, root / f"{name}_two.log", env)
        c1 = load_checkpoint(CheckpointManager(one / "checkpoints").latest())
        c2 = load_checkpoint(CheckpointManager(two / "checkpoints").latest())
        worst_rel, worst_key = 0.0, ""
        for key, p1 in c1["model"].items():
            p2 = c2["model"][key]
            if not torch.is_floating_point(p1):
                continue
            rel = float((p2.double() - p1.double()).norm() / p1.double().norm().clamp_min(1e-12))
            if rel > worst_rel:
                worst_rel, worst_key = rel, key
        total = float(
            torch.cat([(c2["model"][k].double() - v.double()).reshape(-1) for k, v in c1["model"].items()
                       if torch.is_floating_point(v)]).norm()
            / torch.cat([v.double().reshape(-1) for v in c1["model"].values() if torch.is_floating_point(v)]).norm()
        )  # fmt: skip
        ok = total < 1e-4
        report["cases"][name] = {
            "world_size": c2.get("world_size"),
            "step": c2.get("step"),
            "rel_error_all_params": total,
            "worst_tensor_rel_error": worst_rel,
            "worst_tensor": worst_key,
            "seconds_one_process": round(t1, 1),
            "seconds_two_processes": round(t2, 1),
            "match": ok,
        }
        print(f"{name:11s} 2 processes vs 1: rel. error {total:.2e} (worst tensor {worst_rel:.2e}) "
              f"{'OK' if ok else 'MISMATCH'}", flush=True)  # fmt: skip
    (out / "multi_gpu_check.json").write_text(json.dumps(report, indent=1))
    if not all(c["match"] for c in report["cases"].values()):
        raise SystemExit("multi-GPU training does not match the single-process run")


if __name__ == "__main__":
    main()
