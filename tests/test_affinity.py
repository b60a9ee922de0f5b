"""Task affinity (O1): definition, exact vs. streamed vs. sketched, bins, files, clustering feed."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from antdiff import NoiseSchedule, TaskClusters, cluster_timesteps
from antdiff.analysis import (
    DEFAULT_SKETCH_DIM,
    CountSketch,
    TaskAffinity,
    TimestepBins,
    epsilon_mse_loss,
    task_affinity,
)

T = 1000
SCHEDULE = NoiseSchedule.from_name("linear", T)


class TinyDenoiser(nn.Module):
    """A small conv denoiser with a timestep embedding (GroupNorm, no BatchNorm)."""

    def __init__(self, channels: int = 1, hidden: int = 16, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.emb = nn.Sequential(nn.Linear(1, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.inp = nn.Conv2d(channels, hidden, 3, padding=1)
        self.mid = nn.Conv2d(hidden, hidden, 3, padding=1)
        self.norm = nn.GroupNorm(4, hidden)
        self.out = nn.Conv2d(hidden, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        e = self.emb((t.float() / T)[:, None])[:, :, None, None]
        h = torch.nn.functional.silu(self.inp(x) + e)
        h = torch.nn.functional.silu(self.norm(self.mid(h)))
        return self.out(h)


def _digits(n: int) -> torch.Tensor:
    from sklearn.datasets import load_digits

    x = torch.tensor(load_digits().images[:n], dtype=torch.float32)[:, None]
    return x / 8.0 - 1.0


def _trained_unet(steps: int = 25):
    """A small diffusers UNet trained for a few steps, so gradients of different timesteps
    point in genuinely different directions (cosines spread over [−1, 1])."""
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    )

    class Wrap(nn.Module):
        def __init__(self, u: nn.Module) -> None:
            super().__init__()
            self.u = u

        def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.u(x, t).sample

    model = Wrap(unet)
    x = _digits(64)
    loss_fn = epsilon_mse_loss(SCHEDULE)
    opt = torch.optim.Adam(model.parameters(), 2e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        t = torch.randint(0, T, (64,), generator=g)
        loss = loss_fn(model, x, t, torch.randn(x.shape, generator=g)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


# ----------------------------------------------------------------------------- bins
def test_uniform_bins_match_the_clustering_mapping():
    for n in (1, 3, 7, 10, 1000):
        bins = TimestepBins.uniform(T, n)
        t = np.arange(T)
        assert np.array_equal(bins.bin_of(t), (t * n) // T)
        assert bins.covers_all and bins.is_uniform
    assert not TimestepBins.from_clusters(TaskClusters.from_boundaries([0, 10, 500], T)).is_uniform


def test_bin_timesteps_are_spread_evenly_and_seeded():
    bins = TimestepBins.uniform(T, 10)  # width 100
    t = bins.sample_timesteps(3, 250, seed=0)
    assert t.min() >= 300 and t.max() <= 399
    counts = np.bincount(t.numpy() - 300, minlength=100)
    assert counts.min() == 2 and counts.max() == 3  # ⌊250/100⌋ or ⌈250/100⌉ each
    assert torch.equal(t, bins.sample_timesteps(3, 250, seed=0))
    assert not torch.equal(t, bins.sample_timesteps(3, 250, seed=1))
    few = bins.sample_timesteps(0, 4, seed=0).sort().values
    assert few.tolist() == [12, 37, 62, 87]  # evenly spaced when N < width


def test_bins_validation():
    with pytest.raises(ValueError, match="sorted and disjoint"):
        TimestepBins(((0, 10), (5, 20)), T)
    with pytest.raises(ValueError, match="inside"):
        TimestepBins(((0, T),), T)
    with pytest.raises(ValueError, match="number of bins"):
        TimestepBins.uniform(10, 11)
    assert TimestepBins.coerce([5, 1, 5], T).groups == ((1, 1), (5, 5))


# ----------------------------------------------------------------------------- definition
def test_exact_affinity_is_the_cosine_of_the_bin_gradients():
    """Brute force: the gradient of each bin's mean loss, from the documented timesteps/noise."""
    model = TinyDenoiser()
    x = _digits(20)
    loss_fn = epsilon_mse_loss(SCHEDULE)
    bins = TimestepBins(((0, 0), (100, 149), (900, 999)), T)
    res = task_affinity(model, loss_fn, x, bins, mode="exact", batch_size=7, seed=3)

    from antdiff.analysis.affinity import _BinGradients

    helper = _BinGradients(
        model, list(model.parameters()), loss_fn, x, None, bins, 20, 3, torch.device("cpu")
    )
    grads = []
    for b in range(3):
        t = bins.sample_timesteps(b, 20, 3)
        noise = helper._noise(b, 0, 20)
        loss = loss_fn(model, x, t, noise).mean()
        g = torch.autograd.grad(loss, list(model.parameters()))
        grads.append(torch.cat([v.reshape(-1) for v in g]).double())
    G = torch.stack(grads)
    n = G.norm(dim=1)
    expected = (G @ G.T / torch.outer(n, n)).numpy()
    np.testing.assert_allclose(res.matrix, expected, atol=1e-5)
    np.testing.assert_allclose(res.grad_norms[0], n.numpy(), rtol=1e-4)
    # Batch size changes nothing (noise is generated per fixed chunk of images).
    res2 = task_affinity(model, loss_fn, x, bins, mode="exact", batch_size=20, seed=3)
    np.testing.assert_allclose(res2.matrix, res.matrix, atol=1e-5)
    assert np.allclose(np.diag(res.matrix), 1.0) and np.allclose(res.matrix, res.matrix.T)


def test_streamed_exact_gram_equals_in_memory_and_counts_evaluations():
    model = TinyDenoiser()
    x = _digits(16)
    loss_fn = epsilon_mse_loss(SCHEDULE)
    P = sum(p.numel() for p in model.parameters())
    full = task_affinity(model, loss_fn, x, 7, mode="exact")
    assert full.meta["gradient_evaluations"] == 7
    assert full.meta["memory"]["stored_gradients"] == 7 and not full.meta["memory"]["streamed"]
    # Room for 3 rows: blocks of m = 2 stored gradients + one streamed temp.
    small = task_affinity(model, loss_fn, x, 7, mode="exact", max_gradient_bytes=3 * 4 * P + 5)
    np.testing.assert_allclose(small.matrix, full.matrix, atol=1e-6)
    assert small.meta["memory"]["streamed"]
    assert (
        small.meta["gradient_evaluations"]
        == 7 + 5 + 3 + 1
        == small.meta["memory"]["gradient_evaluations_per_checkpoint"]
    )
    with pytest.raises(ValueError, match="at least 2 gradients"):
        task_affinity(model, loss_fn, x, 7, mode="exact", max_gradient_bytes=4 * P)
    auto = task_affinity(
        model, loss_fn, x, 7, mode="auto", max_gradient_bytes=3 * 4 * P, sketch_dim=512
    )
    assert auto.mode == "sketch" and auto.sketch_dim == 512


def test_checkpoint_average_and_names():
    loss_fn = epsilon_mse_loss(SCHEDULE)
    x = _digits(12)
    a, b = TinyDenoiser(seed=0), TinyDenoiser(seed=1)
    ra = task_affinity(a, loss_fn, x, 5)
    rb = task_affinity(b, loss_fn, x, 5)
    both = task_affinity(iter([a, b]), loss_fn, x, 5, checkpoint_names=["a", "b"])
    np.testing.assert_allclose(both.per_checkpoint[0], ra.matrix, atol=1e-6)
    np.testing.assert_allclose(both.matrix, (ra.matrix + rb.matrix) / 2, atol=1e-6)
    assert both.meta["checkpoints"] == ["a", "b"] and both.num_checkpoints == 2


def test_sketch_matches_exact_within_0_02_at_the_default_dimension():
    """The documented accuracy: |cos_sketch − cos_exact| ≤ 0.02 for every pair, at d = 65536,
    on a small trained UNet (P ≈ 180k > d, so the sketch really compresses)."""
    model = _trained_unet()
    P = sum(p.numel() for p in model.parameters())
    assert P > 2 * DEFAULT_SKETCH_DIM
    x = _digits(32)
    loss_fn = epsilon_mse_loss(SCHEDULE)
    exact = task_affinity(model, loss_fn, x, 8, mode="exact", batch_size=32)
    off = exact.matrix[np.triu_indices(8, 1)]
    assert off.min() < 0.3 and off.max() > 0.6  # a non-trivial matrix to approximate
    sk = task_affinity(model, loss_fn, x, 8, mode="sketch", batch_size=32)
    assert sk.sketch_dim == DEFAULT_SKETCH_DIM
    err = np.abs(sk.matrix - exact.matrix)
    assert err.max() <= 0.02, err.max()
    # A much smaller sketch is visibly worse: the error really depends on d.
    tiny = task_affinity(model, loss_fn, x, 8, mode="sketch", sketch_dim=16, batch_size=32)
    assert np.abs(tiny.matrix - exact.matrix).max() > err.max()


def test_count_sketch_is_a_seeded_linear_map():
    numels = [5, 7, 3]
    cs, cs2 = CountSketch(numels, 4, seed=9), CountSketch(numels, 4, seed=9)
    g = torch.Generator().manual_seed(0)
    x = [torch.randn(n, generator=g) for n in numels]
    y = [torch.randn(n, generator=g) for n in numels]
    lin = cs([2 * a + b for a, b in zip(x, y)])
    torch.testing.assert_close(lin, 2 * cs(x) + cs(y), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cs(x), cs2(x))
    assert not torch.allclose(cs(x), CountSketch(numels, 4, seed=10)(x))
    # Unbiased inner products: average over many seeds approaches <x, y>.
    flat_x, flat_y = torch.cat(x).double(), torch.cat(y).double()
    est = np.mean(
        [
            float(CountSketch(numels, 8, seed=s)(x) @ CountSketch(numels, 8, seed=s)(y))
            for s in range(400)
        ]
    )
    assert abs(est - float(flat_x @ flat_y)) < 0.15 * float(flat_x.norm() * flat_y.norm())
    with pytest.raises(ValueError, match="elements"):
        cs([torch.zeros(6), torch.zeros(7), torch.zeros(3)])


def test_bad_inputs_raise_clear_errors():
    model = TinyDenoiser()
    x = _digits(4)

    def scalar_loss(m, x0, t, noise):
        return (m(x0, t) - noise).pow(2).mean()

    with pytest.raises(ValueError, match="per-sample losses of shape"):
        task_affinity(model, scalar_loss, x, 2)
    with pytest.raises(ValueError, match="unknown affinity mode"):
        task_affinity(model, epsilon_mse_loss(SCHEDULE), x, 2, mode="fast")
    with pytest.raises(ValueError, match="floating point"):
        task_affinity(
            model, epsilon_mse_loss(SCHEDULE), torch.zeros(4, 1, 8, 8, dtype=torch.uint8), 2
        )
    with pytest.raises(ValueError, match="no checkpoints"):
        task_affinity(iter([]), epsilon_mse_loss(SCHEDULE), x, 2)


# ----------------------------------------------------------------------------- outputs
def _synthetic(n: int = 10, scale: float = 3.0) -> TaskAffinity:
    i = np.arange(n)
    A = np.exp(-np.abs(i[:, None] - i[None, :]) / scale)
    return TaskAffinity(
        matrix=A,
        per_checkpoint=A[None],
        grad_norms=np.ones((1, n)),
        bins=TimestepBins.uniform(T, n),
        mode="exact",
        sketch_dim=None,
        num_images=8,
        seed=0,
    )


def test_distance_correlation_detects_o1():
    aff = _synthetic()
    corr = aff.distance_correlation(SCHEDULE)
    assert corr["num_pairs"] == 45
    assert corr["timestep"]["spearman"] == pytest.approx(-1.0)
    assert corr["logsnr"]["spearman"] < -0.8
    rng = np.random.default_rng(0)
    R = rng.uniform(size=(10, 10))
    R = (R + R.T) / 2
    noise = TaskAffinity(
        R, R[None], np.ones((1, 10)), TimestepBins.uniform(T, 10), "exact", None, 8, 0
    )
    assert abs(noise.distance_correlation()["timestep"]["spearman"]) < 0.5


def test_decay_profile_conflict_shares_and_block_means_match_hand_counts():
    aff = _synthetic(10, scale=3.0)  # TAS(a, b) = exp(−|a − b|/3)
    prof = aff.mean_at_gaps([1, 2, 9])
    assert prof[1] == pytest.approx(np.exp(-1 / 3)) and prof[9] == pytest.approx(np.exp(-3))
    assert prof[1] > prof[2] > prof[9]
    assert list(aff.mean_at_gaps()) == [1, 2, 5, 9]  # default: 1, 2, 5, … below n, and n − 1
    # a matrix with known signs: 45 pairs, those 5+ bins apart (15 pairs) set to −0.25
    i = np.arange(10)
    gap = np.abs(i[:, None] - i[None, :])
    M = np.where(gap >= 5, -0.25, 0.5)
    np.fill_diagonal(M, 1.0)
    signed = TaskAffinity(M, M[None], np.ones((1, 10)), TimestepBins.uniform(T, 10), "exact",
                          None, 8, 0)  # fmt: skip
    assert signed.share_below([0.0, -0.2, -0.3]) == {0.0: 15 / 45, -0.2: 15 / 45, -0.3: 0.0}
    width = T // 10
    # bins 0–1 against bins 7–9: every pair is ≥ 5 apart
    assert signed.block_mean((0, 2 * width), (7 * width, T)) == pytest.approx(-0.25)
    # bins 0–4 against 5–9: 15 of the 25 pairs are ≥ 5 apart
    mixed = signed.block_mean((0, 5 * width), (5 * width, T))
    assert mixed == pytest.approx((15 * -0.25 + 10 * 0.5) / 25)
    with pytest.raises(ValueError, match="gap of 10 bins does not exist"):
        aff.mean_at_gaps([10])
    with pytest.raises(ValueError, match="no bin lies wholly"):
        aff.block_mean((0, width - 1), (5 * width, T))
    with pytest.raises(ValueError, match="overlap"):
        aff.block_mean((0, 5 * width), (0, T))


def test_save_load_and_feed_the_affinity_clustering(tmp_path):
    aff = _synthetic(10)
    paths = aff.save(tmp_path)
    assert np.load(paths["matrix"]).shape == (10, 10)
    meta = json.loads(paths["metadata"].read_text())
    assert meta["clustering_matrix"] == "affinity.npy" and meta["bins"]["num_timesteps"] == T
    back = TaskAffinity.load(tmp_path)
    np.testing.assert_array_equal(back.matrix, aff.matrix)
    assert back.bins == aff.bins
    # the metadata file is recognised as such by path or string; other JSON and non-JSON are not
    from antdiff.analysis.affinity import is_affinity_json

    assert is_affinity_json(paths["metadata"]) and is_affinity_json(str(paths["metadata"]))
    (tmp_path / "other.json").write_text('{"format": "antdiff.ntg/1"}')
    (tmp_path / "list.json").write_text("[1, 2]")
    assert not is_affinity_json(tmp_path / "other.json")
    assert not is_affinity_json(tmp_path / "list.json")
    assert not is_affinity_json(paths["matrix"]) and not is_affinity_json(tmp_path / "missing")
    cl = cluster_timesteps(SCHEDULE, k=5, cost="affinity", affinity=str(paths["matrix"]))
    assert cl.k == 5
    # Block-diagonal structure is recovered exactly: two blocks of 5 bins.
    B = np.kron(np.eye(2), np.ones((5, 5)))
    blocky = TaskAffinity(
        B, B[None], np.ones((1, 10)), TimestepBins.uniform(T, 10), "exact", None, 8, 0
    )
    p = blocky.save(tmp_path / "blocky")["matrix"]
    cl2 = cluster_timesteps(SCHEDULE, k=2, cost="affinity", affinity=str(p))
    assert cl2.intervals == ((0, 499), (500, 999))
    # Non-uniform covering bins also write the T×T expansion the clustering can read.
    nb = TimestepBins.from_clusters(TaskClusters.from_boundaries([0, 100, 600], T))
    m = np.eye(3)
    odd = TaskAffinity(m, m[None], np.ones((1, 3)), nb, "exact", None, 8, 0)
    pp = odd.save(tmp_path / "odd")
    assert np.load(pp["full"]).shape == (T, T)
    assert odd.clustering_matrix().shape == (T, T)


def test_pooling_results_averages_over_all_their_checkpoints_and_refuses_other_settings():
    a = _synthetic(10, scale=3.0)
    b = _synthetic(10, scale=1.0)
    b.meta["checkpoints"] = ["run_b/step_2.pt"]
    two = TaskAffinity(  # a result of two checkpoints counts twice in the pool
        np.stack([b.matrix, b.matrix]).mean(0), np.stack([b.matrix, b.matrix]),
        np.ones((2, 10)), TimestepBins.uniform(T, 10), "exact", None, 8, 0,
    )  # fmt: skip
    pooled = TaskAffinity.pooled([a, b], sources=["a", "b"])
    np.testing.assert_allclose(pooled.matrix, (a.matrix + b.matrix) / 2)
    assert pooled.num_checkpoints == 2 and pooled.meta["pooled_from"] == ["a", "b"]
    assert pooled.meta["checkpoints"] == ["run_b/step_2.pt"]
    np.testing.assert_allclose(TaskAffinity.pooled([a, two]).matrix, (a.matrix + 2 * b.matrix) / 3)
    other = TaskAffinity(a.matrix, a.per_checkpoint, a.grad_norms, a.bins, "exact", None, 16, 1)
    with pytest.raises(ValueError, match="number of images, seed: pool only results"):
        TaskAffinity.pooled([a, other])
    coarse = _synthetic(5)
    with pytest.raises(ValueError, match="differs from result 0 in its bins"):
        TaskAffinity.pooled([a, coarse])
    with pytest.raises(ValueError, match="at least two"):
        TaskAffinity.pooled([a])


def test_split_half_matrices_are_the_cosines_of_each_halfs_gradients():
    """Brute force: the first ⌊N/2⌋ images' part and the rest's part of each bin's gradient,
    from the documented timesteps and noise; the full matrix is the unsplit one, also streamed
    (two vectors per bin) and sketched."""
    from antdiff.analysis.affinity import _BinGradients, split_half_reliability

    model = TinyDenoiser()
    x = _digits(21)  # odd: halves of 10 and 11 images
    loss_fn = epsilon_mse_loss(SCHEDULE)
    bins = TimestepBins(((0, 0), (100, 149), (400, 599), (900, 999)), T)
    plain = task_affinity(model, loss_fn, x, bins, mode="exact", batch_size=4, seed=3)
    split = task_affinity(
        model, loss_fn, x, bins, mode="exact", batch_size=4, seed=3, split_half=True
    )
    np.testing.assert_allclose(split.matrix, plain.matrix, atol=1e-6)
    assert plain.halves is None and split.halves is not None and split.halves.shape == (2, 4, 4)

    helper = _BinGradients(
        model, list(model.parameters()), loss_fn, x, None, bins, 21, 3, torch.device("cpu")
    )
    halves = []
    for lo, hi in ((0, 10), (10, 21)):
        grads = []
        for b in range(len(bins)):
            t = bins.sample_timesteps(b, 21, 3)[lo:hi]
            noise = helper._noise(b, lo, hi)
            loss = loss_fn(model, x[lo:hi], t, noise).sum() / 21
            g = torch.autograd.grad(loss, list(model.parameters()))
            grads.append(torch.cat([v.reshape(-1) for v in g]).double())
        G = torch.stack(grads)
        n = G.norm(dim=1)
        halves.append((G @ G.T / torch.outer(n, n)).numpy())
    np.testing.assert_allclose(split.halves[0], halves[0], atol=1e-5)
    np.testing.assert_allclose(split.halves[1], halves[1], atol=1e-5)
    assert split.meta["split_half"]["images"] == [10, 11]
    agreement = split_half_reliability(halves[0], halves[1])
    assert split.meta["split_half"]["r"] == pytest.approx(agreement["r"], abs=1e-6)
    r = agreement["r"]
    assert split.meta["split_half"]["spearman_brown"] == pytest.approx(2 * r / (1 + r), abs=1e-6)

    P = sum(p.numel() for p in model.parameters())
    # room for 5 vectors: 2 bins' halves per block, the third bin's streamed
    streamed = task_affinity(
        model, loss_fn, x, bins, mode="exact", batch_size=4, seed=3, split_half=True,
        max_gradient_bytes=5 * 4 * P + 5,
    )  # fmt: skip
    assert streamed.meta["memory"]["streamed"] and streamed.meta["memory"]["stored_gradients"] == 4
    assert "two halves per bin" in streamed.meta["memory"]["formula"]
    np.testing.assert_allclose(streamed.matrix, plain.matrix, atol=1e-6)
    np.testing.assert_allclose(streamed.halves, split.halves, atol=1e-6)
    with pytest.raises(ValueError, match="at least 4 gradients"):
        task_affinity(model, loss_fn, x, bins, split_half=True, max_gradient_bytes=3 * 4 * P)
    sketched = task_affinity(
        model, loss_fn, x, bins, mode="sketch", sketch_dim=1 << 16, seed=3, split_half=True
    )
    np.testing.assert_allclose(sketched.halves, split.halves, atol=0.05)
    with pytest.raises(ValueError, match="at least 2 images"):
        task_affinity(model, loss_fn, x[:1], bins, split_half=True)


def test_split_half_reliability_and_its_files(tmp_path):
    from antdiff.analysis.affinity import split_half_reliability

    rng = np.random.default_rng(0)
    base = rng.uniform(-1, 1, (30, 30))
    base = (base + base.T) / 2
    same = split_half_reliability(base, base)
    assert same["r"] == pytest.approx(1.0) and same["spearman_brown"] == pytest.approx(1.0)
    # halves that share half their variance: r ≈ 0.5, the full matrix's reliability ≈ 2/3
    noise_a, noise_b = rng.normal(0, 1, (2, 30, 30))
    a, b = base / base.std() + noise_a, base / base.std() + noise_b
    rel = split_half_reliability(a, b)
    assert 0.35 < rel["r"] < 0.65
    assert rel["spearman_brown"] == pytest.approx(2 * rel["r"] / (1 + rel["r"]))
    flat = split_half_reliability(np.ones((5, 5)), base[:5, :5])
    assert flat == {"r": None, "spearman_brown": None}  # no spread: no correlation
    # the halves travel with the matrix
    model = TinyDenoiser()
    res = task_affinity(
        model, epsilon_mse_loss(SCHEDULE), _digits(8), 3, schedule=SCHEDULE, split_half=True
    )
    paths = res.save(tmp_path / "aff")
    assert paths["halves"].name == "affinity_halves.npy"
    back = TaskAffinity.load(tmp_path / "aff")
    np.testing.assert_allclose(back.halves, res.halves)
    assert back.meta["split_half"] == res.meta["split_half"]
    plain = task_affinity(model, epsilon_mse_loss(SCHEDULE), _digits(8), 3)
    plain.save(tmp_path / "plain")
    assert TaskAffinity.load(tmp_path / "plain").halves is None
