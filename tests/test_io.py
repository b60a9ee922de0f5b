"""Atomic result writes (antdiff._io): a write that fails midway leaves the earlier file as it
was and no temporary file behind; one that succeeds replaces it whole."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from antdiff._io import atomic_target, atomic_write_text
from antdiff.analysis import TaskAffinity, TimestepBins


def test_an_interrupted_write_keeps_the_earlier_file_and_leaves_no_temporary(tmp_path: Path):
    path = tmp_path / "sub" / "result.npz"
    atomic_write_text(path, "earlier")  # creates the folder too
    with pytest.raises(RuntimeError, match="disk gone"):
        with atomic_target(path) as f:
            f.write(b"half of the new bytes")
            raise RuntimeError("disk gone")
    assert path.read_text() == "earlier"
    assert sorted(p.name for p in path.parent.iterdir()) == ["result.npz"]
    with atomic_target(path) as f:
        np.savez(f, x=np.arange(3))
    assert np.load(path)["x"].tolist() == [0, 1, 2]
    assert sorted(p.name for p in path.parent.iterdir()) == ["result.npz"]


def test_an_affinity_result_saved_again_is_replaced_whole(tmp_path: Path):
    def result(scale: float) -> TaskAffinity:
        i = np.arange(6)
        m = np.exp(-np.abs(i[:, None] - i[None, :]) / scale)
        return TaskAffinity(m, m[None], np.ones((1, 6)), TimestepBins.uniform(600, 6), "exact",
                            None, 8, 0)  # fmt: skip

    result(1.0).save(tmp_path)
    second = result(3.0)
    second.save(tmp_path)
    np.testing.assert_array_equal(TaskAffinity.load(tmp_path).matrix, second.matrix)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
