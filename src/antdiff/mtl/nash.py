"""NashMTL (Navon et al., ICML 2022) on timestep clusters, as in ANT (paper §5.3), with a solver
that works with today's cvxpy and fails loudly instead of silently."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .base import ClusterLosses, GradientBalancer, check_positive, check_positive_int

__all__ = ["NASH_METHODS", "NashMTL", "NashSolution", "NashSolverWarning", "solve_nash"]

#: ``method`` values of :func:`solve_nash`.
NASH_METHODS = ("ccp", "newton")
#: cvxpy solvers tried in order at each CCP iteration (ECOS only if installed: cvxpy ≥ 1.6 no
#: longer installs it, which is what made the official code fall back to equal weights silently).
DEFAULT_SOLVERS = ("CLARABEL", "SCS", "ECOS")


class NashSolverWarning(RuntimeWarning):
    """No solver could compute the Nash bargaining weights; the previous α is reused."""


@dataclass
class NashSolution:
    """Result of :func:`solve_nash`. ``alpha`` is None when every solver failed."""

    alpha: np.ndarray | None
    solver: str
    status: str
    iterations: int
    residual: float
    errors: list[str] = field(default_factory=list)


def nash_residual(gramian: np.ndarray, alpha: np.ndarray) -> float:
    """``max_i |α_i (Gα)_i − 1|``: zero exactly at the Nash bargaining solution ``Gα = 1/α``."""
    return float(np.max(np.abs(alpha * (gramian @ alpha) - 1.0)))


# ---------------------------------------------------------------------------- CCP (official)
class _CCPProblem:
    """The convex sub-problem of one CCP iteration, built once per size m (DPP: parameters only
    enter affinely, so cvxpy compiles it once and re-solves it cheaply).

    With the Frobenius-normalised Gram matrix ``M = G/ν`` and the previous iterate α':

        min_α  Σ_i (Mα)_i + c·α        s.t.  −log α_i − log (Mα)_i ≤ log ν,   α ≥ 0,
        c = (1/α' + (1/(Mα'))ᵀ M) / ν,

    i.e. Navon et al.'s objective ``Σ(Mα) + φ_lin(α)/ν`` (φ = Σ log α_i + Σ log (Mα)_i linearised at
    α'; constant terms dropped) and their constraint ``−log(α_i ν) − log((Mα)_i) ≤ 0``, which is
    ``α_i (Gα)_i ≥ 1`` on the *unnormalised* G.
    """

    def __init__(self, m: int) -> None:
        import cvxpy as cp

        self.cp = cp
        self.alpha = cp.Variable(m, nonneg=True)
        self.gram = cp.Parameter((m, m))
        self.lin = cp.Parameter(m)
        self.log_nu = cp.Parameter()
        g_alpha = self.gram @ self.alpha
        constraints = [-cp.log(self.alpha) - cp.log(g_alpha) <= self.log_nu]
        self.problem = cp.Problem(cp.Minimize(cp.sum(g_alpha) + self.lin @ self.alpha), constraints)


_CCP_CACHE: dict[int, _CCPProblem] = {}


def _ccp_problem(m: int) -> _CCPProblem:
    if m not in _CCP_CACHE:
        _CCP_CACHE[m] = _CCPProblem(m)
    return _CCP_CACHE[m]


def _available(solvers: tuple[str, ...]) -> tuple[str, ...]:
    try:
        import cvxpy as cp
    except ImportError:  # a slim install: only the Newton fallback of the chain is left
        return ()
    installed = set(cp.installed_solvers())
    return tuple(s for s in solvers if s in installed)


def _solve_ccp_step(
    prob: _CCPProblem, solvers: tuple[str, ...], errors: list[str]
) -> tuple[np.ndarray | None, str, str]:
    for name in solvers:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # cvxpy's "solution may be inaccurate" chatter
                prob.problem.solve(solver=name, warm_start=True)
        except Exception as e:
            errors.append(f"{name}: {type(e).__name__}: {str(e).strip()[:120]}")
            continue
        value = prob.alpha.value
        status = str(prob.problem.status)
        if status in ("optimal", "optimal_inaccurate") and value is not None:
            a = np.asarray(value, dtype=np.float64)
            if np.all(np.isfinite(a)) and np.all(a > 0):
                return a, name, status
        errors.append(f"{name}: status {status}")
    return None, "", "failed"


def _ccp(
    gram: np.ndarray, alpha0: np.ndarray, solvers: tuple[str, ...], max_iters: int, tol: float
) -> NashSolution:
    nu = float(np.linalg.norm(gram))
    m_mat = gram / nu
    prob = _ccp_problem(gram.shape[0])
    prob.gram.value = m_mat
    prob.log_nu.value = math.log(nu)
    alpha = alpha0.copy()
    errors: list[str] = []
    solver, status, iterations = "", "failed", 0
    for _ in range(max_iters):
        g_alpha = m_mat @ alpha
        if not np.all(g_alpha > 0):
            # log (Gα)_i is undefined at the current iterate: the CCP cannot be linearised here.
            errors.append("CCP: (Gα)_i <= 0 at the current α (opposed cluster gradients)")
            break
        prob.lin.value = (1.0 / alpha + (1.0 / g_alpha) @ m_mat) / nu
        new, name, st = _solve_ccp_step(prob, solvers, errors)
        if new is None:
            break  # keep the progress made so far, as the official code does
        iterations += 1
        solver, status = name, st
        change = float(np.linalg.norm(new - alpha))
        alpha = new
        if change < 1e-6 or nash_residual(gram, alpha) < tol:
            break
    if iterations == 0:
        return NashSolution(None, "", "failed", 0, math.inf, errors)
    return NashSolution(alpha, solver, status, iterations, nash_residual(gram, alpha), errors)


# ---------------------------------------------------------------------------- Newton (fallback)
def _newton(gram: np.ndarray, alpha0: np.ndarray, max_iters: int = 100) -> NashSolution:
    """Damped Newton on the strictly convex ``f(a) = ½ aᵀMa − Σ log a_i`` (M = G/ν), whose
    stationarity condition ``Ma = 1/a`` is the Nash condition; ``α = a/√ν`` then solves
    ``Gα = 1/α``. Pure numpy, microseconds for k ≤ 16. It fails (α None) when no solution
    exists, e.g. a singular G with ``Gv = 0`` for some ``v ≥ 0`` (f unbounded below)."""
    nu = float(np.linalg.norm(gram))
    m_mat = gram / nu
    a = alpha0 * math.sqrt(nu)
    if not (np.all(np.isfinite(a)) and np.all(a > 0)):
        a = np.ones_like(alpha0)

    def f(x: np.ndarray) -> float:
        return 0.5 * float(x @ m_mat @ x) - float(np.sum(np.log(x)))

    with np.errstate(all="ignore"):
        return _newton_loop(gram, m_mat, nu, a, f, max_iters)


def _newton_loop(
    gram: np.ndarray,
    m_mat: np.ndarray,
    nu: float,
    a: np.ndarray,
    f: Any,
    max_iters: int,
) -> NashSolution:
    for it in range(1, max_iters + 1):
        grad = m_mat @ a - 1.0 / a
        hess = m_mat + np.diag(1.0 / a**2)
        try:
            d = np.linalg.solve(hess, grad)
        except np.linalg.LinAlgError:
            break
        # Stay strictly inside α > 0, then backtrack (Armijo).
        neg = d > 0
        step = min(1.0, 0.99 * float(np.min(a[neg] / d[neg]))) if np.any(neg) else 1.0
        fa, slope = f(a), float(grad @ d)  # slope = Newton decrement², ≥ 0
        # Backtracking only far from the optimum: close to it, f changes by less than its own
        # rounding error and Armijo would reject the (quadratically convergent) full step.
        while slope > 1e-9 and step > 1e-12 and f(a - step * d) > fa - 1e-4 * step * slope:
            step *= 0.5
        a = a - step * d
        if not np.all(np.isfinite(a)) or np.max(a) > 1e12:
            break
        if float(np.max(np.abs(a * (m_mat @ a) - 1.0))) < 1e-9:
            alpha = a / math.sqrt(nu)
            return NashSolution(alpha, "newton", "optimal", it, nash_residual(gram, alpha))
    return NashSolution(None, "", "failed", max_iters, math.inf, ["newton: did not converge"])


def solve_nash(
    gramian: np.ndarray | Tensor,
    alpha0: np.ndarray | Tensor | None = None,
    *,
    method: str = "ccp",
    solvers: tuple[str, ...] = DEFAULT_SOLVERS,
    max_iters: int = 20,
    tol: float = 1e-6,
) -> NashSolution:
    """Solve ``Gα = 1/α`` (α > 0) for a Gram matrix ``G`` of cluster gradients.

    ``method="ccp"``: Navon et al.'s sequential convex procedure (``max_iters`` outer iterations,
    warm-started at ``alpha0``, each tried with the cvxpy ``solvers`` in order), and if no solver
    succeeds at the first iteration, the Newton fallback. ``method="newton"``: the Newton solver
    only. Returns ``alpha=None`` when everything failed (the caller keeps its previous α).
    """
    if method not in NASH_METHODS:
        raise ValueError(f"unknown Nash solver method {method!r}; choose one of {NASH_METHODS}")
    g = torch.as_tensor(gramian).detach().cpu().double().numpy()
    m = g.shape[0]
    a0 = np.ones(m) if alpha0 is None else torch.as_tensor(alpha0).detach().cpu().double().numpy()
    if not np.all(np.isfinite(g)) or float(np.linalg.norm(g)) == 0.0:
        return NashSolution(None, "", "failed", 0, math.inf, ["Gram matrix is zero or not finite"])
    errors: list[str] = []
    if method == "ccp":
        chain = _available(solvers)
        if chain:
            sol = _ccp(g, a0, chain, max_iters, tol)
            if sol.alpha is not None:
                return sol
            errors.extend(sol.errors)
        else:
            errors.append(f"none of the cvxpy solvers {solvers} is installed")
    sol = _newton(g, a0)
    sol.errors = errors + sol.errors
    return sol


# ---------------------------------------------------------------------------- the balancer
class NashMTL(GradientBalancer):
    """Nash bargaining weights α with ``Gα = 1/α`` (G the Gram matrix of the cluster gradients),
    update ``Σ_i α_i g_i / k`` (the ``/k`` is ANT's; ``divide_by_k=False`` drops it).

    As the official code: α is recomputed every ``update_every`` steps (default 25) and reused in
    between (those steps are ordinary one-backward steps with loss ``Σ α_i L_i / k``), starts at
    all-ones, and the update norm is clipped to ``max_grad_norm`` (1.0) by the engine. The solver
    (:func:`solve_nash`) is the CCP on the Frobenius-normalised Gram matrix with CLARABEL → SCS →
    ECOS (if installed) → a Newton fallback; if all fail, the previous α is kept, a
    :class:`NashSolverWarning` is issued every time and ``nash_failures`` counts it. The step
    counter, α and the failure count are saved in ``state_dict()``.
    """

    name = "nash"

    def __init__(
        self,
        num_clusters: int,
        *,
        update_every: int = 25,
        max_iters: int = 20,
        max_grad_norm: float | None = 1.0,
        divide_by_k: bool = True,
        method: str = "ccp",
        solvers: tuple[str, ...] | list[str] = DEFAULT_SOLVERS,
        tol: float = 1e-6,
    ) -> None:
        super().__init__(num_clusters, max_grad_norm=max_grad_norm)
        self.update_every = check_positive_int("update_every", update_every)
        self.max_iters = check_positive_int("max_iters", max_iters)
        if method not in NASH_METHODS:
            raise ValueError(f"unknown Nash solver method {method!r}; choose one of {NASH_METHODS}")
        self.method = method
        if isinstance(solvers, str) or not all(isinstance(s, str) for s in solvers):
            raise ValueError(f"solvers must be a list of cvxpy solver names, got {solvers!r}")
        self.solvers = tuple(s.upper() for s in solvers)
        self.tol = check_positive("tol", tol)
        self.divide_by_k = bool(divide_by_k)
        self.register_buffer("alpha", torch.ones(num_clusters, dtype=torch.float64))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.register_buffer("failures", torch.zeros((), dtype=torch.long))
        self._last: NashSolution | None = None
        self._updated = False

    def gradients_due(self) -> bool:
        return int(self.step) % self.update_every == 0

    def _scale(self) -> float:
        return 1.0 / self.num_clusters if self.divide_by_k else 1.0

    def _solve(self, gramian: Tensor, losses: Tensor, clusters: Tensor) -> Tensor:
        idx = clusters.to(self.alpha.device)
        previous = self.alpha[idx].detach().cpu()
        sol = solve_nash(
            gramian,
            previous,
            method=self.method,
            solvers=self.solvers,
            max_iters=self.max_iters,
            tol=self.tol,
        )
        self._last = sol
        self._updated = True
        self.step += 1
        if sol.alpha is None:
            self.failures += 1
            warnings.warn(
                f"NashMTL: no solver could compute the Nash weights at step {int(self.step) - 1} "
                f"({'; '.join(sol.errors) or 'no detail'}); keeping the previous "
                f"α = {np.round(previous.numpy(), 4).tolist()} — {int(self.failures)} failure(s) "
                "so far. Repeated failures mean vanishing or exactly opposed cluster gradients.",
                NashSolverWarning,
                stacklevel=2,
            )
            alpha = previous
        else:
            alpha = torch.from_numpy(sol.alpha)
            self.alpha[idx] = alpha.to(self.alpha.device, self.alpha.dtype)
        return alpha * self._scale()

    def combine(self, cl: ClusterLosses) -> Tensor:
        """The loss of a step that reuses α (not a recompute step)."""
        if self.gradients_due():
            raise RuntimeError(
                "NashMTL must recompute α at this step and needs the cluster gradients: drive it "
                "with antdiff.mtl.ClusterGradientEngine"
            )
        w = self.alpha.to(cl.losses.device, torch.float32) * self._scale()
        w = w * cl.present.to(w.dtype)
        self._set_weights(w)
        self._updated = False
        self.step += 1
        return (w * cl.losses).sum()

    def _diagnostics(self) -> dict[str, Any]:
        out = super()._diagnostics() if self._updated else {}
        out.update(
            {
                "alpha": [float(x) for x in self.alpha.tolist()],
                "nash_updated": self._updated,
                "nash_failures": int(self.failures),
            }
        )
        if self._updated and self._last is not None:
            s = self._last
            out.update(
                {
                    "nash_solver": s.solver or "none",
                    "nash_status": s.status,
                    "nash_iterations": s.iterations,
                    "nash_residual": s.residual if math.isfinite(s.residual) else None,
                }
            )
        return out

    def extra_repr(self) -> str:
        return (
            f"num_clusters={self.num_clusters}, update_every={self.update_every}, "
            f"method={self.method!r}, max_grad_norm={self.max_grad_norm}, "
            f"divide_by_k={self.divide_by_k}"
        )
