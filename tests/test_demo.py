"""`antdiff demo --quick`: both runs, sample grids from the same seeds, figures, comparison."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from antdiff.analysis.logs import read_training_log
from antdiff.cli import main


def test_quick_demo_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["demo", "--quick", "--out", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(threads)
    assert "comparison.md" in capsys.readouterr().out
    for name in ("vanilla", "ant_uw"):
        assert (tmp_path / f"{name}_samples.png").is_file()
        assert (tmp_path / "figures" / f"cluster_losses_{name}.png").is_file()
        log = read_training_log(tmp_path / name)
        assert log.steps.tolist() == [2, 4, 6] and log.k == 5
    assert read_training_log(tmp_path / "ant_uw").uw_weights() is not None
    assert read_training_log(tmp_path / "vanilla").balancer_name == "vanilla"
    report = (tmp_path / "comparison.md").read_text()
    assert "FID not computed (--quick)" in report
    assert "| 4: t in [800, 999] |" in report and "UW weights" in report
    assert (tmp_path / "figures" / "loss.png").is_file() and (
        tmp_path / "figures" / "uw_weights.png"
    ).is_file()
    # running it again continues the finished runs (nothing to train) and rewrites the comparison
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 0
    assert read_training_log(tmp_path / "vanilla").steps.tolist() == [2, 4, 6]
