"""End to end on a real (tiny) run: `antdiff train` → `antdiff affinity` → `antdiff cluster
--cost affinity` → `antdiff report`, and the `antdiff ntg` specialist path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from antdiff.analysis import TaskAffinity
from antdiff.cli import main


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    cfg = {
        "run": {"dir": str(root / "joint"), "seed": 0},
        "model": {"preset": "unet-tiny"},
        "optim": {"batch_size": 16},
        "train": {
            "steps": 4,
            "log_every": 2,
            "ckpt_every": 2,
            "progress": False,
            "tensorboard": False,
            "sample_n": 4,
        },
        "sample": {"sampler": "ddim", "steps": 5, "batch_size": 4},
    }
    (root / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", str(root / "tiny.yaml")]) == 0
    return root / "joint"


def test_affinity_command_feeds_clustering_and_report(tiny_run, tmp_path, capsys):
    out = tmp_path / "aff"
    rc = main(
        [
            "affinity",
            str(tiny_run),
            "--all-checkpoints",
            "--bins",
            "4",
            "--images",
            "12",
            "--batch-size",
            "12",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "task affinity: 4×4 bins, 12 images, 2 checkpoint(s), exact" in text
    aff = TaskAffinity.load(out)
    # the decay profile (every gap of 4 bins) and the conflicting shares, as the matrix has them
    profile = ", ".join(f"{g}: {np.diagonal(aff.matrix, g).mean():+.2f}" for g in (1, 2, 3))
    assert f"mean affinity by gap in bins: {profile}" in text
    below0 = (aff.matrix[np.triu_indices(4, 1)] < 0).mean()
    assert f"pairs below 0 / -0.2 / -0.3: {100 * below0:.1f}%" in text
    assert aff.matrix.shape == (4, 4) and aff.num_checkpoints == 2
    assert np.allclose(np.diag(aff.matrix), 1.0)
    meta = json.loads((out / "affinity.json").read_text())
    assert meta["model"]["num_parameters"] > 0 and meta["weights"] == "raw"
    assert meta["checkpoints"][0].endswith("step_000000002.pt")
    assert (out / "affinity.png").exists() and (out / "affinity_gap.png").exists()
    # A computed matrix is never silently replaced: a second call into the same --out stops
    # before computing anything (--force replaces it, as the pooling test below shows).
    capsys.readouterr()
    assert main(["affinity", str(tiny_run), "--bins", "2", "--out", str(out)]) == 2
    assert "already holds an affinity result" in capsys.readouterr().err
    assert TaskAffinity.load(out).matrix.shape == (4, 4)
    # The sketch mode is chosen by --sketch-dim.
    assert (
        main(
            [
                "affinity",
                str(tiny_run),
                "--bins",
                "4",
                "--images",
                "12",
                "--sketch-dim",
                "256",
                "--out",
                str(tmp_path / "sk"),
            ]
        )
        == 0
    )
    assert TaskAffinity.load(tmp_path / "sk").mode == "sketch"
    # The matrix feeds the affinity clustering as is.
    capsys.readouterr()
    assert (
        main(
            [
                "cluster",
                "--cost",
                "affinity",
                "--affinity",
                str(out / "affinity.npy"),
                "-k",
                "2",
                "--json",
            ]
        )
        == 0
    )
    clusters = json.loads(capsys.readouterr().out)
    assert clusters["k"] == 2 and clusters["cost_name"] == "affinity"
    assert clusters["intervals"][0][0] == 0 and clusters["intervals"][-1][1] == 999
    # And the report finds the run and the affinity output.
    assert main(["report", str(tiny_run), str(out), "--out", str(tmp_path / "rep")]) == 0
    report = (tmp_path / "rep" / "report.md").read_text()
    assert "## Task affinity (O1)" in report and "figures/affinity_aff.png" in report


def test_affinity_command_errors(tiny_run, tmp_path, capsys):
    assert main(["affinity", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["affinity", str(tiny_run), "--images", "5000", "--out", str(tmp_path / "o")]) == 2
    assert "lower --images" in capsys.readouterr().err
    assert (
        main(
            [
                "affinity",
                str(tiny_run),
                "--mode",
                "exact",
                "--sketch-dim",
                "64",
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )


def test_ntg_command_trains_specialists_with_the_joint_budget(tiny_run, tmp_path, capsys):
    out = tmp_path / "ntg"
    args = [
        "ntg",
        "--joint",
        str(tiny_run),
        "--intervals",
        "0-499,500-999",
        "--train-specialists",
        "--train-steps",
        "2",
        "--per-device",
        "2",
        "--out",
        str(out),
    ]
    assert main([*args, "--train-only"]) == 0
    for name in ("specialist_0000-0499_seed0", "specialist_0500-0999_seed0"):
        run = out / "specialists" / name
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        joint = yaml.safe_load((tiny_run / "config.yaml").read_text())
        assert cfg["diffusion"]["timestep_range"] in ([0, 499], [500, 999])
        assert cfg["model"] == joint["model"] and cfg["optim"] == joint["optim"]
        assert (run / "checkpoints" / "step_000000002.pt").exists()
    # Measuring needs reference statistics: a clear error, after the specialists are done.
    capsys.readouterr()
    assert main(args) == 2
    assert "--ref REF.npz" in capsys.readouterr().err
    assert (
        main(
            [
                "ntg",
                "--joint",
                str(tiny_run),
                "--specialists",
                str(tiny_run),
                "--ref",
                "x.npz",
                "--out",
                str(out),
            ]
        )
        == 2
    )
    assert "not a specialist" in capsys.readouterr().err


def test_affinity_command_pools_earlier_outputs_without_computing(tmp_path, capsys):
    from antdiff.analysis.affinity import TimestepBins

    dirs = []
    for i, scale in enumerate((3.0, 1.0)):
        gap = np.abs(np.arange(10)[:, None] - np.arange(10)[None, :])
        m = np.exp(-gap / scale)
        TaskAffinity(
            m, m[None], np.ones((1, 10)), TimestepBins.uniform(1000, 10), "exact", None, 8, 0,
            meta={"schedule": {"name": "linear", "num_timesteps": 1000},
                  "checkpoints": [f"seed{i}/step_5.pt"]},
        ).save(tmp_path / f"seed{i}")  # fmt: skip
        dirs.append(tmp_path / f"seed{i}")
    out = tmp_path / "mean"
    # a directory and a .npy of the other: both name an affinity output
    assert main(["affinity", str(dirs[0]), str(dirs[1] / "affinity.npy"), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "pooled 2 affinity results (2 checkpoints)" in text and "bin gradients" not in text
    pooled = TaskAffinity.load(out)
    expect = (TaskAffinity.load(dirs[0]).matrix + TaskAffinity.load(dirs[1]).matrix) / 2
    np.testing.assert_allclose(pooled.matrix, expect)
    assert pooled.meta["checkpoints"] == ["seed0/step_5.pt", "seed1/step_5.pt"]
    assert (out / "affinity.png").exists()
    # a run beside an affinity output: refused, nothing written
    assert main(["affinity", str(dirs[0]), str(tmp_path), "--out", str(tmp_path / "mixed")]) == 2
    assert "not affinity outputs" in capsys.readouterr().err
    assert not (tmp_path / "mixed").exists()
    # pooling again into the same folder needs --force
    assert main(["affinity", str(dirs[0]), str(dirs[1]), "--out", str(out)]) == 2
    assert "already holds an affinity result" in capsys.readouterr().err
    assert main(["affinity", str(dirs[0]), str(dirs[1]), "--out", str(out), "--force"]) == 0


def test_affinity_command_split_half_reports_the_measurements_reliability(
    tiny_run, tmp_path, capsys
):
    """--split-half: the same matrix, the two image halves' matrices beside it, their agreement
    printed; pooling two such outputs pools their halves (checkpoint-weighted, as the matrix)."""
    common = ["--bins", "5", "--images", "12", "--batch-size", "4"]
    outs = []
    for seed in (0, 1):
        out = tmp_path / f"split{seed}"
        argv = ["affinity", str(tiny_run), *common, "--seed", str(seed), "--out", str(out)]
        assert main([*argv, "--split-half"]) == 0
        outs.append(out)
    text = capsys.readouterr().out
    aff = TaskAffinity.load(outs[1])
    half = aff.meta["split_half"]
    assert half["images"] == [6, 6] and aff.halves is not None and aff.halves.shape == (2, 5, 5)
    assert (
        f"split-half: the matrices of 6 and 6 images agree at r = {half['r']:.2f}; "
        f"reliability of the whole (Spearman-Brown) {half['spearman_brown']:.2f}"
    ) in text
    assert (
        main(["affinity", str(tiny_run), *common, "--seed", "1", "--out", str(tmp_path / "p")]) == 0
    )
    np.testing.assert_allclose(TaskAffinity.load(tmp_path / "p").matrix, aff.matrix, atol=1e-6)
    # pooling refuses other draws (another seed is not the same TAS) but pools the same setting
    assert main(["affinity", str(outs[0]), str(outs[1]), "--out", str(tmp_path / "x")]) == 2
    capsys.readouterr()
    again = tmp_path / "again"
    assert (
        main(
            ["affinity", str(tiny_run), *common, "--seed", "1", "--out", str(again), "--split-half"]
        )
        == 0
    )
    assert main(["affinity", str(outs[1]), str(again), "--out", str(tmp_path / "pooled")]) == 0
    pooled = TaskAffinity.load(tmp_path / "pooled")
    np.testing.assert_allclose(pooled.halves, aff.halves, atol=1e-6)  # the same halves, twice
    assert pooled.meta["split_half"]["r"] == pytest.approx(half["r"], abs=1e-6)
