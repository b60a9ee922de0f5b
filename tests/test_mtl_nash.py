"""NashMTL: the solver satisfies the Nash condition, fails loudly, and is amortised as ANT."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from antdiff import TimestepBatch
from antdiff.mtl import NashMTL, NashSolverWarning, solve_nash
from antdiff.mtl.nash import nash_residual


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny models: intra-op threads only add contention (pytest -n 2 on 2 cores); restored after.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def random_gram(k: int, seed: int, scale: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    g = rng.normal(size=(k, 3 * k)) + rng.normal(size=3 * k)  # correlated, like cluster grads
    return scale * (g @ g.T)


@pytest.mark.parametrize("method", ["ccp", "newton"])
@pytest.mark.parametrize(("k", "scale"), [(2, 1.0), (5, 1e-6), (5, 1e3), (8, 1e-2)])
def test_alpha_satisfies_the_nash_condition(method, k, scale):
    for seed in range(3):
        gram = random_gram(k, seed, scale)
        sol = solve_nash(gram, method=method)
        assert sol.alpha is not None, sol.errors
        assert np.all(sol.alpha > 0)
        # G α = 1/α, i.e. α_i (Gα)_i = 1 for every cluster.
        assert np.allclose(gram @ sol.alpha, 1.0 / sol.alpha, rtol=1e-5)
        assert sol.residual == pytest.approx(nash_residual(gram, sol.alpha))
        if method == "ccp":
            assert sol.solver == "CLARABEL"


def test_ccp_and_newton_agree():
    gram = random_gram(5, 7, 0.3)
    a = solve_nash(gram, method="ccp").alpha
    b = solve_nash(gram, method="newton").alpha
    assert np.allclose(a, b, rtol=1e-5)


def test_missing_solvers_fall_back_to_newton():
    sol = solve_nash(random_gram(3, 0, 1.0), solvers=("NO_SUCH_SOLVER",))
    assert sol.solver == "newton" and sol.alpha is not None
    assert "is installed" in " ".join(sol.errors)


def opposite_gram() -> torch.Tensor:
    g = torch.tensor([[1.0, 2.0, 0.0], [-1.0, -2.0, 0.0]], dtype=torch.float64)
    return g @ g.T  # no α > 0 with α_i (Gα)_i = 1 exists


def test_failure_keeps_previous_alpha_and_warns_every_time():
    b = NashMTL(2, update_every=1)
    present = torch.ones(2, dtype=torch.bool)
    good = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    w_good = b.weights(good, torch.ones(2), present)
    alpha = b.alpha.clone()
    assert not torch.allclose(alpha, torch.ones(2, dtype=torch.float64))
    for n in (1, 2):
        with pytest.warns(NashSolverWarning, match=f"{n} failure"):
            w = b.weights(opposite_gram(), torch.ones(2), present)
        assert torch.equal(b.alpha, alpha) and torch.allclose(w, w_good)
        assert int(b.failures) == n
    rec = b.record()
    assert rec["nash_failures"] == 2 and rec["nash_solver"] == "none"
    assert rec["alpha"] == pytest.approx(alpha.tolist())


def test_amortised_schedule_and_reuse_loss():
    k = 3
    b = NashMTL(k, update_every=3)
    batch = TimestepBatch(
        torch.tensor([0, 400, 900]), torch.tensor([0, 1, 2]), torch.tensor([1, 1, 1]), k
    )
    present = torch.ones(k, dtype=torch.bool)
    gram = torch.as_tensor(random_gram(k, 1, 2.0))
    due = []
    for _ in range(6):
        due.append(b.gradients_due())
        if due[-1]:
            w = b.weights(gram, torch.ones(k), present)
            alpha = torch.as_tensor(solve_nash(gram).alpha)
            assert torch.allclose(w, alpha / k, rtol=1e-6)  # ANT's Σ α_i L_i / k
            # the update has norm √k / k at a recompute step (α_i (Gα)_i = 1)
            assert float(w @ gram @ w) == pytest.approx(k / k**2, rel=1e-5)
        else:
            x = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
            loss = b.loss(x, batch)
            loss.backward()
            assert torch.allclose(x.grad.double(), b.alpha / k, rtol=1e-6)
    assert due == [True, False, False, True, False, False]
    with pytest.raises(RuntimeError, match="recompute"):
        b.loss(torch.ones(3), batch)
    assert b.max_grad_norm == 1.0


def test_warm_start_from_state_resumes_exactly():
    k = 4
    a = NashMTL(k, update_every=1)
    present = torch.ones(k, dtype=torch.bool)
    grams = [torch.as_tensor(random_gram(k, s, 1.0)) for s in range(4)]
    for g in grams[:2]:
        a.weights(g, torch.ones(k), present)
    b = NashMTL(k, update_every=1)
    b.load_state_dict(a.state_dict())
    for g in grams[2:]:
        assert torch.equal(
            a.weights(g, torch.ones(k), present), b.weights(g, torch.ones(k), present)
        )
    assert int(b.step) == 4
