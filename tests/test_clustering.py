import itertools
import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from antdiff import NoiseSchedule, TaskClusters, cluster_timesteps
from antdiff.clustering import _MedianL1Cost, interval_cluster, interval_costs, make_interval_cost


# ---------------------------------------------------------------- reference (brute force)
def ref_value_cost(v, l, r):
    c = (l + r + 1) // 2
    return float(sum(abs(v[t] - v[c]) for t in range(l, r + 1)))


def ref_affinity_cost(A, l, r):
    c = (l + r + 1) // 2
    return -float(sum(A[c, t] for t in range(l, r + 1)))


def brute_force(T, k, f, min_size=1, max_size=None):
    """Minimum over all C(T-1, k-1) partitions; None when infeasible."""
    best = None
    for cuts in itertools.combinations(range(1, T), k - 1):
        bounds = (0, *cuts, T)
        ivs = [(bounds[i], bounds[i + 1] - 1) for i in range(k)]
        w = [b - a + 1 for a, b in ivs]
        if min(w) < min_size or (max_size is not None and max(w) > max_size):
            continue
        c = sum(f(a, b) for a, b in ivs)
        best = c if best is None or c < best else best
    return best


def check_invariants(clusters, T, k):
    assert clusters.k == k
    assert clusters.intervals[0][0] == 0 and clusters.intervals[-1][1] == T - 1
    for (_, b), (c, _) in zip(clusters.intervals, clusters.intervals[1:]):
        assert c == b + 1
    assert clusters.widths.sum() == T


monotone = st.lists(st.floats(0.0, 10.0, allow_nan=False), min_size=2, max_size=11).map(
    lambda d: np.cumsum(np.array(d)) * (1 if len(d) % 2 else -1)
)


@settings(max_examples=60, deadline=None)
@given(v=monotone, data=st.data())
def test_value_costs_match_brute_force(v, data):
    T = len(v)
    k = data.draw(st.integers(1, T))
    min_size = data.draw(st.integers(1, max(1, T // k)))
    max_size = data.draw(st.one_of(st.none(), st.integers(-(-T // k), T)))
    if max_size is not None and max_size < min_size:
        max_size = None
    ic = _MedianL1Cost(v, "values")
    got, total = interval_cluster(ic, k, min_size=min_size, max_size=max_size)
    ref = brute_force(T, k, lambda a, b: ref_value_cost(v, a, b), min_size, max_size)
    assert total == pytest.approx(ref, rel=1e-9, abs=1e-9)
    clusters = TaskClusters(tuple(got))
    check_invariants(clusters, T, k)
    assert sum(ref_value_cost(v, a, b) for a, b in got) == pytest.approx(ref, rel=1e-9, abs=1e-9)
    w = clusters.widths
    assert w.min() >= min_size and (max_size is None or w.max() <= max_size)


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_affinity_and_matrix_costs_match_brute_force(data):
    T = data.draw(st.integers(1, 9))
    k = data.draw(st.integers(1, T))
    seed = data.draw(st.integers(0, 10_000))
    rng = np.random.default_rng(seed)
    A = rng.uniform(-1, 1, (T, T))
    min_size = data.draw(st.integers(1, max(1, T // k)))
    max_size = data.draw(st.one_of(st.none(), st.integers(max(min_size, -(-T // k)), T)))
    c = cluster_timesteps(
        None, k, "affinity", num_timesteps=T, affinity=A, min_size=min_size, max_size=max_size
    )
    ref = brute_force(T, k, lambda a, b: ref_affinity_cost(A, a, b), min_size, max_size)
    assert c.cost == pytest.approx(ref, abs=1e-9)
    check_invariants(c, T, k)
    assert c.widths.min() >= min_size and (max_size is None or c.widths.max() <= max_size)
    # A user matrix C[first, last] and a user callable give the same optimum.
    C = rng.uniform(0, 5, (T, T))
    cm = cluster_timesteps(None, k, C, num_timesteps=T, min_size=min_size, max_size=max_size)
    cf = cluster_timesteps(
        None, k, lambda a, b: float(C[a, b]), num_timesteps=T, min_size=min_size, max_size=max_size
    )
    refc = brute_force(T, k, lambda a, b: float(C[a, b]), min_size, max_size)
    assert cm.cost == pytest.approx(refc) and cf.cost == pytest.approx(refc)
    # Without constraints too.
    free = cluster_timesteps(None, k, C, num_timesteps=T)
    assert free.cost == pytest.approx(brute_force(T, k, lambda a, b: float(C[a, b])))


@pytest.mark.parametrize("name", ["linear", "scaled_linear", "squaredcos_cap_v2"])
@pytest.mark.parametrize("cost", ["timestep", "snr", "logsnr"])
def test_schedule_costs_match_brute_force_small_T(name, cost):
    T, k = 12, 3
    s = NoiseSchedule.from_name(name, T)
    v = {"timestep": np.arange(T), "snr": s.snr, "logsnr": s.logsnr}[cost]
    c = cluster_timesteps(s, k, cost)
    assert c.cost == pytest.approx(
        brute_force(T, k, lambda a, b: ref_value_cost(v, a, b)), rel=1e-9
    )


def test_paper_results_T1000():
    # Timestep cost: equal widths, the paper's [1,200] ... [801,1000].
    c = cluster_timesteps("linear", 5, "timestep")
    assert c.one_indexed() == [(1, 200), (201, 400), (401, 600), (601, 800), (801, 1000)]
    assert c.cost == 50000.0
    assert c == TaskClusters.uniform(1000, 5)
    # Raw SNR: almost everything in one cluster (documented); exact optimum below the
    # official code's 8631 (anchors §0) and the digest's mid-point-centre DP (8083).
    s = cluster_timesteps("linear", 5, "snr")
    assert s.widths.max() >= 970
    assert s.cost < 8083
    # Log-SNR spreads the tasks.
    g = cluster_timesteps("linear", 5, "logsnr")
    assert g.widths.min() > 100


def test_official_code_is_suboptimal_and_we_are_not():
    # The official DP (anchors §0) returns a partition with cost 8631 on the linear schedule;
    # evaluate its (bug-corrected, inclusive) boundaries with our cost: ours must be lower.
    sch = NoiseSchedule.from_name("linear", 1000)
    cost = make_interval_cost("snr", 1000, sch)
    official = TaskClusters(((0, 0), (1, 2), (3, 7), (8, 26), (27, 999)))
    ours = cluster_timesteps(sch, 5, "snr")
    assert ours.cost < interval_costs(official, cost).sum()


def test_binned_affinity_matrix():
    rng = np.random.default_rng(0)
    Ab = rng.uniform(0, 1, (10, 10))
    c = cluster_timesteps("linear", 4, "affinity", affinity=Ab)
    full = Ab[np.ix_(np.arange(1000) // 100, np.arange(1000) // 100)]
    c2 = cluster_timesteps("linear", 4, "affinity", affinity=full)
    assert c.cost == pytest.approx(c2.cost)
    with pytest.raises(ValueError, match="only T=5"):
        cluster_timesteps(None, 2, "affinity", num_timesteps=5, affinity=Ab)


@pytest.mark.parametrize(
    "kw,msg",
    [
        ({"k": 0}, "k must be >= 1"),
        ({"k": 11}, r"k > T"),
        ({"k": 3, "min_size": 4}, "exceeds T=10"),
        ({"k": 2, "max_size": 4}, "less than T=10"),
        ({"k": 2, "min_size": 3, "max_size": 2}, "smaller than min_size"),
    ],
)
def test_infeasible_requests_name_the_numbers(kw, msg):
    with pytest.raises(ValueError, match=msg):
        cluster_timesteps("linear", num_timesteps=10, cost="timestep", **kw)


def test_bad_costs():
    with pytest.raises(ValueError, match="unknown clustering cost"):
        cluster_timesteps("linear", 5, "grad")
    with pytest.raises(ValueError, match="needs a task-affinity matrix"):
        cluster_timesteps("linear", 5, "affinity")
    with pytest.raises(ValueError, match="square"):
        cluster_timesteps("linear", 5, "affinity", affinity=np.ones((3, 4)))
    with pytest.raises(ValueError, match="NaN"):
        cluster_timesteps(None, 2, "affinity", num_timesteps=3, affinity=np.full((3, 3), np.nan))
    with pytest.raises(ValueError, match="does not exist"):
        cluster_timesteps("linear", 5, "affinity", affinity="/no/such/file.npy")
    with pytest.raises(ValueError, match="not finite"):
        cluster_timesteps(NoiseSchedule(np.array([1.0, 0.5])), 1, "snr")


def test_task_clusters_api(tmp_path):
    c = TaskClusters.uniform(10, 3)
    assert list(c.intervals) == [(0, 2), (3, 5), (6, 9)]
    assert c.widths.tolist() == [3, 3, 4]
    assert c.half_open() == [(0, 3), (3, 6), (6, 10)]
    assert c.one_indexed()[0] == (1, 3)
    t = torch.arange(10)
    assert c.cluster_of(t).tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]
    assert c.cluster_of(np.array([2, 3])).tolist() == [0, 1]
    assert c.cluster_of(9) == 2
    assert c.lookup_table().tolist() == c.cluster_of(t).tolist()
    with pytest.raises(ValueError, match=r"\[0, 9\]"):
        c.cluster_of(torch.tensor([10]))
    # JSON round trip (string and file).
    d = cluster_timesteps("linear", 4, "logsnr", num_timesteps=100)
    assert TaskClusters.from_json(d.to_json()) == d
    p = tmp_path / "c.json"
    d.to_json(p)
    again = TaskClusters.from_json(p)
    assert again == d and again.cost == pytest.approx(d.cost)
    assert json.loads(p.read_text())["intervals"][0][0] == 0
    assert TaskClusters.from_boundaries([0, 5, 7], 10).intervals == ((0, 4), (5, 6), (7, 9))
    with pytest.raises(ValueError, match="contiguous"):
        TaskClusters(((0, 2), (4, 9)))
    with pytest.raises(ValueError, match="start at t=0"):
        TaskClusters(((1, 2),))
    # k = 1 and k = T.
    assert cluster_timesteps("linear", 1, "logsnr", num_timesteps=7).intervals == ((0, 6),)
    assert cluster_timesteps("linear", 7, "snr", num_timesteps=7).widths.tolist() == [1] * 7
