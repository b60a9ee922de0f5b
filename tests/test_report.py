"""antdiff report: one Markdown file with figures and the numbers behind them; missing parts
are stated, not invented."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest

from antdiff import NoiseSchedule, TaskClusters
from antdiff.analysis import FIDMeasurement, TaskAffinity, TimestepBins, compute_ntg
from antdiff.report import classify_inputs, write_report
from test_plots import write_run

T = 1000


def _affinity(out, n=10, scale=3.0):
    i = np.arange(n)
    A = np.exp(-np.abs(i[:, None] - i[None, :]) / scale)
    aff = TaskAffinity(
        A,
        A[None],
        np.ones((1, n)),
        TimestepBins.uniform(T, n),
        "exact",
        None,
        16,
        0,
        meta={
            "schedule": NoiseSchedule.from_name("linear", T).to_dict(),
            "checkpoints": ["step_1000"],
        },
    )
    aff.save(out)
    return out


def _ntg(out):
    ms = [FIDMeasurement(20.0, 0, n=1000, floor=5.0), FIDMeasurement(21.0, 1, n=1000, floor=5.0)]
    ms += [FIDMeasurement(18.0, s, (0, 499), n=1000) for s in (0, 1)]
    ms += [FIDMeasurement(22.5, s, (500, 999), n=1000) for s in (0, 1)]
    compute_ntg(ms, meta={"joint": "runs/vanilla", "sampler": "ddim", "steps": 50}).save(out)
    return out


def test_full_report(tmp_path):
    pc = write_run(tmp_path / "pcgrad_run", "pcgrad")
    uw = write_run(tmp_path / "uw_run", "uw")
    _affinity(uw / "affinity")  # found inside the run directory
    ntg = _ntg(tmp_path / "ntg_out")
    path = write_report([pc, uw, ntg], tmp_path / "report")
    text = path.read_text()
    for heading in (
        "## Runs",
        "## Task clusters",
        "## Per-cluster losses",
        "## Loss per bin of t",
        "## Balancer weights",
        "## Gradient norm and Adam's step",
        "## Gradient conflicts",
        "## FID during training",
        "## Task affinity (O1)",
        "## Negative transfer gap (O2)",
    ):
        assert heading in text
    assert "Nothing: every section was produced" in text
    figures = re.findall(r"\]\(figures/([^)]+)\)", text)
    assert len(figures) >= 10
    for f in figures:
        assert (tmp_path / "report" / "figures" / f).stat().st_size > 2000
    # Numbers behind the figures are in tables.
    assert "| 0-3 | 750 | 1 |" in text  # the pair that always conflicts
    assert "Spearman ρ" in text and "O1 holds" in text
    assert "| [1, 500] | 0–499 | -2.50 ± 0.71 |" in text
    assert "FID floor at this n = 5.00" in text
    assert "ANT-pcgrad" in text and "ANT-uw" in text
    # UW's learned weights against their stationary point k/(2·L_i) (trailing 5-window loss):
    # at the last line (n = 19) cluster 0 has ½e^0 = 0.5 against 4 / (2·mean L_0[15..19])
    L0 = np.mean([0.2 / (n + 1) for n in range(15, 20)])
    ratio = text.split("UW ½e^{−s_i} over its stationary point k/(2·L_i):")[1].split("\n\n")[1]
    assert f"| 1000 | {0.5 / (4 / (2 * L0)):.4g} |" in ratio
    # a level gradient norm (1.0, no clip configured): Adam at its steady step throughout
    assert "| uw_run | – | 1 | 1 | 1.00 (50) | 1.00 | 1.00 |" in text
    # The runs table quotes the trainer's own "loss" key (the last window's mean per-sample loss).
    assert "| uw_run | ANT-uw | – | – | 1000 | 0.005 | 5 | 500 | 3 | 10 |" in text


def test_bin_losses_section_compares_runs_of_any_clustering_with_vanilla(tmp_path):
    import json

    uw = write_run(tmp_path / "uw_run", "uw")
    vanilla = write_run(tmp_path / "vanilla_run", "uw")
    (vanilla / "config.yaml").write_text("ant:\n  enabled: false\n  k: 4\n")
    # the vanilla run's losses are twice UW's in every bin
    lines = [json.loads(x) for x in (vanilla / "metrics.jsonl").read_text().splitlines()[:-1]]
    for r in lines:
        if "bin_losses" in r:
            r["bin_losses"] = [None if v is None else 2 * v for v in r["bin_losses"]]
    (vanilla / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    old = write_run(tmp_path / "old_run", "uw", bins=0)  # logged before train.log_loss_bins
    # stratified UW over clusters of other widths, logged before the means over t ~ U: its first
    # bin [0, 250) mixes t ≤ 99 (drawn 1.6× as often per timestep) with the rest: left out
    uneven = write_run(tmp_path / "uneven_run", "uw")
    TaskClusters(((0, 99), (100, 499), (500, 749), (750, 999))).to_json(uneven / "clusters.json")
    # P2 runs: one logged its unweighted MSE per bin (3× UW's here), one only w(t)·MSE
    p2 = {name: write_run(tmp_path / name, "uw") for name in ("p2_parts", "p2_weighted")}
    for name, run in p2.items():
        (run / "config.yaml").write_text(
            "ant:\n  enabled: false\n  k: 4\ndiffusion:\n  weighting: p2\n"
        )
        lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()[:-1]]
        for r in lines:  # (the last line is one cut short by a crash)
            if "bin_losses" in r and name == "p2_parts":
                r["bin_mse"] = [None if v is None else 3 * v for v in r["bin_losses"]]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    text = write_report([uw, vanilla, old, uneven, *p2.values()], tmp_path / "r").read_text()
    section = text.split("## Loss per bin of t", 1)[1].split("\n## ", 1)[0]
    assert "right: ratio to vanilla_run" in section
    assert (tmp_path / "r" / "figures" / "bin_losses.png").stat().st_size > 2000
    # last 10% of 20 lines = lines 18 and 19 (n = 18, 19): bin 0 = mean(0.3/19, 0.3/20)
    b0 = np.mean([0.3 / 19, 0.3 / 20])
    assert f"| uw_run | {b0:.4g} |" in section and f"| vanilla_run | {2 * b0:.4g} |" in section
    assert "| run | [0, 250) | [250, 500) | [500, 750) | [750, 1000) |" in section
    assert "old_run" not in section  # no bins: not drawn, not invented
    assert f"| uneven_run | – | {0.3 / 2 * (1 / 19 + 1 / 20) / 2:.4g} |" in section
    assert "– in uneven_run: a bin whose logged value is the sample mean over an uneven" in section
    assert f"| p2_parts | {3 * b0:.4g} |" in section  # its unweighted MSE, not w(t)·MSE
    assert f"| p2_weighted | {b0:.4g} |" in section
    assert "– p2_weighted: weighted runs logged before the parts per bin existed" in section
    assert "p2_parts:" not in section
    only_old = write_report([old], tmp_path / "r2").read_text()
    assert "loss per bin of t (no run logged bin_losses)" in only_old.split("## Missing parts")[1]


def test_missing_parts_are_stated(tmp_path):
    run = write_run(tmp_path / "uw_run", "uw")
    text = write_report([run], tmp_path / "r").read_text()
    missing = text.split("## Missing parts", 1)[1]
    assert "task affinity (run `antdiff affinity RUN --out DIR`)" in missing
    assert "negative transfer gap" in missing
    assert "gradient conflicts" in missing
    # A report of analyses alone (no run) also works and says what it lacks.
    text2 = write_report([_affinity(tmp_path / "aff")], tmp_path / "r2").read_text()
    assert "## Task affinity (O1)" in text2 and "training runs (no run directory" in text2


def test_inputs_are_classified_and_bad_paths_rejected(tmp_path):
    run = write_run(tmp_path / "run", "uw")
    aff = _affinity(tmp_path / "aff")
    inp = classify_inputs([run, aff / "affinity.npy", _ntg(tmp_path / "n") / "ntg.json"])
    assert list(inp.runs) == ["run"] and list(inp.affinity) == ["aff"] and list(inp.ntg) == ["n"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="neither a run directory"):
        classify_inputs([tmp_path / "empty"])
    with pytest.raises(ValueError, match="does not exist"):
        classify_inputs([tmp_path / "nope"])


def test_affinity_section_reads_o1_from_overwhelming_evidence_and_states_the_decay(tmp_path):
    """100 bins of a cleanly decaying matrix: Spearman's p underflows to 0, which is the
    strongest evidence for O1, not a missing value; the decay profile and conflict shares are
    tabulated (here affinity 2·e^(−gap/30) − 1 is negative from a gap of 21 bins)."""
    out = tmp_path / "aff100"
    i = np.arange(100)
    A = 2 * np.exp(-np.abs(i[:, None] - i[None, :]) / 30.0) - 1
    TaskAffinity(
        A, A[None], np.ones((1, 100)), TimestepBins.uniform(T, 100), "exact", None, 16, 0,
        meta={"schedule": NoiseSchedule.from_name("linear", T).to_dict()},
    ).save(out)  # fmt: skip
    text = write_report([out], tmp_path / "r").read_text()
    section = text.split("## Task affinity (O1)")[1]
    assert "| |Δt| | -1 | < 1e-300 | O1 holds (clearly negative) |" in section
    assert "| bins apart | 1 | 2 | 5 | 10 | 20 | 50 | 99 |" in section
    share = (np.abs(i[:, None] - i[None, :])[np.triu_indices(100, 1)] > 20).mean()
    assert f"below 0: {100 * share:.1f}%" in section
    assert "split-half" not in section  # measured without --split-half: nothing to say


def test_affinity_section_states_the_split_half_reliability(tmp_path):
    from antdiff.analysis.affinity import split_half_reliability

    i = np.arange(20)
    A = np.exp(-np.abs(i[:, None] - i[None, :]) / 5.0)
    rng = np.random.default_rng(1)
    halves = np.stack([A + rng.normal(0, 0.1, A.shape) for _ in range(2)])
    agreement = split_half_reliability(halves[0], halves[1])
    TaskAffinity(
        A, A[None], np.ones((1, 20)), TimestepBins.uniform(T, 20), "exact", None, 16, 0,
        meta={"schedule": NoiseSchedule.from_name("linear", T).to_dict(),
              "split_half": {"images": [8, 8], **agreement}},
        halves=halves,
    ).save(tmp_path / "aff")  # fmt: skip
    section = write_report([tmp_path / "aff"], tmp_path / "r").read_text()
    expected = (
        f"| split-half agreement r (reliability of the whole, Spearman–Brown) | "
        f"{agreement['r']:.3f} ({agreement['spearman_brown']:.3f}), halves of 8 and 8 images |"
    )
    assert expected in section.split("## Task affinity (O1)")[1]


def test_a_hybrid_run_shows_what_each_clusters_loss_is_made_of(tmp_path):
    """A hybrid run's per-cluster losses come with their parts, ε-MSE and λ·T·L_t, at the same
    steps; an ε-MSE run without a weighting has none to show."""
    import torch

    from antdiff.analysis.logs import read_training_log
    from antdiff.training.trainer import train
    from test_train import tiny

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(tiny(tmp_path / "hyb", "train.steps=2", "diffusion.learned_variance=true"), log=None)
        train(tiny(tmp_path / "eps", "train.steps=2"), log=None)
        vmap = ["ant.enabled=true", "ant.balancer=pcgrad", "ant.engine=vmap"]
        hybrid = ["diffusion.learned_variance=true"]
        train(tiny(tmp_path / "vmap", "train.steps=1", *hybrid, *vmap), log=None)
    finally:
        torch.set_num_threads(n)
    # the same vmap run as code before the twenty-first session logged it: no parts pooled
    old = tmp_path / "oldvmap"
    shutil.copytree(tmp_path / "vmap", old)
    lines = [json.loads(x) for x in (old / "metrics.jsonl").read_text().splitlines()]
    for r in lines:
        if "parts_counts" in r:
            k = len(r["parts_counts"])
            r.update(parts_counts=[0] * k, cluster_mse=[None] * k, cluster_vb=[None] * k)
            r.pop("bin_mse", None), r.pop("bin_vb", None)
    (old / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    runs = [tmp_path / "hyb", tmp_path / "eps", tmp_path / "vmap", old]
    text = write_report(runs, tmp_path / "r").read_text()
    section = text.split("## Per-cluster losses", 1)[1].split("\n## ", 1)[0]
    hyb, rest = section.split("### eps", 1)
    eps, rest = rest.split("### vmap", 1)
    vmap, oldvmap = rest.split("### oldvmap", 1)
    assert "Parts of the loss per cluster" in hyb and "Parts of the loss" not in eps
    # a PCGrad vmap run's parts come back from the engine's transform: a table as split's
    assert "Parts of the loss per cluster" in vmap and "No loss parts recorded" not in vmap
    # an older log whose every loss was computed inside the transform: said so, no dashes
    assert "No loss parts recorded" in oldvmap and "MSE_0" not in oldvmap
    log = read_training_log(tmp_path / "hyb")
    last = [2, *log.cluster_mse[-1], *log.cluster_vb[-1]]
    shown = ["2"] + [f"{v:.4g}" if np.isfinite(v) else "–" for v in last[1:]]  # – : no sample
    assert "| " + " | ".join(shown) + " |" in hyb
    np.testing.assert_allclose(
        log.cluster_mse + log.cluster_vb, log.cluster_losses, rtol=1e-5, equal_nan=True
    )


def test_bin_losses_section_sets_each_run_against_the_vanilla_run_of_its_loss(tmp_path):
    """The hybrid loss adds λ·T·L_t to the ε-MSE: a hybrid run's ratio is to the hybrid vanilla
    run, an ε-MSE run's to the ε-MSE one; a run whose loss has no vanilla run gets none."""
    cfg = {
        "vanilla_hyb": "ant:\n  enabled: false\n  k: 4\ndiffusion:\n  learned_variance: true\n",
        "uw_hyb": "ant:\n  enabled: true\n  k: 4\ndiffusion:\n  learned_variance: true\n",
        "vanilla_eps": "ant:\n  enabled: false\n  k: 4\n",
        "uw_eps": "ant:\n  enabled: true\n  k: 4\n",
    }
    runs = []
    for name, text in cfg.items():
        runs.append(write_run(tmp_path / name, "uw"))
        (runs[-1] / "config.yaml").write_text(text)
    text = write_report(runs, tmp_path / "r").read_text()
    section = text.split("## Loss per bin of t", 1)[1].split("\n## ", 1)[0]
    assert (
        "right: ratio to vanilla_eps, vanilla_hyb (the vanilla run of each loss, at the steps"
        in section
    )
    assert "no ratio" not in section
    text = write_report([runs[0], runs[1], runs[3]], tmp_path / "r3").read_text()
    section = text.split("## Loss per bin of t", 1)[1].split("\n## ", 1)[0]
    assert "right: ratio to vanilla_hyb (the vanilla run of each loss, at the steps" in section
    assert "– uw_eps: no vanilla run of its loss among the inputs: no ratio." in section
