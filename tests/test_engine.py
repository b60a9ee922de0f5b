"""ClusterGradientEngine: every mode gives the same update, on a tiny diffusers UNet and DiT."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from antdiff import TimestepBatch
from antdiff.mtl import ClusterGradientEngine, emit_sample_values, make_balancer


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny models: intra-op threads only add contention (pytest -n 2 on 2 cores); restored after.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# functorch (vmap mode) warns that CPU flash attention has no batching rule: a speed note only.
pytestmark = pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")

GRADIENT_METHODS = ["pcgrad", "nash", "mgda", "imtlg", "cagrad", "upgrad"]
K = 4


def tiny_unet() -> nn.Module:
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        block_out_channels=(4, 8),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=2,
        attention_head_dim=4,
    )


def tiny_dit() -> nn.Module:
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(0)
    model = DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=4,
        in_channels=4,
        out_channels=4,
        num_layers=1,
        sample_size=8,
        patch_size=2,
        num_embeds_ada_norm=10,
    )
    # diffusers drops class labels at random inside the forward (classifier-free guidance); the
    # engine needs a deterministic closure, so label dropout must be drawn outside the model.
    for module in model.modules():
        if hasattr(module, "dropout_prob"):
            module.dropout_prob = 0.0
    return model


MODELS = {"unet": (tiny_unet, 3), "dit": (tiny_dit, 4)}


def make_problem(kind: str, counts=(3, 0, 2, 4), seed: int = 1, device="cpu", shuffle=False):
    """A batch with uneven and absent clusters, and per-cluster targets of alternating sign so that
    the cluster gradients conflict (otherwise PCGrad/UPGrad reduce to the mean). ``shuffle``:
    the clusters' samples interleaved in the batch instead of one block per cluster."""
    k = len(counts)
    ids = torch.repeat_interleave(torch.arange(k), torch.tensor(counts))
    g = torch.Generator().manual_seed(seed)
    if shuffle:
        ids = ids[torch.randperm(len(ids), generator=g)]
    t = (ids * (1000 // k) + torch.randint(0, 1000 // k, ids.shape, generator=g)).long()
    batch = TimestepBatch(t, ids, torch.tensor(counts), k).to(device)
    channels = MODELS[kind][1]
    x0 = torch.randn(len(ids), channels, 8, 8, generator=g).to(device)
    noise = torch.randn(len(ids), channels, 8, 8, generator=g).to(device)
    labels = torch.randint(0, 10, (len(ids),), generator=g).to(device)
    sign = torch.tensor([1.0, -1.0] * k)[:k][ids].to(device)

    def closure_for(model, autocast_dtype=None):
        def compute_losses(index):
            xt = 0.8 * x0[index] + 0.6 * noise[index]
            dev = torch.device(device).type
            ctx = (
                torch.autocast(dev, dtype=autocast_dtype)
                if autocast_dtype is not None
                else torch.autocast(dev, enabled=False)
            )
            with ctx:
                if kind == "unet":
                    out = model(xt, batch.timesteps[index]).sample
                else:
                    out = model(
                        xt, timestep=batch.timesteps[index], class_labels=labels[index]
                    ).sample
            target = sign[index, None, None, None] * (1.0 + 0.5 * noise[index])
            return ((out.float() - target) ** 2).mean(dim=(1, 2, 3))

        return compute_losses

    return batch, closure_for


def flat_grad(model: nn.Module) -> torch.Tensor:
    return torch.cat(
        [
            (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
            for p in model.parameters()
        ]
    )


def one_step(kind, method, mode, **bal_kw):
    model = MODELS[kind][0]()
    batch, closure_for = make_problem(kind)
    engine = ClusterGradientEngine(model, make_balancer(method, K, **bal_kw), mode=mode)
    result = engine.step(closure_for(model), batch)
    return flat_grad(model), result


def rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("kind", ["unet", "dit"])
@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_all_modes_give_the_same_update(kind, method):
    ref, r_ref = one_step(kind, method, "retain_graph")
    assert r_ref.used_gradients and r_ref.mode == "retain_graph"
    assert float(ref.norm()) > 0
    assert r_ref.weights[1] == 0 and bool((r_ref.weights[[0, 2, 3]] != 0).all())  # absent cluster
    for mode in ("split", "vmap", "gramian"):
        g, r = one_step(kind, method, mode)
        assert r.mode == mode
        assert rel(g, ref) <= 1e-5, (mode, rel(g, ref))
        assert torch.allclose(r.weights, r_ref.weights, rtol=1e-4, atol=1e-7)
        assert torch.allclose(r.cluster_losses, r_ref.cluster_losses, rtol=1e-5)
    assert r_ref.counts.tolist() == [3, 0, 2, 4]


@pytest.mark.parametrize("kind", ["unet", "dit"])
@pytest.mark.parametrize("method", ["pcgrad", "nash"])
def test_padded_split_calls_one_width_and_gives_the_same_update(kind, method):
    """pad_split: every present cluster's sub-batch is padded to the step's largest (4 here, for
    counts 3, 0, 2, 4) so that a compiled model sees one batch size; the padding rows never
    reach a loss, so the update is the unpadded one to float rounding."""
    model = MODELS[kind][0]()
    batch, closure_for = make_problem(kind, shuffle=True)
    r_ref = ClusterGradientEngine(model, make_balancer(method, K), mode="split").step(
        closure_for(model), batch
    )
    ref = flat_grad(model)
    model = MODELS[kind][0]()
    inner = closure_for(model)
    widths: list[int] = []

    def compute_losses(index):
        widths.append(index.numel())
        return inner(index)

    engine = ClusterGradientEngine(model, make_balancer(method, K), mode="split", pad_split=True)
    result = engine.step(compute_losses, batch)
    assert widths == [4, 4, 4]  # cluster 1 is absent
    g = flat_grad(model)
    assert float(ref.norm()) > 0 and rel(g, ref) <= 1e-5, rel(g, ref)
    assert result.counts.tolist() == [3, 0, 2, 4]
    torch.testing.assert_close(result.cluster_losses, r_ref.cluster_losses, rtol=1e-5, atol=1e-7)
    with torch.no_grad():
        expected = inner(torch.arange(batch.batch_size)).float()
    torch.testing.assert_close(result.sample_losses, expected, rtol=1e-5, atol=1e-6)


def test_pad_split_is_refused_outside_split_mode():
    with pytest.raises(ValueError, match=r"pad_split pads the sub-batches of mode='split'.*vmap"):
        ClusterGradientEngine(tiny_unet(), make_balancer("pcgrad", K), mode="vmap", pad_split=True)


@pytest.mark.parametrize(
    ("method", "mode"),
    [("uw", "auto"), ("pcgrad", "split"), ("pcgrad", "vmap"), ("pcgrad", "retain_graph"),
     ("pcgrad", "gramian")],
)  # fmt: skip
def test_sample_losses_are_the_per_sample_losses_in_batch_order(method, mode):
    model = tiny_unet()
    batch, closure_for = make_problem("unet", shuffle=True)
    assert batch.cluster_ids.tolist() != sorted(batch.cluster_ids.tolist())  # interleaved
    compute_losses = closure_for(model)
    with torch.no_grad():
        expected = compute_losses(torch.arange(batch.batch_size)).float()
    result = ClusterGradientEngine(model, make_balancer(method, K), mode=mode).step(
        compute_losses, batch
    )
    assert result.mode == ("loss" if method == "uw" else mode)
    got = result.sample_losses
    assert got is not None and got.dtype == torch.float32 and not got.requires_grad
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    # the cluster losses are these samples' means per cluster
    ids = batch.cluster_ids
    for i in range(K):
        if int(batch.counts[i]):
            torch.testing.assert_close(
                result.cluster_losses[i].float(), got[ids == i].mean(), rtol=1e-5, atol=1e-6
            )


def test_values_emitted_inside_a_vmap_pass_come_back_in_batch_order():
    """Inside vmap a closure's tensors have no plain values; ``emit_sample_values`` hands them to
    the engine, which returns them with the step (batch order, padding left out). Outside a vmap
    pass it keeps nothing and says so; a value that is not one per index is refused."""
    model = tiny_unet()
    batch, closure_for = make_problem("unet", shuffle=True)
    compute_losses = closure_for(model)
    seen_plain = []

    def with_parts(index):
        losses = compute_losses(index)
        seen_plain.append(emit_sample_values(double=2 * losses, t=batch.timesteps[index].float()))
        return losses

    with torch.no_grad():
        expected = compute_losses(torch.arange(batch.batch_size)).float()
    vmap = ClusterGradientEngine(model, make_balancer("pcgrad", K), mode="vmap")
    result = vmap.step(with_parts, batch)
    assert seen_plain == [True] and set(result.sample_values) == {"double", "t"}
    torch.testing.assert_close(result.sample_values["double"], 2 * expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(result.sample_values["t"], batch.timesteps.float())
    # split calls the closure with plain tensors: nothing is kept, the step has no values
    seen_plain.clear()
    split = ClusterGradientEngine(model, make_balancer("pcgrad", K), mode="split")
    assert split.step(with_parts, batch).sample_values is None
    assert seen_plain and not any(seen_plain)
    assert emit_sample_values(x=torch.zeros(3)) is False  # no engine pass at all

    def wrong_shape(index):
        losses = compute_losses(index)
        emit_sample_values(pair=torch.stack([losses, losses], dim=1))
        return losses

    with pytest.raises(ValueError, match=r"emit_sample_values\(pair=...\) needs one value per"):
        vmap.step(wrong_shape, batch)


@pytest.mark.parametrize("mode", ["split", "vmap", "retain_graph", "gramian"])
def test_channels_last_parameters_get_gradients_of_their_own_layout(mode):
    """A channels-last model (the CIFAR-10 preset trains one) gets the same update as the
    contiguous model, in ``.grad`` tensors laid out like their parameters (PyTorch's gradient
    layout contract: no mismatched accumulation, no copies in the optimizer)."""
    ref, _ = one_step("unet", "pcgrad", "retain_graph")
    model = tiny_unet().to(memory_format=torch.channels_last)
    assert sum(not p.is_contiguous() for p in model.parameters()) >= 4  # the conv weights
    batch, closure_for = make_problem("unet")
    engine = ClusterGradientEngine(model, make_balancer("pcgrad", K), mode=mode)
    for _ in range(2):  # the second step accumulates into the existing .grad
        engine.step(closure_for(model), batch)
    assert rel(flat_grad(model), 2 * ref) <= 1e-5
    for p in model.parameters():  # strides of size-1 dims carry no layout
        assert p.grad is not None, (mode, p.shape)
        same = [g == w for g, w, n in zip(p.grad.stride(), p.stride(), p.shape) if n > 1]
        assert all(same), (mode, p.shape, p.grad.stride(), p.stride())


def test_gradient_methods_really_see_conflicts():
    _, r = one_step("unet", "pcgrad", "split")
    assert r.record["num_conflicts"] >= 1
    mean, _ = one_step("unet", "mean", "split")
    pc, _ = one_step("unet", "pcgrad", "split")
    assert rel(pc, mean) > 1e-2


def test_loss_based_step_equals_manual_backward():
    model = tiny_unet()
    batch, closure_for = make_problem("unet")
    bal = make_balancer("uw", K)
    with torch.no_grad():
        bal.log_vars.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0]))
    result = ClusterGradientEngine(model, bal).step(closure_for(model), batch)
    assert result.mode == "loss" and not result.used_gradients and result.grad_norm is None
    got, s_grad = flat_grad(model), bal.log_vars.grad.clone()
    model2 = tiny_unet()
    bal2 = make_balancer("uw", K)
    with torch.no_grad():
        bal2.log_vars.copy_(bal.log_vars)
    idx = torch.arange(batch.batch_size)
    bal2.loss(closure_for(model2)(idx), batch).backward()
    assert torch.equal(got, flat_grad(model2)) and torch.equal(s_grad, bal2.log_vars.grad)
    assert result.record["log_vars"] == pytest.approx([0.1, -0.2, 0.3, 0.0])


class WithBatchNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x, t):
        return self.bn(self.conv(x))


def test_batchnorm_is_refused_in_split_and_gramian_modes():
    model = WithBatchNorm()
    bal = make_balancer("pcgrad", 2)
    for mode in ("split", "vmap", "gramian"):
        with pytest.raises(ValueError, match=r"BatchNorm \(bn\).*retain_graph"):
            ClusterGradientEngine(model, bal, mode=mode)
    engine = ClusterGradientEngine(model, bal, mode="auto")
    assert engine.mode == "retain_graph"
    x = torch.randn(4, 3, 4, 4)
    batch = TimestepBatch(
        torch.tensor([0, 1, 600, 700]), torch.tensor([0, 0, 1, 1]), torch.tensor([2, 2]), 2
    )
    res = engine.step(lambda i: (model(x, None)[i] ** 2).mean(dim=(1, 2, 3)), batch)
    assert res.used_gradients and model.conv.weight.grad is not None


class PartlyUsed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.used = nn.Linear(3, 3)
        self.unused = nn.Linear(3, 3)
        self.frozen = nn.Parameter(torch.ones(3), requires_grad=False)
        self.partial = nn.Parameter(torch.zeros(3))  # only cluster 1 uses it

    def forward(self, x, ids):
        y = self.used(x) * self.frozen
        return y + (ids == 1).float()[:, None] * self.partial


@pytest.mark.parametrize("mode", ["split", "vmap", "retain_graph", "gramian"])
def test_unused_and_frozen_parameters_and_accumulation(mode):
    torch.manual_seed(0)
    model = PartlyUsed()
    x = torch.randn(6, 3)
    ids = torch.tensor([0, 0, 0, 1, 1, 1])
    batch = TimestepBatch(ids * 500, ids, torch.tensor([3, 3]), 2)
    target = torch.randn(6, 3)

    def losses(i):
        return ((model(x[i], ids[i]) - target[i]) ** 2).mean(dim=1)

    model.used.bias.grad = torch.ones(3)  # an earlier micro-batch's gradient: must be added to
    res = ClusterGradientEngine(model, make_balancer("mgda", 2), mode=mode).step(losses, batch)
    if mode == "vmap":  # functorch's grad cannot tell "unused" from "zero gradient"
        assert not model.unused.weight.grad.any() and not model.unused.bias.grad.any()
    else:
        assert model.unused.weight.grad is None and model.unused.bias.grad is None
    assert model.frozen.grad is None
    assert model.partial.grad is not None and model.used.weight.grad is not None
    # reference: Σ w_i ∇L_i by autograd
    w = res.weights
    model2 = PartlyUsed()
    model2.load_state_dict(model.state_dict())
    l0 = ((model2(x[:3], ids[:3]) - target[:3]) ** 2).mean()
    l1 = ((model2(x[3:], ids[3:]) - target[3:]) ** 2).mean()
    (w[0] * l0 + w[1] * l1).backward()
    assert torch.allclose(model.used.bias.grad, 1 + model2.used.bias.grad, atol=1e-6)
    assert torch.allclose(model.partial.grad, model2.partial.grad, atol=1e-6)


@pytest.mark.parametrize("mode", ["split", "vmap", "retain_graph", "gramian"])
def test_clipping_to_max_grad_norm(mode):
    g, res = one_step("unet", "nash", mode, max_grad_norm=1e-3)
    assert float(res.grad_norm) > 1e-3  # reported before clipping
    assert float(g.norm()) == pytest.approx(1e-3, rel=1e-4)


def test_nash_amortisation_through_the_engine():
    model = tiny_unet()
    batch, closure_for = make_problem("unet")
    bal = make_balancer("nash", K, update_every=2)
    engine = ClusterGradientEngine(model, bal, mode="split")
    modes = []
    for _ in range(3):
        model.zero_grad()
        modes.append(engine.step(closure_for(model), batch).mode)
    assert modes == ["split", "loss", "split"]
    # the reuse step uses Σ α_i L_i / k with the last α
    model.zero_grad()
    res = engine.step(closure_for(model), batch)
    expected = bal.alpha.float() / K * torch.tensor([1.0, 0.0, 1.0, 1.0])
    assert res.mode == "loss" and torch.allclose(res.weights, expected)


def test_famo_updates_through_after_optimizer_step():
    model = tiny_unet()
    batch, closure_for = make_problem("unet", counts=(2, 2, 2, 2))
    bal = make_balancer("famo", K)
    engine = ClusterGradientEngine(model, bal)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    closure = closure_for(model)
    for _ in range(2):
        opt.zero_grad()
        engine.step(closure, batch)
        opt.step()
        engine.after_optimizer_step(closure, batch)
    assert not torch.equal(bal.logits, torch.zeros(K))
    with pytest.raises(ValueError, match="after_optimizer_step"):
        engine.after_optimizer_step()


def sgd_params_after(kind, method, scaler=None, autocast_dtype=None, mode="split"):
    model = MODELS[kind][0]()
    batch, closure_for = make_problem(kind)
    bal = make_balancer(method, K)
    engine = ClusterGradientEngine(model, bal, mode=mode, scaler=scaler)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    res = engine.step(closure_for(model, autocast_dtype), batch)
    grads = flat_grad(model)
    if scaler is not None:
        scaler.step(opt)
        scaler.update()
    else:
        opt.step()
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]), grads, res, bal


@pytest.mark.parametrize("mode", ["split", "vmap", "gramian"])
def test_grad_scaler_unscales_before_geometry_and_leaves_scaled_grads(mode):
    p_ref, g_ref, r_ref, _ = sgd_params_after("unet", "pcgrad", mode=mode)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    p, g, r, _ = sgd_params_after("unet", "pcgrad", scaler=scaler, mode=mode)
    assert rel(g / 2.0**12, g_ref) < 1e-5  # .grad in the scaler's convention
    assert torch.allclose(r.weights, r_ref.weights, rtol=1e-5)  # solver saw unscaled gradients
    assert rel(p, p_ref) < 1e-6 and not r.skipped


def test_overflow_is_skipped_by_the_scaler_without_touching_the_balancer():
    scaler = torch.amp.GradScaler("cpu", init_scale=3e38)
    model = tiny_unet()
    before = [p.detach().clone() for p in model.parameters()]
    batch, closure_for = make_problem("unet")
    bal = make_balancer("nash", K)
    engine = ClusterGradientEngine(model, bal, scaler=scaler)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    res = engine.step(closure_for(model), batch)
    assert res.skipped and int(bal.step) == 0  # Nash recomputes at the next step
    scaler.step(opt)
    scaler.update()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert scaler.get_scale() < 3e38
    # without a scaler, non-finite gradients are an error, not a silent NaN update
    model2 = tiny_unet()
    nan_closure = lambda i: closure_for(model2)(i) * float("nan")  # noqa: E731
    with pytest.raises(FloatingPointError, match="not finite"):
        ClusterGradientEngine(model2, make_balancer("pcgrad", K)).step(nan_closure, batch)


@pytest.mark.parametrize(
    ("dtype", "mode"),
    [
        (torch.bfloat16, "split"),
        (torch.float16, "split"),
        (torch.bfloat16, "vmap"),
        (torch.bfloat16, "gramian"),
    ],
)
def test_mixed_precision_autocast_is_close_to_fp32(dtype, mode):
    _, g32, r32, _ = sgd_params_after("dit", "imtlg", mode=mode)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8) if dtype == torch.float16 else None
    _, g, r, _ = sgd_params_after("dit", "imtlg", scaler=scaler, autocast_dtype=dtype, mode=mode)
    if scaler is not None:
        g = g / 2.0**8
    assert rel(g, g32) < 0.05
    assert torch.allclose(r.weights, r32.weights, rtol=0.05)


def test_bad_closures_and_batches_give_clear_errors():
    model = tiny_unet()
    batch, closure_for = make_problem("unet")
    engine = ClusterGradientEngine(model, make_balancer("pcgrad", K))
    with pytest.raises(ValueError, match="one loss per index"):
        engine.step(lambda i: closure_for(model)(i).sum(), batch)
    with pytest.raises(ValueError, match="do not require grad"):
        engine.step(lambda i: closure_for(model)(i).detach(), batch)
    wrong = TimestepBatch(
        batch.timesteps, batch.cluster_ids % 2, torch.bincount(batch.cluster_ids % 2), 2
    )
    with pytest.raises(ValueError, match="2 clusters but the balancer was built for 4"):
        engine.step(closure_for(model), wrong)
    with pytest.raises(ValueError, match="unknown engine mode"):
        ClusterGradientEngine(model, make_balancer("pcgrad", K), mode="fast")
    res = engine.step(closure_for(model), batch, record=False)
    assert res.record is None
    assert set(res.to_dict()) >= {"loss", "cluster_losses", "weights", "grad_norm", "balancer"}
