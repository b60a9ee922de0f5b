"""DDP on gloo (2 CPU processes) gives the same updates as one process on the same global batch,
for loss-based and gradient-based balancers, with uneven per-rank cluster counts."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

K = 4
COUNTS = (3, 1, 2, 4)  # cluster 1 has one sample: present on one rank only
STEPS = 2

# (model, balancer, hyper-parameters, engine mode)
CASES = [
    ("unet", "uw", {}, "split"),
    ("unet", "famo", {}, "split"),
    ("unet", "continuous_uw", {"num_features": 8}, "split"),
    ("unet", "rlw", {}, "split"),
    ("unet", "pcgrad", {}, "split"),
    ("unet", "nash", {"update_every": 2}, "split"),
    ("unet", "mgda", {}, "split"),
    ("unet", "upgrad", {}, "retain_graph"),
    ("unet", "imtlg", {}, "vmap"),
    ("dit", "pcgrad", {}, "split"),  # DiT has a buffer (pos_embed) that DDP broadcasts
    ("dit", "uw", {}, "split"),
]


def _run(kind, method, kw, mode, model, closure, batch, engine_kw):
    from antdiff import NoiseSchedule
    from antdiff.mtl import ClusterGradientEngine, make_balancer

    if method == "continuous_uw":
        kw = {**kw, "schedule": NoiseSchedule.from_name("linear", 1000)}
    bal = make_balancer(method, K, **kw).to(batch.timesteps.device)
    engine = ClusterGradientEngine(model, bal, mode=mode, **engine_kw)
    inner = model.module if hasattr(model, "module") else model
    opt = torch.optim.SGD([{"params": inner.parameters()}, *bal.param_groups()], lr=0.05)
    grads, weights = [], []
    for _ in range(STEPS):
        opt.zero_grad()
        res = engine.step(closure, batch)
        grads.append(
            torch.cat(
                [
                    (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                    for p in [*inner.parameters(), *bal.parameters()]
                ]
            )
        )
        weights.append(res.weights.clone())
        opt.step()
        engine.after_optimizer_step(closure, batch)
    params = torch.cat([p.detach().reshape(-1) for p in [*inner.parameters(), *bal.parameters()]])
    return grads, weights, params


def _worker(rank: int, world: int, port: int, out_dir: str, backend: str = "gloo") -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        # exact fp32 on the GPU too: the reference and DDP see different batch shapes
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    dist.init_process_group(backend, rank=rank, world_size=world)
    try:
        from torch.nn.parallel import DistributedDataParallel

        from antdiff.mtl import ClusterGradientEngine, make_balancer
        from test_engine import MODELS, make_problem

        results = {}
        for kind, method, kw, mode in CASES:
            batch, closure_for = make_problem(kind, counts=COUNTS, device=device)
            # reference: one process, the whole global batch
            ref_model = MODELS[kind][0]().to(device)
            index_all = torch.arange(batch.batch_size, device=device)
            ref = _run(kind, method, kw, mode, ref_model, closure_for(ref_model), batch, {})
            # DDP: rank r holds the samples r, r + W, r + 2W, ... (uneven cluster counts)
            ddp = DistributedDataParallel(
                MODELS[kind][0]().to(device), device_ids=[rank] if device.type == "cuda" else None
            )
            local = index_all[rank::world]
            global_closure = closure_for(ddp)
            got = _run(
                kind,
                method,
                kw,
                mode,
                ddp,
                lambda i, g=global_closure, loc=local: g(loc[i]),
                batch.select(local),
                {},
            )
            errs = [float((a - b).norm() / b.norm()) for a, b in zip(got[0], ref[0])]
            werr = [float((a - b).abs().max()) for a, b in zip(got[1], ref[1])]
            perr = float((got[2] - ref[2]).norm() / ref[2].norm())
            results[f"{kind}-{method}-{mode}"] = {"grad": errs, "weights": werr, "params": perr}
        # gramian mode cannot be exact across ranks: refused with a clear error
        model = DistributedDataParallel(
            MODELS["unet"][0]().to(device), device_ids=[rank] if device.type == "cuda" else None
        )
        try:
            ClusterGradientEngine(model, make_balancer("pcgrad", K), mode="gramian")
            results["gramian_refused"] = ""
        except ValueError as e:
            results["gramian_refused"] = str(e)
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(results))
    finally:
        dist.destroy_process_group()


def _check(out_dir: Path, world: int, tol: float) -> list[str]:
    lines = []
    for rank in range(world):
        results = json.loads((out_dir / f"rank{rank}.json").read_text())
        assert "cannot run under DDP" in results.pop("gramian_refused")
        assert len(results) == len(CASES)
        for case, r in results.items():
            worst = max(max(r["grad"]), max(r["weights"]), r["params"])
            lines.append(f"rank {rank} {case:28s} max rel. error {worst:.2e}")
            assert max(r["grad"]) <= tol, (rank, case, r)
            assert max(r["weights"]) <= tol, (rank, case, r)
            assert r["params"] <= tol / 10, (rank, case, r)
    return lines


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.ddp
def test_ddp_matches_single_process(tmp_path):
    tests_dir = str(Path(__file__).parent)
    if tests_dir not in sys.path:  # the spawned workers import this module and test_engine
        sys.path.insert(0, tests_dir)
    world = 2
    mp.spawn(_worker, args=(world, _free_port(), str(tmp_path)), nprocs=world, join=True)
    _check(tmp_path, world, tol=1e-5)


if __name__ == "__main__":
    # The same check on real GPUs with NCCL (one process per GPU):
    #   python tests/test_ddp_mtl.py --nccl
    import argparse
    import tempfile

    parser = argparse.ArgumentParser()
    parser.add_argument("--nccl", action="store_true", help="NCCL on the first two CUDA devices")
    parser.add_argument("--tol", type=float, default=1e-5)
    a = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    backend = "nccl" if a.nccl else "gloo"
    with tempfile.TemporaryDirectory() as d:
        mp.spawn(_worker, args=(2, _free_port(), d, backend), nprocs=2, join=True)
        for line in _check(Path(d), 2, a.tol):
            print(line)
    print(f"DDP ({backend}, 2 processes) == single process on the same global batch: OK")
