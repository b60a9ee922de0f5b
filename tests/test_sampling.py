import numpy as np
import pytest
import torch
from scipy import stats

from antdiff import TaskClusters, TimestepBatch, TimestepSampler, cluster_timesteps

CLUSTERS = TaskClusters(((0, 9), (10, 39), (40, 99)))  # widths 10, 30, 60


@pytest.mark.parametrize("mode", ["stratified", "uniform", "proportional"])
@pytest.mark.parametrize("B", [1, 2, 3, 7, 64, 101])
def test_counts_and_ids_consistent(mode, B):
    s = TimestepSampler(CLUSTERS, mode)
    g = torch.Generator().manual_seed(B)
    b = s.sample(B, generator=g)
    assert b.batch_size == B and int(b.counts.sum()) == B
    assert torch.equal(b.cluster_ids, CLUSTERS.cluster_of(b.timesteps))
    assert torch.equal(torch.bincount(b.cluster_ids, minlength=3), b.counts)
    assert torch.all(b.cluster_ids[1:] >= b.cluster_ids[:-1])  # grouped by cluster
    if mode == "stratified":
        assert int(b.counts.max() - b.counts.min()) <= 1


def test_deterministic_under_generator():
    s = TimestepSampler(CLUSTERS, "stratified")
    a = s.sample(17, torch.Generator().manual_seed(3))
    b = s.sample(17, torch.Generator().manual_seed(3))
    assert torch.equal(a.timesteps, b.timesteps)


def _chi2_p(observed, expected):
    return stats.chisquare(observed, expected).pvalue


def test_stratified_marginals():
    s = TimestepSampler(CLUSTERS, "stratified")
    g = torch.Generator().manual_seed(0)
    counts = np.zeros(3)
    t_in_c2 = []
    for _ in range(2000):
        b = s.sample(7, g)  # 7 = 2·3 + 1: the remainder must go to a random cluster
        counts += b.counts.numpy()
        t_in_c2.append(b.timesteps[b.cluster_ids == 2].numpy())
    assert _chi2_p(counts, np.full(3, counts.sum() / 3)) > 1e-3
    t = np.concatenate(t_in_c2)
    h = np.bincount(t - 40, minlength=60)
    assert _chi2_p(h, np.full(60, h.sum() / 60)) > 1e-3  # uniform inside the cluster


@pytest.mark.parametrize("mode", ["uniform", "proportional"])
def test_marginal_of_t_is_uniform(mode):
    s = TimestepSampler(CLUSTERS, mode)
    g = torch.Generator().manual_seed(1)
    t = torch.cat([s.sample(13, g).timesteps for _ in range(3000)]).numpy()
    h = np.bincount(t, minlength=100)
    assert _chi2_p(h, np.full(100, h.sum() / 100)) > 1e-3
    counts = np.bincount(CLUSTERS.cluster_of(t), minlength=3)
    np.testing.assert_allclose(counts / counts.sum(), [0.1, 0.3, 0.6], atol=0.01)


@pytest.mark.parametrize("mode", ["stratified", "uniform", "proportional"])
def test_probabilities_are_the_empirical_marginal_of_t(mode):
    """``probabilities()`` is what the sampler draws: p(t) = 1/(k·w_c) stratified, 1/T otherwise;
    weighting samples by 1/(T·p(t)) then turns any set's sample mean into its mean over t ~ U."""
    s = TimestepSampler(CLUSTERS, mode)
    p = s.probabilities()
    assert p.shape == (100,) and p.dtype == torch.float64
    assert float(p.sum()) == pytest.approx(1.0)
    if mode == "stratified":
        expected = np.repeat([1 / 30, 1 / 90, 1 / 180], [10, 30, 60])
    else:
        expected = np.full(100, 0.01)
    np.testing.assert_allclose(p.numpy(), expected, rtol=1e-12)
    g = torch.Generator().manual_seed(5)
    t = torch.cat([s.sample(7, g).timesteps for _ in range(4000)]).numpy()
    h = np.bincount(t, minlength=100)
    assert _chi2_p(h, p.numpy() * h.sum()) > 1e-3
    # the importance-weighted mean of f(t) = t over [0, 50) is its mean over t ~ U: 24.5
    inside = t < 50
    w = 1.0 / (100 * p.numpy()[t[inside]])
    assert np.sum(w * t[inside]) / np.sum(w) == pytest.approx(24.5, abs=0.5)
    if mode == "stratified":  # while the plain sample mean leans to the narrow first cluster
        assert t[inside].mean() < 21.0


def test_proportional_counts_are_tight():
    s = TimestepSampler(CLUSTERS, "proportional")
    g = torch.Generator().manual_seed(2)
    for _ in range(100):
        c = s.counts(13, g).numpy()
        assert np.all(np.abs(c - 13 * np.array([0.1, 0.3, 0.6])) < 1)


def test_k_equals_one_and_T():
    one = TimestepSampler(TaskClusters.uniform(50, 1))
    assert one.sample(5).counts.tolist() == [5]
    allk = TimestepSampler(cluster_timesteps("linear", 20, "timestep", num_timesteps=20))
    b = allk.sample(45, torch.Generator().manual_seed(0))
    assert torch.equal(b.timesteps, b.cluster_ids)  # every cluster is one timestep
    assert sorted(b.counts.tolist())[0] >= 2


def test_batch_helpers_and_errors():
    b = TimestepSampler(CLUSTERS).sample(9, torch.Generator().manual_seed(0))
    assert torch.equal(b.indices(1), torch.arange(3, 6))
    sub = b.select(b.indices(2))
    assert sub.counts.tolist() == [0, 0, 3] and sub.present.tolist() == [False, False, True]
    w = TimestepBatch.from_timesteps(torch.tensor([0, 50, 99]), CLUSTERS)
    assert w.cluster_ids.tolist() == [0, 2, 2] and w.counts.tolist() == [1, 0, 2]
    with pytest.raises(ValueError, match="batch_size"):
        TimestepSampler(CLUSTERS).sample(0)
    with pytest.raises(ValueError, match="unknown sampling mode"):
        TimestepSampler(CLUSTERS, "balanced")


def test_to_device_keeps_values_and_dtype_and_leaves_the_source_alone() -> None:
    from antdiff._device import to_device

    t = torch.arange(5)
    out = to_device(t, "cpu", torch.float64)
    assert out.dtype == torch.float64 and out.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert to_device(t, torch.device("cpu")) is t  # nothing to move: no copy
    t[0] = 7  # the caller may change its tensor; the copy is its own
    assert out[0] == 0
    if torch.cuda.is_available():  # the pinned, non-blocking path
        src = torch.arange(1000)
        dev = to_device(src, "cuda", torch.float32)
        src.zero_()
        assert dev.sum().item() == sum(range(1000))
