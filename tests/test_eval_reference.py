"""Reference statistics (.npz round trip, extractor checks) and the real-vs-real floor."""

from __future__ import annotations

import numpy as np
import pytest

from antdiff.evaluation import (
    ReferenceStats,
    compute_reference_stats,
    evaluate_features,
    frechet_distance,
    gaussian_stats,
    is_reference_file,
    real_floor,
)
from antdiff.evaluation import reference as R

INFO = {"name": "synthetic", "checksum": "a" * 64, "preprocessing": "none", "dim": 6}


def _features(n=900, d=6, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, d)) * np.arange(1, d + 1)).astype(np.float32)


def test_statistics_use_all_features_and_store_a_seeded_member_subset(monkeypatch):
    x = _features()
    monkeypatch.setattr(R, "_CHUNK", 64)  # several chunks, subset rows spread over them
    ref = compute_reference_stats(x, extractor_info=INFO, max_features=250, seed=3)
    assert ref.n == 900 and ref.features.shape == (250, 6) and ref.features.dtype == np.float32
    np.testing.assert_allclose(ref.mu, x.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(ref.sigma, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-10)
    rows = {r.tobytes() for r in x}
    assert all(f.tobytes() in rows for f in ref.features)
    assert len({f.tobytes() for f in ref.features}) == 250
    again = compute_reference_stats(x, extractor_info=INFO, max_features=250, seed=3)
    np.testing.assert_array_equal(again.features, ref.features)
    other = compute_reference_stats(x, extractor_info=INFO, max_features=250, seed=4)
    assert not np.array_equal(other.features, ref.features)


def test_features_without_extractor_identity_are_refused():
    with pytest.raises(ValueError, match="extractor"):
        compute_reference_stats(_features())
    with pytest.raises(ValueError, match="uint8 images or a float feature array"):
        compute_reference_stats(np.zeros((5, 4, 4, 3), dtype=np.int32), extractor_info=INFO)


def test_save_load_round_trip(tmp_path):
    ref = compute_reference_stats(
        _features(), extractor_info=INFO, max_features=100, dataset="toy", seed=1
    )
    path = ref.save(tmp_path / "ref.npz")
    assert is_reference_file(path)
    back = ReferenceStats.load(path)
    np.testing.assert_array_equal(back.mu, ref.mu)
    np.testing.assert_array_equal(back.sigma, ref.sigma)
    np.testing.assert_array_equal(back.features, ref.features)
    assert (back.n, back.dataset, back.seed, back.extractor) == (900, "toy", 1, INFO)
    assert back.path == str(path) and back.antdiff_version
    with np.load(path, allow_pickle=False) as z:  # no pickled objects inside
        assert z["mu"].dtype == np.float64 and z["sigma"].dtype == np.float64


def test_foreign_or_wrong_files_are_refused(tmp_path):
    np.savez(tmp_path / "pfid.npz", mu=np.zeros(3), sigma=np.eye(3))
    with pytest.raises(ValueError, match="without the network that made them"):
        ReferenceStats.load(tmp_path / "pfid.npz")
    np.savez(tmp_path / "other.npz", images=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="not an antdiff reference"):
        ReferenceStats.load(tmp_path / "other.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip at all")
    with pytest.raises(ValueError, match="unreadable|not an antdiff"):
        ReferenceStats.load(tmp_path / "junk.npz")
    assert not is_reference_file(tmp_path / "junk.npz")
    with pytest.raises(ValueError, match="do not exist"):
        ReferenceStats.load(tmp_path / "missing.npz")


def test_statistics_of_another_extractor_are_refused():
    ref = compute_reference_stats(_features(), extractor_info=INFO)
    gen = _features(200, seed=1)
    other = dict(INFO, checksum="b" * 64, name="another net")
    with pytest.raises(ValueError, match="not comparable"):
        evaluate_features(gen, ref, extractor_info=other)
    with pytest.raises(ValueError, match="preprocessing"):
        ref.check_compatible(dict(INFO, preprocessing="bicubic"))
    with pytest.raises(ValueError, match="6-d"):
        ref.check_compatible(dict(INFO, dim=7))
    ref.check_compatible(INFO)  # the same network passes


def test_disjoint_floor_equals_direct_computation_on_the_complement():
    x = _features(600)
    ref = compute_reference_stats(x, extractor_info=INFO, max_features=600)  # all stored, in order
    fl = real_floor(ref, 200, method="disjoint", seed=5)
    idx = np.random.default_rng(5).choice(600, 200, replace=False)
    held = ref.features[idx].astype(np.float64)
    rest = np.ones(600, bool)
    rest[idx] = False
    np.testing.assert_array_equal(ref.features, x)  # all stored, in input order
    ga, gb = gaussian_stats(held), gaussian_stats(x[rest].astype(np.float64))
    assert fl.value == pytest.approx(frechet_distance(ga.mu, ga.sigma, gb.mu, gb.sigma), rel=1e-9)
    assert (fl.n, fl.n_ref, fl.method) == (200, 400, "disjoint")
    sub = real_floor(ref, 200, method="subset", seed=5)
    assert sub.value == pytest.approx(
        frechet_distance(ga.mu, ga.sigma, ref.mu, ref.sigma), rel=1e-12
    )
    assert ref.floor(200, seed=5) is ref.floor(200, seed=5)  # cached


def test_floor_predicts_fresh_sample_fid_and_subset_floor_is_optimistic():
    # An ideal generator draws fresh samples: its mean FID is what the disjoint floor estimates;
    # the subset floor (samples drawn from the reference set itself) is biased low.
    rng = np.random.default_rng(11)
    d, n_ref, n = 4, 1000, 400
    fresh, disjoint, subset = [], [], []
    for seed in range(12):
        real = rng.normal(size=(n_ref, d)).astype(np.float32)
        ref = compute_reference_stats(real, extractor_info=dict(INFO, dim=d), max_features=n_ref)
        g = gaussian_stats(rng.normal(size=(n, d)))
        fresh.append(frechet_distance(g.mu, g.sigma, ref.mu, ref.sigma))
        disjoint.append(real_floor(ref, n, seed=seed).value)
        subset.append(real_floor(ref, n, method="subset", seed=seed).value)
    assert np.mean(disjoint) == pytest.approx(np.mean(fresh), rel=0.35)
    assert np.mean(subset) < 0.5 * np.mean(disjoint)


def test_floor_needs_enough_stored_features():
    ref = compute_reference_stats(_features(), extractor_info=INFO, max_features=50)
    with pytest.raises(ValueError, match="--max-features 100"):
        real_floor(ref, 100)
    with pytest.raises(ValueError, match="unknown floor method"):
        real_floor(ref, 10, method="bogus")
    result = evaluate_features(_features(100, seed=2), ref, extractor_info=INFO, metrics="fid")
    assert result["floor"] is None and any("floor unavailable" in s for s in result["notes"])


def test_evaluate_features_reports_counts_floor_and_extractor():
    ref = compute_reference_stats(_features(900), extractor_info=INFO, max_features=500)
    gen = _features(300, seed=7)
    res = evaluate_features(gen, ref, extractor_info=INFO, kid_subset_size=100, kid_subsets=10)
    assert (res["n"], res["n_gen"], res["n_real"], res["n_real_features"]) == (300, 300, 900, 500)
    assert res["floor_method"] == "disjoint" and res["floor_n_ref"] == 600
    assert 0 <= res["precision"] <= 1 and 0 <= res["recall"] <= 1 and res["pr_n"] == 300
    assert res["kid_subset_size"] == 100 and res["extractor"] == INFO
    # Same distribution: FID is of the order of the floor, far below a shifted generator's.
    shifted = evaluate_features(gen + 3.0, ref, extractor_info=INFO, metrics=["fid"])
    assert res["fid"] < 3 * res["floor"] < shifted["fid"]
    assert set(shifted) >= {"fid", "floor"} and "kid" not in shifted
    with pytest.raises(ValueError, match="unknown metric"):
        evaluate_features(gen, ref, extractor_info=INFO, metrics="fid,is")
