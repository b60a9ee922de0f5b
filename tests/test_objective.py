"""DiffusionObjective: targets, conversions, the iDDPM hybrid loss against a float64
re-derivation, weightings, and the matching diffusers schedulers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from antdiff import NoiseSchedule
from antdiff.objective import DiffusionObjective
from antdiff.weighting import EDMWeighting, MinSNRWeighting, P2Weighting

SCHED = NoiseSchedule.from_name("linear", 1000)
PREDS = ("epsilon", "v_prediction", "sample")


def batch(seed=0, B=6, C=2, H=4, quantised=False):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(B, C, H, H, generator=g) * 2 - 1
    if quantised:  # data on the 256-level grid, edges included
        x0 = torch.round((x0 + 1) * 127.5) / 127.5 - 1
        x0[0, 0, 0, 0], x0[0, 0, 0, 1] = -1.0, 1.0
    noise = torch.randn(B, C, H, H, generator=g)
    t = torch.tensor([0, 1, 2, 10, 500, 999][:B])
    return x0, noise, t


def test_q_sample_and_targets():
    obj = DiffusionObjective(SCHED, "v_prediction")
    x0, noise, t = batch()
    ac = torch.tensor(SCHED.alphas_cumprod[t.numpy()], dtype=torch.float32).view(-1, 1, 1, 1)
    x_t = obj.q_sample(x0, t, noise)
    torch.testing.assert_close(x_t, ac.sqrt() * x0 + (1 - ac).sqrt() * noise)
    torch.testing.assert_close(obj.target(x0, t, noise), ac.sqrt() * noise - (1 - ac).sqrt() * x0)
    assert DiffusionObjective(SCHED, "eps").target(x0, t, noise) is noise
    assert DiffusionObjective(SCHED, "x0").target(x0, t, noise) is x0


@pytest.mark.parametrize("prediction", PREDS)
def test_perfect_prediction_has_zero_loss_and_recovers_eps_x0(prediction):
    obj = DiffusionObjective(SCHED, prediction)
    x0, noise, t = batch()
    x_t = obj.q_sample(x0, t, noise)
    out = obj.target(x0, t, noise)
    assert obj.per_sample_loss(out, x0, x_t, t, noise).abs().max() < 1e-12
    eps, x0_hat = obj.predict_eps_x0(out, x_t, t)
    # x0 from ε is ill-conditioned at t = 999 for ε-prediction (÷ √ᾱ ≈ 0.006): compare loosely there.
    torch.testing.assert_close(eps[:5], noise[:5], atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(x0_hat[:5], x0[:5], atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "weighting", [None, P2Weighting(), MinSNRWeighting(5.0), EDMWeighting(0.5)]
)
def test_weighted_loss_is_the_same_objective_for_every_prediction_type(weighting):
    """Feed each parametrisation the same implied ε̂: the weighted per-sample losses agree."""
    x0, noise, t = batch(seed=3)
    t = torch.tensor([1, 50, 200, 400, 700, 950])
    obj = {p: DiffusionObjective(SCHED, p, weighting=weighting) for p in PREDS}
    x_t = obj["epsilon"].q_sample(x0, t, noise)
    eps_hat = noise + 0.1 * torch.randn(noise.shape, generator=torch.Generator().manual_seed(1))
    ac = torch.tensor(SCHED.alphas_cumprod[t.numpy()], dtype=torch.float64).view(-1, 1, 1, 1)
    x_t64, eps64 = x_t.double(), eps_hat.double()
    x0_hat = (x_t64 - (1 - ac).sqrt() * eps64) / ac.sqrt()
    v_hat = ac.sqrt() * eps64 - (1 - ac).sqrt() * x0_hat
    outs = {"epsilon": eps64, "sample": x0_hat, "v_prediction": v_hat}
    losses = {p: obj[p].per_sample_loss(outs[p].float(), x0, x_t, t, noise).double() for p in PREDS}
    if weighting is None:
        # Unweighted: the x0 and v losses are the ε loss times 1/SNR and (1+SNR)/SNR.
        snr = torch.tensor(SCHED.snr[t.numpy()])
        torch.testing.assert_close(losses["sample"], losses["epsilon"] / snr, rtol=2e-3, atol=0)
        torch.testing.assert_close(
            losses["v_prediction"], losses["epsilon"] * (1 + snr) / snr, rtol=2e-3, atol=0
        )
    else:
        torch.testing.assert_close(losses["sample"], losses["epsilon"], rtol=2e-3, atol=1e-7)
        torch.testing.assert_close(losses["v_prediction"], losses["epsilon"], rtol=2e-3, atol=1e-7)


def test_weighting_multiplies_the_per_sample_mse():
    x0, noise, t = batch()
    plain = DiffusionObjective(SCHED, "epsilon")
    p2 = DiffusionObjective(SCHED, "epsilon", weighting="p2")
    x_t = plain.q_sample(x0, t, noise)
    out = torch.zeros_like(x0)
    w = torch.tensor(1.0 / (1.0 + SCHED.snr[t.numpy()]), dtype=torch.float32)
    torch.testing.assert_close(
        p2.per_sample_loss(out, x0, x_t, t, noise),
        w * plain.per_sample_loss(out, x0, x_t, t, noise),
    )


# ----------------------------------------------------------------------------- hybrid loss
def reference_vb_bits(obj_sched, x0, x_t, t, eps_hat, var_values):
    """L_t in bits/dim re-derived in float64 from the DDPM/iDDPM formulas, no shared code."""
    ac = obj_sched.alphas_cumprod
    ac_prev = np.concatenate([[1.0], ac[:-1]])
    beta = 1 - ac / ac_prev
    post_var = beta * (1 - ac_prev) / (1 - ac)
    post_var_clip = np.concatenate([[post_var[1]], post_var[1:]])
    out = []
    Normal = torch.distributions.Normal
    for b in range(x0.shape[0]):
        tb = int(t[b])
        a, ap, be = ac[tb], ac_prev[tb], beta[tb]
        xb, xt, e, v = (z[b].double() for z in (x0, x_t, eps_hat, var_values))
        # q(x_{t-1} | x_t, x0): mean = √ᾱ_{t-1} β_t/(1-ᾱ_t) x0 + √α_t (1-ᾱ_{t-1})/(1-ᾱ_t) x_t
        q_mean = math.sqrt(ap) * be / (1 - a) * xb + math.sqrt(1 - be) * (1 - ap) / (1 - a) * xt
        # model: x̂0 from ε̂, same posterior formula, log-variance interpolated
        x0_hat = (xt - math.sqrt(1 - a) * e) / math.sqrt(a)
        p_mean = math.sqrt(ap) * be / (1 - a) * x0_hat + math.sqrt(1 - be) * (1 - ap) / (1 - a) * xt
        frac = (v + 1) / 2
        p_logvar = frac * math.log(be) + (1 - frac) * math.log(post_var_clip[tb])
        p_std = torch.exp(0.5 * p_logvar)
        D = xb.numel()
        if tb > 0:
            q = Normal(q_mean, torch.full_like(q_mean, math.sqrt(post_var_clip[tb])))
            kl = torch.distributions.kl_divergence(q, Normal(p_mean, p_std))
            out.append(float(kl.sum()) / D / math.log(2))
        else:

            def cdf(z):  # the tanh approximation iDDPM uses, in float64
                return 0.5 * (1 + torch.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z**3)))

            hi = cdf((xb + 1 / 255 - p_mean) / p_std)
            lo = cdf((xb - 1 / 255 - p_mean) / p_std)
            prob = torch.where(xb < -0.999, hi, torch.where(xb > 0.999, 1 - lo, hi - lo))
            out.append(float(-torch.log(prob.clamp(min=1e-12)).sum()) / D / math.log(2))
    return np.array(out)


def test_hybrid_vb_term_matches_float64_rederivation():
    obj = DiffusionObjective(SCHED, "epsilon", learned_variance=True)
    x0, noise, t = batch(seed=5, quantised=True)
    x_t = obj.q_sample(x0, t, noise)
    g = torch.Generator().manual_seed(7)
    eps_hat = noise + 0.3 * torch.randn(noise.shape, generator=g)
    var_values = torch.rand(noise.shape, generator=g) * 2 - 1
    out = torch.cat([eps_hat, var_values], dim=1)
    terms = obj.loss_terms(out, x0, x_t, t, noise)
    ref = reference_vb_bits(SCHED, x0, x_t, t, eps_hat, var_values)
    # T·λ = 1000·0.001 = 1: the VB term is L_t itself (ADM's "rescaled" MSE loss).
    np.testing.assert_allclose(terms.vb.double().numpy(), ref, rtol=2e-4)
    mse = ((noise - eps_hat) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(terms.mse, mse)
    torch.testing.assert_close(terms.loss, terms.mse + terms.vb)
    assert terms.weight is None


def test_decoder_nll_is_close_to_the_exact_gaussian_cdf():
    """The tanh CDF approximation changes the t = 0 term by well under 1 %."""
    obj = DiffusionObjective(SCHED, "epsilon", learned_variance=True)
    x0, noise, _ = batch(seed=2, quantised=True)
    t = torch.zeros(6, dtype=torch.long)
    x_t = obj.q_sample(x0, t, noise)
    out = torch.cat([noise + 0.01, torch.zeros_like(noise)], dim=1)
    ours = obj.vb_terms_bpd(out, x0, x_t, t).double()
    mean, logvar, _ = obj.p_mean_variance(out, x_t, t)
    n = torch.distributions.Normal(mean.double(), torch.exp(0.5 * logvar.double()))
    x = x0.double()
    hi, lo = n.cdf(x + 1 / 255), n.cdf(x - 1 / 255)
    prob = torch.where(x < -0.999, hi, torch.where(x > 0.999, 1 - lo, hi - lo))
    exact = -torch.log(prob.clamp(min=1e-12)).mean(dim=(1, 2, 3)) / math.log(2)
    torch.testing.assert_close(ours, exact, rtol=1e-2, atol=0)


@pytest.mark.parametrize("prediction", PREDS)
def test_hybrid_gradients_vb_trains_only_the_variance(prediction):
    obj = DiffusionObjective(SCHED, prediction, learned_variance=True)
    x0, noise, t = batch(seed=1)
    x_t = obj.q_sample(x0, t, noise)
    out = torch.cat([torch.randn_like(x0), torch.rand_like(x0) * 2 - 1], 1).requires_grad_(True)
    terms = obj.loss_terms(out, x0, x_t, t, noise)
    (g_vb,) = torch.autograd.grad(terms.vb.sum(), out, retain_graph=True)
    (g_mse,) = torch.autograd.grad(terms.mse.sum(), out)
    C = x0.shape[1]
    assert g_vb[:, :C].abs().max() == 0 and g_vb[:, C:].abs().max() > 0
    assert g_mse[:, C:].abs().max() == 0 and g_mse[:, :C].abs().max() > 0


def test_vlb_weight_scales_with_lambda_times_T():
    x0, noise, t = batch(seed=4)
    t = torch.tensor([1, 3, 5, 7, 9, 11])
    small = NoiseSchedule.from_name("linear", 100)
    out = torch.cat([noise * 0.9, torch.zeros_like(noise)], 1)
    a = DiffusionObjective(small, learned_variance=True, vlb_weight=0.001)
    b = DiffusionObjective(small, learned_variance=True, vlb_weight=0.01)
    x_t = a.q_sample(x0, t, noise)
    va = a.loss_terms(out, x0, x_t, t, noise).vb
    vb = b.loss_terms(out, x0, x_t, t, noise).vb
    torch.testing.assert_close(vb, 10 * va)
    # λ·T with T = 100: a tenth of the raw bits/dim term.
    raw = a.vb_terms_bpd(out, x0, x_t, t)
    torch.testing.assert_close(va, raw * 0.1)


def test_weighting_applies_to_mse_only_unless_weight_vlb():
    x0, noise, t = batch(seed=6)
    out = torch.cat([noise * 0.5, torch.zeros_like(noise)], 1)
    mse_only = DiffusionObjective(SCHED, learned_variance=True, weighting="p2")
    both = DiffusionObjective(SCHED, learned_variance=True, weighting="p2", weight_vlb=True)
    x_t = mse_only.q_sample(x0, t, noise)
    a = mse_only.loss_terms(out, x0, x_t, t, noise)
    b = both.loss_terms(out, x0, x_t, t, noise)
    torch.testing.assert_close(a.loss, a.weight * a.mse + a.vb)
    torch.testing.assert_close(b.loss, b.weight * (b.mse + b.vb))


# ----------------------------------------------------------------------------- diffusers
def test_diffusers_learned_range_equals_our_log_variance():
    obj = DiffusionObjective(SCHED, "epsilon", learned_variance=True)
    sch = obj.diffusers_scheduler("ddpm")
    assert sch.config.variance_type == "learned_range" and sch.config.prediction_type == "epsilon"
    v = torch.linspace(-1, 1, 7).view(1, 7, 1, 1)
    for t in (1, 2, 37, 500, 998, 999):
        ours = obj.model_log_variance(v, torch.tensor([t]))
        theirs = sch._get_variance(t, predicted_variance=v)
        # diffusers works in float32 (β_t = 1 − ᾱ_t/ᾱ_{t-1} loses ~4 digits at small t): a log-
        # variance within 5e-4 is a variance within 0.05 %.
        torch.testing.assert_close(theirs.float(), ours, rtol=0, atol=5e-4)


def test_diffusers_respaced_learned_range_equals_respaced_schedule():
    """iDDPM respacing = the schedule restricted to the kept timesteps; diffusers does the same."""
    obj = DiffusionObjective(SCHED, "epsilon", learned_variance=True)
    sch = obj.diffusers_scheduler("ddpm")
    sch.set_timesteps(50)
    kept = sorted(int(x) for x in sch.timesteps)
    respaced = DiffusionObjective(
        NoiseSchedule(SCHED.alphas_cumprod[kept]), "epsilon", learned_variance=True
    )
    v = torch.tensor([-1.0, -0.3, 0.4, 1.0]).view(1, 4, 1, 1)
    for i in (1, 10, 49):
        theirs = sch._get_variance(kept[i], predicted_variance=v)
        ours = respaced.model_log_variance(v, torch.tensor([i]))
        torch.testing.assert_close(theirs.float(), ours, rtol=0, atol=5e-4)


@pytest.mark.parametrize("prediction", PREDS)
def test_diffusers_ddpm_step_equals_our_reverse_step(prediction):
    obj = DiffusionObjective(SCHED, prediction, learned_variance=True)
    sch = obj.diffusers_scheduler("ddpm", clip_sample=False)
    g = torch.Generator().manual_seed(0)
    x_t = torch.randn(2, 3, 4, 4, generator=g)
    out = torch.cat(
        [torch.randn(2, 3, 4, 4, generator=g), torch.rand(2, 3, 4, 4, generator=g) * 2 - 1], 1
    )
    t = 321
    prev = sch.step(out, t, x_t, generator=torch.Generator().manual_seed(9)).prev_sample
    noise = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(9))
    mean, logvar, _ = obj.p_mean_variance(out, x_t, torch.full((2,), t))
    torch.testing.assert_close(prev, mean + torch.exp(0.5 * logvar) * noise, rtol=1e-4, atol=1e-5)


def test_diffusers_schedulers_carry_our_betas_and_prediction_type():
    sched = NoiseSchedule.from_name("squaredcos_cap_v2", 1000)
    obj = DiffusionObjective(sched, "v_prediction")
    for kind in ("ddpm", "ddim"):
        s = obj.diffusers_scheduler(kind)
        # float32 cumulative product inside diffusers
        np.testing.assert_allclose(
            s.alphas_cumprod.double().numpy(), sched.alphas_cumprod, rtol=1e-4
        )
        assert s.config.prediction_type == "v_prediction"
        assert s.config.num_train_timesteps == 1000
    assert obj.diffusers_scheduler("ddpm").config.variance_type == "fixed_small"
    assert obj.diffusers_scheduler("ddim", clip_sample=False).config.clip_sample is False
    with pytest.raises(ValueError, match="unknown scheduler kind"):
        obj.diffusers_scheduler("euler")


# ----------------------------------------------------------------------------- plumbing
def test_model_channels_and_split():
    obj = DiffusionObjective(SCHED, learned_variance=True)
    assert obj.model_channels(3) == 6
    assert DiffusionObjective(SCHED).model_channels(3) == 3
    with pytest.raises(ValueError, match="needs 6 channels"):
        obj.per_sample_loss(
            torch.zeros(2, 3, 4, 4),
            torch.zeros(2, 3, 4, 4),
            torch.zeros(2, 3, 4, 4),
            torch.tensor([1, 2]),
            torch.zeros(2, 3, 4, 4),
        )


def test_bad_inputs_are_clear_errors():
    obj = DiffusionObjective(SCHED)
    x = torch.zeros(2, 1, 4, 4)
    with pytest.raises(ValueError, match="integer tensor"):
        obj.q_sample(x, torch.tensor([1.0, 2.0]), x)
    with pytest.raises(ValueError, match="one timestep per sample"):
        obj.q_sample(x, torch.tensor([1, 2, 3]), x)
    with pytest.raises(ValueError, match="vlb_weight"):
        DiffusionObjective(SCHED, vlb_weight=-1)
    with pytest.raises(ValueError, match="unknown prediction type"):
        DiffusionObjective(SCHED, "score")
    with pytest.raises(ValueError, match="non-finite weights"):
        DiffusionObjective(NoiseSchedule(np.array([1.0, 0.5])), "sample", weighting="edm")
    with pytest.raises(ValueError, match="learned variance needs"):
        DiffusionObjective(NoiseSchedule(np.array([1.0, 0.5])), learned_variance=True)


def test_to_dict_round_trip():
    obj = DiffusionObjective(
        NoiseSchedule.from_name("scaled_linear", 500, 0.0015, 0.0195),
        "v",
        learned_variance=True,
        vlb_weight=0.002,
        weighting=MinSNRWeighting(4.0, normalize=True),
        weight_vlb=True,
    )
    again = DiffusionObjective.from_dict(obj.to_dict())
    assert again.to_dict() == obj.to_dict()
    np.testing.assert_array_equal(again.schedule.alphas_cumprod, obj.schedule.alphas_cumprod)
    x0, noise, t = batch()
    x_t = obj.q_sample(x0, t % 500, noise)
    out = torch.randn(6, 4, 4, 4)
    torch.testing.assert_close(
        obj.per_sample_loss(out, x0, x_t, t % 500, noise),
        again.per_sample_loss(out, x0, x_t, t % 500, noise),
    )
    with pytest.raises(ValueError, match="unknown DiffusionObjective keys"):
        DiffusionObjective.from_dict({"prediction": "epsilon", "lr": 1})


def test_bf16_model_output_gives_float32_loss():
    obj = DiffusionObjective(SCHED, learned_variance=True)
    x0, noise, t = batch()
    x_t = obj.q_sample(x0, t, noise)
    out = torch.randn(6, 4, 4, 4).bfloat16()
    loss = obj.per_sample_loss(out, x0, x_t, t, noise)
    assert loss.dtype == torch.float32 and torch.isfinite(loss).all()
