"""Loss weightings: each formula pinned by hand-computed values on SNR = 4, 1, 1/4."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from antdiff import NoiseSchedule
from antdiff.weighting import (
    EDMWeighting,
    MinSNRWeighting,
    NoWeighting,
    P2Weighting,
    canonical_prediction,
    make_weighting,
)

# ᾱ = 0.8, 0.5, 0.2  ->  SNR = ᾱ/(1-ᾱ) = 4, 1, 0.25.
SCHED = NoiseSchedule(np.array([0.8, 0.5, 0.2]))
T = torch.arange(3)


def weights(w, prediction):
    return w(T, SCHED, prediction).double().numpy()


def test_schedule_snr_is_what_the_hand_values_assume():
    np.testing.assert_allclose(SCHED.snr, [4.0, 1.0, 0.25])


def test_none_is_one_for_every_prediction():
    for p in ("epsilon", "v_prediction", "sample"):
        np.testing.assert_array_equal(weights(NoWeighting(), p), [1, 1, 1])


def test_p2_default_gamma1_k1():
    w = P2Weighting()
    # eps: 1/(1+SNR) = 1/5, 1/2, 1/1.25
    np.testing.assert_allclose(weights(w, "epsilon"), [0.2, 0.5, 0.8], rtol=1e-6)
    # x0: SNR/(1+SNR)
    np.testing.assert_allclose(weights(w, "sample"), [0.8, 0.5, 0.2], rtol=1e-6)
    # v: SNR/((1+SNR)(1+SNR))
    np.testing.assert_allclose(weights(w, "v_prediction"), [0.16, 0.25, 0.16], rtol=1e-6)


def test_p2_gamma_half():
    w = P2Weighting(gamma=0.5, k=1.0)
    np.testing.assert_allclose(weights(w, "epsilon"), [5**-0.5, 2**-0.5, 1.25**-0.5], rtol=1e-6)


def test_p2_gamma_zero_is_vanilla_for_eps():
    np.testing.assert_allclose(weights(P2Weighting(gamma=0.0), "epsilon"), [1, 1, 1])


def test_min_snr_gamma2_each_prediction_type():
    w = MinSNRWeighting(gamma=2.0)
    np.testing.assert_allclose(weights(w, "epsilon"), [0.5, 1.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(weights(w, "v_prediction"), [0.4, 0.5, 0.2], rtol=1e-6)
    np.testing.assert_allclose(weights(w, "sample"), [2.0, 1.0, 0.25], rtol=1e-6)


def test_min_snr_finite_at_zero_terminal_snr():
    w = MinSNRWeighting(gamma=5.0)
    snr = np.array([0.0, 1e-12, 3.0, 100.0, np.inf])
    with np.errstate(all="raise"):
        eps = w.from_snr(snr, "epsilon")
        v = w.from_snr(snr, "v_prediction")
        x0 = w.from_snr(snr, "sample")
    np.testing.assert_allclose(eps, [1.0, 1.0, 1.0, 0.05, 0.0])
    np.testing.assert_allclose(v, [0.0, 1e-12, 0.75, 5 / 101, 0.0], rtol=1e-9)
    np.testing.assert_allclose(x0, [0.0, 1e-12, 3.0, 5.0, 5.0])


def test_edm_sigma_data_half():
    w = EDMWeighting(sigma_data=0.5)  # 1/σ_d² = 4
    np.testing.assert_allclose(weights(w, "sample"), [8.0, 5.0, 4.25], rtol=1e-6)
    np.testing.assert_allclose(weights(w, "epsilon"), [2.0, 5.0, 17.0], rtol=1e-6)
    np.testing.assert_allclose(weights(w, "v_prediction"), [1.6, 2.5, 3.4], rtol=1e-6)


def test_edm_matches_karras_lambda_of_sigma():
    sd = 0.7
    w = EDMWeighting(sigma_data=sd)
    sigma = SCHED.sigmas  # σ = SNR^{-1/2}
    lam = (sigma**2 + sd**2) / (sigma * sd) ** 2
    np.testing.assert_allclose(weights(w, "sample"), lam, rtol=1e-6)


def test_edm_with_unit_sigma_data_is_plain_v_mse():
    np.testing.assert_allclose(
        weights(EDMWeighting(sigma_data=1.0), "v_prediction"), [1, 1, 1], rtol=1e-6
    )


@pytest.mark.parametrize(
    "w", [P2Weighting(), P2Weighting(0.5, 2.0), MinSNRWeighting(3.0), EDMWeighting(0.5)]
)
def test_conversion_between_prediction_types(w):
    """w_x0 = w_eps·SNR = w_v·(1+SNR): the same objective whatever the model predicts."""
    s = NoiseSchedule.from_name("linear", 1000)
    t = torch.arange(1000)
    snr = s.snr
    eps = w(t, s, "epsilon").double().numpy()
    v = w(t, s, "v_prediction").double().numpy()
    x0 = w(t, s, "sample").double().numpy()
    np.testing.assert_allclose(eps * snr, x0, rtol=1e-5)
    np.testing.assert_allclose(v * (1 + snr), x0, rtol=1e-5)


def test_normalize_gives_mean_one_and_keeps_ratios():
    s = NoiseSchedule.from_name("linear", 1000)
    raw = P2Weighting().table(s, "epsilon")
    norm = P2Weighting(normalize=True).table(s, "epsilon")
    assert norm.mean() == pytest.approx(1.0)
    np.testing.assert_allclose(norm / raw, np.full(1000, norm[0] / raw[0]), rtol=1e-12)


def test_call_returns_float32_on_t_device_indexed_by_t():
    s = NoiseSchedule.from_name("linear", 1000)
    w = MinSNRWeighting()
    t = torch.tensor([999, 0, 500, 0])
    out = w(t, s, "eps")
    assert out.dtype == torch.float32 and out.shape == (4,)
    tab = w.table(s, "epsilon")
    np.testing.assert_allclose(out.numpy(), tab[[999, 0, 500, 0]], rtol=1e-6)


def test_non_finite_weights_are_an_error_naming_the_timestep():
    s = NoiseSchedule(np.array([1.0, 0.5]))  # SNR(0) = inf
    with pytest.raises(ValueError, match=r"timesteps \[0\]"):
        EDMWeighting().table(s, "sample")
    # Min-SNR stays finite there.
    np.testing.assert_allclose(MinSNRWeighting(5.0).table(s, "sample"), [5.0, 1.0])


def test_make_weighting_names_aliases_dicts():
    assert isinstance(make_weighting("none"), NoWeighting)
    assert isinstance(make_weighting(None), NoWeighting)
    assert isinstance(make_weighting("min-snr", gamma=5), MinSNRWeighting)
    p2 = make_weighting("p2", gamma=0.5, k=2, normalize=True)
    again = make_weighting(p2.to_dict())
    assert (again.gamma, again.k, again.normalize) == (0.5, 2.0, True)
    assert make_weighting(p2) is p2
    assert make_weighting({"name": "edm", "sigma_data": 0.3}).sigma_data == 0.3


def test_make_weighting_errors():
    with pytest.raises(ValueError, match="unknown loss weighting 'p3'"):
        make_weighting("p3")
    with pytest.raises(ValueError, match="bad parameters"):
        make_weighting("min_snr", k=1)
    with pytest.raises(ValueError, match="gamma must be > 0"):
        make_weighting("min_snr", gamma=0)
    with pytest.raises(ValueError, match="k must be >= 0"):
        make_weighting("p2", k=-1)
    with pytest.raises(ValueError, match="sigma_data"):
        make_weighting("edm", sigma_data=0)
    with pytest.raises(ValueError, match="unknown prediction type"):
        canonical_prediction("score")
