"""The training loop: run directory, bit-exact resume, refusals, NaN handling, SIGTERM."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from antdiff.clustering import TaskClusters
from antdiff.objective import DiffusionObjective
from antdiff.training.checkpoint import CheckpointManager, load_checkpoint
from antdiff.training.config import Config, ConfigError, load_config
from antdiff.training.monitor import MetricsLog, WindowStats
from antdiff.training.trainer import TrainingDiverged, train

TINY = [
    "model.preset=unet-tiny",
    "data.resolution=8",
    "optim.batch_size=10",
    "optim.lr=1e-3",
    "train.log_every=1",
    "train.ckpt_every=2",
    "train.keep_last=2",
    "train.progress=false",
    "train.tensorboard=false",
    "train.sample_n=4",
    "train.device=cpu",
    "sample.sampler=ddim",
    "sample.steps=2",
    "ema.decay=0.9",
]


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny models run several times faster on one thread than on two contended ones.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny(run_dir: Path, *extra: str) -> Config:
    return load_config(None, [f"run.dir={run_dir}", *TINY, *extra])


def state_of(run_dir: Path) -> dict:
    return load_checkpoint(CheckpointManager(run_dir / "checkpoints").latest())


def assert_same_tensors(a, b, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same_tensors(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.mark.parametrize(
    "extra",
    [
        # ANT-UW, class-conditional with CFG label dropout and random flips
        [
            "ant.enabled=true",
            "ant.balancer=uw",
            "data.class_conditional=true",
            "data.random_flip=true",
        ],
        # PCGrad (seeded task order) through the split engine, warm-up and cosine LR
        [
            "ant.enabled=true",
            "ant.balancer=pcgrad",
            "ant.sampling=uniform",
            "optim.warmup_steps=2",
            "optim.schedule=cosine",
        ],
    ],
    ids=["uw-classcond", "pcgrad"],
)
def test_resume_is_bit_exact(tmp_path: Path, extra: list[str]) -> None:
    full = train(tiny(tmp_path / "full", "train.steps=5", *extra), log=None)
    assert full.step == 5 and not full.interrupted
    train(tiny(tmp_path / "split", "train.steps=3", *extra), log=None)
    resumed = train(tiny(tmp_path / "split", "train.steps=5", *extra), resume="auto", log=None)
    assert resumed.step == 5
    a, b = state_of(tmp_path / "full"), state_of(tmp_path / "split")
    for key in ("model", "ema", "optimizer", "balancer", "data"):
        assert_same_tensors(a[key], b[key], key)
    assert_same_tensors(a["rng"][0]["generators"], b["rng"][0]["generators"], "generators")
    # the metrics file of the resumed run reads as one run: same steps, same losses
    la, lb = (
        MetricsLog.read(tmp_path / "full" / "metrics.jsonl"),
        MetricsLog.read(tmp_path / "split" / "metrics.jsonl"),
    )
    assert [r["step"] for r in lb] == [1, 2, 3, 4, 5]
    assert [r["loss"] for r in la] == [r["loss"] for r in lb]
    assert [r["cluster_losses"] for r in la] == [r["cluster_losses"] for r in lb]


def test_run_directory_layout_and_metrics(tmp_path: Path) -> None:
    run = tmp_path / "run"
    res = train(
        tiny(run, "train.steps=4", "ant.k=4", "train.tensorboard=true", "train.sample_every=2"),
        log=None,
    )
    assert res.checkpoint == run / "checkpoints" / "step_000000004.pt"
    cfg = load_config(run / "config.yaml")  # the resolved config round-trips
    assert cfg.train.steps == 4 and cfg.ant.k == 4
    assert (
        TaskClusters.from_json(run / "clusters.json").intervals
        == TaskClusters.uniform(1000, 4).intervals
    )
    lines = MetricsLog.read(run / "metrics.jsonl")
    assert [r["step"] for r in lines] == [1, 2, 3, 4]
    keys = {
        "step",
        "loss",
        "cluster_losses",
        "weights",
        "counts",
        "balancer",
        "lr",
        "grad_norm",
        "it_per_s",
        "time",
    }
    for r in lines:
        assert keys <= r.keys()
        assert len(r["cluster_losses"]) == len(r["weights"]) == len(r["counts"]) == 4
        assert sum(r["counts"]) == 10  # one step of batch 10 per line
        assert r["weights"] == pytest.approx([c / 10 for c in r["counts"]])  # vanilla: n_i / B
    # keep_last=2 and the grids of steps 2 and 4
    names = sorted(p.name for p in (run / "checkpoints").glob("step_*.pt"))
    assert names == ["step_000000002.pt", "step_000000004.pt"]
    assert sorted(p.name for p in (run / "samples").iterdir()) == [
        "step_000000002.png",
        "step_000000004.png",
    ]
    assert any((run / "tb").iterdir())
    ck = state_of(run)
    assert ck["step"] == 4 and ck["balancer"] is None and ck["config"]["train"]["steps"] == 4
    # resuming a finished run is a no-op that rewrites nothing
    before = res.checkpoint.read_bytes()
    again = train(tiny(run, "train.steps=4", "ant.k=4"), resume="auto", log=None)
    assert again.step == 4 and res.checkpoint.read_bytes() == before


@pytest.mark.parametrize(
    "ant",
    [[], ["ant.enabled=true", "ant.balancer=uw"],
     ["ant.enabled=true", "ant.balancer=pcgrad", "ant.engine=vmap"]],
    ids=["vanilla", "uw", "pcgrad-vmap"],
)  # fmt: skip
def test_bin_losses_are_fixed_bins_of_t_whatever_the_clusters(tmp_path: Path, ant) -> None:
    # 5 bins of t over T = 1000 are exactly the 5 uniform timestep clusters: the same numbers
    run = tmp_path / "same"
    train(tiny(run, "train.steps=2", "ant.k=5", "train.log_loss_bins=5", *ant), log=None)
    for r in MetricsLog.read(run / "metrics.jsonl"):
        assert r["bin_counts"] == r["counts"] and sum(r["bin_counts"]) == 10
        assert r["bin_losses"] == pytest.approx(r["cluster_losses"], rel=1e-6, nan_ok=True)
    # other bins than the clusters: counts add up, the pooled mean is the loss
    run = tmp_path / "other"
    train(tiny(run, "train.steps=2", "ant.k=5", "train.log_loss_bins=8", *ant), log=None)
    for r in MetricsLog.read(run / "metrics.jsonl"):
        n, means = np.array(r["bin_counts"]), np.array(r["bin_losses"], dtype=float)
        assert len(n) == len(means) == 8 and n.sum() == 10
        assert np.isnan(means[n == 0]).all()
        assert float((n * np.nan_to_num(means)).sum() / n.sum()) == pytest.approx(r["loss"])
    # switched off: no such fields
    run = tmp_path / "off"
    train(tiny(run, "train.steps=1", "ant.k=5", "train.log_loss_bins=0", *ant), log=None)
    assert not {"bin_losses", "bin_counts"} & MetricsLog.read(run / "metrics.jsonl")[0].keys()


def test_bin_losses_are_means_over_uniform_t_under_stratified_sampling(tmp_path: Path) -> None:
    """Clusters of widths 100 and 900 get 5 samples each: t ≤ 99 is drawn 9× as often per
    timestep as the rest. One bin over [0, T) then holds the mean over t ~ U, Σ w_c·n_c·L_c /
    Σ w_c·n_c (each sample weighted by 1/(T·p(t)) = k·w_c/T), not the sample mean Σ n_c·L_c / n."""
    run = tmp_path / "run"
    ant = ["ant.enabled=true", "ant.balancer=uw", "ant.clusters=[[0,99],[100,999]]"]
    train(tiny(run, "train.steps=2", "train.log_loss_bins=1", *ant), log=None)
    rows = MetricsLog.read(run / "metrics.jsonl")
    assert rows
    for r in rows:
        n, L = np.array(r["counts"], dtype=float), np.array(r["cluster_losses"], dtype=float)
        assert r["bin_mean"] == "uniform_t" and r["bin_counts"] == [10] and list(n) == [5, 5]
        uniform_t = float((np.array([100, 900]) * n * L).sum() / (np.array([100, 900]) * n).sum())
        assert r["bin_losses"][0] == pytest.approx(uniform_t, rel=1e-5)
        assert r["bin_losses"][0] != pytest.approx(r["loss"], rel=1e-3)  # the sample mean
    # vanilla draws t ~ U: every weight is 1, its bins' sample means are already that mean
    train(tiny(tmp_path / "vanilla", "train.steps=1", "train.log_loss_bins=1"), log=None)
    (r,) = MetricsLog.read(tmp_path / "vanilla" / "metrics.jsonl")[:1]
    assert r["bin_mean"] == "uniform_t" and r["bin_losses"][0] == pytest.approx(r["loss"], rel=1e-6)


def test_window_means_divide_by_importance_weights_below_one() -> None:
    """A bin whose samples are oversampled timesteps carries weights 1/(T·p(t)) < 1, and so can
    a whole window of a small batch: its mean is Σ w·ℓ / Σ w, never Σ w·ℓ / max(Σ w, 1)."""
    w = WindowStats(1, bins=2, parts=("mse",))
    w.add([0.3], [3], bin_sums=[0.1, 0.05], bin_counts=[2, 1], bin_weights=[0.5, 0.25],
          part_sums=[[0.6]], part_counts=[3], bin_part_sums=[[0.2, 0.1]],
          bin_part_weights=[0.5, 0.25])  # fmt: skip
    out = w.summary()
    assert out["bin_losses"] == pytest.approx([0.2, 0.2])
    assert out["bin_mse"] == pytest.approx([0.4, 0.4])
    assert out["cluster_mse"] == pytest.approx([0.2]) and out["cluster_losses"] == pytest.approx(
        [0.1]
    )


def test_compile_mode_reaches_torch_compile(tmp_path: Path, monkeypatch) -> None:
    """``train.compile_mode`` is torch.compile's ``mode`` (reduce-overhead: CUDA graphs, which
    remove the launch overhead that bounds this model's step); a mode torch does not know is
    refused by the config with the list of modes."""
    seen: list[dict] = []

    def fake_compile(model, **kwargs):  # records the call, trains the eager module
        seen.append(kwargs)
        return model

    monkeypatch.setattr(torch, "compile", fake_compile)
    for mode in ("default", "reduce-overhead"):
        run = tmp_path / mode
        cfg = tiny(run, "train.steps=1", "train.compile=true", f"train.compile_mode={mode}")
        assert train(cfg, log=None).step == 1
    assert [k.get("mode") for k in seen] == ["default", "reduce-overhead"]
    train(tiny(tmp_path / "off", "train.steps=1", "train.compile_mode=reduce-overhead"), log=None)
    assert len(seen) == 2  # without train.compile the mode does nothing
    with pytest.raises(ConfigError, match="must be one of 'default', 'reduce-overhead'"):
        tiny(tmp_path / "bad", "train.compile=true", "train.compile_mode=fast")


def test_compiled_split_engine_with_changing_sub_batch_sizes_warns_to_pad(
    tmp_path: Path, monkeypatch
) -> None:
    """A compiled model under the split engine recompiles for every sub-batch size: the trainer
    says so, and names ant.pad_split, when the sizes can change (batch 10 over k = 4, or t ~ U) —
    not when padded, not when B/k is whole under stratified sampling, not for loss balancers."""
    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: model)
    pcgrad = ["ant.enabled=true", "ant.balancer=pcgrad", "ant.engine=split", "train.compile=true"]
    cases = {
        "uneven": ([*pcgrad, "ant.k=4"], True),
        "uniform_t": ([*pcgrad, "ant.k=5", "ant.sampling=uniform"], True),
        "padded": ([*pcgrad, "ant.k=4", "ant.pad_split=true"], False),
        "whole": ([*pcgrad, "ant.k=5"], False),  # 10 over 5 stratified: always 2
        "uw": (["ant.enabled=true", "ant.balancer=uw", "ant.k=4", "train.compile=true"], False),
    }
    for name, (extra, warns) in cases.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            train(tiny(tmp_path / name, "train.steps=1", *extra), log=None)
        said = [w for w in caught if "ant.pad_split=true" in str(w.message)]
        assert bool(said) == warns, (name, [str(w.message) for w in caught])


@pytest.mark.parametrize("loss", [[], ["diffusion.learned_variance=true"]], ids=["eps", "hybrid"])
def test_pad_split_gives_the_split_engine_one_width_and_the_same_training(
    tmp_path: Path, monkeypatch, loss: list[str]
) -> None:
    """``ant.pad_split``: batch 10 over k = 4 stratified clusters is 2 or 3 samples a cluster;
    padded, every model call of the split engine sees 3 (the step's largest), and training
    follows the unpadded run to float rounding, with ε-MSE and with the hybrid learned-σ loss
    (whose L_vlb term must leave the padding copies out too). Refused with an engine that is
    not split."""
    from antdiff.mtl.engine import ClusterGradientEngine

    widths: list[int] = []
    call = ClusterGradientEngine._call

    def spy(compute_losses, index, need_grad=True):
        widths.append(index.numel())
        return call(compute_losses, index, need_grad)

    monkeypatch.setattr(ClusterGradientEngine, "_call", staticmethod(spy))
    ant = ["ant.enabled=true", "ant.balancer=pcgrad", "ant.engine=split", "ant.k=4", *loss]
    states = {}
    for pad in ("false", "true"):
        widths.clear()
        run = tmp_path / pad
        train(tiny(run, "train.steps=2", *ant, f"ant.pad_split={pad}"), log=None)
        states[pad] = state_of(run)["model"]
        assert len(widths) == 8  # two steps of four clusters
        assert set(widths) == ({3} if pad == "true" else {2, 3}), widths
    for name, value in states["false"].items():
        torch.testing.assert_close(states["true"][name], value, rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="ant.pad_split.*ant.engine is 'vmap'"):
        tiny(tmp_path / "bad", *ant[:2], "ant.engine=vmap", "ant.pad_split=true")


def test_refuses_to_clobber_or_resume_an_incompatible_run(tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(tiny(run, "train.steps=2"), log=None)
    ckpt = run / "checkpoints" / "step_000000002.pt"
    before = ckpt.read_bytes()
    with pytest.raises(ValueError, match="already contains checkpoints.*--resume auto"):
        train(tiny(run, "train.steps=4"), log=None)
    with pytest.raises(ValueError, match=r"optim\.lr: checkpoint 0\.001, now 0\.002"):
        train(tiny(run, "train.steps=4", "optim.lr=2e-3"), resume="auto", log=None)
    with pytest.raises(ValueError, match=r"ant\.enabled"):
        train(tiny(run, "train.steps=4", "ant.enabled=true"), resume=ckpt, log=None)
    assert ckpt.read_bytes() == before
    assert [p.name for p in CheckpointManager(run / "checkpoints").list()] == [ckpt.name]


@pytest.mark.parametrize("ant", [False, True], ids=["vanilla", "ant-uw"])
def test_nan_loss_names_step_and_cluster_and_keeps_last_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ant: bool
) -> None:
    original = DiffusionObjective.loss_terms  # what the trainer's loss closure calls
    calls = {"n": 0}

    def poisoned(self, model_output, x0, x_t, t, noise):  # type: ignore[no-untyped-def]
        terms = original(self, model_output, x0, x_t, t, noise)
        calls["n"] += 1
        if calls["n"] >= 3:  # from the third step on, cluster 2 (t in [400, 599]) blows up
            bad = (t >= 400) & (t <= 599)
            loss = torch.where(bad, torch.full_like(terms.loss, float("nan")), terms.loss)
            terms = dataclasses.replace(terms, loss=loss)
        return terms

    monkeypatch.setattr(DiffusionObjective, "loss_terms", poisoned)
    extra = ["ant.enabled=true", "ant.balancer=uw"] if ant else []
    run = tmp_path / "run"
    with pytest.raises(TrainingDiverged) as e:
        train(tiny(run, "train.steps=6", "ant.sampling=stratified", *extra), log=None)
    msg = str(e.value)
    assert "step 3" in msg and "cluster 2 (t in [400, 599])" in msg and "nan" in msg
    assert "step_000000002.pt" in msg and "untouched" in msg
    m = CheckpointManager(run / "checkpoints")
    assert [p.name for p in m.list()] == ["step_000000002.pt"] and m.latest() == m.path_for(2)
    assert max(r["step"] for r in MetricsLog.read(run / "metrics.jsonl")) == 2


@pytest.mark.parametrize("workers", [0, 2])
def test_sigterm_finishes_the_step_checkpoints_and_exits_zero(tmp_path: Path, workers: int) -> None:
    """SIGTERM to the whole process group (as ``scancel``, ``timeout`` and Ctrl-C send it), so
    with workers > 0 the DataLoader workers get it too and must not break the checkpoint."""
    run = tmp_path / "run"
    args = [f"run.dir={run}", *TINY, "train.steps=100000", "train.ckpt_every=100000"]
    args.append(f"data.num_workers={workers}")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "antdiff.cli", "train", "--set", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (
        metrics.exists() and metrics.read_text().count("\n") >= 2
    ):
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "interrupted" in out
    latest = CheckpointManager(run / "checkpoints").latest()
    assert latest is not None
    ck = load_checkpoint(latest)
    logged = max(r["step"] for r in MetricsLog.read(metrics))
    assert ck["step"] == logged >= 2  # the step in flight was finished and checkpointed
    assert json.loads(json.dumps(ck["config"]))["train"]["steps"] == 100000


class _TinyFeatures(torch.nn.Module):
    """A stand-in for the FID Inception (same TorchScript interface: 299x299 RGB -> features)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 6, kernel_size=23, stride=23)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.conv(x)).mean(dim=(2, 3))


def _tiny_evaluation(tmp_path: Path) -> list[str]:
    """Config overrides that evaluate with a tiny stand-in FID network on digits statistics."""
    from antdiff.data import load_images_uint8
    from antdiff.evaluation import InceptionFeatures, compute_reference_stats

    torch.manual_seed(0)
    net_path = tmp_path / "net.pt"
    torch.jit.save(torch.jit.script(_TinyFeatures().eval()), str(net_path))
    net = InceptionFeatures.from_path(net_path, device="cpu")
    real = load_images_uint8("digits", 40, resolution=8, channels=3)
    compute_reference_stats(real, net, dataset="digits").save(tmp_path / "ref.npz")
    return [
        "train.eval_n=12",
        f"train.eval_ref={tmp_path / 'ref.npz'}",
        f"train.eval_inception={net_path}",
        "train.eval_metrics=[fid, kid]",
    ]


@pytest.mark.filterwarnings("ignore:`torch.jit.:DeprecationWarning")
def test_evaluation_hook_logs_to_metrics(tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = tiny(run, "train.steps=2", "train.eval_every=1", *_tiny_evaluation(tmp_path))
    train(cfg, log=None)
    evals = [r for r in MetricsLog.read(run / "metrics.jsonl") if "eval" in r]
    assert [r["step"] for r in evals] == [1, 2]
    for r in evals:
        assert r["eval"]["n"] == 12 and r["eval"]["fid"] > 0 and "kid" in r["eval"]
        assert r["eval_seconds"]["sampling"] > 0 and r["eval_seconds"]["metrics"] > 0
    from antdiff.analysis.logs import read_training_log

    steps, fid = read_training_log(run).eval_series("fid")
    assert steps.tolist() == [1, 2] and len(fid) == 2


@pytest.mark.filterwarnings("ignore:`torch.jit.:DeprecationWarning")
@pytest.mark.parametrize("steps", [4, 2])  # a stop during a middle and during the final evaluation
def test_stop_during_evaluation_checkpoints_and_evaluates_first_on_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, steps: int
) -> None:
    """SIGTERM while the evaluation samples: the trainer abandons the evaluation at once, writes
    the checkpoint (marked as owing the evaluation) and exits; the resume evaluates first, and
    the run ends as if it had never stopped."""
    import antdiff.training.trainer as trainer_module
    from antdiff.analysis.ntg_pipeline import run_finished
    from antdiff.training.checkpoint import pending_evaluation

    ev = [*_tiny_evaluation(tmp_path), "train.eval_every=2", "sample.batch_size=4"]
    reference = train(tiny(tmp_path / "ref_run", f"train.steps={steps}", *ev), log=None)
    assert not reference.interrupted and reference.step == steps
    real_sample_images = trainer_module.sample_images
    fired = []

    def sample_images(model_fn, objective, n, **kw):  # type: ignore[no-untyped-def]
        if n == 12 and not fired:  # the first evaluation (eval_n = 12, in batches of 4)
            asked, inner = [], kw["should_stop"]

            def should_stop() -> bool:
                asked.append(1)
                if len(asked) == 2:  # the signal arrives after the first batch
                    os.kill(os.getpid(), signal.SIGTERM)
                return inner()

            kw["should_stop"] = should_stop
            fired.append(1)
        return real_sample_images(model_fn, objective, n, **kw)

    monkeypatch.setattr(trainer_module, "sample_images", sample_images)
    run = tmp_path / "run"
    first = train(tiny(run, f"train.steps={steps}", *ev), log=None)
    assert first.interrupted and first.step == 2
    assert not [r for r in MetricsLog.read(run / "metrics.jsonl") if "eval" in r]
    assert pending_evaluation(first.checkpoint) == 2
    assert not run_finished(run, steps)

    second = train(tiny(run, f"train.steps={steps}", *ev), resume="auto", log=None)
    assert not second.interrupted and second.step == steps
    evals = [r for r in MetricsLog.read(run / "metrics.jsonl") if "eval" in r]
    want = [r for r in MetricsLog.read(tmp_path / "ref_run" / "metrics.jsonl") if "eval" in r]
    assert [r["step"] for r in evals] == list(range(2, steps + 1, 2))
    assert [r["eval"]["fid"] for r in evals] == [r["eval"]["fid"] for r in want]
    assert pending_evaluation(second.checkpoint) is None and run_finished(run, steps)
    assert_same_tensors(state_of(run)["model"], state_of(tmp_path / "ref_run")["model"])


@pytest.mark.parametrize(
    "ant",
    [[], ["ant.enabled=true", "ant.balancer=uw"],
     ["ant.enabled=true", "ant.balancer=pcgrad", "ant.engine=split", "ant.k=4", "ant.pad_split=true"]],
    ids=["vanilla", "uw", "pcgrad-padded-split"],
)  # fmt: skip
def test_a_hybrid_loss_logs_its_two_parts_per_cluster(tmp_path: Path, ant) -> None:
    """With learned σ the loss is ε-MSE + λ·T·L_t: each line says what every cluster's loss is
    made of, over the same samples (padding copies of the split engine counted once)."""
    run = tmp_path / "run"
    train(tiny(run, "train.steps=2", "diffusion.learned_variance=true", *ant), log=None)
    rows = MetricsLog.read(run / "metrics.jsonl")
    assert len(rows) == 2
    for r in rows:
        assert r["parts_counts"] == r["counts"] and sum(r["counts"]) == 10
        seen = [i for i, n in enumerate(r["counts"]) if n > 0]
        mse, vb = np.array(r["cluster_mse"], dtype=float), np.array(r["cluster_vb"], dtype=float)
        loss = np.array(r["cluster_losses"], dtype=float)
        np.testing.assert_allclose(mse[seen] + vb[seen], loss[seen], rtol=1e-5)
        assert (vb[seen] > 0).all() and (mse[seen] > vb[seen]).all()
        assert np.isnan(mse[[i for i in range(len(mse)) if i not in seen]]).all()
        # per fixed bin of t too, with bin_losses' weights: the parts add up to the loss
        hit = [i for i, n in enumerate(r["bin_counts"]) if n > 0]
        bmse, bvb = np.array(r["bin_mse"], dtype=float), np.array(r["bin_vb"], dtype=float)
        assert len(bmse) == len(bvb) == 10
        blosses = np.array(r["bin_losses"], dtype=float)
        np.testing.assert_allclose(bmse[hit] + bvb[hit], blosses[hit], rtol=1e-5)
        assert np.isnan(bmse[[i for i in range(10) if i not in hit]]).all()


def test_a_weighted_loss_logs_its_unweighted_mse_and_plain_eps_mse_logs_no_parts(
    tmp_path: Path,
) -> None:
    """P2 logs w(t)·MSE as the loss (w ≤ 1, ≪ 1 at the clean end) and the plain MSE beside it;
    ε-MSE without a weighting has no parts (its loss is the MSE), nor has a run with
    ``train.log_loss_parts=false``."""
    clean_first = [
        "ant.k=2",
        "ant.enabled=true",
        "ant.balancer=mean",
        "ant.clusters=[[0,99],[100,999]]",
    ]
    run = tmp_path / "p2"
    train(tiny(run, "train.steps=1", "diffusion.weighting=p2", *clean_first), log=None)
    (r,) = MetricsLog.read(run / "metrics.jsonl")
    assert "cluster_vb" not in r and r["parts_counts"] == r["counts"] == [5, 5]
    assert r["cluster_losses"][0] < 0.1 * r["cluster_mse"][0]  # 1/(1 + SNR) at t < 100
    assert r["cluster_losses"][1] < r["cluster_mse"][1]
    # the unweighted MSE per fixed bin of t, comparable with a plain ε-MSE run's bin_losses
    assert "bin_vb" not in r and len(r["bin_mse"]) == len(r["bin_losses"]) == 10
    assert r["bin_losses"][0] < 0.1 * r["bin_mse"][0]
    # one bin over [0, T): the MSE's mean over t uniform (samples weighted by k·w_c/T, as
    # bin_losses are), not the sample mean of the 5 + 5 samples of clusters 100 and 900 wide
    run = tmp_path / "p2-one-bin"
    one_bin = ["train.steps=1", "diffusion.weighting=p2", "train.log_loss_bins=1", *clean_first]
    train(tiny(run, *one_bin), log=None)
    (r,) = MetricsLog.read(run / "metrics.jsonl")
    width, mse = np.array([100, 900]), np.array(r["cluster_mse"], dtype=float)
    assert r["bin_mse"][0] == pytest.approx(float((width * mse).sum() / width.sum()), rel=1e-5)
    for name, extra in {
        "eps": [],
        "off": ["diffusion.weighting=p2", "train.log_loss_parts=false"],
    }.items():
        train(tiny(tmp_path / name, "train.steps=1", *extra), log=None)
        (r,) = MetricsLog.read(tmp_path / name / "metrics.jsonl")
        assert not {"cluster_mse", "cluster_vb", "parts_counts", "bin_mse"} & r.keys(), name


@pytest.mark.parametrize("weighting", [[], ["diffusion.weighting=p2"]], ids=["hybrid", "p2-hybrid"])
def test_the_vmap_engine_logs_the_loss_parts_the_split_engine_logs(
    tmp_path: Path, weighting: list[str]
) -> None:
    """Inside the engine's vmap pass the parts have no plain values; they come back with the
    step (``emit_sample_values``), so a PCGrad vmap run logs the parts per cluster and per bin
    that the split engine logs for the same samples and parameters (step 1: the same forward)."""
    lines = {}
    for engine in ("split", "vmap"):
        run = tmp_path / engine
        pcgrad = ["ant.enabled=true", "ant.balancer=pcgrad", f"ant.engine={engine}"]
        hybrid = ["train.steps=1", "diffusion.learned_variance=true", *weighting]
        train(tiny(run, *hybrid, *pcgrad), log=None)
        (lines[engine],) = MetricsLog.read(run / "metrics.jsonl")
    split, vmap = lines["split"], lines["vmap"]
    assert vmap["parts_counts"] == split["parts_counts"] == vmap["counts"]
    assert sum(vmap["counts"]) == 10
    for key in ("cluster_mse", "cluster_vb", "bin_mse", "bin_vb", "cluster_losses"):
        a, b = np.array(vmap[key], dtype=float), np.array(split[key], dtype=float)
        np.testing.assert_allclose(a, b, rtol=1e-4, err_msg=key)
    parts = np.array(vmap["cluster_mse"], dtype=float) + np.array(vmap["cluster_vb"], dtype=float)
    logged = np.array(vmap["cluster_losses"], dtype=float)
    if not weighting:  # unweighted hybrid: the parts add up to the logged loss
        np.testing.assert_allclose(parts, logged, rtol=1e-5)
    else:  # P2 weights the MSE term: the logged loss is below its unweighted parts' sum
        assert (logged < parts).all()
