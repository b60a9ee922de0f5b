"""Known-answer tests of FID, KID and precision/recall on synthetic features."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from antdiff.evaluation import (
    StatsAccumulator,
    frechet_distance,
    gaussian_stats,
    kernel_inception_distance,
    manifold_radii,
    precision_recall,
    trace_sqrt_product,
)
from antdiff.evaluation import metrics as M


def _random_spd(rng: np.random.Generator, d: int, ridge: float = 0.1) -> np.ndarray:
    a = rng.normal(size=(d, d))
    return a @ a.T / d + ridge * np.eye(d)


# ---------------------------------------------------------------------------------------------
# FID


def test_fid_closed_form_for_diagonal_gaussians():
    # Commuting covariances: FID = |mu1 - mu2|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2.
    rng = np.random.default_rng(0)
    d = 16
    a, b = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)


def test_fid_closed_form_identity_vs_rotated_spectrum():
    # Sigma1 = I: tr((Sigma2)^{1/2}) = sum sqrt(lambda) for any rotation Q of the spectrum.
    rng = np.random.default_rng(1)
    d = 12
    lam = rng.uniform(0.01, 5.0, d)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    sigma2 = q @ np.diag(lam) @ q.T
    expected = d + lam.sum() - 2 * np.sqrt(lam).sum()
    assert frechet_distance(np.zeros(d), np.eye(d), np.zeros(d), sigma2) == pytest.approx(
        expected, rel=1e-10
    )
    # Scalar multiple: tr((c Sigma^2)^{1/2}) = sqrt(c) tr(Sigma).
    s = _random_spd(rng, d)
    assert trace_sqrt_product(s, 4.0 * s) == pytest.approx(2.0 * np.trace(s), rel=1e-10)


@pytest.mark.parametrize("seed", [2, 3, 4])
def test_fid_matches_direct_scipy_sqrtm(seed):
    rng = np.random.default_rng(seed)
    d = 24
    s1, s2 = _random_spd(rng, d), _random_spd(rng, d, ridge=0.01)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    direct = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(direct, rel=1e-9)
    assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(direct, rel=1e-9)


def test_fid_singular_covariances_are_real_and_nonnegative():
    # n < D: rank-deficient sample covariances, where sqrtm-based code returns complex values.
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(10, 40)), rng.normal(size=(12, 40)) + 0.3
    gx, gy = gaussian_stats(x), gaussian_stats(y)
    fid = frechet_distance(gx.mu, gx.sigma, gy.mu, gy.sigma)
    assert isinstance(fid, float) and np.isfinite(fid) and fid > 0
    # Reference: eigenvalues of the non-symmetric product (real, non-negative up to round-off).
    ev = np.clip(np.linalg.eigvals(gx.sigma @ gy.sigma).real, 0, None)
    ref = (
        np.sum((gx.mu - gy.mu) ** 2)
        + np.trace(gx.sigma)
        + np.trace(gy.sigma)
        - 2 * np.sqrt(ev).sum()
    )
    assert fid == pytest.approx(ref, rel=1e-6)
    assert frechet_distance(gx.mu, gx.sigma, gx.mu, gx.sigma) == pytest.approx(0.0, abs=1e-9)


def test_fid_rejects_mismatched_dimensions():
    with pytest.raises(ValueError, match="different dimension"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_stats_accumulator_matches_numpy_and_resists_cancellation():
    rng = np.random.default_rng(6)
    x = 1e6 + rng.normal(size=(1000, 5)) * np.array([1e-3, 1, 2, 3, 4])  # huge mean, tiny spread
    acc = StatsAccumulator()
    for chunk in np.array_split(x, 7):
        acc.update(chunk)
    st = acc.finalize()
    assert st.n == 1000
    np.testing.assert_allclose(st.mu, x.mean(0), rtol=1e-14)
    np.testing.assert_allclose(st.sigma, np.cov(x, rowvar=False), rtol=1e-7, atol=1e-12)
    with pytest.raises(ValueError, match="at least 2"):
        gaussian_stats(x[:1])


# ---------------------------------------------------------------------------------------------
# KID


def _poly(x, y):
    return (x @ y / x.shape[0] + 1.0) ** 3


def _mmd2_brute_force(x: np.ndarray, y: np.ndarray) -> float:
    m = x.shape[0]
    kxx = sum(_poly(x[i], x[j]) for i in range(m) for j in range(m) if i != j)
    kyy = sum(_poly(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
    kxy = sum(_poly(x[i], y[j]) for i in range(m) for j in range(m))
    return kxx / (m * (m - 1)) + kyy / (m * (m - 1)) - 2 * kxy / m**2


def test_kid_of_point_masses_is_the_kernel_distance():
    a, b = np.full(4, 0.5), np.array([1.0, -1.0, 2.0, 0.0])
    real, gen = np.tile(a, (30, 1)), np.tile(b, (25, 1))
    expected = _poly(a, a) + _poly(b, b) - 2 * _poly(a, b)
    kid = kernel_inception_distance(real=real, generated=gen, subset_size=10, num_subsets=5)
    assert kid.mean == pytest.approx(expected, rel=1e-12)
    assert kid.std == pytest.approx(0.0, abs=1e-12)
    assert kid.subset_size == 10 and kid.num_subsets == 5


def test_kid_matches_brute_force_definition():
    rng = np.random.default_rng(7)
    real, gen = rng.normal(size=(9, 3)), rng.normal(size=(9, 3)) + 0.5
    # subset_size = n: every subset is a permutation of all rows, so each equals the full MMD².
    kid = kernel_inception_distance(real=real, generated=gen, subset_size=50, num_subsets=3)
    assert kid.subset_size == 9  # clamped to the available rows, and reported
    assert kid.mean == pytest.approx(_mmd2_brute_force(real, gen), rel=1e-10)


def test_kid_is_unbiased_and_orders_distributions():
    rng = np.random.default_rng(8)
    real = rng.normal(size=(600, 8))
    same = rng.normal(size=(600, 8))
    shifted = rng.normal(size=(600, 8)) + 0.5
    k_same = kernel_inception_distance(real=real, generated=same, subset_size=100, num_subsets=50)
    k_shift = kernel_inception_distance(
        real=real, generated=shifted, subset_size=100, num_subsets=50
    )
    assert abs(k_same.mean) < 3 * k_same.std  # unbiased: centred on 0 for equal distributions
    assert k_shift.mean > 10 * max(abs(k_same.mean), k_same.std)


def test_kid_rejects_too_few_samples():
    with pytest.raises(ValueError, match="at least 2"):
        kernel_inception_distance(real=np.zeros((1, 3)), generated=np.zeros((5, 3)))


# ---------------------------------------------------------------------------------------------
# precision / recall


def test_precision_recall_hand_computed_1d():
    # k=1 radii: real {0,1,2,10} -> {1,1,1,8}; generated {0.5,0.6,30,31} -> {0.1,0.1,1,1}.
    real = np.array([[0.0], [1.0], [2.0], [10.0]])
    gen = np.array([[0.5], [0.6], [30.0], [31.0]])
    pr = precision_recall(real=real, generated=gen, k=1)
    assert pr.precision == 0.5  # 0.5 and 0.6 lie in the real balls; 30 and 31 do not
    assert pr.recall == 0.0  # no real point lies within 0.1 of 0.5/0.6 or within 1 of 30/31
    swapped = precision_recall(real=gen, generated=real, k=1)
    assert (swapped.precision, swapped.recall) == (0.0, 0.5)
    np.testing.assert_allclose(manifold_radii(real, 1), [1.0, 1.0, 1.0, 64.0])


def _blobs(rng, n_per_blob, centres):
    return np.concatenate([c + 0.3 * rng.normal(size=(n_per_blob, 2)) for c in centres])


def test_mode_collapse_gives_high_precision_low_recall():
    rng = np.random.default_rng(9)
    centres = np.array([[0, 0], [20, 0], [0, 20], [20, 20]], dtype=float)
    real = _blobs(rng, 150, centres)
    collapsed = _blobs(rng, 150, centres[:1])  # a generator that only makes the first mode
    pr = precision_recall(real=real, generated=collapsed, k=3)
    assert pr.precision > 0.9
    assert 0.15 < pr.recall < 0.3  # one mode of four is covered
    # The opposite failure: real data has one mode, the generator spreads over four.
    spread = precision_recall(real=collapsed, generated=real, k=3)
    assert 0.15 < spread.precision < 0.3
    assert spread.recall > 0.9
    assert (pr.n_real, pr.n_generated, pr.k) == (600, 150, 3)


def test_precision_recall_blocking_does_not_change_results(monkeypatch):
    rng = np.random.default_rng(10)
    real, gen = rng.normal(size=(80, 5)), rng.normal(size=(70, 5)) + 0.4
    full = precision_recall(real=real, generated=gen, k=3)
    monkeypatch.setattr(M, "_BLOCK_ELEMENTS", 100)  # blocks of 1 row
    blocked = precision_recall(real=real, generated=gen, k=3)
    assert full == blocked


def test_precision_recall_argument_errors():
    with pytest.raises(ValueError, match="more than 3"):
        precision_recall(real=np.zeros((3, 2)), generated=np.zeros((10, 2)), k=3)
    with pytest.raises(ValueError, match="dimensions differ"):
        precision_recall(real=np.zeros((10, 2)), generated=np.zeros((10, 3)))
    with pytest.raises(TypeError):
        precision_recall(np.zeros((10, 2)), np.zeros((10, 2)))  # positional use is refused


def test_gpu_path_of_the_fid_linear_algebra_matches_numpy():
    """The float64 torch path (what a GPU evaluation runs) computes the same covariance and the
    same square-root trace as the NumPy path, here run on the CPU."""
    import torch

    rng = np.random.default_rng(3)
    x = rng.standard_normal((300, 40)) @ rng.standard_normal((40, 40)) + 5.0
    y = rng.standard_normal((200, 40)) * np.linspace(0.1, 3.0, 40)
    ref = M.gaussian_stats(x)
    gx = M._gaussian_stats_torch(torch.from_numpy(x), "cpu")
    assert gx.n == 300
    np.testing.assert_allclose(gx.mu, ref.mu, rtol=1e-12)
    np.testing.assert_allclose(gx.sigma, ref.sigma, rtol=1e-10, atol=1e-10)
    sy = M.gaussian_stats(y)
    expected = M.trace_sqrt_product(ref.sigma, sy.sigma)
    got = M._trace_sqrt_product_torch(ref.sigma, sy.sigma, "cpu")
    assert got == pytest.approx(expected, rel=1e-10)
    with pytest.raises(ValueError, match="at least 2"):
        M._gaussian_stats_torch(x[:1], "cpu")


def test_fid_routes_to_the_device_only_for_accelerators(monkeypatch):
    """CPU (or no device) keeps the NumPy path; a GPU device sends the covariance and the
    square-root trace of the FID and of its floor to the device."""
    import torch

    from antdiff.evaluation.evaluate import evaluate_features
    from antdiff.evaluation.reference import ReferenceStats

    calls: list[str] = []
    real_trace = M._trace_sqrt_product_torch

    def fake_trace(s1, s2, device):
        calls.append(f"trace:{torch.device(device).type}")
        return real_trace(s1, s2, "cpu")

    monkeypatch.setattr(M, "_trace_sqrt_product_torch", fake_trace)
    assert M._on_accelerator("cuda:1") and M._on_accelerator(torch.device("mps"))
    assert not M._on_accelerator("cpu") and not M._on_accelerator(None)
    a = np.eye(3) * 2.0
    b = np.eye(3)
    M.frechet_distance(np.zeros(3), a, np.ones(3), b, device="cpu")
    assert calls == []
    value = M.frechet_distance(np.zeros(3), a, np.ones(3), b, device="cuda:0")
    assert calls == ["trace:cuda"]
    assert value == pytest.approx(M.frechet_distance(np.zeros(3), a, np.ones(3), b))

    # evaluate_features passes its device down (covariance of the samples, FID, floor)
    seen: list[object] = []
    real_stats = M.gaussian_stats

    def spy_stats(features, device=None):
        seen.append(device)
        return real_stats(features)

    import importlib

    E = importlib.import_module("antdiff.evaluation.evaluate")  # the package re-exports evaluate()
    R = importlib.import_module("antdiff.evaluation.reference")

    monkeypatch.setattr(E, "gaussian_stats", spy_stats)
    monkeypatch.setattr(R, "gaussian_stats", spy_stats)
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((60, 4))
    stats = M.gaussian_stats(feats)
    net = {"name": "test", "checksum": "abc", "preprocessing": "none"}
    ref = ReferenceStats(
        mu=stats.mu, sigma=stats.sigma, n=60, features=feats.astype(np.float32),
        extractor=net, dataset="test",
    )  # fmt: skip
    calls.clear()
    out = evaluate_features(
        rng.standard_normal((20, 4)), ref, extractor_info=net, metrics=["fid"], device="cuda:0"
    )
    assert seen == ["cuda:0", "cuda:0"]  # the samples' covariance and the floor's
    assert calls == ["trace:cuda", "trace:cuda"] and out["floor"] is not None
