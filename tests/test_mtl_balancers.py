"""Definition tests of every balancer against the published formulas / reference code."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from antdiff import NoiseSchedule, TaskClusters, TimestepBatch
from antdiff.mtl import (
    BALANCERS,
    FAMO,
    IMTLG,
    MGDA,
    CAGrad,
    ContinuousUncertaintyWeighting,
    DynamicWeightAverage,
    PCGrad,
    RandomLossWeighting,
    UncertaintyWeighting,
    UPGrad,
    balancer_hyperparameters,
    cluster_losses,
    make_balancer,
)
from antdiff.mtl.upgrad import NNLSDualConeProjector


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny models: intra-op threads only add contention (pytest -n 2 on 2 cores); restored after.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_batch(ids: list[int], k: int, T: int = 1000) -> TimestepBatch:
    clusters = TaskClusters.uniform(T, k)
    ids_t = torch.tensor(ids, dtype=torch.long)
    starts = torch.as_tensor(clusters.starts)[ids_t]
    t = starts + torch.arange(len(ids)) % 3
    return TimestepBatch(t, ids_t, torch.bincount(ids_t, minlength=k), k)


def conflicting_gradients(k: int, p: int = 7, seed: int = 0) -> torch.Tensor:
    g = torch.randn(k, p, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    g[1] = -0.8 * g[0] + 0.3 * g[1]  # guarantee at least one conflict
    return g


# ---------------------------------------------------------------------------- cluster losses
def test_cluster_losses_are_cluster_means_with_absent_clusters():
    batch = make_batch([0, 0, 2, 2, 2, 3], k=5)
    x = torch.tensor([1.0, 3.0, 2.0, 4.0, 6.0, 5.0], requires_grad=True)
    cl = cluster_losses(x, batch)
    assert torch.allclose(cl.losses, torch.tensor([2.0, 0.0, 4.0, 5.0, 0.0]))
    assert cl.present.tolist() == [True, False, True, True, False]
    assert cl.counts.tolist() == [2, 0, 3, 1, 0]
    assert float(cl.mean) == pytest.approx(21 / 6)
    cl.losses.sum().backward()
    assert torch.allclose(x.grad, torch.tensor([0.5, 0.5, 1 / 3, 1 / 3, 1 / 3, 1.0]))


def test_cluster_losses_reject_bad_shapes():
    batch = make_batch([0, 1, 2], k=3)
    with pytest.raises(ValueError, match="1-D tensor"):
        cluster_losses(torch.zeros(3, 2), batch)
    with pytest.raises(ValueError, match="3 timesteps"):
        cluster_losses(torch.zeros(4), batch)
    with pytest.raises(TypeError, match="TimestepBatch"):
        cluster_losses(torch.zeros(3), [0, 1, 2])  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- registry
def test_registry_builds_every_balancer_and_rejects_bad_input():
    sched = NoiseSchedule.from_name("linear", 100)
    for name in BALANCERS:
        kw = {"schedule": sched} if name == "continuous_uw" else {}
        b = make_balancer(name, 3, **kw)
        assert b.name == name and b.num_clusters == 3
    assert make_balancer("Nash-MTL", 2).name == "nash"
    with pytest.raises(ValueError, match="did you mean 'pcgrad'"):
        make_balancer("pcgard", 3)
    with pytest.raises(ValueError, match="unknown hyper-parameter.*update_every"):
        make_balancer("uw", 3, update_every=3)
    with pytest.raises(ValueError, match="update_every must be an integer"):
        make_balancer("nash", 3, update_every=0)
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        make_balancer("uw", 3, lr=-1)
    with pytest.raises(ValueError, match="num_clusters"):
        make_balancer("mean", 0)
    with pytest.raises(ValueError, match="noise schedule"):
        make_balancer("continuous_uw", 3)
    assert balancer_hyperparameters("nash")["update_every"] == 25


# ---------------------------------------------------------------------------- loss-based
def test_mean_is_average_over_present_clusters():
    batch = make_batch([0, 0, 2], k=3)
    x = torch.tensor([1.0, 3.0, 5.0])
    b = make_balancer("mean", 3)
    assert float(b.loss(x, batch)) == pytest.approx((2.0 + 5.0) / 2)
    assert b.last_weights.tolist() == [0.5, 0.0, 0.5]


def test_uw_matches_official_formula_and_gradients():
    k = 4
    b = UncertaintyWeighting(k)
    with torch.no_grad():
        b.log_vars.copy_(torch.tensor([0.0, 0.5, -1.0, 2.0]))
    batch = make_batch([0, 1, 1, 2, 3, 3], k)
    x = torch.tensor([1.0, 2.0, 4.0, 0.5, 3.0, 5.0], requires_grad=True)
    loss = b.loss(x, batch)
    L = torch.tensor([1.0, 3.0, 0.5, 4.0])
    s = b.log_vars.detach()
    expected = (0.5 * (torch.exp(-s) * L / k + s)).sum()
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-6)
    loss.backward()
    assert torch.allclose(b.log_vars.grad, 0.5 * (1 - torch.exp(-s) * L / k), atol=1e-6)
    assert torch.allclose(b.last_weights, 0.5 * torch.exp(-s) / k)
    rec = b.record()
    assert rec["log_vars"] == pytest.approx(s.tolist())
    assert rec["uw_weights"] == pytest.approx((0.5 * torch.exp(-s)).tolist())
    (group,) = b.param_groups()
    assert (
        group["lr"] == 0.025 and group["weight_decay"] == 0.0 and group["params"][0] is b.log_vars
    )
    # Kendall's original convention
    b2 = UncertaintyWeighting(k, divide_by_k=False)
    assert float(b2.loss(x.detach(), batch).detach()) == pytest.approx(float((0.5 * L).sum()))


def test_uw_learns_log_of_loss_over_k():
    k = 3
    b = UncertaintyWeighting(k)
    opt = torch.optim.AdamW(b.param_groups())
    batch = make_batch([0, 1, 2], k)
    x = torch.tensor([0.9, 0.3, 0.03])
    for _ in range(600):
        opt.zero_grad()
        b.loss(x, batch).backward()
        opt.step()
    assert torch.allclose(b.log_vars.detach(), torch.log(x / k), atol=0.02)


def test_rlw_weights_are_softmax_of_gaussian_over_present():
    b = RandomLossWeighting(4, seed=3)
    batch = make_batch([0, 1, 3, 3], 4)
    x = torch.tensor([1.0, 2.0, 3.0, 5.0])
    loss = b.loss(x, batch)
    p = torch.randn(4, generator=torch.Generator().manual_seed(3))
    w = torch.softmax(p.masked_fill(torch.tensor([False, False, True, False]), -math.inf), 0)
    assert torch.allclose(b.last_weights, w)
    assert float(loss) == pytest.approx(float(w[0] * 1 + w[1] * 2 + w[3] * 4))


def test_dwa_weights_follow_loss_ratios_of_the_last_two_windows():
    k, window = 3, 2
    b = DynamicWeightAverage(k, temperature=2.0, window=window)
    batch = make_batch([0, 1, 2], k)
    history = [[4.0, 2.0, 1.0], [4.0, 2.0, 1.0], [2.0, 2.0, 2.0], [2.0, 2.0, 2.0]]
    for h in history:
        b.loss(torch.tensor(h), batch)
        assert torch.allclose(b.last_weights, torch.full((k,), 1 / k))  # first two windows
    b.loss(torch.tensor([1.0, 1.0, 1.0]), batch)
    r = torch.tensor([2 / 4, 2 / 2, 2 / 1])
    expected = k * torch.softmax(r / 2.0, 0) / k
    assert torch.allclose(b.last_weights, expected, atol=1e-6)


def _official_famo(n_tasks, losses_seq, gamma=0.01, w_lr=0.025):
    # The official FAMO (github.com/Cranial-XIX/FAMO, famo.py), min_losses = 0.
    import torch.nn.functional as F

    w = torch.zeros(n_tasks, requires_grad=True)
    opt = torch.optim.Adam([w], lr=w_lr, weight_decay=gamma)
    min_losses = torch.zeros(n_tasks)
    out = []
    for before, after in losses_seq:
        z = F.softmax(w, -1)
        D = before - min_losses + 1e-8
        c = (z / D).sum().detach()
        out.append(((z / D) / c).detach().clone())
        delta = (before - min_losses + 1e-8).log() - (after - min_losses + 1e-8).log()
        with torch.enable_grad():
            d = torch.autograd.grad(F.softmax(w, -1), w, grad_outputs=delta.detach())[0]
        opt.zero_grad()
        w.grad = d
        opt.step()
    return out, w.detach()


def test_famo_matches_the_official_implementation():
    k = 3
    g = torch.Generator().manual_seed(0)
    seq = [(torch.rand(k, generator=g) + 0.1, torch.rand(k, generator=g) + 0.1) for _ in range(8)]
    ref_weights, ref_logits = _official_famo(k, seq)
    b = FAMO(k)
    batch = make_batch([0, 1, 2], k)
    for (before, after), ref in zip(seq, ref_weights):
        x = before.clone().requires_grad_(True)
        loss = b.loss(x, batch)
        assert torch.allclose(b.last_weights, ref, atol=1e-6)
        loss.backward()  # gradient = Σ w_i ∇L_i
        assert torch.allclose(x.grad, ref, atol=1e-6)
        b.after_optimizer_step(after)
    assert torch.allclose(b.logits, ref_logits, atol=1e-6)


def test_famo_requires_the_post_step_losses():
    b = FAMO(2)
    batch = make_batch([0, 1], 2)
    b.loss(torch.tensor([1.0, 2.0]), batch)
    with pytest.raises(ValueError, match="after optimizer.step"):
        b.after_optimizer_step(None)
    with pytest.warns(RuntimeWarning, match="after_optimizer_step"):
        b.loss(torch.tensor([1.0, 2.0]), batch)


def test_continuous_uw_loss_and_learning():
    sched = NoiseSchedule.from_name("linear", 100)
    k = 2
    b = ContinuousUncertaintyWeighting(k, schedule=sched, num_features=16)
    clusters = TaskClusters.uniform(100, k)
    t = torch.arange(0, 100, 5)
    batch = TimestepBatch.from_timesteps(t, clusters)
    target = 0.05 + torch.as_tensor(1.0 / (1.0 + sched.snr[t.numpy()]), dtype=torch.float32)
    # u ≡ 0 at init: the loss is the plain mean and the effective weights are n_i/B.
    assert float(b.loss(target, batch).detach()) == pytest.approx(float(target.mean()), rel=1e-6)
    assert torch.allclose(b.last_weights, batch.counts.float() / len(t))
    opt = torch.optim.Adam(b.param_groups())
    for _ in range(400):
        opt.zero_grad()
        b.loss(target, batch).backward()
        opt.step()
    # Optimum e^{u(λ)} = E[ℓ | λ]: u tracks log ℓ across noise levels.
    u = b.log_variance(t).detach()
    assert torch.corrcoef(torch.stack([u, target.log()]))[0, 1] > 0.95
    assert (u - target.log()).abs().mean() < 0.3
    rec = b.record()
    assert len(rec["u"]) == 11 and len(rec["weights"]) == k


# ---------------------------------------------------------------------------- gradient-based
def _update(b, g, present=None):
    k = g.shape[0]
    present = torch.ones(k, dtype=torch.bool) if present is None else present
    w = b.weights(g @ g.T, torch.ones(k), present)
    return w, w @ g


def test_pcgrad_matches_explicit_gradient_surgery():
    k = 4
    g = conflicting_gradients(k)
    b = PCGrad(k, seed=5)
    w, update = _update(b, g)
    # LibMTL/ANT PCGrad on explicit vectors g_i/k with the same random permutations.
    gen = torch.Generator().manual_seed(5)
    gk = g / k
    pc = gk.clone()
    for i in range(k):
        for j in torch.randperm(k, generator=gen).tolist():
            dot = pc[i] @ gk[j]
            if dot < 0:
                pc[i] -= dot * gk[j] / (gk[j].norm() ** 2 + 1e-8)
    assert torch.allclose(update, pc.sum(0), atol=1e-12)
    rec = b.record()
    gram = g @ g.T
    conflicts = [[i, j] for i in range(k) for j in range(i + 1, k) if gram[i, j] < 0]
    assert rec["conflicts"] == conflicts and len(conflicts) >= 1
    assert rec["cosine"][0][1] == pytest.approx(float(gram[0, 1] / (g[0].norm() * g[1].norm())))


def test_pcgrad_without_conflicts_is_the_mean_over_k():
    g = torch.rand(3, 5, dtype=torch.float64) + 0.1  # positive vectors never conflict
    b = PCGrad(3)
    w, _ = _update(b, g)
    assert torch.allclose(w, torch.full((3,), 1 / 3, dtype=torch.float64))
    assert b.record()["conflicts"] == []


def test_mgda_is_the_min_norm_point_of_the_convex_hull():
    g = conflicting_gradients(4, p=9)
    w, d = _update(MGDA(4, epsilon=1e-6, max_iters=2000), g)
    assert float(w.sum()) == pytest.approx(1.0) and bool((w >= -1e-12).all())
    # Optimality: g_j·d ≥ ‖d‖² for every j (Frank–Wolfe tolerance).
    assert bool((g @ d >= (d @ d) - 1e-3 * (g @ g.T).abs().max()).all())


def test_imtlg_equalises_projections_on_unit_gradients():
    g = conflicting_gradients(4, p=9)
    w, d = _update(IMTLG(4), g)
    proj = (g @ d) / g.norm(dim=1)
    assert float(w.sum()) == pytest.approx(1.0)
    assert torch.allclose(proj, proj.mean().expand_as(proj), rtol=1e-8)


def _official_cagrad(grads: np.ndarray, alpha=0.4, rescale=1):
    # github.com/Cranial-XIX/CAGrad, cagrad(grads [P, k], alpha, rescale), in numpy.
    from scipy.optimize import minimize

    GG = grads.T @ grads
    num_tasks = GG.shape[0]
    g0_norm = np.sqrt(GG.mean() + 1e-8)
    x_start = np.ones(num_tasks) / num_tasks
    bnds = tuple((0, 1) for _ in x_start)
    cons = {"type": "eq", "fun": lambda x: 1 - sum(x)}
    b = x_start.copy()
    c = alpha * g0_norm + 1e-8

    def objfn(x):
        return (x @ GG @ b + c * np.sqrt(x @ GG @ x + 1e-8)).sum()

    res = minimize(objfn, x_start, bounds=bnds, constraints=cons, options={"ftol": 1e-12})
    gw = grads @ res.x
    lmbda = c / (np.linalg.norm(gw) + 1e-8)
    g = grads.mean(1) + lmbda * gw
    return g / (1 + alpha**2) if rescale == 1 else g


def test_cagrad_matches_the_official_implementation():
    g = conflicting_gradients(3, p=6)
    _, d = _update(CAGrad(3, c=0.4), g)
    ref = _official_cagrad(g.T.numpy(), alpha=0.4)
    assert np.allclose(d.numpy(), ref, rtol=2e-3, atol=2e-3 * np.abs(ref).max())


def test_upgrad_projection_and_no_conflict():
    g = conflicting_gradients(4, p=9)
    gram = g @ g.T
    # The NNLS projector solves min vᵀGv s.t. v ≥ u exactly (compare with cvxpy).
    import cvxpy as cp

    proj = NNLSDualConeProjector()
    u = torch.tensor([0.25, 0.0, 0.0, 0.0], dtype=torch.float64)
    v = proj(u[None], gram)[0].numpy()
    gn = gram.numpy() / np.trace(gram.numpy()) + 1e-4 * np.eye(4)
    x = cp.Variable(4)
    cp.Problem(cp.Minimize(cp.quad_form(x, cp.psd_wrap(gn))), [x >= u.numpy()]).solve(cp.CLARABEL)
    assert np.allclose(v, x.value, atol=1e-6)
    w, d = _update(UPGrad(4), g)
    assert bool((g @ d >= -1e-6 * d.norm() * g.norm(dim=1)).all())  # conflicts with no cluster


@pytest.mark.parametrize("name", ["pcgrad", "mgda", "imtlg", "cagrad", "upgrad", "nash"])
def test_gradient_methods_give_zero_weight_to_absent_clusters(name):
    b = make_balancer(name, 4)
    g = conflicting_gradients(4)
    present = torch.tensor([True, True, False, True])
    g[2] = 0.0
    w = b.weights(g @ g.T, torch.ones(4), present)
    assert w[2] == 0 and bool(torch.isfinite(w).all()) and bool((w[present] != 0).any())
    rec = b.record()
    assert rec["cosine"][2][0] is None and rec["grad_norms"][2] is None


def test_gradient_methods_refuse_the_loss_interface_and_vice_versa():
    batch = make_batch([0, 1], 2)
    with pytest.raises(NotImplementedError, match="ClusterGradientEngine"):
        make_balancer("pcgrad", 2).loss(torch.ones(2), batch)
    with pytest.raises(TypeError, match="loss-based"):
        make_balancer("uw", 2).weights(torch.eye(2), torch.ones(2), torch.ones(2, dtype=torch.bool))
    with pytest.raises(FloatingPointError, match="not finite"):
        make_balancer("mgda", 2).weights(
            torch.full((2, 2), math.nan), torch.ones(2), torch.ones(2, dtype=torch.bool)
        )
