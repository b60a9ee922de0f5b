"""NTG (O2): the timestep-switching hybrid sampler and the NTG arithmetic."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from antdiff import NoiseSchedule, TaskClusters
from antdiff.analysis import FIDMeasurement, NTGTable, TimestepSwitchingDenoiser, compute_ntg

T = 1000


class Recorder(nn.Module):
    """A dummy denoiser that records every timestep it is asked to denoise and predicts
    ``scale · x`` (so outputs show which model produced them)."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale
        self.seen: list[int] = []

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        t = torch.as_tensor(t).reshape(-1)
        self.seen.extend(int(v) for v in t.tolist())
        return self.scale * x


# ----------------------------------------------------------------------------- routing
def test_route_switches_exactly_at_the_interval_bounds():
    joint, a, b = Recorder(1.0), Recorder(2.0), Recorder(3.0)
    h = TimestepSwitchingDenoiser(joint, {(200, 399): a, (800, 999): b}, num_timesteps=T)
    t = torch.tensor([0, 199, 200, 201, 398, 399, 400, 799, 800, 999])
    assert h.route(t).tolist() == [0, 0, 1, 1, 1, 1, 0, 0, 2, 2]
    assert h.steps_in(np.arange(T)) == [200, 200]


def test_mixed_batches_are_split_and_reassembled_in_order():
    joint, spec = Recorder(1.0), Recorder(-1.0)
    h = TimestepSwitchingDenoiser(joint, [((10, 19), spec)], record=True)
    x = torch.arange(1.0, 6.0).reshape(5, 1, 1, 1)
    t = torch.tensor([9, 10, 19, 20, 15])
    out = h(x, t).reshape(-1)
    assert out.tolist() == [1.0, -2.0, -3.0, 4.0, -5.0]
    assert sorted(spec.seen) == [10, 15, 19] and sorted(joint.seen) == [9, 20]
    assert h.calls[(1, 15)] == 1 and h.calls[(0, 9)] == 1
    # A scalar t routes the whole batch.
    assert h(x, torch.tensor(12)).reshape(-1).tolist() == [-1.0, -2.0, -3.0, -4.0, -5.0]
    y = torch.tensor([0, 1, 2, 3, 4])
    h(x, t, y)  # class labels follow their samples


def test_invalid_intervals_and_timesteps():
    j = Recorder(1.0)
    with pytest.raises(ValueError, match="overlap"):
        TimestepSwitchingDenoiser(j, {(0, 10): j, (10, 20): j})
    with pytest.raises(ValueError, match="outside"):
        TimestepSwitchingDenoiser(j, {(900, 1000): j}, num_timesteps=T)
    h = TimestepSwitchingDenoiser(j, {(0, 10): Recorder(2.0)}, num_timesteps=T)
    with pytest.raises(ValueError, match="integer timesteps"):
        h(torch.zeros(1, 1), torch.tensor([3.5]))
    with pytest.raises(ValueError, match="outside"):
        h(torch.zeros(1, 1), torch.tensor([T]))


def _expected_split(timesteps: list[int], interval: tuple[int, int]) -> tuple[set[int], set[int]]:
    a, b = interval
    inside = {t for t in timesteps if a <= t <= b}
    return inside, set(timesteps) - inside


@pytest.mark.parametrize("sampler,steps", [("ddpm", T), ("ddpm", 50), ("ddim", 50), ("ddim", 20)])
def test_hybrid_switches_exactly_during_sampling(sampler, steps):
    """Two dummy models in a real reverse process (diffusers DDPM/DDIM through the trainer's
    sample_images): the specialist sees exactly the scheduler's timesteps inside its interval,
    the joint model exactly the others — including both bounds when they are sampled."""
    from antdiff.objective import DiffusionObjective
    from antdiff.training.sampling import make_sampling_scheduler, sample_images

    objective = DiffusionObjective(NoiseSchedule.from_name("linear", T))
    ts = [int(t) for t in make_sampling_scheduler(objective, sampler, steps).timesteps]
    # Put the interval's bounds ON sampled timesteps, so an off-by-one would be visible.
    inner = sorted(t for t in ts if 150 <= t <= 700)
    interval = (inner[0], inner[-1])
    joint, spec = Recorder(0.0), Recorder(0.0)
    hybrid = TimestepSwitchingDenoiser(joint, {interval: spec}, num_timesteps=T)
    sample_images(
        hybrid,
        objective,
        3,
        image_shape=(1, 4, 4),
        sampler=sampler,
        steps=steps,
        batch_size=3,
        seed=0,
    )
    inside, outside = _expected_split(ts, interval)
    assert set(spec.seen) == inside and set(joint.seen) == outside
    assert len(spec.seen) == 3 * len(inside) and len(joint.seen) == 3 * len(outside)
    assert interval[0] in spec.seen and interval[1] in spec.seen
    # Neighbours of the bounds that the scheduler visits belong to the joint model.
    below = max(t for t in ts if t < interval[0])
    above = min(t for t in ts if t > interval[1])
    assert below in joint.seen and above in joint.seen
    assert hybrid.steps_in(ts) == [len(inside)]


@pytest.mark.parametrize("kind", ["ddpm", "ddim"])
def test_hybrid_in_a_plain_diffusers_loop(kind):
    """The switch is decided by the scheduler's own t in any user loop (no antdiff sampler)."""
    from diffusers import DDIMScheduler, DDPMScheduler

    sched = (DDPMScheduler if kind == "ddpm" else DDIMScheduler)(num_train_timesteps=T)
    sched.set_timesteps(40)
    joint, spec = Recorder(0.5), Recorder(0.5)
    clusters = TaskClusters.uniform(T, 5)
    hybrid = TimestepSwitchingDenoiser.for_clusters(joint, clusters, {4: spec})
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    for t in sched.timesteps:
        x = sched.step(hybrid(x, t), t, x).prev_sample
    ts = [int(t) for t in sched.timesteps]
    assert set(spec.seen) == {t for t in ts if t >= 800}
    assert set(joint.seen) == {t for t in ts if t < 800}


# ----------------------------------------------------------------------------- arithmetic
def _synthetic_measurements() -> list[FIDMeasurement]:
    ms = [FIDMeasurement(10.0, 0, n=500, floor=2.0), FIDMeasurement(11.0, 1, n=500, floor=2.2)]
    # Interval A: the specialist helps (NTG −1.0, −0.8): negative transfer.
    ms += [FIDMeasurement(9.0, 0, (0, 499), n=500), FIDMeasurement(10.2, 1, (0, 499), n=500)]
    # Interval B: the specialist hurts (NTG +3, +2.5, with two specialist seeds × … pairs).
    ms += [
        FIDMeasurement(13.0, 0, (500, 999), specialist_seed=0, n=500),
        FIDMeasurement(13.5, 1, (500, 999), specialist_seed=0, n=500),
        FIDMeasurement(12.9, 0, (500, 999), specialist_seed=1, n=500),
        FIDMeasurement(13.6, 1, (500, 999), specialist_seed=1, n=500),
    ]
    return ms


def test_ntg_sign_pairing_and_spread():
    table = compute_ntg(_synthetic_measurements(), TaskClusters.uniform(T, 2))
    a, b = table.rows
    assert a.values == pytest.approx((-1.0, -0.8))
    assert a.mean == pytest.approx(-0.9)
    assert a.std == pytest.approx(math.sqrt(0.02))
    assert a.sem == pytest.approx(0.1)
    assert a.verdict == "negative transfer" and a.paper_label == "[1, 500]"
    assert b.values == pytest.approx((3.0, 2.5, 2.9, 2.6))
    assert b.mean == pytest.approx(2.75) and b.verdict == "positive transfer"
    assert b.pairs == ((0, 0), (0, 1), (1, 0), (1, 1))
    assert table.fid_joint_mean == pytest.approx(10.5)
    assert table.n == 500 and table.floor == pytest.approx(2.1)
    np.testing.assert_allclose(table.ntg(), [-0.9, 2.75])


def test_ntg_verdicts_without_spread_or_within_noise():
    single = compute_ntg([FIDMeasurement(5.0, 0), FIDMeasurement(4.0, 0, (0, 9))])
    assert single.rows[0].std is None and single.rows[0].verdict == "single measurement"
    noisy = compute_ntg(
        [
            FIDMeasurement(5.0, 0),
            FIDMeasurement(5.0, 1),
            FIDMeasurement(5.5, 0, (0, 9)),
            FIDMeasurement(4.6, 1, (0, 9)),
        ]
    )
    assert noisy.rows[0].verdict == "within noise"


def test_ntg_errors():
    with pytest.raises(ValueError, match="joint model alone"):
        compute_ntg([FIDMeasurement(4.0, 0, (0, 9))])
    with pytest.raises(ValueError, match="no joint FID for sampling seed 1"):
        compute_ntg([FIDMeasurement(5.0, 0), FIDMeasurement(4.0, 1, (0, 9))])
    with pytest.raises(ValueError, match="no hybrid FID for interval"):
        compute_ntg([FIDMeasurement(5.0, 0), FIDMeasurement(4.0, 0, (0, 9))], [(0, 9), (10, 19)])
    with pytest.raises(ValueError, match="different sample counts"):
        compute_ntg([FIDMeasurement(5.0, 0, n=100), FIDMeasurement(4.0, 0, (0, 9), n=200)])
    with pytest.raises(ValueError, match="duplicate"):
        compute_ntg(
            [FIDMeasurement(5.0, 0), FIDMeasurement(4.0, 0, (0, 9)), FIDMeasurement(4.1, 0, (0, 9))]
        )
    with pytest.raises(ValueError, match="finite"):
        FIDMeasurement(float("nan"), 0)


def test_ntg_table_round_trip_and_markdown(tmp_path):
    table = compute_ntg(_synthetic_measurements(), meta={"joint": "runs/vanilla"})
    p = table.save(tmp_path)
    back = NTGTable.load(p)
    np.testing.assert_allclose(back.ntg(), table.ntg())
    assert back.meta == {"joint": "runs/vanilla"} and back.n == 500
    md = table.to_markdown()
    assert "| [1, 500] | 0–499 | -0.90 ± 0.14 |" in md
    assert "negative transfer" in md and "positive transfer" in md
    assert "FID floor at this n = 2.10" in md
