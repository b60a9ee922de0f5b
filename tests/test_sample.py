"""sample_images with any model callable (DDPM/DDIM, learned variance, CFG) and `antdiff sample`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from antdiff.cli import main
from antdiff.objective import DiffusionObjective
from antdiff.schedule import NoiseSchedule
from antdiff.training.config import load_config
from antdiff.training.inference import load_for_inference
from antdiff.training.sampling import make_sampling_scheduler, sample_images
from antdiff.training.trainer import train

SCHED = NoiseSchedule.from_name("linear", 100)


def zero_eps(channels: int):
    calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []

    def fn(x, t, y):
        calls.append((x.clone(), t.clone(), None if y is None else y.clone()))
        return torch.zeros(x.shape[0], channels, *x.shape[2:])

    return fn, calls


@pytest.mark.parametrize(
    ("sampler", "learned"), [("ddpm", False), ("ddpm", True), ("ddim", False), ("ddim", True)]
)
def test_any_callable_deterministic_and_shaped(sampler: str, learned: bool) -> None:
    obj = DiffusionObjective(SCHED, learned_variance=learned)
    fn, calls = zero_eps(obj.model_channels(3))
    kw = {"image_shape": (3, 4, 4), "sampler": sampler, "steps": 5, "batch_size": 3}
    a = sample_images(fn, obj, 5, seed=7, **kw)
    b = sample_images(fn, obj, 5, seed=7, **kw)
    c = sample_images(fn, obj, 5, seed=8, **kw)
    assert a.shape == (5, 4, 4, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    # the respaced timesteps: linspace (DDPM, iDDPM respacing) or trailing (DDIM), from T-1
    ts = [int(t[0]) for _, t, _ in calls[:5]]
    assert ts[0] == 99 and len(set(ts)) == 5 and ts == sorted(ts, reverse=True)
    assert ts[-1] == (0 if sampler == "ddpm" else 19)
    assert all(t.dtype == torch.long and y is None for _, t, y in calls)


def test_ddim_eta0_with_zero_eps_returns_the_scaled_initial_noise() -> None:
    # With ε̂ = 0 every DDIM step (η = 0) keeps x̂0 = clip(x_T / √ᾱ_{T-1}, -1, 1) and the last
    # step lands on it: the result is the initial noise, rescaled, clipped and quantised.
    obj = DiffusionObjective(SCHED)
    fn, _ = zero_eps(1)
    img = sample_images(fn, obj, 2, image_shape=(1, 3, 3), sampler="ddim", steps=4, seed=0)
    noise = torch.randn((2, 1, 3, 3), generator=torch.Generator().manual_seed(0)).double()
    x0 = (noise / np.sqrt(SCHED.alphas_cumprod[-1])).clamp(-1, 1)
    expect = ((x0 + 1) * 127.5).round().permute(0, 2, 3, 1).numpy().astype(np.uint8)
    assert np.abs(img.astype(int) - expect.astype(int)).max() <= 1  # float32 vs float64 rounding


def test_classifier_free_guidance_combines_cond_and_null_passes() -> None:
    obj = DiffusionObjective(SCHED, learned_variance=True)
    seen = []

    def fn(x, t, y):
        seen.append(y.clone())
        # ε depends on the label; the variance channels mark which pass they came from
        eps = (y.float() / 10).view(-1, 1, 1, 1).expand_as(x)
        var = (y == 3).float().view(-1, 1, 1, 1).expand_as(x) * 2 - 1
        return torch.cat([eps, var], 1)

    labels = torch.tensor([1, 2])
    guided = sample_images(
        fn,
        obj,
        2,
        image_shape=(1, 2, 2),
        steps=3,
        class_labels=labels,
        guidance=2.0,
        null_class_label=3,
        seed=1,
    )
    assert torch.equal(seen[0], torch.tensor([1, 2, 3, 3]))  # conditional half, then null half
    seen.clear()

    def manual(x, t, y):  # what guidance should produce: ε_null + 2 (ε_y − ε_null), var of y
        e_y, e_n = y.float() / 10, torch.full_like(y.float(), 0.3)
        eps = (e_n + 2 * (e_y - e_n)).view(-1, 1, 1, 1).expand_as(x)
        return torch.cat([eps, -torch.ones_like(x)], 1)

    expect = sample_images(
        manual, obj, 2, image_shape=(1, 2, 2), steps=3, class_labels=labels, seed=1
    )
    assert np.array_equal(guided, expect)
    with pytest.raises(ValueError, match="null_class_label"):
        sample_images(fn, obj, 2, image_shape=(1, 2, 2), steps=3, class_labels=labels, guidance=2.0)
    with pytest.raises(ValueError, match="3 class labels for n=2"):
        sample_images(fn, obj, 2, image_shape=(1, 2, 2), class_labels=[1, 2, 3])
    with pytest.raises(ValueError, match="steps must be in"):
        make_sampling_scheduler(obj, "ddim", 101)
    with pytest.raises(ValueError, match="unknown sampler"):
        make_sampling_scheduler(obj, "euler", 10)


@pytest.fixture(scope="module")
def classcond_run(tmp_path_factory: pytest.TempPathFactory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("sample") / "run"
    cfg = load_config(
        None,
        [
            f"run.dir={run}",
            "model.preset=unet-tiny",
            "data.resolution=8",
            "data.class_conditional=true",
            "optim.batch_size=10",
            "train.steps=2",
            "train.progress=false",
            "train.tensorboard=false",
            "train.sample_n=4",
            "train.device=cpu",
            "sample.steps=2",
            "sample.guidance=1.5",
            "ema.decay=0.5",
        ],
    )
    train(cfg, log=None)
    yield run
    torch.set_num_threads(threads)


def test_sample_cli_writes_npz_with_labels_and_grid(
    classcond_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, grid = tmp_path / "s.npz", tmp_path / "g.png"
    rc = main(
        [
            "sample",
            str(classcond_run),
            "--n",
            "12",
            "--steps",
            "3",
            "--sampler",
            "ddim",
            "--batch",
            "5",
            "--out",
            str(out),
            "--grid",
            str(grid),
        ]
    )
    assert rc == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["n"] == 12 and info["step"] == 2 and info["ema"] is True
    d = np.load(out)
    assert d["samples"].shape == (12, 8, 8, 1) and d["samples"].dtype == np.uint8
    assert d["labels"].tolist() == [i % 10 for i in range(12)]
    assert grid.is_file()
    # the same as sampling through the library with the same settings
    bundle = load_for_inference(classcond_run)
    again = bundle.sample(12, sampler="ddim", steps=3, batch_size=5)
    assert np.array_equal(again, d["samples"])
    # raw weights differ from the EMA (decay 0.5 after 2 steps)
    rc = main(
        [
            "sample",
            str(classcond_run),
            "--n",
            "12",
            "--steps",
            "3",
            "--sampler",
            "ddim",
            "--batch",
            "5",
            "--out",
            str(tmp_path / "raw.npz"),
            "--no-ema",
            "--class-label",
            "4",
        ]
    )
    assert rc == 0
    raw = np.load(tmp_path / "raw.npz")
    assert set(raw["labels"].tolist()) == {4}
    # earlier samples are never silently replaced; --force replaces them
    again_argv = ["sample", str(classcond_run), "--n", "3", "--steps", "2", "--out", str(out)]
    capsys.readouterr()
    assert main(again_argv) == 2
    assert "already holds samples" in capsys.readouterr().err
    assert np.load(out)["samples"].shape[0] == 12
    assert main([*again_argv, "--force"]) == 0
    assert np.load(out)["samples"].shape[0] == 3


def test_sample_cli_errors_are_one_line(
    classcond_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["sample", str(tmp_path / "nope"), "--out", str(tmp_path / "x.npz")]) == 2
    assert "no such run directory" in capsys.readouterr().err
    assert main(["sample", str(classcond_run), "--out", str(tmp_path / "x.png")]) == 2
    assert "must end in .npz" in capsys.readouterr().err
    assert (
        main(
            [
                "sample",
                str(classcond_run),
                "--class-label",
                "10",
                "--n",
                "2",
                "--out",
                str(tmp_path / "x.npz"),
            ]
        )
        == 2
    )
    assert "--class-label must be in 0" in capsys.readouterr().err


class _Affine(torch.nn.Module):
    """A denoiser whose output depends on x and t (so a trajectory depends on every step)."""

    def __init__(self, a: float, b: float, channels: int) -> None:
        super().__init__()
        self.a, self.b, self.channels = a, b, channels

    def forward(self, x, t, y=None):
        out = self.a * x + self.b * torch.sin(t.float() / 7.0)[:, None, None, None]
        if y is not None:
            out = out + 0.05 * y.float()[:, None, None, None]
        return out[:, :1].expand(-1, self.channels, -1, -1).contiguous() + 0 * out.sum()


@pytest.mark.parametrize(
    ("sampler", "learned", "include_base"),
    [("ddpm", False, True), ("ddpm", True, False), ("ddim", False, True), ("ddim", False, False)],
)
def test_branching_sampler_equals_one_run_per_model(
    sampler: str, learned: bool, include_base: bool
) -> None:
    """The NTG hybrids share the joint trajectory above their interval: exactly the images of
    sampling each hybrid on its own (same noise, DDPM step noise too), in several batches."""
    from antdiff.analysis import TimestepSwitchingDenoiser
    from antdiff.training.sampling import sample_images_branching

    obj = DiffusionObjective(SCHED, learned_variance=learned)
    ch = obj.model_channels(3)
    joint = _Affine(0.3, 0.5, ch)
    intervals = [(0, 19), (20, 59), (60, 99)]  # clean, middle, noisiest (T = 100)
    hybrids = [
        TimestepSwitchingDenoiser(joint, {iv: _Affine(-0.2 * (i + 1), 0.1, ch)}, num_timesteps=100)
        for i, iv in enumerate(intervals)
    ]
    kw = {"image_shape": (3, 4, 4), "sampler": sampler, "steps": 10, "batch_size": 3, "seed": 5}
    separate = [sample_images(h, obj, 7, **kw) for h in hybrids]  # 7 = 3 + 3 + 1: three batches
    shared = sample_images_branching(
        joint, [(iv[1], h) for iv, h in zip(intervals, hybrids)], obj, 7,
        include_base=include_base, **kw,
    )  # fmt: skip
    if include_base:
        base, *shared = shared
        assert np.array_equal(base, sample_images(joint, obj, 7, **kw))
    assert len(shared) == 3
    for got, want in zip(shared, separate):
        assert np.array_equal(got, want)
    # the hybrids differ from each other and from the joint model: the test can fail
    assert not np.array_equal(separate[0], separate[1])
    assert not np.array_equal(separate[0], sample_images(joint, obj, 7, **kw))


def test_branching_sampler_computes_the_shared_steps_once() -> None:
    from antdiff.training.sampling import sample_images_branching

    obj = DiffusionObjective(SCHED)
    calls: list[tuple[str, int]] = []

    def counted(name: str, a: float):
        def fn(x, t, y):
            calls.append((name, int(t[0])))
            return a * x

        return fn

    base = counted("joint", 0.1)
    kw = {"image_shape": (3, 2, 2), "sampler": "ddim", "steps": 10, "batch_size": 4}
    # DDIM trailing with 10 steps visits 99, 89, ..., 9; branches leave at t <= 49 and t <= 9
    sample_images_branching(
        base, [(49, counted("a", 0.2)), (9, counted("b", 0.3))], obj, 4, include_base=False, **kw
    )
    assert [t for n, t in calls if n == "joint"] == [99, 89, 79, 69, 59, 49, 39, 29, 19]
    assert [t for n, t in calls if n == "a"] == [49, 39, 29, 19, 9]
    assert [t for n, t in calls if n == "b"] == [9]
    calls.clear()
    sample_images_branching(base, [(49, counted("a", 0.2))], obj, 4, include_base=True, **kw)
    assert len([1 for n, _ in calls if n == "joint"]) == 10  # the base to the end: its images
    assert len([1 for n, _ in calls if n == "a"]) == 5
