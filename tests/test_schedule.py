import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from antdiff import NoiseSchedule


@pytest.mark.parametrize(
    "name,kw",
    [
        ("linear", {}),
        ("scaled_linear", {}),
        ("scaled_linear", {"beta_start": 0.0015, "beta_end": 0.0195}),
        ("squaredcos_cap_v2", {}),
    ],
)
def test_betas_equal_diffusers(name, kw):
    ours = NoiseSchedule.from_name(name, 1000, **kw)
    ref_kw = dict(kw)
    if name == "scaled_linear" and not kw:  # our default is the LDM/SD range, diffusers' is DDPM's
        ref_kw = {"beta_start": 0.00085, "beta_end": 0.012}
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule=name, **ref_kw)
    # diffusers builds betas in float32; we keep float64.
    np.testing.assert_allclose(ours.betas, ref.betas.double().numpy(), rtol=2e-6, atol=1e-9)
    # diffusers accumulates the product in float32 (1e-5 relative drift at t≈T).
    np.testing.assert_allclose(ours.alphas_cumprod, ref.alphas_cumprod.double().numpy(), rtol=1e-4)


def test_snr_and_logsnr_definitions():
    s = NoiseSchedule.from_name("linear", 1000)
    a = s.alphas_cumprod
    np.testing.assert_allclose(s.snr, a / (1 - a))
    np.testing.assert_allclose(s.logsnr, np.log(a / (1 - a)), rtol=1e-12)
    # The digest's numbers: log-SNR from +9.21 at t=0 to -10.12 at t=T-1 (linear DDPM).
    assert s.logsnr[0] == pytest.approx(9.21, abs=0.01)
    assert s.logsnr[-1] == pytest.approx(-10.12, abs=0.01)
    ffhq = NoiseSchedule.from_name("scaled_linear", 1000, 0.0015, 0.0195)
    assert ffhq.logsnr[0] == pytest.approx(6.50, abs=0.01)
    assert ffhq.logsnr[-1] == pytest.approx(-8.86, abs=0.01)
    assert np.all(np.diff(s.logsnr) < 0)


def test_from_diffusers_and_arrays_roundtrip():
    ref = DDIMScheduler(num_train_timesteps=500, beta_schedule="squaredcos_cap_v2")
    s = NoiseSchedule.from_diffusers(ref)
    assert s.num_timesteps == 500
    np.testing.assert_allclose(s.alphas_cumprod, ref.alphas_cumprod.double().numpy())
    s2 = NoiseSchedule.coerce(torch.tensor(s.alphas_cumprod))
    np.testing.assert_allclose(s2.alphas_cumprod, s.alphas_cumprod)
    back = s.to_diffusers()
    np.testing.assert_allclose(back.alphas_cumprod.double().numpy(), s.alphas_cumprod, rtol=1e-5)
    assert NoiseSchedule.from_dict(NoiseSchedule.from_name("linear", 10).to_dict()).name == "linear"
    d = NoiseSchedule(s.alphas_cumprod).to_dict()
    np.testing.assert_allclose(NoiseSchedule.from_dict(d).alphas_cumprod, s.alphas_cumprod)


def test_bad_input():
    with pytest.raises(ValueError, match="unknown noise schedule"):
        NoiseSchedule.from_name("cosine")
    with pytest.raises(ValueError, match="non-increasing"):
        NoiseSchedule(np.array([0.5, 0.9]))
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        NoiseSchedule(np.array([1.5, 0.9]))
    with pytest.raises(TypeError, match="alphas_cumprod"):
        NoiseSchedule.from_diffusers(object())
