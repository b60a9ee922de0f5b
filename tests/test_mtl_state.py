"""Every balancer's state round-trips through state_dict, so a resumed run continues exactly."""

from __future__ import annotations

import io

import pytest
import torch

from antdiff import NoiseSchedule, TaskClusters, TimestepBatch
from antdiff.mtl import BALANCERS, make_balancer


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny models: intra-op threads only add contention (pytest -n 2 on 2 cores); restored after.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


K = 3
CLUSTERS = TaskClusters.uniform(60, K)
SCHEDULE = NoiseSchedule.from_name("linear", 60)


def build(name: str):
    kw = {
        "continuous_uw": {"schedule": SCHEDULE, "num_features": 8},
        "nash": {"update_every": 2},
        "dwa": {"window": 2},
    }.get(name, {})
    b = make_balancer(name, K, **kw)
    opt = torch.optim.Adam(b.param_groups()) if b.param_groups() else None
    return b, opt


def inputs(step: int):
    g = torch.Generator().manual_seed(100 + step)
    t = torch.randint(0, 60, (8,), generator=g)
    batch = TimestepBatch.from_timesteps(t, CLUSTERS)
    x = torch.rand(8, generator=g) + 0.1
    grads = torch.randn(K, 5, generator=g, dtype=torch.float64)
    return batch, x, grads @ grads.T, torch.rand(K, generator=g) + 0.1


def run(b, opt, steps):
    out = []
    for s in steps:
        batch, x, gram, after = inputs(s)
        if b.gradients_due():
            b.weights(gram, torch.rand(K, dtype=torch.float64), batch.present)
        else:
            loss = b.loss(x.clone().requires_grad_(True), batch)
            if opt is not None:
                opt.zero_grad()
                loss.backward()
                opt.step()
            if b.needs_post_step_losses:
                b.after_optimizer_step(after)
        out.append(b.last_weights.clone())
    return out


@pytest.mark.parametrize("name", sorted(BALANCERS))
def test_resume_continues_exactly(name):
    a, opt_a = build(name)
    straight = run(a, opt_a, range(6))

    b, opt_b = build(name)
    run(b, opt_b, range(3))
    buf = io.BytesIO()
    torch.save({"balancer": b.state_dict(), "opt": opt_b.state_dict() if opt_b else None}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)

    c, opt_c = build(name)
    c.load_state_dict(saved["balancer"])
    if opt_c is not None:
        opt_c.load_state_dict(saved["opt"])
    resumed = run(c, opt_c, range(3, 6))
    for w_straight, w_resumed in zip(straight[3:], resumed):
        assert torch.equal(w_straight, w_resumed)
    # and the state is not trivially constant: some weights changed over the run
    if name not in ("mean",):
        assert any(not torch.equal(straight[0], w) for w in straight[1:])
