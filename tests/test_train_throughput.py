"""benchmarks/train_throughput.py: the steady-state rate from a run's metrics log."""

from __future__ import annotations

import pytest

from _bench import load_benchmark


def _module():
    return load_benchmark("train_throughput")


def _line(step: int, window: int, it_per_s: float, time: float) -> dict:
    return {"step": step, "window": window, "it_per_s": it_per_s, "time": time, "loss": 0.1}


def test_rate_counts_only_windows_after_the_warmup_and_weights_them_by_length():
    tp = _module()
    lines = [
        _line(25, 25, 0.5, 50.0),  # compilation: excluded
        _line(50, 25, 5.0, 55.0),  # starts at step 25 < warmup 50: excluded
        _line(75, 25, 10.0, 57.5),
        {"step": 75, "eval": {"fid": 40.0}},  # evaluation lines are not windows
        _line(125, 50, 5.0, 67.5),
    ]
    rate = tp.steady_rate(lines, 50, 128, stopped_at=125, interrupted=False)
    # 75 steps in 2.5 s + 10 s
    assert rate["it_per_s"] == pytest.approx(75 / 12.5)
    assert rate["img_per_s"] == pytest.approx(75 / 12.5 * 128)
    assert rate["steps_measured"] == 75
    assert rate["first_window_end"] == {"step": 25, "time_s": 50.0}
    assert [w["step"] for w in rate["windows"]] == [25, 50, 75, 125]  # not the evaluation line
    assert "why_no_rate" not in rate


def test_a_run_stopped_before_the_warmup_ended_says_so_instead_of_dividing_by_zero():
    """Slice 12's probe: a `timeout` stopped split + CUDA graphs before its warm-up ended."""
    tp = _module()
    lines = [_line(25, 25, 0.2, 125.0), _line(50, 25, 0.3, 208.0)]
    rate = tp.steady_rate(lines, 150, 128, stopped_at=61, interrupted=True)
    assert rate["it_per_s"] is None and rate["steps_measured"] == 0
    assert rate["first_window_end"] == {"step": 25, "time_s": 125.0}
    # every window it logged, so the start-up's course is known even without a rate
    assert rate["windows"] == [
        {"step": 25, "time_s": 125.0, "it_per_s": 0.2},
        {"step": 50, "time_s": 208.0, "it_per_s": 0.3},
    ]
    assert "stopped at step 61" in rate["why_no_rate"]
    assert "interrupted" in rate["why_no_rate"] and "150-step warm-up" in rate["why_no_rate"]
    empty = tp.steady_rate([], 150, 128, stopped_at=0, interrupted=True)
    assert empty["first_window_end"] is None and empty["last_loss"] is None


def test_peak_memory_is_the_largest_window_not_what_followed_the_trainers_last_reset():
    """The trainer resets CUDA's peak at every log window; the run's peak is the largest window's
    (or the tail's, when larger). Evaluation lines are not training."""
    tp = _module()
    lines = [
        {**_line(25, 25, 1.0, 10.0), "peak_mem_gib": 17.8},
        {**_line(50, 25, 4.0, 16.0), "peak_mem_gib": 17.6},
        {"step": 50, "eval": {"fid": 40.0}, "eval_peak_mem_gib": 30.0},
        _line(75, 25, 4.0, 22.0),  # a CPU or older log without the field
    ]
    assert tp.training_peak(lines, 1.44) == 17.8
    assert tp.training_peak(lines, 20.0) == 20.0
    assert tp.training_peak([], 1.44) == 1.44


def test_the_summary_prints_a_dash_where_nothing_was_measured_not_nan():
    """--skip-plain leaves no baseline (ratio None) and a run stopped in its warm-up has no rate:
    both print as a dash; measured numbers print as numbers."""
    info = {
        "card": "NVIDIA H100 80GB HBM3", "batch": 128, "precision": "bf16", "torch": "2.11",
        "results": {
            "ant_pcgrad": {"it_per_s": 6.8, "img_per_s": 870.0, "ratio_to_plain": None,
                           "peak_mem_gib": 1.635},
            "ant_uw": {"it_per_s": None, "img_per_s": None, "ratio_to_plain": None,
                       "peak_mem_gib": 1.5},
            "plain": {"it_per_s": 9.0, "img_per_s": 1152.0, "ratio_to_plain": 1.0,
                      "peak_mem_gib": 1.4},
        },
    }  # fmt: skip
    text = _module().format_table(info)
    assert "nan" not in text
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines()[2:]}
    assert rows["ant_pcgrad"] == ["6.80", "870", "—", "1.64"]
    assert rows["ant_uw"] == ["—", "—", "—", "1.50"]
    assert rows["plain"] == ["9.00", "1152", "1.000", "1.40"]
