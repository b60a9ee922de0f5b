"""Atomic checkpoint files, keep-last-N, latest.txt, RNG/EMA state, LR schedule."""

# ruff: noqa: NPY002 - the legacy global numpy stream is exactly what the RNG test saves

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from antdiff.training.checkpoint import (
    CheckpointManager,
    load_checkpoint,
    resolve_checkpoint,
)
from antdiff.training.ema import EMA
from antdiff.training.lr import lr_factor
from antdiff.training.rng import capture_rng_state, restore_rng_state


def test_save_prune_latest_and_no_overwrite(tmp_path: Path) -> None:
    m = CheckpointManager(tmp_path / "checkpoints", keep_last=2)
    for step in (10, 20, 30):
        m.save({"w": torch.full((2,), float(step))}, step)
    names = [p.name for p in m.list()]
    assert names == ["step_000000020.pt", "step_000000030.pt"]
    assert (tmp_path / "checkpoints" / "latest.txt").read_text().strip() == "step_000000030.pt"
    assert resolve_checkpoint(tmp_path) == m.latest() == m.path_for(30)
    ck = load_checkpoint(m.latest())
    assert ck["step"] == 30 and torch.equal(ck["w"], torch.full((2,), 30.0))
    # saving the same step again keeps the existing file untouched
    before = m.path_for(30).stat().st_mtime_ns, m.path_for(30).read_bytes()
    m.save({"w": torch.zeros(2)}, 30)
    assert (m.path_for(30).stat().st_mtime_ns, m.path_for(30).read_bytes()) == before
    # no temporary files are left behind
    assert all(not p.name.startswith(".") for p in (tmp_path / "checkpoints").iterdir())


def test_failed_write_leaves_previous_checkpoint_intact(tmp_path: Path) -> None:
    m = CheckpointManager(tmp_path, keep_last=5)
    m.save({"w": torch.ones(3)}, 1)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        m.save({"w": torch.ones(3), "bad": Boom()}, 2)
    assert [p.name for p in m.list()] == ["step_000000001.pt"]
    assert m.latest() == m.path_for(1)
    assert [p for p in os.listdir(tmp_path) if p.endswith(".tmp")] == []


def test_load_rejects_foreign_and_truncated_files(tmp_path: Path) -> None:
    torch.save({"model": {}}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="not an antdiff checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    m = CheckpointManager(tmp_path / "c")
    p = m.save({"w": torch.ones(1000)}, 5)
    (tmp_path / "cut.pt").write_bytes(p.read_bytes()[:100])
    with pytest.raises(ValueError, match="not a readable"):
        load_checkpoint(tmp_path / "cut.pt")
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(FileNotFoundError, match="contains no checkpoint"):
        resolve_checkpoint(tmp_path / "empty_run")
    with pytest.raises(FileNotFoundError, match="no such run directory"):
        resolve_checkpoint(tmp_path / "missing")


def test_rng_round_trip_through_checkpoint(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(123)
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = capture_rng_state({"noise": g})
    CheckpointManager(tmp_path).save({"rng": state}, 1)
    draws = (random.random(), np.random.rand(), torch.rand(2), torch.rand(2, generator=g))
    loaded = load_checkpoint(tmp_path / "step_000000001.pt")["rng"]  # weights_only load
    g2 = torch.Generator().manual_seed(999)
    restore_rng_state(loaded, {"noise": g2})
    again = (random.random(), np.random.rand(), torch.rand(2), torch.rand(2, generator=g2))
    assert draws[0] == again[0] and draws[1] == again[1]
    assert torch.equal(draws[2], again[2]) and torch.equal(draws[3], again[3])
    with pytest.raises(ValueError, match="'other'"):
        restore_rng_state(loaded, {"other": torch.Generator()})


def test_ema_warmup_formula_and_state() -> None:
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, decay=0.9, warmup=True)
    assert ema.current_decay() == pytest.approx(0.1)  # (1+0)/(10+0)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)  # 0.1*0 + 0.9*1
    assert torch.allclose(ema.model.weight, torch.full((1, 2), 0.9))
    for _ in range(100):
        ema.update(model)
    assert ema.current_decay() == 0.9  # capped at the configured decay
    assert not ema.model.weight.requires_grad
    other = EMA(model, decay=0.9)
    other.load_state_dict(ema.state_dict())
    assert other.num_updates == 101 and torch.equal(other.model.weight, ema.model.weight)
    flat = EMA(model, decay=0.5, warmup=False)
    with torch.no_grad():
        model.weight.fill_(3.0)
    flat.update(model)  # 0.5*1 + 0.5*3
    assert torch.allclose(flat.model.weight, torch.full((1, 2), 2.0))


def test_lr_warmup_and_cosine() -> None:
    assert [lr_factor(s, warmup_steps=4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    f = [
        lr_factor(s, warmup_steps=2, total_steps=12, schedule="cosine", min_ratio=0.1)
        for s in range(12)
    ]
    assert f[:2] == [0.5, 1.0] and f[2] == pytest.approx(1.0)
    assert f[7] == pytest.approx(0.1 + 0.9 * 0.5)  # half way through the decay
    assert all(a >= b for a, b in zip(f[2:], f[3:]))
    with pytest.raises(ValueError, match="schedule"):
        lr_factor(5, schedule="step")


def test_ema_update_from_listed_tensors_matches_update_and_survives_a_reload() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    a, b = EMA(model, decay=0.8), EMA(model, decay=0.8)
    params, buffers = list(model.parameters()), list(model.buffers())
    for _ in range(3):
        with torch.no_grad():
            for p in params:
                p.add_(torch.randn_like(p))
            buffers[0].add_(1.0)  # BatchNorm's running mean: copied, not averaged
        a.update(model)
        b.update_from(params, buffers)
    for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()):
        assert torch.equal(x, y)
    assert torch.equal(b.model[1].running_mean, buffers[0])
    # load_state_dict copies into the EMA's own tensors: the listed ones stay the live ones
    c = EMA(model, decay=0.8)
    c.load_state_dict(b.state_dict())
    c.update_from(params, buffers)
    b.update_from(params, buffers)
    assert torch.equal(c.model[0].weight, b.model[0].weight)
    with pytest.raises(ValueError, match="not the model it was made from"):
        b.update_from(params[:-1], buffers)
    with pytest.raises(ValueError, match="not the model it was made from"):
        b.update_from(params, [])
