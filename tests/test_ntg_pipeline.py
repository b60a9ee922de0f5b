"""NTG orchestration: intervals, specialist configs and training launches, resumable sharded
measurement (with the real DDIM sampler and dummy models; FID replaced by a known function)."""

from __future__ import annotations

import json
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from antdiff import NoiseSchedule, TaskClusters
from antdiff.analysis.ntg import NTGTable
from antdiff.analysis.ntg_pipeline import (
    NTGSetup,
    find_specialists,
    measure_ntg,
    parse_intervals,
    specialist_config,
    train_specialists,
)

T = 1000
JOINT_CFG = {
    "run": {"dir": "runs/joint", "seed": 3},
    "model": {"preset": "unet-tiny"},
    "diffusion": {"schedule": "linear", "num_timesteps": T, "timestep_range": None},
    "ant": {"enabled": True, "balancer": "uw", "k": 5},
    "optim": {"batch_size": 64},
    "train": {"steps": 40, "eval_every": 1000},
}


def _run(root: Path, cfg: dict) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.yaml").write_text(yaml.safe_dump(cfg))
    return root


def test_parse_intervals(tmp_path):
    assert parse_intervals("uniform:5", T) == list(TaskClusters.uniform(T, 5).intervals)
    assert parse_intervals("800-999, 0-199", T) == [(0, 199), (800, 999)]
    cl = TaskClusters.from_boundaries([0, 10, 300], T)
    (tmp_path / "clusters.json").write_text(cl.to_json())
    assert parse_intervals(str(tmp_path / "clusters.json"), T) == list(cl.intervals)
    assert parse_intervals(str(tmp_path), T) == list(cl.intervals)  # a run directory
    with pytest.raises(ValueError, match="overlap"):
        parse_intervals("0-10,10-20", T)
    with pytest.raises(ValueError, match="inside"):
        parse_intervals("0-1000", T)
    with pytest.raises(ValueError, match="uniform:K"):
        parse_intervals("uniform:five", T)
    with pytest.raises(ValueError, match="first-last"):
        parse_intervals("zero-ten", T)


def test_specialist_config_copies_the_joint_budget():
    cfg = specialist_config(JOINT_CFG, (200, 399), "out/s", seed=7)
    assert cfg["diffusion"]["timestep_range"] == [200, 399]
    assert cfg["run"] == {"dir": "out/s", "seed": 7}
    assert cfg["ant"]["enabled"] is False and cfg["train"]["eval_every"] == 0
    assert cfg["train"]["steps"] == 40 and cfg["optim"] == JOINT_CFG["optim"]
    assert cfg["model"] == JOINT_CFG["model"]
    assert JOINT_CFG["diffusion"]["timestep_range"] is None  # the joint config is not mutated
    assert specialist_config(JOINT_CFG, (0, 9), "x", steps=5)["train"]["steps"] == 5
    restricted = {**JOINT_CFG, "diffusion": {**JOINT_CFG["diffusion"], "timestep_range": [0, 9]}}
    with pytest.raises(ValueError, match="trained on every t"):
        specialist_config(restricted, (0, 9), "x")
    with pytest.raises(ValueError, match="inside"):
        specialist_config(JOINT_CFG, (0, T), "x")


FAKE_TRAINER = textwrap.dedent(
    """
    import sys, yaml, pathlib
    cfg = yaml.safe_load(open(sys.argv[1]))
    run = pathlib.Path(cfg["run"]["dir"])
    if cfg["diffusion"]["timestep_range"][0] == 666:
        print("boom: diverged"); sys.exit(3)
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    steps = cfg["train"]["steps"]
    (run / "checkpoints" / "latest.txt").write_text(f"step_{steps:09d}.pt\\n")
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    """
)


def test_train_specialists_launches_skips_finished_and_reports_failures(tmp_path):
    joint = _run(tmp_path / "joint", JOINT_CFG)
    script = tmp_path / "fake_trainer.py"
    script.write_text(FAKE_TRAINER)
    launched: list[tuple[str, str]] = []

    def launcher(cfg_path: Path, device: str, log: Path) -> Any:
        import subprocess

        launched.append((cfg_path.parent.name, device))
        return subprocess.Popen(
            [sys.executable, str(script), str(cfg_path)],
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
        )

    ivs = [(0, 499), (500, 999)]
    out = train_specialists(
        joint, ivs, tmp_path / "spec", seeds=[0, 1], devices=["cuda:0", "cuda:1"], launcher=launcher
    )
    assert sorted(out) == ivs and [s for s, _ in out[(0, 499)]] == [0, 1]
    assert len(launched) == 4 and {d for _, d in launched} == {"cuda:0", "cuda:1"}
    run = out[(500, 999)][1][1]
    assert yaml.safe_load((run / "config.yaml").read_text())["diffusion"]["timestep_range"] == [
        500,
        999,
    ]
    # Finished runs are not trained again.
    launched.clear()
    train_specialists(joint, ivs, tmp_path / "spec", seeds=[0, 1], launcher=launcher)
    assert launched == []
    # Existing runs are matched back to their intervals.
    found = find_specialists([r for v in out.values() for _, r in v], ivs)
    assert [s for s, _ in found[(500, 999)]] == [0, 1]
    with pytest.raises(ValueError, match="not a specialist"):
        find_specialists([joint], ivs)
    with pytest.raises(RuntimeError, match="boom: diverged"):
        train_specialists(joint, [(666, 700)], tmp_path / "spec", launcher=launcher)


# ----------------------------------------------------------------------------- measurement
class Constant(nn.Module):
    """Predicts ε̂ = c·x_t; different c give visibly different samples."""

    def __init__(self, c: float) -> None:
        super().__init__()
        self.c = c
        self.in_channels, self.sample_size = 1, 4
        self.calls = 0

    def forward(self, x, t, class_labels=None):
        self.calls += 1
        return self.c * x


@dataclass
class Bundle:
    model: nn.Module
    objective: Any
    codec: Any = None
    config: dict = field(default_factory=dict)
    step: int = 0


def test_measure_ntg_is_resumable_sharded_and_pairs_seeds(tmp_path):
    from antdiff.objective import DiffusionObjective

    objective = DiffusionObjective(NoiseSchedule.from_name("linear", T))
    models = {"joint": Constant(0.0), "s0": Constant(0.9), "s1": Constant(-0.5)}
    steps = {"joint": 5000, "s0": 4900, "s1": 5100}
    loads: list[str] = []

    def load_fn(run: Path, use_ema: bool, device: str) -> Bundle:
        loads.append(Path(run).name)
        return Bundle(models[Path(run).name], objective, step=steps[Path(run).name])

    def fid_fn(images: np.ndarray) -> dict:
        return {"fid": float(images.astype(np.float64).mean()), "n_gen": len(images), "floor": 1.5}

    specialists = {(0, 499): [(0, tmp_path / "s0")], (500, 999): [(0, tmp_path / "s1")]}
    setup = NTGSetup(
        tmp_path / "joint",
        specialists,
        tmp_path / "ref.npz",
        n=4,
        sampling_seeds=[0, 1],
        sampler="ddim",
        steps=10,
        batch_size=4,
        device="cpu",
    )
    out = tmp_path / "ntg"
    from antdiff.training.sampling import sample_images

    first = measure_ntg(
        setup, out, shard=(0, 2), load_fn=load_fn, fid_fn=fid_fn, sample_fn=sample_images
    )
    assert first is None  # shard 1 has not measured yet
    n_first = sum(1 for _ in (out / "measurements_0of2.jsonl").read_text().splitlines())
    assert n_first == 3  # jobs 0, 2, 4 of 6
    table = measure_ntg(
        setup, out, shard=(1, 2), load_fn=load_fn, fid_fn=fid_fn, sample_fn=sample_images
    )
    assert isinstance(table, NTGTable) and table.intervals == [(0, 499), (500, 999)]
    assert table.n == 4 and table.floor == 1.5 and sorted(table.fid_joint) == [0, 1]
    # Same initial noise for the pair: the hybrid differs from the joint only through I.
    for row in table.rows:
        assert len(row.values) == 2 and all(v != 0 for v in row.values)
    ms = [
        json.loads(x)
        for f in sorted(out.glob("measurements*.jsonl"))
        for x in f.read_text().splitlines()
    ]
    by_key = {m["key"]: m["measurement"]["fid"] for m in ms}
    assert by_key["0-499/r0/s1"] - by_key["joint/s1"] == pytest.approx(table.rows[0].values[1])
    assert (out / "ntg.json").exists() and "NTG (FID)" in (out / "ntg.md").read_text()
    # Provenance: the card and each model's training step, per interval, reach the table.
    meta = json.loads((out / "ntg.json").read_text())["meta"]
    assert meta["cards"] == ["cpu"] and meta["joint_steps"] == [5000]
    assert meta["specialist_steps"] == {"0-499": [4900], "500-999": [5100]}
    assert meta["antdiff_version"] and meta["torch_version"]
    # Everything is measured: a rerun loads nothing and returns the same table.
    loads.clear()
    again = measure_ntg(setup, out, load_fn=load_fn, fid_fn=fid_fn, sample_fn=sample_images)
    assert loads == [] and np.allclose(again.ntg(), table.ntg())


def test_measure_ntg_refuses_an_interval_the_sampler_never_visits(tmp_path):
    from antdiff.objective import DiffusionObjective

    objective = DiffusionObjective(NoiseSchedule.from_name("linear", T))
    setup = NTGSetup(
        tmp_path / "joint",
        {(1, 3): [(0, tmp_path / "s")]},
        tmp_path / "r.npz",
        n=4,
        sampler="ddim",
        steps=10,
        device="cpu",
    )

    def load_fn(run, use_ema, device):
        return Bundle(Constant(0.0), objective)

    with pytest.raises(ValueError, match="never visits interval"):
        measure_ntg(setup, tmp_path / "o", load_fn=load_fn, fid_fn=lambda im: {"fid": 0.0})
    with pytest.raises(ValueError, match="shard"):
        measure_ntg(setup, tmp_path / "o", shard=(2, 2), load_fn=load_fn)
    _ = torch  # torch is used by the sampler under test


def test_trainer_threads_share_the_cores():
    from antdiff.analysis.ntg_pipeline import trainer_threads

    assert trainer_threads(8, cpus=64, card_share=1.0) == 8
    assert trainer_threads(3, cpus=64, card_share=1.0) == 21
    assert trainer_threads(16, cpus=4, card_share=1.0) == 1  # never zero
    assert trainer_threads(0, cpus=4, card_share=1.0) == 4
    # an instance that sees 2 of the host's 4 cards shares their half of the cores
    assert trainer_threads(6, cpus=64, card_share=0.5) == 5
    assert trainer_threads(1, cpus=64, card_share=0.25) == 16


def test_host_card_share_counts_this_process_cards_against_the_hosts():
    from antdiff.analysis.ntg_pipeline import host_card_share

    assert host_card_share("2,3", host_cards=4) == 0.5
    assert host_card_share("1", host_cards=4) == 0.25
    assert host_card_share("0,1,2,3", host_cards=4) == 1.0
    assert host_card_share(None, host_cards=4) == 1.0  # unset: every card
    assert host_card_share("0", host_cards=0) == 1.0  # host's cards unknown
    assert host_card_share("", host_cards=4) == 1.0


def test_a_child_runs_on_the_card_its_parent_calls_cuda_i():
    """Under CUDA_VISIBLE_DEVICES=2,3 the parent's cuda:0 is physical card 2: the child's
    variable must name 2, not 0 (the tenth session's instances all trained on card 0)."""
    from antdiff.analysis.ntg_pipeline import child_visible_devices

    assert child_visible_devices("cuda:0", "2,3") == "2"
    assert child_visible_devices("cuda:1", "2,3") == "3"
    assert child_visible_devices("cuda:1", "GPU-aa, GPU-bb") == "GPU-bb"
    assert child_visible_devices("cuda:3", None) == "3"
    assert child_visible_devices("cuda:3", "") == "3"
    with pytest.raises(ValueError, match="cuda:0 to cuda:1"):
        child_visible_devices("cuda:2", "2,3")
    with pytest.raises(ValueError, match="cuda:<index>"):
        child_visible_devices("cpu", "0")


def test_run_trainers_puts_each_trainer_on_the_parents_card(tmp_path, monkeypatch):
    import subprocess

    from antdiff.analysis import ntg_pipeline

    envs: dict[str, dict[str, str]] = {}

    class Done:
        def poll(self):
            return 0

    def fake_popen(cmd, *, env, **kwargs):
        envs[Path(cmd[4]).stem] = env
        kwargs["stdout"].close()
        return Done()

    monkeypatch.setattr(subprocess, "Popen", fake_popen)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    configs = []
    for name in ("a", "b"):
        cfg = tmp_path / f"{name}.yaml"
        cfg.write_text(
            yaml.safe_dump({"run": {"dir": str(tmp_path / name)}, "train": {"steps": 5}})
        )
        configs.append(cfg)
    ntg_pipeline.run_trainers(configs, devices=["cuda:0", "cuda:1"], per_device=1)
    assert {k: v["CUDA_VISIBLE_DEVICES"] for k, v in envs.items()} == {"a": "2", "b": "3"}


def test_run_trainers_caps_each_trainers_cpu_threads(tmp_path, monkeypatch):
    """Several trainers on one host each get an equal share of the cores through the BLAS/OpenMP
    thread variables (unless the caller set one), so that concurrent evaluations do not
    oversubscribe the CPU."""
    import subprocess

    from antdiff.analysis import ntg_pipeline

    envs: dict[str, dict[str, str]] = {}

    class Done:
        def poll(self):
            return 0

    def fake_popen(cmd, *, env, **kwargs):
        envs[cmd[4]] = env
        kwargs["stdout"].close()
        return Done()

    monkeypatch.setattr(subprocess, "Popen", fake_popen)
    monkeypatch.setattr(ntg_pipeline, "trainer_threads", lambda concurrent: 64 // concurrent)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    monkeypatch.setenv("MKL_NUM_THREADS", "3")  # set by the caller: kept
    configs = []
    for name in ("a", "b", "c"):
        cfg = tmp_path / f"{name}.yaml"
        cfg.write_text(
            yaml.safe_dump({"run": {"dir": str(tmp_path / name)}, "train": {"steps": 5}})
        )
        configs.append(cfg)
    ntg_pipeline.run_trainers(configs, devices=["cuda:0", "cuda:1"], per_device=4)
    assert len(envs) == 3
    for env in envs.values():  # 2 devices x 4 per device = 8 concurrent trainers
        assert env["OMP_NUM_THREADS"] == env["OPENBLAS_NUM_THREADS"] == "8"
        assert env["MKL_NUM_THREADS"] == "3"


def test_shared_trajectories_give_the_same_measurements_with_fewer_joint_steps(tmp_path):
    """Hybrids branch off the joint trajectory: every FID input (the images) is identical to one
    sampling run per model — DDPM, so the step noise must match too, over several batches, two
    sampling seeds and two specialist seeds — while the joint model runs far fewer steps."""
    import hashlib

    from antdiff.objective import DiffusionObjective

    objective = DiffusionObjective(NoiseSchedule.from_name("linear", T))
    models = {
        "joint": Constant(0.2),
        "a0": Constant(0.9),
        "a1": Constant(0.7),
        "b0": Constant(-0.5),
        "c0": Constant(0.4),
    }

    def load_fn(run: Path, use_ema: bool, device: str) -> Bundle:
        return Bundle(models[Path(run).name], objective)

    def fid_fn(images: np.ndarray) -> dict:  # a fingerprint of the exact images
        digest = hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()
        return {"fid": float(int(digest[:12], 16)), "n_gen": len(images)}

    specialists = {
        (0, 199): [(0, tmp_path / "a0"), (1, tmp_path / "a1")],
        (200, 599): [(0, tmp_path / "b0")],
        (600, 999): [(0, tmp_path / "c0")],
    }
    setup = NTGSetup(tmp_path / "joint", specialists, tmp_path / "ref.npz", n=5,
                     sampling_seeds=[0, 1], sampler="ddpm", steps=10, batch_size=2, device="cpu")  # fmt: skip

    def measured(out: Path) -> dict[str, float]:
        return {
            json.loads(x)["key"]: json.loads(x)["measurement"]["fid"]
            for f in sorted(out.glob("measurements*.jsonl"))
            for x in f.read_text().splitlines()
        }

    models["joint"].calls = 0
    one_each = measure_ntg(setup, tmp_path / "one", load_fn=load_fn, fid_fn=fid_fn,
                           share_trajectory=False)  # fmt: skip
    calls_one_each = models["joint"].calls
    models["joint"].calls = 0
    shared = measure_ntg(setup, tmp_path / "shared", load_fn=load_fn, fid_fn=fid_fn)
    calls_shared = models["joint"].calls
    assert one_each is not None and shared is not None
    want = measured(tmp_path / "one")
    assert len(want) == 2 * (1 + 4) and len(set(want.values())) == len(want)  # all different
    assert measured(tmp_path / "shared") == want
    assert np.array_equal(shared.ntg(), one_each.ntg())
    # DDPM, 10 steps: t = 999, 888, ..., 111, 0; per batch (3) and sampling seed (2) the joint
    # model runs its own 10 steps and, in each hybrid, the steps outside the interval: above it
    # 8, 8, 4, 0 and below it 0, 0, 2, 6 — shared, only those below remain
    assert calls_one_each == 2 * 3 * (10 + (8 + 0) + (8 + 0) + (4 + 2) + (0 + 6))
    assert calls_shared == 2 * 3 * (10 + 0 + 0 + 2 + 6)
    # sharded over two processes, the same table
    for i in (0, 1):
        got = measure_ntg(setup, tmp_path / "sharded", shard=(i, 2), load_fn=load_fn, fid_fn=fid_fn)
    assert got is not None and measured(tmp_path / "sharded") == want


def test_assign_shards_balances_contiguous_parts_of_the_job_list():
    from antdiff.analysis.ntg_pipeline import assign_shards

    ivs = [(0, 199), (200, 399), (400, 599), (600, 799), (800, 999)]
    setup = NTGSetup(Path("j"), {iv: [(0, Path(f"s{i}"))] for i, iv in enumerate(ivs)},
                     Path("r.npz"), sampling_seeds=[0])  # fmt: skip
    jobs = setup.jobs()  # joint, then the hybrids from the cleanest interval to the noisiest
    # cost in trajectories: joint 1 (+ hybrids' own 0.2, 0.4, 0.6, 0.8, 1.0) = 4 in one shard
    assert assign_shards(jobs, 1) == [0] * 6
    # two shards: {joint, clean, 2nd, 3rd} = 1 + 1.2 = 2.2 and {4th, noisiest} = 0.2 + 1.8 = 2.0
    assert assign_shards(jobs, 2) == [0, 0, 0, 0, 1, 1]
    assert assign_shards(jobs, 10) == [0, 1, 2, 3, 4, 5]  # more shards than jobs: one each
    assert assign_shards([], 3) == []
    with pytest.raises(ValueError, match="n_shard"):
        assign_shards(jobs, 0)


def _metrics(run: Path, rows: list[dict[str, Any]], written_at: float, tail: str = "") -> None:
    import os

    run.mkdir(parents=True, exist_ok=True)
    log = run / "metrics.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in rows) + tail)
    os.utime(log, (written_at, written_at))


def _evaluated_at_2500(run: Path, *, eval_seconds: float, step: int, rate: float, at: float):
    """A log evaluated at step 2500 (taking ``eval_seconds``), then trained to ``step``."""
    rows = [
        {"step": 2500, "eval": {"fid": 99.0}, "eval_seconds": {"sampling": eval_seconds}},
        {"step": step, "it_per_s": rate},
    ]
    _metrics(run, rows, written_at=at)


def test_next_result_projects_the_next_evaluation_from_the_log(tmp_path):
    from antdiff.analysis.ntg_pipeline import next_result

    run = tmp_path / "run"
    rows = [
        {"step": 2400, "it_per_s": 8.0},
        {"step": 2500, "it_per_s": 10.0},
        {"step": 2500, "eval": {"fid": 99.0}, "eval_seconds": {"sampling": 240.0, "metrics": 10.0}},
        {"step": 2600, "it_per_s": 5.0},  # a slow window (contention): the fastest counts
    ]
    # a line still being written is skipped, not an error
    _metrics(run, rows, written_at=1000.0, tail='{"step": 27')
    nxt = next_result(run, eval_every=2500, steps=50000)
    assert nxt is not None and nxt.step == 5000 and nxt.is_evaluation
    assert nxt.done_at == pytest.approx(1000.0 + 2400 / 10.0 + 250.0)


def test_next_result_before_the_first_evaluation_is_a_lower_bound(tmp_path):
    from antdiff.analysis.ntg_pipeline import next_result

    run = tmp_path / "run"
    _metrics(run, [{"step": 100, "it_per_s": 20.0}], written_at=50.0)
    nxt = next_result(run, eval_every=2500, steps=50000)
    assert nxt is not None and nxt.step == 2500
    assert nxt.done_at == pytest.approx(50.0 + 2400 / 20.0)  # no evaluation time known yet


def test_next_result_without_evaluations_left_is_the_last_step(tmp_path):
    from antdiff.analysis.ntg_pipeline import next_result

    run = tmp_path / "run"
    rows = [
        {"step": 5000, "eval": {"fid": 40.0}, "eval_seconds": {"sampling": 100.0}},
        {"step": 5200, "it_per_s": 4.0},
    ]
    _metrics(run, rows, written_at=0.0)
    nxt = next_result(run, eval_every=5000, steps=6000)
    assert nxt is not None and nxt.step == 6000 and not nxt.is_evaluation
    assert nxt.done_at == pytest.approx(800 / 4.0)  # no evaluation at the end: training only
    nxt = next_result(run, eval_every=0, steps=6000)  # a specialist: never evaluates
    assert nxt is not None and nxt.step == 6000 and not nxt.is_evaluation
    assert next_result(run, eval_every=5000, steps=5200) is None  # nothing left to do
    assert next_result(tmp_path / "starting", eval_every=5000, steps=6000) is None  # no log
    _metrics(tmp_path / "compiling", [{"step": 0, "eval": {"fid": 1.0}}], written_at=0.0)
    assert next_result(tmp_path / "compiling", eval_every=5000, steps=6000) is None  # no rate


def test_next_result_ignores_the_start_up_window_of_each_trainer_process(tmp_path):
    """Rows as slice 8's vanilla run wrote them: the first window of a process holds its
    start-up (compilation), 1.2 it/s and, after a resume, 0.47 it/s for a run that trains at
    16-17; a projection from them (hours to step 5000) once stopped three runs at 130-200."""
    from antdiff.analysis.ntg_pipeline import next_result

    first = {"step": 100, "window": 100, "it_per_s": 1.2, "time": 82.2}  # compiled, then trained
    _metrics(tmp_path / "a", [first], written_at=0.0)
    assert next_result(tmp_path / "a", eval_every=5000, steps=50000) is None  # no steady rate
    steady = {"step": 200, "window": 100, "it_per_s": 17.0, "time": 88.1}
    _metrics(tmp_path / "a", [first, steady], written_at=0.0)
    nxt = next_result(tmp_path / "a", eval_every=5000, steps=50000)
    assert nxt is not None and nxt.done_at == pytest.approx(4800 / 17.0)
    # an evaluation in between does not start a process: the next window begins at its step
    evaluation = {"step": 5000, "eval": {"fid": 44.0}, "eval_seconds": {"sampling": 75.0}}
    rows = [first, steady, {"step": 5000, "window": 100, "it_per_s": 17.6, "time": 380.0}]
    after = {"step": 5100, "window": 100, "it_per_s": 15.8, "time": 463.8}
    _metrics(tmp_path / "a", [*rows, evaluation, after], written_at=0.0)
    nxt = next_result(tmp_path / "a", eval_every=5000, steps=50000)
    # (the 5000 line's window does not begin at 200, so it opens a process here; the line after
    # the evaluation is that process's second, steady one)
    assert nxt is not None and nxt.done_at == pytest.approx(4900 / 15.8 + 75.0)
    # stopped at 196, resumed: the new process's first window (4 steps after a recompilation)
    # begins at 196, not where the last line ended, although its clock reads later (95.4 s)
    resumed = {"step": 200, "window": 4, "it_per_s": 0.47, "time": 95.4}
    _metrics(tmp_path / "b", [first, resumed], written_at=0.0)
    assert next_result(tmp_path / "b", eval_every=5000, steps=50000) is None
    warm = {"step": 300, "window": 100, "it_per_s": 16.0, "time": 101.3}
    _metrics(tmp_path / "b", [first, resumed, warm], written_at=10.0)
    nxt = next_result(tmp_path / "b", eval_every=5000, steps=50000)
    assert nxt is not None and nxt.done_at == pytest.approx(10.0 + 4700 / 16.0)
    # a restart whose first window begins at the last line's step (stopped right after a log
    # line): its 91-s window cannot fit the 18 s its clock reads past that line's
    restarted = {"step": 300, "window": 100, "it_per_s": 1.1, "time": 106.0}
    _metrics(tmp_path / "c", [first, steady, restarted], written_at=0.0)
    assert next_result(tmp_path / "c", eval_every=5000, steps=50000) is None


def test_next_result_takes_the_fastest_steady_window_not_the_last(tmp_path):
    """Slice 11's ANT-PCGrad (ε-MSE) windows, logged while eight trainers compiled beside it:
    from the last window (3.55 it/s) its first evaluation came 8 s past the deadline and it was
    stopped at step 404; the hybrid run beside it, same rates, went on to 4.1 it/s and made it.
    A stop cannot be undone, so the projection is a bound: the fastest steady window."""
    from antdiff.analysis.ntg_pipeline import next_result

    rows = [
        {"step": 100, "window": 100, "it_per_s": 3.132, "time": 31.93},  # start-up: not a rate
        {"step": 200, "window": 100, "it_per_s": 3.783, "time": 58.36},
        {"step": 300, "window": 100, "it_per_s": 3.920, "time": 83.88},
        {"step": 400, "window": 100, "it_per_s": 3.549, "time": 112.06},
    ]
    # seconds since its launch: the trainer's own clock (``time``) starts ~44 s later
    _metrics(tmp_path / "run", rows, written_at=156.0)
    nxt = next_result(tmp_path / "run", eval_every=5000, steps=5000)
    assert nxt is not None and nxt.rate == pytest.approx(3.920) and nxt.from_step == 400
    assert nxt.done_at == pytest.approx(156.0 + 4600 / 3.920)
    # the deadline it had (1,442 s after its launch): the last window's rate misses it, this not
    assert 156.0 + 4600 / 3.549 > 1442.0 > nxt.done_at


@pytest.mark.parametrize("final", [True, False])
def test_run_trainers_stops_a_trainer_whose_next_evaluation_cannot_end_in_time(tmp_path, final):
    """With a final deadline a trainer that cannot reach its next evaluation before it is
    stopped at once (nothing it trains after its last evaluation would survive the machine),
    while one that can is left alone; without ``deadline_is_final`` both get SIGTERM only at
    the deadline."""
    import signal
    import time

    from antdiff.analysis import ntg_pipeline

    signalled: dict[str, float] = {}
    start = time.monotonic()

    class Trainer:
        def __init__(self, name: str, ends_after: float | None):
            self.name, self.ends_after = name, ends_after

        def poll(self):
            if self.name in signalled:
                return 0
            if self.ends_after is not None and time.monotonic() - start > self.ends_after:
                return 0
            return None

        def send_signal(self, sig):
            assert sig == signal.SIGTERM
            signalled.setdefault(self.name, time.monotonic() - start)

    now = time.time()
    # "slow": evaluated at 2500, now at 2600 at 1 it/s: step 5000 is ~40 minutes away
    _evaluated_at_2500(tmp_path / "slow", eval_seconds=60.0, step=2600, rate=1.0, at=now)
    # "fast": 100 steps from its evaluation at 1000 it/s, which then takes 1 s
    _metrics(
        tmp_path / "fast",
        [
            {"step": 2500, "eval": {"fid": 99.0}, "eval_seconds": {"sampling": 1.0}},
            {"step": 4900, "it_per_s": 1000.0},
        ],
        written_at=now,
    )
    configs = []
    for name in ("slow", "fast"):
        cfg = tmp_path / f"{name}.yaml"
        run = {"dir": str(tmp_path / name)}
        cfg.write_text(yaml.safe_dump({"run": run, "train": {"steps": 50000, "eval_every": 2500}}))
        configs.append(cfg)
    trainers = {"slow": Trainer("slow", None), "fast": Trainer("fast", 1.5)}
    said: list[str] = []
    ntg_pipeline.run_trainers(
        configs,
        devices=["cpu"],
        per_device=2,
        time_limit=3.0,
        launcher=lambda cfg, dev, log: trainers[Path(cfg).stem],
        progress=said.append,
        deadline_is_final=final,
    )
    assert "fast" not in signalled  # it ended by itself, before the deadline
    if final:
        assert signalled["slow"] < 1.0
        assert any("slow: its next evaluation (step 5000) would be done" in m for m in said)
        # the decision names its inputs, so that a wrong one can be read from the log
        assert any("(from step 2600 at 1.00 it/s, evaluation 60 s): stopping it" in m for m in said)
        assert "slow: stopped at step 0" in said
    else:
        assert signalled["slow"] >= 3.0
        assert not any("would be done" in m for m in said)


def test_a_first_evaluation_is_projected_to_take_as_long_as_another_runs(tmp_path):
    """Slice 9: a run before its first evaluation projected 0 s for it, started an evaluation
    it could not finish and lost it at the deadline. Once any run of the call has measured an
    evaluation, a run without one of its own is projected with that duration."""
    import time

    from antdiff.analysis import ntg_pipeline

    signalled: set[str] = set()

    class Trainer:
        def __init__(self, name: str):
            self.name = name

        def poll(self):
            return 0 if self.name in signalled else None

        def send_signal(self, sig):
            signalled.add(self.name)

    now = time.time()
    # "measured": evaluated at 2500 in 600 s, then a long way from its next one (stopped too)
    _evaluated_at_2500(tmp_path / "measured", eval_seconds=600.0, step=2600, rate=1.0, at=now)
    # "first": 100 steps at 100 it/s from its first evaluation: 1 s of training, which fits the
    # 3-s deadline on its own but not with the 600 s that evaluations take here
    _metrics(tmp_path / "first", [{"step": 2400, "it_per_s": 100.0}], written_at=now)
    _metrics(tmp_path / "alone", [{"step": 2400, "it_per_s": 100.0}], written_at=now)

    def configs(names):
        out = []
        for name in names:
            cfg = tmp_path / f"{name}.yaml"
            run = {"dir": str(tmp_path / name)}
            train = {"steps": 50000, "eval_every": 2500}
            cfg.write_text(yaml.safe_dump({"run": run, "train": train}))
            out.append(cfg)
        return out

    said: list[str] = []

    def run(names, time_limit):
        ntg_pipeline.run_trainers(
            configs(names),
            devices=["cpu"],
            per_device=len(names),
            time_limit=time_limit,
            launcher=lambda cfg, dev, log: Trainer(Path(cfg).stem),
            progress=said.append,
            deadline_is_final=True,
        )

    run(["measured", "first"], time_limit=3.0)
    assert signalled == {"measured", "first"}
    assert any("first: its next evaluation (step 2500)" in m and "evaluation 600 s" in m
               for m in said)  # fmt: skip
    # alone, with nothing measured, the projection stays a lower bound: it is left to run
    signalled.clear()
    run(["alone"], time_limit=1.5)
    assert not any("alone: its next" in m for m in said)


def test_a_run_borrows_an_evaluation_time_only_for_an_evaluation_it_has_not_measured():
    from antdiff.analysis.ntg_pipeline import NextResult, with_borrowed_evaluation

    first = NextResult(step=5000, done_at=100.0, is_evaluation=True, from_step=4000, rate=10.0)
    borrowed = with_borrowed_evaluation(first, 80.0)
    assert (borrowed.done_at, borrowed.eval_seconds) == (180.0, 80.0)
    assert with_borrowed_evaluation(first, 0.0) == first  # nothing measured yet: nothing added
    own = NextResult(
        step=10000,
        done_at=600.0,
        is_evaluation=True,
        from_step=6000,
        rate=10.0,
        eval_seconds=75.0,
        measured_eval_seconds=75.0,
    )
    assert with_borrowed_evaluation(own, 300.0) == own  # its own measurement stands
    last = NextResult(step=5000, done_at=50.0, is_evaluation=False, from_step=4500, rate=10.0)
    assert with_borrowed_evaluation(last, 300.0) == last  # a last step is no evaluation
