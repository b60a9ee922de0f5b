"""The reproduction-study driver (benchmarks/repro_cifar.py) trains a slice, evaluates on the way
and writes result files: checked end to end on CPU with a tiny stand-in feature network."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from _bench import load_benchmark

ROOT = Path(__file__).resolve().parents[1]
DRIVER = ROOT / "benchmarks" / "repro_cifar.py"


def _driver_module():
    """benchmarks/repro_cifar.py as a module (benchmarks/ is no package)."""
    return load_benchmark("repro_cifar")


def _table(out: Path, *folders: Path) -> subprocess.CompletedProcess[str]:
    """``repro_cifar.py table --from FOLDERS --results OUT``, output captured."""
    cmd = [
        sys.executable,
        str(DRIVER),
        "table",
        "--from",
        *map(str, folders),
        "--results",
        str(out),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


class _TinyFeatures(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 6, kernel_size=23, stride=23)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.conv(x)).mean(dim=(2, 3))


def test_grid_lists_the_protocol():
    out = subprocess.run(
        [sys.executable, str(DRIVER), "list", "phase1"], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    names = [line.split()[0] for line in out]
    protocol = [n for n in names if not n.startswith("diag-")]
    assert len(protocol) == 16  # 6 methods × 2 losses + a second seed of vanilla and ANT-UW
    assert {"vanilla-eps-s1", "timestep-uw-hybrid-s1", "p2-hybrid-s0", "minsnr-eps-s0"} <= set(
        names
    )
    # the diagnostics: vanilla with one setting changed (Adam's β₂), seeds 0 and 1, each loss
    diag = {line.split()[0]: line.split()[2:] for line in out if line.startswith("diag-")}
    assert set(diag) == {
        f"diag-adam099-vanilla-{lo}-s{s}" for lo in ("eps", "hybrid") for s in (0, 1)
    }
    by_name = {line.split()[0]: line.split()[2:] for line in out}
    for s in (0, 1):
        vanilla = by_name[f"vanilla-eps-s{s}"]
        assert diag[f"diag-adam099-vanilla-eps-s{s}"] == ["optim.betas=[0.9,", "0.99]", *vanilla]
    out2 = subprocess.run(
        [sys.executable, str(DRIVER), "list", "phase2", "--loss", "eps"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "logsnr-pcgrad-eps-s1" in out2 and "timestep-uw+p2-eps-s0" in out2
    # Phase 2's diagnostics: SNR × UW with t ~ U; the stratified timestep batch, plain mean
    by_name2 = {line.split()[0]: line.split()[1:] for line in out2.splitlines()}
    diag2 = sorted(n for n in by_name2 if n.startswith("diag-"))
    assert diag2 == ["diag-stratified-mean-eps-s0", "diag-tuniform-snr-uw-eps-s0"]
    preset, *sets = by_name2["diag-tuniform-snr-uw-eps-s0"]
    assert preset == by_name2["snr-uw-eps-s0"][0]
    assert sorted(sets) == sorted(["ant.sampling=uniform", *by_name2["snr-uw-eps-s0"][1:]])
    # protocol change 7: every Nash/PCGrad run, and only those, uses the engine's vmap mode
    rows = [line.split() for line in [*out, *out2.splitlines()]]
    for row in rows:
        gradient_balancer = "-nash-" in row[0] or "-pcgrad-" in row[0]
        assert ("ant.engine=vmap" in row) == gradient_balancer, row


def test_engine_of_each_balancer_cell_follows_protocol_changes_7_and_8(tmp_path):
    """Nash and PCGrad take their per-cluster gradients from vmap (change 7), except Phase 2's
    hybrid PCGrad cells: split, padded to one width, under CUDA graphs (change 8). Each listed
    run's config loads as the driver builds it, so a session cannot meet a refused combination
    on the device; UW and the reference cells name no engine."""
    from antdiff.training.config import load_config

    repro = _driver_module()
    matrix = ROOT / "benchmarks/results/repro/phase2_affinity/affinity-vanilla-hybrid-mean.npy"
    vmap, graphs = ("vmap", False, "default"), ("split", True, "reduce-overhead")
    expected = {
        ("phase1", "timestep-pcgrad-hybrid-s0"): vmap,
        ("phase1", "timestep-nash-eps-s0"): vmap,
        ("phase2", "affinity-pcgrad-eps-s1"): vmap,
        ("phase2", "timestep-nash-hybrid-s0"): vmap,
        **{("phase2", f"{c}-pcgrad-hybrid-s{s}"): graphs for c in repro.COSTS for s in (0, 1)},
    }
    for (slice_name, run), want in expected.items():
        loss = run.split("-")[-2]
        preset, overrides = repro.grid(slice_name, loss)[run]
        cfg = load_config(
            repro.CONFIGS / preset,
            [f"run.dir={tmp_path / run}", "data.spec=digits", f"ant.affinity={matrix}", *overrides],
        )
        assert (cfg.ant.engine, cfg.ant.pad_split, cfg.train.compile_mode) == want, run
    for loss in repro.LOSSES:
        for run, (_, overrides) in repro.grid("phase2", loss).items():
            if "-nash-" not in run and "-pcgrad-" not in run:
                assert not any(o.startswith("ant.engine") for o in overrides), run


def test_phase2_diagnostics_change_one_setting_of_a_protocol_cell(tmp_path):
    """Each Phase-2 diagnostic is its protocol cell with the named setting changed (seed 0):
    t ~ U for SNR × UW; plain averaging over the stratified timestep clusters (the batch of every
    ANT timestep cell without a balancer); with the hybrid loss only, ANT-UW + P2 with the
    weighting on the whole hybrid loss (it changes nothing without the L_vlb term)."""
    from antdiff.training.config import load_config

    repro = _driver_module()
    for loss in repro.LOSSES:
        runs = repro.grid("phase2", loss)
        diags = sorted(r for r in runs if r.startswith("diag-"))
        expected = [f"diag-stratified-mean-{loss}-s0", f"diag-tuniform-snr-uw-{loss}-s0"]
        if loss == "hybrid":
            expected.append("diag-uw+p2-weightvlb-hybrid-s0")
        assert diags == sorted(expected)
        preset, overrides = runs[f"diag-stratified-mean-{loss}-s0"]
        cell_preset, cell = runs[f"timestep-uw-{loss}-s0"]
        assert preset == cell_preset and sorted(overrides) == sorted(["ant.balancer=mean", *cell])
        cfg = load_config(
            repro.CONFIGS / preset, [f"run.dir={tmp_path / loss}", "data.spec=digits", *overrides]
        )
        assert (cfg.ant.enabled, cfg.ant.balancer, cfg.ant.cost) == (True, "mean", "timestep")
        assert cfg.ant.sampling == "stratified"
    runs = repro.grid("phase2", "hybrid")
    preset, overrides = runs["diag-uw+p2-weightvlb-hybrid-s0"]
    cell_preset, cell = runs["timestep-uw+p2-hybrid-s0"]
    assert preset == cell_preset
    assert sorted(overrides) == sorted(["diffusion.weight_vlb=true", *cell])
    cfg = load_config(
        repro.CONFIGS / preset, [f"run.dir={tmp_path / 'vlb'}", "data.spec=digits", *overrides]
    )
    assert (cfg.diffusion.weighting, cfg.diffusion.learned_variance) == ("p2", True)
    assert cfg.diffusion.weight_vlb and cfg.ant.balancer == "uw" and cfg.ant.cost == "timestep"


@pytest.mark.filterwarnings("ignore:`torch.jit.:DeprecationWarning")
def test_smoke_slice_trains_evaluates_and_writes_results(tmp_path):
    from antdiff.data import load_images_uint8
    from antdiff.evaluation import InceptionFeatures, compute_reference_stats

    torch.manual_seed(0)
    net = tmp_path / "net.pt"
    torch.jit.save(torch.jit.script(_TinyFeatures().eval()), str(net))
    real = load_images_uint8("digits", 40, resolution=8, channels=3)
    compute_reference_stats(
        real, InceptionFeatures.from_path(net, device="cpu"), dataset="digits"
    ).save(tmp_path / "ref.npz")
    results = tmp_path / "results"
    cmd = [
        sys.executable, str(DRIVER), "train", "phase1", "--smoke", "--data", "digits",
        "--ref", str(tmp_path / "ref.npz"), "--inception", str(net), "--steps", "2",
        "--eval-every", "1", "--eval-n", "12", "--root", str(tmp_path / "runs"),
        "--results", str(results), "--devices", "cpu",
        "--only", "vanilla-eps-s0,timestep-uw-hybrid-s0", "--set", "train.log_every=1",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    files = sorted(results.glob("*.json"))
    assert [f.name for f in files] == [
        "phase1-timestep-uw-hybrid-s0.json",
        "phase1-vanilla-eps-s0.json",
    ]
    uw = json.loads(files[0].read_text())
    assert uw["config"]["ant"]["balancer"] == "uw" and uw["config"]["diffusion"]["learned_variance"]
    assert uw["iterations"] == 2 and [p["step"] for p in uw["curve"]] == [1, 2]
    assert all(p["n"] == 12 and p["fid"] > 0 and 0 <= p["precision"] <= 1 for p in uw["curve"])
    assert all(p["seconds"]["sampling"] > 0 for p in uw["curve"])  # what each evaluation cost
    assert len(uw["git_commit"]) in (40, 7) or uw["git_commit"] == "unknown"
    # the code that ran, identified by content (a device's .git can be stale)
    repro_cifar = _driver_module()
    assert uw["source_digest"] == repro_cifar.source_digest() and len(uw["source_digest"]) == 64
    van = json.loads(files[1].read_text())
    assert van["config"]["ant"]["enabled"] is False and van["seed"] == 0
    # The study evaluates EMA weights from a few thousand steps on: EMA warm-up must be on.
    assert uw["config"]["ema"]["warmup"] is True and van["config"]["ema"]["decay"] == 0.9999
    assert uw["config"]["train"]["log_every"] == 1 == van["config"]["train"]["log_every"]  # --set

    # The training-side summary covers the same runs, with the UW weights of the ANT run.
    summary = [sys.executable, str(DRIVER), "summary", "--root", str(tmp_path / "runs"),
               "--results", str(tmp_path / "summary")]  # fmt: skip
    proc = subprocess.run(summary, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {r["run"]: r for r in json.loads((tmp_path / "summary" / "summary.json").read_text())}
    assert set(rows) == {"vanilla-eps-s0", "timestep-uw-hybrid-s0"}
    assert rows["timestep-uw-hybrid-s0"]["loss_type"] == "hybrid"
    assert (
        rows["vanilla-eps-s0"]["method"] == "vanilla" and rows["vanilla-eps-s0"]["iterations"] == 2
    )
    assert len(rows["timestep-uw-hybrid-s0"]["uw_weights_last"]) == 5
    assert [s for s, _ in rows["timestep-uw-hybrid-s0"]["evals"]] == [1, 2]
    table = (tmp_path / "summary" / "summary.md").read_text()
    assert "| timestep-uw-hybrid-s0 | 2 |" in table and "| vanilla-eps-s0 | 2 |" in table
    # no CUDA here: the trainer logs no peak memory, and the table says so rather than inventing
    assert uw["train_peak_mem_gib"] is None and rows["vanilla-eps-s0"]["eval_peak_mem_gib"] is None
    assert "| — / — |" in table
    # the hybrid run's loss parts per cluster (ε-MSE + λ·T·L_t = its cluster losses); the plain
    # ε-MSE run has none: its loss is the MSE
    uwr, vr = rows["timestep-uw-hybrid-s0"], rows["vanilla-eps-s0"]
    assert vr["cluster_mse_tail"] is None and vr["cluster_vb_tail"] is None
    parts = np.add(uwr["cluster_mse_tail"], uwr["cluster_vb_tail"])
    np.testing.assert_allclose(parts, uwr["cluster_losses_tail"], rtol=1e-5)
    section = table.split("Parts of the loss per cluster", 1)[1]
    assert "| timestep-uw-hybrid-s0 |" in section and "vanilla-eps-s0" not in section


def test_peak_memory_reads_the_largest_window_and_evaluation(tmp_path):
    repro_cifar = _driver_module()
    lines = [
        {"step": 100, "loss": 1.0, "peak_mem_gib": 9.5},
        {"step": 200, "loss": 0.9, "peak_mem_gib": 9.75},
        {"step": 200, "eval": {"fid": 50.0}, "eval_peak_mem_gib": 3.25},
        {"step": 300, "loss": 0.8, "peak_mem_gib": 9.6},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    from antdiff.analysis.logs import read_training_log

    assert repro_cifar.peak_memory(read_training_log(tmp_path)) == {
        "train_peak_mem_gib": 9.75,
        "eval_peak_mem_gib": 3.25,
    }


def test_source_digest_follows_the_code(tmp_path):
    repro_cifar = _driver_module()
    (tmp_path / "src" / "antdiff" / "__pycache__").mkdir(parents=True)
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "repro_cifar.py").write_text("# driver\n")
    (tmp_path / "src" / "antdiff" / "a.py").write_text("x = 1\n")
    first = repro_cifar.source_digest(tmp_path)
    (tmp_path / "src" / "antdiff" / "__pycache__" / "a.pyc").write_bytes(b"\0")  # not code
    (tmp_path / "src" / "antdiff" / "notes.txt").write_text("not code either\n")
    assert repro_cifar.source_digest(tmp_path) == first
    (tmp_path / "src" / "antdiff" / "a.py").write_text("x = 2\n")
    assert repro_cifar.source_digest(tmp_path) != first


def test_cells_figure_takes_the_step_with_the_most_cells(tmp_path):
    """A grid evaluated at one budget (Phase 2) has no curves: ``cells.png`` draws every cell at
    the step where most cells have an FID (the later of a tie), once there are three."""
    repro_cifar = _driver_module()

    def pts(fid):
        return {"fid": [fid, fid + 1.0], "precision": [0.6, 0.62], "recall": [0.3, 0.31]}

    rows = {
        "vanilla-eps": {2500: pts(198.0), 5000: pts(41.0)},
        "timestep-uw-eps": {2500: pts(98.0), 5000: pts(49.0)},
        "minsnr-eps": {5000: pts(31.0)},
        "diag-tuniform-snr-uw-eps": {5000: {"fid": [55.9]}},  # FID only: the other panels skip it
    }
    assert repro_cifar._cells_step(rows) == 5000
    assert repro_cifar._cells_step({c: rows[c] for c in ("vanilla-eps", "minsnr-eps")}) is None
    tie = {c: {2500: pts(1.0), 5000: pts(2.0)} for c in ("a", "b", "c")}
    assert repro_cifar._cells_step(tie) == 5000
    path = repro_cifar._plot_cells(rows, 5000, tmp_path / "cells.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_table_averages_seeds_bolds_the_best_and_draws_the_curves(tmp_path):
    src = tmp_path / "results"
    src.mkdir()

    def result(run, seed, curve):
        pts = [
            {"step": st, "n": 5000, "fid": f, "precision": p, "recall": r, "floor": 5.8}
            for st, f, p, r in curve
        ]
        (src / f"phase1-{run}.json").write_text(
            json.dumps({"run": run, "seed": seed, "curve": pts})
        )

    result("vanilla-hybrid-s0", 0, [(2500, 200.0, 0.30, 0.10), (5000, 100.0, 0.5, 0.2)])
    result("vanilla-hybrid-s1", 1, [(2500, 196.0, 0.34, 0.06), (5000, 110.0, 0.5, 0.2)])
    result("timestep-uw-hybrid-s0", 0, [(2500, 104.0, 0.65, 0.05)])  # stopped before 5000
    out = tmp_path / "table"
    cmd = [sys.executable, str(DRIVER), "table", "--from", str(src), "--results", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    md = (out / "table.md").read_text()
    first, second = md.split("### 5000 iterations")
    assert "### 2500 iterations (n = 5000; real-vs-real floor 5.80)" in first
    # sorted by FID; the best mean of each column in bold; seeds averaged ± half their range
    assert first.index("| timestep-uw-hybrid | 1 | **104.0** | **0.650** |") < first.index(
        "| vanilla-hybrid | 2 | 198.0 ± 2.0 (200.0, 196.0) | 0.320 ± 0.020 (0.300, 0.340) | "
        "**0.080 ± 0.020** (0.100, 0.060) |"
    )
    assert "timestep-uw-hybrid" not in second.split("Mean over seeds")[0]  # never reached 5000
    assert "| vanilla-hybrid | 2 | **105.0 ± 5.0** (100.0, 110.0) |" in second
    data = json.loads((out / "table.json").read_text())
    assert data["cells"]["5000"]["vanilla-hybrid"]["fid"] == [100.0, 110.0]
    # ANT-UW's 104 at 2500 is already below vanilla's last mean (105 at 5000): 2x faster
    assert "| timestep-uw-hybrid | 105.0 (5000) | 2500 | ≥ 2.00× | none |" in md
    assert data["convergence"]["timestep-uw-hybrid"]["steps_to_target"] == 2500
    # vanilla's FID at each of its steps: 198.0 reached at ANT-UW's first evaluation (no upper
    # bound on the speed-up), 105.0 too: at 2500, 5000/2500 = 2× at least
    at_each = md.split("### Iterations to vanilla's FID at each of its evaluated steps")[1]
    assert "| timestep-uw-hybrid | 198.0: 2500 (≥ 1.00×) | 105.0: 2500 (≥ 2.00×) |" in at_each
    assert (out / "fid_curves.png").stat().st_size > 1000
    assert not (out / "cells.png").exists()  # two cells at most at a step: the curves say it

    empty = tmp_path / "empty"
    empty.mkdir()
    bad = _table(out, empty)
    assert bad.returncode != 0 and "run `collect` first" in bad.stderr


def test_table_counts_a_run_repeated_in_a_later_folder_once_and_lists_the_repeat(tmp_path):
    def result(folder, run, seed, curve):
        folder.mkdir(exist_ok=True)
        pts = [
            {"step": st, "n": 5000, "fid": f, "precision": 0.5, "recall": 0.3} for st, f in curve
        ]
        (folder / f"phase1-{run}.json").write_text(
            json.dumps({"run": run, "seed": seed, "curve": pts})
        )

    long, short = tmp_path / "long", tmp_path / "short"
    result(long, "vanilla-eps-s0", 0, [(5000, 42.5), (10000, 23.4)])
    result(short, "vanilla-eps-s0", 0, [(2500, 199.5), (5000, 43.2)])  # same seed, earlier slice
    result(short, "vanilla-eps-s1", 1, [(2500, 196.5), (5000, 43.7)])
    out = tmp_path / "table"
    cmd = [sys.executable, str(DRIVER), "table", "--from", str(long), str(short), "--results",
           str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads((out / "table.json").read_text())
    # seed 0 counts once at 5000 (the first folder's 42.5), beside seed 1: not three seeds
    assert data["cells"]["5000"]["vanilla-eps"]["fid"] == [42.5, 43.7]
    assert data["cells"]["2500"]["vanilla-eps"]["fid"] == [199.5, 196.5]  # new steps still count
    assert data["repeats"] == [{
        "run": "vanilla-eps-s0", "step": 5000,
        "kept": {"folder": str(long), "fid": 42.5}, "repeat": {"folder": str(short), "fid": 43.2},
    }]  # fmt: skip
    md = (out / "table.md").read_text()
    assert "vanilla-eps (seeds [0, 1])" in md
    assert f"| vanilla-eps-s0 | 5000 | 42.5 ({long}) | 43.2 ({short}) |" in md

    # a Phase-2 point at the same step but n = 10,000 is not the same measurement: refused
    final = tmp_path / "final"
    final.mkdir()
    pts = [{"step": 5000, "n": 10000, "fid": 41.0, "precision": 0.5, "recall": 0.3}]
    (final / "phase2-vanilla-eps-s0.json").write_text(
        json.dumps({"run": "vanilla-eps-s0", "seed": 0, "curve": pts})
    )
    bad = subprocess.run(cmd[:-2] + [str(final), "--results", str(out)], capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert bad.returncode != 0 and "has n = 10000" in bad.stderr
    assert "tabulate each n on its own" in bad.stderr


def test_table_adds_o2_over_training_seeds_from_the_ntg_results_of_each_session(tmp_path):
    from antdiff.analysis.ntg import FIDMeasurement, compute_ntg

    intervals = [(0, 199), (200, 399), (400, 599), (600, 799), (800, 999)]

    def session(folder, run, seed, joint, hybrids, iterations=5000, meta=None):
        folder.mkdir(exist_ok=True)
        pts = [{"step": 5000, "n": 5000, "fid": joint, "precision": 0.5, "recall": 0.3}]
        (folder / f"phase1-{run}.json").write_text(json.dumps(
            {"run": run, "seed": seed, "curve": pts, "iterations": iterations}
        ))  # fmt: skip
        ms = [FIDMeasurement(joint, 0, n=5000, floor=5.8)] + [
            FIDMeasurement(h, 0, iv, specialist_seed=seed, n=5000, floor=5.8)
            for iv, h in zip(intervals, hybrids)
        ]
        compute_ntg(ms, intervals, meta=meta).save(folder / f"ntg-{run}")

    s0, s1 = tmp_path / "o2-s0", tmp_path / "o2-s1"
    steps = {f"{a}-{b}": [5000] for a, b in intervals}  # what antdiff ntg records
    session(s0, "vanilla-hybrid-s0", 0, 40.0, [44.0, 40.5, 39.0, 35.0, 33.0],
            meta={"specialist_steps": steps, "cards": ["NVIDIA H100 80GB HBM3"]})  # fmt: skip
    session(s1, "vanilla-hybrid-s1", 1, 42.0, [45.0, 42.0, 41.0, 38.0, 36.0])
    short = {f"{a}-{b}": [4000] for a, b in intervals}  # specialists stopped early
    session(s0, "timestep-uw-hybrid-s0", 0, 50.0, [51.0, 50.0, 49.0, 48.0, 47.0],
            meta={"specialist_steps": short})  # fmt: skip
    out = tmp_path / "table"
    # the newer session first, as a table over several slices lists them: values stay in seed order
    cmd = [sys.executable, str(DRIVER), "table", "--from", str(s1), str(s0), "--results",
           str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads((out / "table.json").read_text())["ntg"]
    # one NTG per training seed and interval: seed 0's [1, 200] is 44 - 40, seed 1's 45 - 42
    assert data["vanilla-hybrid"]["seeds"] == [0, 1]
    assert data["vanilla-hybrid"]["ntg"][0] == [4.0, 3.0]
    assert data["vanilla-hybrid"]["ntg"][4] == [-7.0, -6.0]
    assert data["vanilla-hybrid"]["fid_joint"] == [40.0, 42.0]
    assert data["vanilla-hybrid"]["joint_iterations"] == [5000, 5000]
    md = (out / "table.md").read_text()
    o2 = md.split("### O2: negative transfer gap per interval")[1]
    assert (
        "| vanilla-hybrid | 2 | 41.0 ± 1.0 (40.0, 42.0) | +3.5 ± 0.5 (+4.0, +3.0) | "
        "+0.2 ± 0.2 (+0.5, +0.0) | -1.0 ± 0.0 (-1.0, -1.0) | -4.5 ± 0.5 (-5.0, -4.0) | "
        "-6.5 ± 0.5 (-7.0, -6.0) |"
    ) in o2
    assert "| timestep-uw-hybrid | 1 | 50.0 | +1.0 | +0.0 | -1.0 | -2.0 | -3.0 |" in o2
    # the hybrids' own FIDs, per joint model: seed 0's [1, 200] hybrid 44, seed 1's 45
    assert "| vanilla-hybrid | 44.5 ± 0.5 (44.0, 45.0) | 41.2 ± 0.8 (40.5, 42.0) |" in o2
    assert "| timestep-uw-hybrid | 51.0 | 50.0 | 49.0 | 48.0 | 47.0 |" in o2
    assert "| paper, ADM (Fig. 2, read from the chart) | — | — | +4.60 |" in o2
    # provenance where the NTG recorded it; seed 1's older table did not ("?")
    assert (
        "specialists' iterations per seed: 5000, ?; measured on NVIDIA H100 80GB HBM3; from" in o2
    )
    # specialists that did not reach the joint model's iterations are flagged, not hidden
    uw_line = next(x for x in o2.splitlines() if x.startswith("- timestep-uw-hybrid:"))
    assert "specialists' iterations per seed: 4000 — **seed(s) 0: specialists not at" in uw_line
    assert (out / "ntg.png").stat().st_size > 1000

    # an O2 session whose joints skipped periodic evaluation has NTG results and the copied
    # training log, no result file: tabulated alone, its iterations read from the log
    only = tmp_path / "o2-only"
    session(only, "vanilla-hybrid-s3", 3, 40.0, [42.0, 40.0, 39.0, 37.0, 36.0])
    (only / "phase1-vanilla-hybrid-s3.json").unlink()
    (only / "runs" / "vanilla-hybrid-s3").mkdir(parents=True)
    (only / "runs" / "vanilla-hybrid-s3" / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": st, "loss": 0.1}) + "\n" for st in (4900, 5000))
    )
    out2 = tmp_path / "table-o2"
    proc = _table(out2, only)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data2 = json.loads((out2 / "table.json").read_text())
    o2 = data2["ntg"]["vanilla-hybrid"]
    assert o2["ntg"][0] == [2.0] and o2["joint_iterations"] == [5000]
    # its joint FID is the run's point at its last step, marked as coming from the NTG
    assert data2["cells"]["5000"]["vanilla-hybrid"] == {"fid": [40.0], "fid_from_ntg_seeds": [3]}
    md2 = (out2 / "table.md").read_text()
    assert "| vanilla-hybrid † | 1 | **40.0** | — | — |" in md2
    assert "joint FID of its NTG measurement" in md2 and "seed(s) vanilla-hybrid 3" in md2
    assert (out2 / "ntg.png").exists() and (out2 / "fid_curves.png").exists()
    # beside a periodic evaluation of another seed at that step, the NTG point adds a seed
    (only / "phase1-vanilla-hybrid-s4.json").write_text(json.dumps({
        "run": "vanilla-hybrid-s4", "seed": 4,
        "curve": [{"step": 5000, "n": 5000, "fid": 44.0, "precision": 0.5, "recall": 0.3}],
    }))  # fmt: skip
    proc = _table(out2, only)
    assert proc.returncode == 0, proc.stderr[-2000:]
    cell = json.loads((out2 / "table.json").read_text())["cells"]["5000"]["vanilla-hybrid"]
    assert cell["fid"] == [40.0, 44.0] and cell["precision"] == [0.5]
    assert cell["fid_from_ntg_seeds"] == [3]

    # a seed measured on other intervals cannot be averaged with the first: a clear error
    bad = tmp_path / "o2-bad"
    bad.mkdir()
    (bad / "phase1-vanilla-hybrid-s2.json").write_text(
        json.dumps({"run": "vanilla-hybrid-s2", "seed": 2, "curve": []})
    )
    ms = [FIDMeasurement(40.0, 0, n=5000), FIDMeasurement(41.0, 0, (0, 499), 2, n=5000),
          FIDMeasurement(39.0, 0, (500, 999), 2, n=5000)]  # fmt: skip
    compute_ntg(ms).save(bad / "ntg-vanilla-hybrid-s2")
    proc = subprocess.run(cmd[:-2] + [str(bad), "--results", str(out)], capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode != 0 and "measure every seed of a cell on the same intervals" in (
        proc.stderr
    )


def test_convergence_finds_where_curves_cross_and_the_steps_to_vanillas_fid():
    convergence = _driver_module().convergence
    curves = {
        "vanilla-eps": {2500: 198.0, 5000: 43.5, 7500: 30.0},
        "timestep-uw-eps": {2500: 98.0, 5000: 51.2, 7500: 29.0},  # ahead, behind, ahead again
        "minsnr-eps": {2500: 165.8, 5000: 34.0},  # ahead throughout, stopped before 7500
        "p2-eps": {2500: 184.3, 5000: 52.1},  # never reaches vanilla's 30.0
        "vanilla-hybrid": {2500: 198.3},
        "timestep-uw-hybrid": {2500: 104.4},
        "minsnr-hybrid": {2500: 168.3},  # compared with vanilla-hybrid, never with vanilla-eps
    }
    conv = convergence(curves)
    assert set(conv) == {"timestep-uw-eps", "minsnr-eps", "p2-eps", "timestep-uw-hybrid",
                         "minsnr-hybrid"}  # fmt: skip
    uw = conv["timestep-uw-eps"]
    assert uw["target"] == {"step": 7500, "fid": 30.0}
    assert uw["steps_to_target"] == 7500 and uw["speedup"] == 1.0
    assert uw["crossings"] == [
        {"between": [2500, 5000], "from": "ahead", "to": "behind"},
        {"between": [5000, 7500], "from": "behind", "to": "ahead"},
    ]
    assert conv["minsnr-eps"]["crossings"] == [] and conv["minsnr-eps"]["steps_to_target"] is None
    assert conv["p2-eps"]["steps_to_target"] is None and conv["p2-eps"]["speedup"] is None
    assert conv["minsnr-hybrid"]["vanilla"] == "vanilla-hybrid"
    assert conv["minsnr-hybrid"]["steps_to_target"] == 2500  # 168.3 <= 198.3 at the same step
    assert conv["minsnr-hybrid"]["speedup"] == 1.0
    # vanilla's FID at each of its steps: the iterations needed, bracketed by the evaluations
    by_step = {t["step"]: t for t in uw["targets"]}
    assert [t["step"] for t in uw["targets"]] == [2500, 5000, 7500]
    assert by_step[2500]["reached_at"] == 2500
    assert by_step[2500]["speedup_range"] == [1.0, None]  # its first evaluation: no upper bound
    assert by_step[5000]["reached_at"] == 7500  # 43.5 first reached after 5000 (51.2), by 7500
    np.testing.assert_allclose(by_step[5000]["speedup_range"], [5000 / 7500, 1.0])
    np.testing.assert_allclose(by_step[7500]["speedup_range"], [1.0, 7500 / 5000])
    minsnr = {t["step"]: t for t in conv["minsnr-eps"]["targets"]}
    np.testing.assert_allclose(minsnr[5000]["speedup_range"], [1.0, 2.0])
    assert minsnr[7500]["reached_at"] is None and minsnr[7500]["speedup_below"] == 1.5
    assert "speedup_range" not in minsnr[7500]
    assert [t["step"] for t in conv["minsnr-hybrid"]["targets"]] == [2500]  # its vanilla's steps


def test_cluster_loss_ratios_pair_each_balanced_run_with_vanilla_of_its_loss_and_seed(tmp_path):
    import yaml

    repro_cifar = _driver_module()

    from antdiff.clustering import TaskClusters

    def run(
        name,
        balancer,
        seed,
        learned,
        weighting,
        losses,
        intervals=((0, 499), (500, 999)),
        bins=None,
        marked=False,
        extra=None,
    ):
        d = tmp_path / "slice" / "runs" / name
        d.mkdir(parents=True)
        TaskClusters(intervals, 1000).to_json(d / "clusters.json")
        cfg = {
            "run": {"seed": seed},
            "ant": {"enabled": balancer is not None, "balancer": balancer or "uw", "k": 2},
            "diffusion": {"learned_variance": learned, "weighting": weighting},
        }
        (d / "config.yaml").write_text(yaml.safe_dump(cfg))
        lines = [
            {"step": 100 * (i + 1), "loss": 1.0, "cluster_losses": c} for i, c in enumerate(losses)
        ]
        for line, b in zip(lines, bins or []):  # train.log_loss_bins: fixed bins of t
            line["bin_losses"] = b
            if marked:  # the trainer's means over t ~ U in each bin (twelfth session on)
                line["bin_mean"] = "uniform_t"
            line |= extra or {}
        (d / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
        return d

    van = [[1.0, 0.1]] * 6
    runs = [
        # a diagnostic (vanilla balancer, another optimiser setting): never the reference
        run("diag-adam099-vanilla-eps-s0", None, 0, False, "none", [[7.0, 0.7]] * 6),
        run("vanilla-eps-s0", None, 0, False, "none", van),
        run("vanilla-eps-s1", None, 1, False, "none", [[2.0, 0.2]] * 6),
        # seeds 3 and 4: pairs that logged 4 fixed bins of t, where other clusters compare;
        # seed 4's lines hold means over t ~ U in each bin, seed 3's older sample means
        *[
            r
            for seed, marked in ((3, False), (4, True))
            for r in (
                run(
                    f"vanilla-eps-s{seed}",
                    None,
                    seed,
                    False,
                    "none",
                    van,
                    bins=[[1.0, 0.5, 0.2, 0.1]] * 6,
                    marked=marked,
                ),
                run(
                    f"logsnr-uw-eps-s{seed}",
                    "uw",
                    seed,
                    False,
                    "none",
                    [[5.0, 0.1]] * 6,
                    ((0, 149), (150, 999)),
                    bins=[[2.0, 0.5, 0.1, 0.1]] * 6,
                    marked=marked,
                ),
            )
        ],  # fmt: skip
        run("vanilla-hybrid-s0", None, 0, True, "none", [[4.0, 0.4]] * 6),
        # ANT-UW, ε-MSE, seed 0: cluster 0 rises from 1.0 to 1.2, cluster 1 halves
        run("uw-eps-s0", "uw", 0, False, "none", [[1.0, 0.1]] * 2 + [[1.2, 0.05]] * 4),
        run("minsnr-eps-s0", None, 0, False, "min_snr", [[9.0, 9.0]] * 6),  # weighted: left out
        # weighted, with its unweighted MSE per bin (bin_mse): compared on the bins, its own
        # bin_losses (w(t)·MSE) never
        run(
            "minsnr-eps-s4",
            None,
            4,
            False,
            "min_snr",
            [[0.3, 0.1]] * 6,
            bins=[[0.01, 0.5, 0.2, 0.1]] * 6,
            marked=True,
            extra={"bin_mse": [1.5, 0.5, 0.2, 0.05]},
        ),
        # ... but seed 0's vanilla logged no bins
        run(
            "p2-eps-s0",
            None,
            0,
            False,
            "p2",
            [[0.3, 0.1]] * 6,
            bins=[[0.01] * 4] * 6,
            marked=True,
            extra={"bin_mse": [1.0] * 4},
        ),
        run("uw-eps-s2", "uw", 2, False, "none", van),  # no vanilla of seed 2: left out
        # SNR clusters: its cluster 0 is t = 0..4, vanilla's 0..499 — other timesteps
        run("snr-uw-eps-s1", "uw", 1, False, "none", [[9.0, 0.1]] * 6, ((0, 4), (5, 999))),
    ]
    left_out = {}
    got = repro_cifar.cluster_loss_ratios(runs, window=2, left_out=left_out)
    assert set(got) == {"uw-eps-s0", "logsnr-uw-eps-s3", "logsnr-uw-eps-s4", "minsnr-eps-s4"}
    assert left_out == {
        "snr-uw-eps-s1": "clusters [0, 4], [5, 999] are not vanilla-eps-s1's [0, 499], [500, 999]"
        ", and the logs hold no common bins of t",
        "p2-eps-s0": "its loss is weighted and vanilla-eps-s0 logged no bins of t",
    }
    m = got["minsnr-eps-s4"]
    assert m["over"] == "bins" and m["vanilla"] == "vanilla-eps-s4" and m["uneven"] == []
    np.testing.assert_allclose(m["last"], [1.5, 1.0, 1.0, 0.5])
    assert got["uw-eps-s0"]["over"] == "clusters" and "intervals" not in got["uw-eps-s0"]
    b = got["logsnr-uw-eps-s3"]
    assert b["over"] == "bins" and b["vanilla"] == "vanilla-eps-s3"
    assert b["intervals"] == [[0, 249], [250, 499], [500, 749], [750, 999]]
    # its stratified sampler drew t ≤ 149 5.7× as often per timestep as the rest of [0, 249]:
    # that bin's logged sample mean leans to them, so it is left out (None)
    assert b["uneven"] == [0] and b["last"][0] is None
    np.testing.assert_allclose(b["last"][1:], [1.0, 0.5, 1.0])
    b = got["logsnr-uw-eps-s4"]  # means over t ~ U: every bin compares
    assert b["uneven"] == [] and b["vanilla"] == "vanilla-eps-s4"
    np.testing.assert_allclose(b["last"], [2.0, 1.0, 0.5, 1.0])
    assert repro_cifar.cluster_loss_ratios(runs, window=2).keys() == got.keys()
    r = got["uw-eps-s0"]
    assert r["vanilla"] == "vanilla-eps-s0"  # same loss and seed, not the hybrid or seed 1
    assert r["steps"] == [200, 300, 400, 500, 600]
    np.testing.assert_allclose(r["ratio"][0], [1.0, 1.0])
    np.testing.assert_allclose(r["ratio"][1], [1.1, 0.75])  # rolling mean over two windows
    np.testing.assert_allclose(r["last"], [1.2, 0.5])
    # `table` finds the run folders beside the result files: a table section (five-window
    # means: (1.0 + 4 x 1.2) / 5 = 1.16 and 0.06 / 0.1) and a figure
    point = {"step": 600, "n": 10, "fid": 50.0, "precision": 0.5, "recall": 0.5, "floor": 1.0}
    (tmp_path / "slice" / "phase1-vanilla-eps-s0.json").write_text(
        json.dumps({"run": "vanilla-eps-s0", "seed": 0, "curve": [point]})
    )
    out = tmp_path / "table"
    cmd = [
        sys.executable,
        str(DRIVER),
        "table",
        "--from",
        str(tmp_path / "slice"),
        "--results",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = (out / "table.md").read_text()
    assert "| uw-eps-s0 | vanilla-eps-s0 | 600 | clusters | 1.16, 0.60 |" in text
    assert "| logsnr-uw-eps-s3 | vanilla-eps-s3 | 600 | 4 bins of t | —, 1.00, 0.50, 1.00 |" in text
    assert "— : a bin that the run's or vanilla's log holds as the sample mean" in text
    assert (
        "| logsnr-uw-eps-s4 | vanilla-eps-s4 | 600 | 4 bins of t | 2.00, 1.00, 0.50, 1.00 |" in text
    )
    assert "| snr-uw-eps-s1 |" not in text
    assert "snr-uw-eps-s1: clusters [0, 4], [5, 999] are not vanilla-eps-s1's" in text
    saved = json.loads((out / "table.json").read_text())
    assert "| minsnr-eps-s4 | vanilla-eps-s4 | 600 | 4 bins of t | 1.50, 1.00, 1.00, 0.50 |" in text
    assert "p2-eps-s0: its loss is weighted and vanilla-eps-s0 logged no bins of t" in text
    assert set(saved["cluster_loss_ratio_left_out"]) == {"snr-uw-eps-s1", "p2-eps-s0"}
    assert (out / "cluster_loss_ratio.png").stat().st_size > 1000


def test_cluster_loss_ratio_figure_names_the_colours_in_a_panel_without_seed_0(tmp_path):
    import warnings

    repro_cifar = _driver_module()
    ratios = {
        "uw-eps-s0": {"steps": [100, 200], "ratio": [[1.0, 1.0], [1.1, 0.8]]},
        "uw-eps-s1": {"steps": [100, 200], "ratio": [[1.0, 1.0], [1.2, 0.7]]},
        # a cell compared in its second seed only (its seed 0 has other clusters than vanilla's)
        "affinity-uw-eps-s1": {
            "steps": [100, 200],
            "ratio": [[1.0, 1.0, 1.0], [0.9, 1.0, 0.5]],
            "over": "bins",
        },
    }
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warns when a legend has nothing to name
        path = repro_cifar._plot_cluster_loss_ratios(ratios, tmp_path / "ratio.png")
    assert path.stat().st_size > 1000


def test_table_adds_o1_per_affinity_matrix_with_decay_conflicts_and_agreement(tmp_path):
    from antdiff.analysis.affinity import TaskAffinity, TimestepBins

    n = 10
    gap = np.abs(np.arange(n)[:, None] - np.arange(n)[None, :])

    def matrix(folder, run, step, m):
        aff = TaskAffinity(
            m, m[None], np.ones((1, n)), TimestepBins.uniform(1000, n), "exact", None, 8, 0,
            meta={"checkpoints": [f"/x/{run}/checkpoints/step_{step:09d}.pt"],
                  "schedule": {"name": "linear", "num_timesteps": 1000}},
        )  # fmt: skip
        aff.save(folder / f"affinity-{run}")

    decay = np.where(gap >= 5, -0.25, 1.0 - gap / 10)  # falls with the gap, conflicts beyond 4
    early, late = tmp_path / "early", tmp_path / "late"
    early.mkdir(), late.mkdir()
    matrix(early, "vanilla-eps-s0", 3000, decay)
    matrix(late, "vanilla-eps-s0", 3000, decay * 0.5)  # the same run and step again: ignored
    matrix(late, "vanilla-eps-s0", 9000, decay**3)  # a later checkpoint of the run
    out = tmp_path / "table"
    proc = _table(out, early, late)
    assert proc.returncode == 0, proc.stderr[-2000:]
    o1 = json.loads((out / "table.json").read_text())["o1"]
    assert [(e["run"], e["step"]) for e in o1] == [
        ("vanilla-eps-s0", 3000),
        ("vanilla-eps-s0", 9000),
    ]
    first = o1[0]
    assert first["spearman_t"] < -0.9 and first["spearman_logsnr"] < -0.5
    assert first["mean_at_gap"] == {"1": pytest.approx(0.9), "2": pytest.approx(0.8),
                                    "5": pytest.approx(-0.25)}  # fmt: skip
    assert first["share_below"] == {"0.0": pytest.approx(15 / 45), "-0.2": pytest.approx(15 / 45),
                                    "-0.3": 0.0}  # fmt: skip
    assert first["block_mean"] == pytest.approx(-0.25)  # bin 0 against bins 5–9
    off = np.triu_indices(n, k=1)
    r = float(np.corrcoef(decay[off], (decay**3)[off])[0, 1])
    assert first["r"] == {"vanilla-eps-s0@9000": pytest.approx(r)}
    md = (out / "table.md").read_text().split("### O1: affinity against the noise-level gap")[1]
    assert (
        "| vanilla-eps-s0 | 3000 | 10 | -" in md
        and "| +0.90, +0.80, -0.25 | 33.3% | 33.3% | 0.0%" in md
    )


def test_table_lists_each_runs_cost_against_vanilla_only_on_equally_shared_cards(tmp_path):
    src = tmp_path / "slice"
    src.mkdir()
    summary = [
        {"run": "vanilla-eps-s0", "iterations": 5000, "it_per_s_median": 8.0,
         "train_peak_mem_gib": 3.46, "eval_peak_mem_gib": 3.98},
        {"run": "timestep-uw-eps-s0", "iterations": 5000, "it_per_s_median": 7.6,
         "train_peak_mem_gib": 3.46, "eval_peak_mem_gib": None},
        {"run": "timestep-uw-hybrid-s0", "iterations": 3000, "it_per_s_median": 9.0},
        {"run": "vanilla-hybrid-s0", "iterations": 3000, "it_per_s_median": 6.0},
    ]  # fmt: skip
    (src / "summary.json").write_text(json.dumps(summary))
    (src / "phase1-vanilla-eps-s0.json").write_text(json.dumps({
        "run": "vanilla-eps-s0", "seed": 0, "card": "NVIDIA H100 80GB HBM3",
        "curve": [{"step": 5000, "n": 5000, "fid": 43.0, "precision": 0.6, "recall": 0.3}],
    }))  # fmt: skip
    # the device logs: two eps runs on card 0; vanilla-hybrid with a specialist on card 1,
    # timestep-uw-hybrid alone on card 2 (shared differently: no ratio)
    (src / "repro_cuda0.log").write_text(
        "[repro 20:08:06] vanilla-eps-s0: training on cuda:0 (from step 0)\n"
        "[repro 20:08:06] timestep-uw-eps-s0: training on cuda:0 (from step 0)\n"
        "[repro 20:08:06] vanilla-hybrid-s0: training on cuda:1 (from step 0)\n"
        "[repro 20:08:06] timestep-uw-hybrid-s0: training on cuda:2 (from step 0)\n"
    )
    (src / "ntg_train.log").write_text(
        "ntg: specialist_0000-0199_seed0: training on cuda:1 (from step 0)\n"
    )
    out = tmp_path / "table"
    proc = _table(out, src)
    assert proc.returncode == 0, proc.stderr[-2000:]
    cost = {r["run"]: r for r in json.loads((out / "table.json").read_text())["cost"]}
    assert cost["timestep-uw-eps-s0"]["vs_vanilla"] == pytest.approx(0.95)
    assert (
        cost["timestep-uw-eps-s0"]["per_card"] == 2 and cost["vanilla-hybrid-s0"]["per_card"] == 2
    )
    assert cost["timestep-uw-hybrid-s0"]["per_card"] == 1
    assert cost["timestep-uw-hybrid-s0"]["vs_vanilla"] is None  # 1 vs 2 trainers on the card
    assert cost["vanilla-eps-s0"]["card"] == "NVIDIA H100 80GB HBM3"
    md = (out / "table.md").read_text().split("### Cost per run")[1]
    assert "| slice | timestep-uw-eps-s0 | 5000 | 7.60 | 2 | 0.95 | 3.46 | — | — |" in md
    assert "| slice | timestep-uw-hybrid-s0 | 3000 | 9.00 | 1 | — | — | — | — |" in md


def test_trainers_per_card_counts_the_runs_on_a_card_at_once_not_one_after_another(tmp_path):
    """Slice 8's card 3: ANT-PCGrad (hybrid) stopped at 22:39:32, the diagnostic began there at
    22:48:10, so each trained alone; card 0 held two runs at once and a resumed run whose spans
    did not meet its partner's; a session past midnight keeps its order."""
    repro_cifar = _driver_module()
    (tmp_path / "repro_cuda3.log").write_text(
        "[repro 22:38:18] timestep-pcgrad-hybrid-s0: training on cuda:3 (from step 0)\n"
        "[repro 22:39:28] timestep-pcgrad-hybrid-s0: its next evaluation (step 5000) would be "
        "done ~32 s after the deadline: stopping it\n"
        "[repro 22:39:32] timestep-pcgrad-hybrid-s0: stopped at step 129\n"
    )
    (tmp_path / "repro_manual_3.log").write_text(
        "[repro 22:48:10] diag-adam099-vanilla-eps-s0: training on cuda:3 (from step 0)\n"
        "[repro 23:03:56] diag-adam099-vanilla-eps-s0: stopped at step 10000\n"
    )
    (tmp_path / "repro_cuda0.log").write_text(
        "[repro 23:50:00] vanilla-eps-s1: training on cuda:0 (from step 0)\n"
        "[repro 23:55:00] minsnr-eps-s0: training on cuda:0 (from step 0)\n"
        "[repro 23:58:00] vanilla-eps-s1: stopped at step 900\n"
        "[repro 00:10:00] minsnr-eps-s0: finished at step 5000\n"
        "[repro 00:12:00] vanilla-eps-s1: training on cuda:0 (from step 900)\n"
        "[repro 00:20:00] vanilla-eps-s1: finished at step 5000\n"
    )
    counts = repro_cifar.trainers_per_card(tmp_path)
    assert counts["timestep-pcgrad-hybrid-s0"] == 1 and counts["diag-adam099-vanilla-eps-s0"] == 1
    assert counts["vanilla-eps-s1"] == 2 and counts["minsnr-eps-s0"] == 2

    def card0(log: str) -> dict[str, int]:  # card 0's device log alone changes below
        (tmp_path / "repro_cuda0.log").write_text(log)
        return repro_cifar.trainers_per_card(tmp_path)

    # a run still training when the log ends overlaps whatever starts after it on its card
    counts = card0(
        "[repro 10:00:00] vanilla-eps-s1: training on cuda:0 (from step 0)\n"
        "[repro 11:00:00] minsnr-eps-s0: training on cuda:0 (from step 0)\n"
    )
    assert counts["vanilla-eps-s1"] == 2 and counts["minsnr-eps-s0"] == 2
    # the tenth session's card 0: a long run beside two others that followed each other (one
    # stopped, the next started later) had two partners, but never more than one at a time
    counts = card0(
        "[repro 00:01:40] vanilla-eps-s0: training on cuda:0 (from step 0)\n"
        "[repro 00:01:40] timestep-pcgrad-hybrid-s0: training on cuda:0 (from step 0)\n"
        "[repro 00:03:34] timestep-pcgrad-hybrid-s0: stopped at step 227\n"
        "[repro 00:11:08] diag-adam099-vanilla-eps-s1: training on cuda:0 (from step 0)\n"
        "[repro 00:25:44] diag-adam099-vanilla-eps-s1: stopped at step 2500\n"
        "[repro 00:26:24] vanilla-eps-s0: stopped at step 5000\n"
    )
    assert counts["vanilla-eps-s0"] == 2
    assert counts["timestep-pcgrad-hybrid-s0"] == 2 and counts["diag-adam099-vanilla-eps-s1"] == 2
    # ANT-UW + P2's name has a '+' (slice 11's card 3): it is one run, not a 'p2-eps-s0' without
    # a time that would overlap every span of the card
    counts = card0(
        "[repro 02:26:53] timestep-uw-eps-s1: training on cuda:0 (from step 0)\n"
        "[repro 02:26:53] timestep-uw+p2-eps-s0: training on cuda:0 (from step 0)\n"
        "[repro 02:26:53] timestep-uw+p2-eps-s1: training on cuda:0 (from step 0)\n"
        "[repro 02:47:45] timestep-uw+p2-eps-s0: finished at step 5000\n"
        "[repro 02:47:45] timestep-uw+p2-eps-s1: finished at step 5000\n"
        "[repro 02:47:47] timestep-uw-eps-s1: finished at step 5000\n"
        "[repro 03:00:00] p2-eps-s0: training on cuda:0 (from step 0)\n"
        "[repro 03:10:00] p2-eps-s0: finished at step 5000\n"
    )
    assert counts["timestep-uw+p2-eps-s0"] == counts["timestep-uw+p2-eps-s1"] == 3
    assert counts["timestep-uw-eps-s1"] == 3 and counts["p2-eps-s0"] == 1


def test_an_o2_joint_fid_follows_the_first_folder_rule_like_any_point(tmp_path):
    from antdiff.analysis.ntg import FIDMeasurement, compute_ntg

    def ntg_session(folder, run, joint):
        ms = [FIDMeasurement(joint, 0, n=5000, floor=5.8),
              FIDMeasurement(joint - 2, 0, (0, 499), 0, n=5000, floor=5.8),
              FIDMeasurement(joint + 1, 0, (500, 999), 0, n=5000, floor=5.8)]  # fmt: skip
        compute_ntg(ms, [(0, 499), (500, 999)]).save(folder / f"ntg-{run}")
        (folder / "runs" / run).mkdir(parents=True)
        (folder / "runs" / run / "metrics.jsonl").write_text(
            json.dumps({"step": 5000, "loss": 0.1}) + "\n"
        )

    def result(folder, run, fid):
        pts = [{"step": 5000, "n": 5000, "fid": fid, "precision": 0.6, "recall": 0.3}]
        (folder / f"phase1-{run}.json").write_text(
            json.dumps({"run": run, "seed": 0, "curve": pts})
        )

    o2, later = tmp_path / "o2", tmp_path / "later"
    o2.mkdir(), later.mkdir()
    ntg_session(o2, "vanilla-hybrid-s0", 40.0)
    result(later, "vanilla-hybrid-s0", 43.0)  # the same config and seed trained again later
    proc = _table(tmp_path / "t1", o2, later)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads((tmp_path / "t1" / "table.json").read_text())
    assert data["cells"]["5000"]["vanilla-hybrid"]["fid"] == [40.0]  # the first folder's
    assert data["repeats"][0]["repeat"] == {"folder": str(later), "fid": 43.0}
    proc = _table(tmp_path / "t2", later, o2)  # the other order: the result file wins
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads((tmp_path / "t2" / "table.json").read_text())
    assert data["cells"]["5000"]["vanilla-hybrid"] == {"fid": [43.0], "precision": [0.6],
                                                       "recall": [0.3]}  # fmt: skip
    assert data["repeats"][0]["repeat"] == {"folder": str(o2), "fid": 40.0, "from_ntg": True}
    assert (
        f"| vanilla-hybrid-s0 | 5000 | 43.0 ({later}) | 40.0 † ({o2}) |"
        in (tmp_path / "t2" / "table.md").read_text()
    )
    # a periodic evaluation and the NTG of the same model (one folder) are not a repeat
    result(o2, "vanilla-hybrid-s0", 41.0)
    proc = _table(tmp_path / "t3", o2)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads((tmp_path / "t3" / "table.json").read_text())
    assert data["cells"]["5000"]["vanilla-hybrid"]["fid"] == [41.0] and data["repeats"] == []


def test_table_lays_each_step_out_like_the_papers_table_1_and_counts_cells_beating_vanilla(
    tmp_path,
):
    src = tmp_path / "results"
    src.mkdir()

    def result(run, seed, fid, p=0.6, r=0.3):
        pts = [{"step": 5000, "n": 10000, "fid": fid, "precision": p, "recall": r}]
        (src / f"phase2-{run}.json").write_text(
            json.dumps({"run": run, "seed": seed, "curve": pts})
        )

    result("vanilla-eps-s0", 0, 44.0)
    result("vanilla-eps-s1", 1, 42.0)
    result("snr-nash-eps-s0", 0, 41.0, p=0.7)
    result("timestep-uw-eps-s0", 0, 50.0)
    result("p2-eps-s0", 0, 39.0, r=0.4)
    result("vanilla-hybrid-s0", 0, 45.0)
    proc = _table(tmp_path / "t", src)
    assert proc.returncode == 0, proc.stderr[-2000:]
    md = (tmp_path / "t" / "table.md").read_text()
    layout = md.split("#### Table-1 layout, 5000 iterations")[1].split("###")[0]
    lines = [x for x in layout.splitlines() if x.startswith("| ")][1:]  # below the header
    # the paper's row order: vanilla, timestep × (PCGrad, Nash, UW), SNR × …, then P2
    assert [x.split(" | ")[1] for x in lines] == ["vanilla", "UW", "NashMTL", "P2 (γ = 1)"]
    assert lines[0].startswith("| – | vanilla | 43.0 ± 1.0 (2) | 0.600 ± 0.000 | 0.300 ± 0.000 |")
    assert "| SNR | NashMTL | 41.0 (1) | **0.700** | 0.300 | — | — | — |" in layout
    assert "| – | P2 (γ = 1) | **39.0** (1) | 0.600 | **0.400** | — | — | — |" in layout
    assert (
        "| – | vanilla | 43.0 ± 1.0 (2) | 0.600 ± 0.000 | 0.300 ± 0.000 | **45.0** (1) |" in layout
    )
    # ANT cells against vanilla (P2 is a baseline, not an ANT cell): only SNR-Nash is lower
    eps_line = next(x for x in layout.splitlines() if x.startswith("- ε-MSE:"))
    assert eps_line.startswith(
        "- ε-MSE: 1 of the 2 ANT cells measured here have a lower mean FID than vanilla's 43.0"
    ) and eps_line.endswith("— snr-nash")
    # the hybrid loss has no ANT cell at this step: no count
    assert not any(x.startswith("- hybrid:") for x in layout.splitlines())


def test_table_counts_cells_below_vanilla_seed_by_seed(tmp_path):
    # a mean can lead on one seed's large gap while the other seed is behind vanilla's
    src = tmp_path / "results"
    src.mkdir()

    def result(run, seed, fid):
        pts = [{"step": 5000, "n": 10000, "fid": fid, "precision": 0.6, "recall": 0.3}]
        (src / f"phase2-{run}.json").write_text(
            json.dumps({"run": run, "seed": seed, "curve": pts})
        )

    result("vanilla-eps-s0", 0, 44.0)
    result("vanilla-eps-s1", 1, 42.0)
    result("logsnr-pcgrad-eps-s0", 0, 45.0)  # behind in seed 0 ...
    result("logsnr-pcgrad-eps-s1", 1, 38.0)  # ... far ahead in seed 1: mean 41.5 < 43.0
    result("snr-nash-eps-s0", 0, 41.0)  # ahead by 3.0 in its one seed
    result("timestep-nash-eps-s0", 0, 43.5)  # ahead by 0.5 ...
    result("timestep-nash-eps-s1", 1, 40.0)  # ... and by 2.0
    result("affinity-uw-eps-s2", 2, 30.0)  # a seed vanilla lacks: not paired
    proc = _table(tmp_path / "t", src)
    assert proc.returncode == 0, proc.stderr[-2000:]
    layout = (tmp_path / "t" / "table.md").read_text().split("#### Table-1 layout")[1]
    mean_line = next(x for x in layout.splitlines() if x.startswith("- ε-MSE:"))
    assert mean_line.startswith("- ε-MSE: 4 of the 4 ANT cells measured here have a lower mean")
    seed_line = next(x for x in layout.splitlines() if x.startswith("- ε-MSE, seed by seed:"))
    assert seed_line == (
        "- ε-MSE, seed by seed: 2 of the 3 ANT cells with a seed of vanilla's are below "
        "vanilla's FID of the same seed in every seed both have — snr-nash (1 seed, smallest "
        "margin 3.00), timestep-nash (2 seeds, smallest margin 0.50)"
    )
    # the same step's differences from vanilla against the seeds' spread, in both files
    saved = json.loads((tmp_path / "t" / "table.json").read_text())["vanilla_contrasts"]
    assert saved["5000"]["eps"]["pooled_cells"] == [
        "logsnr-pcgrad-eps", "timestep-nash-eps", "vanilla-eps"
    ]  # fmt: skip
    assert "#### ε-MSE: differences from vanilla against the seeds' spread" in layout


def test_vanilla_contrasts_pool_the_seeds_spread_of_log_fid():
    repro_cifar = _driver_module()
    e = np.exp
    fids = {
        "vanilla-eps": [e(3.7), e(3.9)],
        "a-eps": [e(3.3), e(3.4)],
        "b-eps": [e(3.75), e(3.95)],
        "c-eps": [e(5.2), e(5.3)],  # a collapsed cell: pooled too, on the log scale
        "diag-x-eps": [e(3.5)],  # one seed: compared, never pooled
        "d-hybrid": [10.0, 90.0],  # another loss
    }
    got = repro_cifar.vanilla_contrasts(fids, "eps")
    assert got["pooled_cells"] == ["a-eps", "b-eps", "c-eps", "vanilla-eps"] and got["df"] == 4
    # squared deviations from each cell's mean of ln FID: 0.0025·2, 0.01·2, 0.0025·2, 0.01·2
    assert got["sd_log"] == pytest.approx(np.sqrt((0.005 + 0.02 + 0.005 + 0.02) / 4))
    assert got["t_crit"] == pytest.approx(2.776, abs=1e-3)  # Student's t, 4 df, two-sided 5%
    a, b, diag = got["cells"]["a-eps"], got["cells"]["b-eps"], got["cells"]["diag-x-eps"]
    sd = np.sqrt(0.05 / 4)
    assert a["ratio"] == pytest.approx(e(-0.45)) and a["t"] == pytest.approx(-0.45 / sd)
    assert a["fid_diff"] == pytest.approx(np.mean([e(3.3), e(3.4)]) - np.mean([e(3.7), e(3.9)]))
    assert a["beyond"] and not b["beyond"]  # t = -4.02 and +0.45
    assert diag["t"] == pytest.approx(-0.3 / (sd * np.sqrt(1.5))) and not diag["beyond"]  # -2.19
    assert list(got["cells"]) == ["a-eps", "diag-x-eps", "b-eps", "c-eps"]  # by mean ln FID
    assert "vanilla-eps" not in got["cells"] and "d-hybrid" not in got["cells"]
    assert repro_cifar.vanilla_contrasts(fids, "hybrid") is None  # no vanilla to compare with
    lines = "\n".join(repro_cifar._contrast_lines({"eps": got}, 5000))
    assert "pooled over the 4 cells with ≥ 2 seeds: 0.1118 (4 degrees of freedom)" in lines
    assert f"differ by more than a factor {np.exp(2.7764 * sd):.3f}" in lines
    assert f"| a-eps | 2 | {a['fid_diff']:+.1f} | 0.638 | {a['t']:+.2f} | yes |" in lines


def test_optimizer_view_pairs_the_norm_fall_with_the_first_evaluation(tmp_path):
    import yaml

    repro_cifar = _driver_module()

    def run(name, norms):
        d = tmp_path / name
        d.mkdir()
        (d / "config.yaml").write_text(yaml.safe_dump({"optim": {"grad_clip": 1.0}}))
        lines = [{"step": 100 * (i + 1), "loss": 1.0, "grad_norm": g} for i, g in enumerate(norms)]
        lines.append({"step": 2500, "eval": {"fid": 150.0}})
        (d / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
        return d

    falls = run("falls", [3.0] * 5 + [0.2] * 20)  # clipped to 1.0, then 0.2 from step 600
    steady = run("steady", [0.5] * 25)
    short = run("short", [0.5] * 10)  # its log ends at 1000: left out
    view = repro_cifar.optimizer_view([falls, steady, short])
    assert set(view) == {"falls", "steady"}
    assert view["falls"]["norm_early"] == 1.0 and view["falls"]["norm_window"] == 0.2
    assert view["falls"]["fall"] == pytest.approx(5.0)
    assert view["steady"]["fall"] == 1.0 and view["steady"]["adam_step"] == pytest.approx(1.0)
    assert view["falls"]["adam_step"] < 0.5  # Adam still remembers the norm of 1.0
    assert view["falls"]["first_eval"] == {"step": 2500, "fid": 150.0}


def test_the_early_training_view_takes_a_names_run_that_was_evaluated_at_2500(tmp_path):
    """Slice 8 trained vanilla-eps-s1 again with evaluations every 5000; the first-folder rule
    would have paired its log with no 2.5k FID and dropped the name from the correlation, while
    slice 3's run of the same name and seed has one."""
    repro_cifar = _driver_module()

    def run(folder, evals):
        d = tmp_path / folder / "runs" / "vanilla-eps-s1"
        d.mkdir(parents=True)
        lines = [{"step": 100 * (i + 1), "loss": 1.0, "grad_norm": 0.5} for i in range(60)]
        lines += [{"step": s, "eval": {"fid": f}} for s, f in evals]
        (d / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
        return d

    rerun = run("slice8", [(5000, 44.2)])
    first = run("slice3", [(2500, 196.6), (5000, 43.7)])
    assert repro_cifar._evaluated_at([rerun, first], 2500) == first
    assert repro_cifar._evaluated_at([rerun], 2500) == rerun  # none evaluated there: the first
    view = repro_cifar.optimizer_view([repro_cifar._evaluated_at([rerun, first], 2500)])
    assert view["vanilla-eps-s1"]["first_eval"] == {"step": 2500, "fid": 196.6}


def test_table_shows_a_diagnostic_beside_vanilla_but_never_as_the_best(tmp_path):
    """A diagnostic (a protocol run with one setting changed) is listed and compared with vanilla
    of its loss, but the bold "best of the column" belongs to the protocol's cells alone."""
    folder = tmp_path / "slice"
    folder.mkdir()
    for run, fid, recall in (
        ("vanilla-eps-s0", 50.0, 0.30),
        ("diag-adam099-vanilla-eps-s0", 40.0, 0.40),
    ):
        point = {
            "step": 2500,
            "n": 10,
            "fid": fid,
            "precision": 0.5,
            "recall": recall,
            "floor": 1.0,
        }
        (folder / f"phase1-{run}.json").write_text(
            json.dumps({"run": run, "seed": 0, "curve": [point]})
        )
    proc = _table(tmp_path / "out", folder)
    assert proc.returncode == 0, proc.stderr
    md = (tmp_path / "out" / "table.md").read_text()
    assert "| diag-adam099-vanilla-eps (diagnostic) | 1 | 40.0 | 0.500 | 0.400 |" in md
    assert "| vanilla-eps | 1 | **50.0** | **0.500** | **0.300** |" in md
    conv = json.loads((tmp_path / "out" / "table.json").read_text())["convergence"]
    assert conv["diag-adam099-vanilla-eps"]["vanilla"] == "vanilla-eps"
    assert conv["diag-adam099-vanilla-eps"]["steps_to_target"] == 2500


def _bundle(path: Path, files: dict[str, bytes]) -> Path:
    """A device bundle at ``path``: ``files`` under ``results/``, as device_session.sh packs them."""
    import io
    import tarfile

    with tarfile.open(path, "w:gz") as tar:
        for rel, data in files.items():
            info = tarfile.TarInfo(f"results/{rel}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_ingest_unpacks_a_sessions_bundles_in_order_and_never_overwrites_a_slice(tmp_path):
    """Each bundle is a snapshot of one session folder: the later one wins where both have a
    file, files only the earlier one kept survive (slice 8's first bundle held O1 matrices that
    were deleted on the machine later), empty logs and the finished-marker are left out."""

    def bundle(name, files):
        return _bundle(tmp_path / name, files)

    first = bundle("session_1.tar.gz", {
        "phase1-vanilla-eps-s1.json": b'{"curve": []}',
        "affinity-vanilla-eps-s1/affinity.npy": b"early matrix",
        "affinity_vanilla-eps-s1.log": b"",  # still empty when bundled
    })  # fmt: skip
    last = bundle("session_2.tar.gz", {
        "phase1-vanilla-eps-s1.json": b'{"curve": [1]}',
        "runs/vanilla-eps-s1/metrics.jsonl": b"{}\n",
        "slice.finished": b"x",
        "work.log": b"",
    })  # fmt: skip
    into = tmp_path / "slice9"
    proc = subprocess.run(
        [sys.executable, str(DRIVER), "ingest", "--into", str(into), "--bundles", str(first),
         str(last)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "wrote 3 files" in proc.stdout
    assert (into / "phase1-vanilla-eps-s1.json").read_bytes() == b'{"curve": [1]}'
    assert (into / "affinity-vanilla-eps-s1" / "affinity.npy").read_bytes() == b"early matrix"
    assert (into / "runs" / "vanilla-eps-s1" / "metrics.jsonl").exists()
    assert not (into / "slice.finished").exists() and not (into / "work.log").exists()
    assert not (into / "affinity_vanilla-eps-s1.log").exists()
    # a folder that holds files is a record: refused, untouched
    again = subprocess.run(
        [sys.executable, str(DRIVER), "ingest", "--into", str(into), "--bundles", str(first)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert again.returncode != 0 and "already holds files" in again.stderr
    assert (into / "phase1-vanilla-eps-s1.json").read_bytes() == b'{"curve": [1]}'


def test_ingest_host_logs_make_the_cost_table_count_other_instances_trainers(tmp_path):
    """The tenth session: three instances each called the host's card 0 ``cuda:0`` and put their
    trainers there. With the other instances' logs in host/, the count per card is the card's."""

    def bundle(name, files):
        return _bundle(tmp_path / name, files)

    own = bundle("session_phase1a-002759.tar.gz", {
        "phase1-vanilla-hybrid-s0.json": b'{"curve": []}',
        "repro_cuda0.log": b"[repro 00:01:40] vanilla-hybrid-s0: training on cuda:0 (from step 0)\n"
                           b"[repro 00:20:17] vanilla-hybrid-s0: stopped at step 2501\n",
    })  # fmt: skip
    other = bundle("session_phase2-002647.tar.gz", {
        "phase2-vanilla-eps-s1.json": b'{"curve": []}',  # not a log: not copied
        "repro_cuda0.log": b"[repro 00:01:40] minsnr-eps-s0: training on cuda:0 (from step 0)\n"
                           b"[repro 00:26:11] minsnr-eps-s0: stopped at step 5000\n",
        "repro_cuda1.log": b"[repro 00:01:40] vanilla-eps-s1: training on cuda:1 (from step 0)\n"
                           b"[repro 00:22:01] vanilla-eps-s1: finished at step 5000\n",
        "runs/x/train.log": b"not a device log",
    })  # fmt: skip
    into = tmp_path / "slice9a"
    proc = subprocess.run(
        [sys.executable, str(DRIVER), "ingest", "--into", str(into), "--bundles", str(own),
         "--host-logs", str(other)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (into / "host").iterdir()) == [
        "phase2_repro_cuda0.log",
        "phase2_repro_cuda1.log",
    ]
    assert not (into / "phase2-vanilla-eps-s1.json").exists()
    counts = _driver_module().trainers_per_card(into)
    assert counts["vanilla-hybrid-s0"] == 2  # itself and minsnr-eps-s0, not vanilla-eps-s1


def test_the_loss_sections_take_a_runs_longest_log_not_the_newest_folders(tmp_path):
    repro_cifar = _driver_module()

    def run(folder, steps):
        d = tmp_path / folder / "runs" / "vanilla-hybrid-s0"
        d.mkdir(parents=True)
        d.joinpath("metrics.jsonl").write_text(
            "".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in steps)
        )
        return d

    newer, older = run("slice9a", [100, 2500]), run("slice7", [100, 2500, 5600])
    assert repro_cifar.longest_log([newer, older]) == older
    tie = run("slice8", [100, 2500])
    assert repro_cifar.longest_log([newer, tie]) == newer  # the first named on a tie


def _projected_run(root: Path, name: str, rows: list[dict], *, at: float, steps: int = 5000):
    """A run folder as a trainer leaves it: config.yaml and metrics.jsonl written at ``at``."""
    import os

    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(f"train:\n  steps: {steps}\n  eval_every: 5000\n")
    log = run / "metrics.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.utime(log, (at, at))


def test_project_shows_what_the_final_deadline_would_stop(tmp_path):
    """`project` repeats the supervisor's projection from the run folders: the next evaluation
    at the fastest steady rate plus the evaluation's duration — its own, else the longest one a
    run of the same supervisor (grouped by the repro_<device>.log lines) measured with work left
    (a final evaluation never counts), else the guess given — against the deadline. Slice 16's
    case: two PCGrad runs beside a light run that has finished with its one evaluation (400 s):
    nothing is borrowed, and the guess of 600 s that led to killing the supervisors would have
    been needed for any run to be stopped."""
    import argparse

    repro = _driver_module()
    t0 = 1_800_000_000.0  # a fixed epoch: 2027-01-15 08:00:00 UTC
    root, logs = tmp_path / "repro", tmp_path / "logs"
    start = {"step": 100, "window": 100, "it_per_s": 1.0, "time": 100.0}  # start-up window
    steady = [start, {"step": 4400, "window": 4300, "it_per_s": 6.6, "time": 752.0}]
    for name in ("pcgrad-a", "pcgrad-b"):
        _projected_run(root, name, steady, at=t0)  # 600 steps to go: ~91 s at 6.6 it/s
    light = [
        start,
        {"step": 5000, "window": 4900, "it_per_s": 9.5, "time": 616.0},
        {"step": 5000, "eval": {"fid": 50.0}, "eval_seconds": {"sampling": 395.0, "metrics": 5.0}},
    ]
    _projected_run(root, "light", light, at=t0)
    # a long run on another card: evaluated at 5000 (80 s) with 45,000 steps to go
    long_rows = [*light[:2], {**light[2], "eval_seconds": {"sampling": 78.0, "metrics": 2.0}}]
    long_rows.append({"step": 5400, "window": 400, "it_per_s": 16.0, "time": 721.0})
    _projected_run(root, "long", long_rows, at=t0, steps=50000)
    _projected_run(root, "beside-long", steady, at=t0)
    _projected_run(root, "starting", [start], at=t0)
    logs.mkdir()
    card0 = ("pcgrad-a", "pcgrad-b", "light")
    (logs / "repro_cuda0.log").write_text(
        "".join(f"[repro 08:00:00] {n}: training on cuda:0 (from step 0)\n" for n in card0)
    )
    (logs / "repro_cuda1.log").write_text(
        "".join(
            f"[repro 08:00:00] {n}: training on cuda:1 (from step 0)\n"
            for n in ("long", "beside-long")
        )
    )

    def project(deadline: str, assume: float | None = None) -> dict[str, dict]:
        a = argparse.Namespace(
            root=str(root), logs=str(logs), deadline=deadline, assume_eval=assume
        )
        return {r["run"]: r for r in repro.project(a)}

    rows = project("08:09:00")  # 540 s after the last lines
    assert rows["light"]["state"] == "finished"
    assert rows["starting"]["state"].startswith("starting")
    assert rows["starting"]["group"] == "(no supervisor log)"
    a = rows["pcgrad-a"]
    assert (a["group"], a["step"], a["next"], a["rate"]) == ("cuda0", 4400, 5000, 6.6)
    # the light run's only evaluation was its final one: not borrowed, so the margin is the
    # longest evaluation that would still end in time
    assert (a["eval_seconds"], a["eval_source"], a["state"]) == (0.0, "none yet", "in time")
    assert a["done_at"] == pytest.approx(t0 + 600 / 6.6)
    assert a["margin"] == pytest.approx(540 - 600 / 6.6)
    # on card 1 the long run's 80-s evaluation had work left after it: its partner borrows it
    b = rows["beside-long"]
    assert (b["group"], b["eval_seconds"], b["eval_source"]) == ("cuda1", 80.0, "borrowed")
    assert b["done_at"] == pytest.approx(t0 + 600 / 6.6 + 80.0)
    long = rows["long"]
    assert (long["next"], long["eval_source"], long["rate"]) == (10000, "own", 16.0)
    assert long["done_at"] == pytest.approx(t0 + 4600 / 16.0 + 80.0)
    assert long["margin"] == pytest.approx(540 - 4600 / 16.0 - 80.0)
    assert project("08:06:00")["long"]["state"] == "would be stopped"  # 367.5 s in 360 s
    # a guess longer than anything measured: the runs the supervisor would stop
    guessed = project(str(int(t0 + 540)), assume=600.0)  # the same deadline as epoch seconds
    assert guessed["pcgrad-b"]["eval_source"] == "assumed"
    assert guessed["pcgrad-b"]["state"] == "would be stopped"
    assert guessed["pcgrad-b"]["margin"] == pytest.approx(540 - 600 / 6.6 - 600.0)
    # a run at its evaluation step with no evaluation logged yet is in it
    _projected_run(root, "evaluating", light[:2], at=t0)
    assert project("08:09:00")["evaluating"]["state"] == "in time (in its evaluation)"
    # the table as device_session.sh prints it into each call's reply
    cmd = [sys.executable, str(DRIVER), "project", "--root", str(root), "--logs", str(logs)]
    out = subprocess.run(
        [*cmd, "--deadline", "08:09:00"], capture_output=True, text=True, check=True
    ).stdout
    assert "projection against the deadline 08:09:00" in out
    row = "| pcgrad-a | cuda0 | 4400 | 6.60 | 5000 (evaluation) | 0 (none yet) | 08:01:30 | +449 |"
    assert row in out
    bad = subprocess.run([*cmd, "--deadline", "9am"], capture_output=True, text=True)
    assert bad.returncode != 0 and "HH:MM:SS" in bad.stderr


def test_loss_parts_across_runs_say_what_each_clusters_loss_is_made_of(tmp_path):
    """A hybrid run's ε-MSE and λ·T·L_t per cluster over the last windows, the learned-σ term's
    share of the cluster loss, and its ε-MSE against vanilla's of the same loss and seed — only
    where vanilla logged parts over the same clusters. Runs without parts are not listed."""
    import yaml

    repro_cifar = _driver_module()
    from antdiff.clustering import TaskClusters

    def run(
        name,
        seed,
        parts,
        intervals=((0, 499), (500, 999)),
        weighting="none",
        whole=False,
        steps=4,
        hybrid=True,
        losses=(1.0, 0.1),
    ):
        d = tmp_path / "runs" / name
        d.mkdir(parents=True)
        TaskClusters(intervals, 1000).to_json(d / "clusters.json")
        cfg = {"run": {"seed": seed}, "ant": {"enabled": False, "k": 2},
               "diffusion": {"learned_variance": hybrid, "weighting": weighting,
                             "weight_vlb": whole}}  # fmt: skip
        (d / "config.yaml").write_text(yaml.safe_dump(cfg))
        lines = []
        for i in range(steps):
            line = {"step": 100 * (i + 1), "loss": 1.0}
            if parts is not None:  # (mse, vb), or a list of them: the first two steps, the rest
                mse, vb = parts if isinstance(parts, tuple) else parts[min(i // 2, 1)]
                w = 0.1 if whole else 1.0  # the logged loss w·(MSE + vb): the parts unweighted
                line |= {"cluster_losses": [w * (m + v) for m, v in zip(mse, vb)],
                         "cluster_mse": mse, "cluster_vb": vb, "parts_counts": [5, 5]}  # fmt: skip
            else:
                line["cluster_losses"] = list(losses)
            lines.append(line)
        (d / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
        return d

    runs = [
        run("vanilla-hybrid-s0", 0, ([0.10, 0.010], [0.02, 0.0001])),
        # P2-weighted, with the cleanest cluster's loss mostly the unweighted learned-σ term
        run("timestep-uw+p2-hybrid-s0", 0, ([0.20, 0.005], [0.06, 0.0001]), weighting="p2"),
        run("snr-uw-hybrid-s0", 0, ([0.30, 0.02], [0.01, 0.0001]), ((0, 4), (5, 999))),
        run("timestep-uw-hybrid-s1", 1, ([0.1, 0.01], [0.01, 0.0001])),  # no vanilla of seed 1
        run("old-hybrid-s0", 0, None),  # logged before the parts: not listed
        # P2 on the whole hybrid loss: the logged loss is far below the unweighted parts
        run(
            "uw+p2-whole-hybrid-s0", 0, ([0.16, 0.005], [0.04, 0.0001]), weighting="p2", whole=True
        ),
        # seed 2: vanilla logged to step 400, the other run to 200 only; vanilla's loss falls,
        # so a comparison with vanilla's last windows would halve the ratio
        run("vanilla-hybrid-s2", 2, [([0.2, 0.02], [0.01, 0.0]), ([0.1, 0.01], [0.01, 0.0])]),
        run("timestep-uw-hybrid-s2", 2, ([0.2, 0.02], [0.01, 0.0]), steps=2),
        # plain ε-MSE logs no parts, but its cluster losses are its ε-MSE: Min-SNR's partner
        run("vanilla-eps-s0", 0, None, hybrid=False, losses=(0.10, 0.01)),
        run("minsnr-eps-s0", 0, ([0.12, 0.008], [0.0, 0.0]), weighting="min_snr", hybrid=False),
        # a weighted ε run without parts logs weighted cluster losses: never a partner
        run("vanilla-eps-s1", 1, None, hybrid=False, weighting="p2"),
        run("minsnr-eps-s1", 1, ([0.12, 0.008], [0.0, 0.0]), weighting="min_snr", hybrid=False),
    ]
    got = repro_cifar.loss_parts_across_runs(runs, window=2)
    assert set(got) == {"vanilla-hybrid-s0", "timestep-uw+p2-hybrid-s0", "snr-uw-hybrid-s0",
                        "timestep-uw-hybrid-s1", "uw+p2-whole-hybrid-s0", "vanilla-hybrid-s2",
                        "timestep-uw-hybrid-s2", "minsnr-eps-s0", "minsnr-eps-s1"}  # fmt: skip
    minsnr = got["minsnr-eps-s0"]
    assert minsnr["vanilla"] == "vanilla-eps-s0" and minsnr["ratio_step"] == 400
    np.testing.assert_allclose(minsnr["mse_ratio"], [1.2, 0.8])
    assert got["minsnr-eps-s1"]["mse_ratio"] is None and got["minsnr-eps-s1"]["vanilla"] is None
    p2 = got["timestep-uw+p2-hybrid-s0"]
    assert p2["vanilla"] == "vanilla-hybrid-s0" and p2["last step"] == 400
    np.testing.assert_allclose(p2["mse"], [0.20, 0.005])
    np.testing.assert_allclose(p2["vb_share"], [0.06 / 0.26, 0.0001 / 0.0051])
    assert p2["vb_share_of"] == "logged loss"
    # a share of the logged w·(MSE + vb) from unweighted parts would exceed 1 (2.0 here)
    whole = got["uw+p2-whole-hybrid-s0"]
    np.testing.assert_allclose(whole["vb_share"], [0.04 / 0.20, 0.0001 / 0.0051])
    assert whole["vb_share_of"] == "unweighted hybrid loss"
    # compared at the steps both logged (100, 200), not at each log's own last windows
    short = got["timestep-uw-hybrid-s2"]
    assert short["last step"] == 200 and short["ratio_step"] == 200
    np.testing.assert_allclose(short["mse_ratio"], [1.0, 1.0])
    assert p2["ratio_step"] == 400
    np.testing.assert_allclose(p2["mse_ratio"], [2.0, 0.5])
    # other clusters than vanilla's, or no vanilla of the seed: no ratio, parts still listed
    for name in ("snr-uw-hybrid-s0", "timestep-uw-hybrid-s1"):
        assert got[name]["mse_ratio"] is None and got[name]["vanilla"] is None
    assert got["snr-uw-hybrid-s0"]["clusters"] == [[0, 4], [5, 999]]
    assert got["vanilla-hybrid-s0"]["mse_ratio"] is None  # not compared with itself
    # `table` finds the run folders beside the result files and shows the same numbers
    point = {"step": 400, "n": 10, "fid": 50.0, "precision": 0.5, "recall": 0.5, "floor": 1.0}
    (tmp_path / "phase2-vanilla-hybrid-s0.json").write_text(
        json.dumps({"run": "vanilla-hybrid-s0", "seed": 0, "curve": [point]})
    )
    out = tmp_path / "table"
    cmd = [sys.executable, str(DRIVER), "table", "--from", str(tmp_path), "--results", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    section = (out / "table.md").read_text().split("### Loss parts per cluster", 1)[1]
    assert (
        "| timestep-uw+p2-hybrid-s0 | 400 | 0.2000, 0.0050 | 0.23, 0.02 | 2.00, 0.50 |" in section
    )
    assert "| snr-uw-hybrid-s0 | 400 | 0.3000, 0.0200 | 0.03, 0.00 | — |" in section
    assert "| uw+p2-whole-hybrid-s0 | 400 | 0.1600, 0.0050 | 0.20, 0.02* | 1.60, 0.50 |" in section
    assert "old-hybrid-s0" not in section
    assert "| timestep-uw-hybrid-s2 | 200 | 0.2000, 0.0200 | 0.05, 0.00 | 1.00, 1.00 |" in section
    saved = json.loads((out / "table.json").read_text())["loss_parts"]
    assert saved["timestep-uw+p2-hybrid-s0"]["mse_ratio"] == pytest.approx([2.0, 0.5])
