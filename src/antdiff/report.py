"""One Markdown report of runs and their analyses (``antdiff report RUN... --out DIR``).

Inputs are directories (or files) of three kinds, recognised by their content:

* a **run directory** (``metrics.jsonl`` / ``config.yaml`` / ``clusters.json``, as the trainer
  writes it): clusters, per-cluster loss curves, balancer weights, gradient conflicts, FID curves;
* a **task-affinity output** (``antdiff affinity --out``; its ``affinity.json``): heat-maps,
  affinity vs. noise-level gap, Spearman's ρ;
* an **NTG output** (``antdiff ntg --out``; its ``ntg.json``): NTG table and bar chart.

Analyses stored one level inside a run directory (``RUN/affinity/``, ``RUN/ntg/``) are found
automatically. Every figure comes with a table of the numbers behind it, and every part that
cannot be produced from the inputs is listed as missing with the command that would produce it
— nothing is invented.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .analysis.affinity import TaskAffinity, is_affinity_json
from .analysis.logs import TrainingLog, read_training_log
from .analysis.ntg import NTGTable
from .clustering import TaskClusters
from .schedule import NoiseSchedule

__all__ = ["ReportInputs", "classify_inputs", "write_report"]


@dataclass
class ReportInputs:
    runs: dict[str, Path] = field(default_factory=dict)
    affinity: dict[str, Path] = field(default_factory=dict)
    ntg: dict[str, Path] = field(default_factory=dict)


def _is_run(p: Path) -> bool:
    return p.is_dir() and any(
        (p / f).exists() for f in ("metrics.jsonl", "config.yaml", "clusters.json")
    )


def _is_ntg_json(p: Path) -> bool:
    try:
        return json.loads(p.read_text()).get("format") == "antdiff.ntg/1"
    except (OSError, ValueError, AttributeError):
        return False


def _unique(d: dict[str, Path], name: str, p: Path) -> None:
    if any(v.resolve() == p.resolve() for v in d.values()):
        return
    key, i = name, 2
    while key in d:
        key, i = f"{name}-{i}", i + 1
    d[key] = p


def classify_inputs(paths: Sequence[str | Path]) -> ReportInputs:
    """Sort the given paths into runs, affinity outputs and NTG outputs (see module doc)."""
    out = ReportInputs()
    if not paths:
        raise ValueError("give at least one run directory, affinity output or NTG output")
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            raise ValueError(f"input {str(p)!r} does not exist")
        found = False
        if p.is_file():
            if p.suffix == ".npy" and p.with_suffix(".json").exists():
                p = p.with_suffix(".json")
            if is_affinity_json(p):
                _unique(out.affinity, p.parent.name, p)
                found = True
            elif _is_ntg_json(p):
                _unique(out.ntg, p.parent.name, p)
                found = True
        else:
            if _is_run(p):
                _unique(out.runs, p.resolve().name, p)
                found = True
            for sub in [p, *sorted(c for c in p.iterdir() if c.is_dir())]:
                label = p.resolve().name if sub == p else f"{p.resolve().name}/{sub.name}"
                for j in sorted(sub.glob("*.json")):
                    if is_affinity_json(j):
                        _unique(out.affinity, label, j)
                        found = True
                    elif _is_ntg_json(j):
                        _unique(out.ntg, label, j)
                        found = True
        if not found:
            raise ValueError(
                f"input {str(p)!r} is neither a run directory (metrics.jsonl, config.yaml) nor an "
                "output of antdiff affinity (affinity.json) or antdiff ntg (ntg.json)"
            )
    return out


# ============================================================================ helpers
def _schedule_from_config(cfg: dict[str, Any]) -> NoiseSchedule | None:
    d = cfg.get("diffusion") if isinstance(cfg, dict) else None
    if not isinstance(d, dict) or not d.get("schedule"):
        return None
    try:
        return NoiseSchedule.from_name(
            d["schedule"], int(d.get("num_timesteps", 1000)), d.get("beta_start"), d.get("beta_end")
        )
    except (ValueError, TypeError):
        return None


def _fmt(x: Any, digits: int = 4) -> str:
    if x is None:
        return "–"
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
        return str(int(x))
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    if not math.isfinite(v):
        return "–"
    return f"{v:.{digits}g}"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += [
        "| " + " | ".join(_fmt(c) if not isinstance(c, str) else c for c in r) + " |" for r in rows
    ]
    return "\n".join(lines) + "\n"


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s).strip("_") or "item"


def _row_at(x: np.ndarray, frac: float) -> tuple[int, np.ndarray]:
    n = x.shape[0]
    i = min(n - 1, max(0, int(math.ceil(frac * n)) - 1))
    return i, x[i]


class _Writer:
    def __init__(self, out: Path) -> None:
        self.out = out
        self.fig_dir = out / "figures"
        self.parts: list[str] = []
        self.missing: list[str] = []
        self.errors: list[str] = []

    def h(self, level: int, text: str) -> None:
        self.parts.append("#" * level + " " + text + "\n")

    def p(self, text: str) -> None:
        self.parts.append(text.rstrip() + "\n")

    def figure(self, fn: Any, name: str, caption: str, *args: Any, **kw: Any) -> bool:
        """Draw a figure; on a data error note it instead of failing the whole report."""
        path = self.fig_dir / f"{_slug(name)}.png"
        try:
            fn(*args, path=path, **kw)
        except ValueError as e:
            self.errors.append(f"{caption}: {e}")
            self.p(f"*Figure not drawn ({caption}): {e}*")
            return False
        self.p(f"![{caption}](figures/{path.name})\n\n*{caption}*")
        return True


# ============================================================================ sections
def _run_overview(w: _Writer, logs: dict[str, TrainingLog]) -> None:
    w.h(2, "Runs")
    rows = []
    for name, log in logs.items():
        cfg = log.config
        ant = cfg.get("ant", {}) if isinstance(cfg, dict) else {}
        diff = cfg.get("diffusion", {}) if isinstance(cfg, dict) else {}
        method = (
            f"ANT-{ant.get('balancer')}"
            if ant.get("enabled")
            else ("vanilla" if cfg else "unknown (no config.yaml)")
        )
        if diff.get("timestep_range"):
            method += f" specialist {diff['timestep_range']}"
        s, fid = log.eval_series("fid")
        last_eval = next((e for st, e in reversed(log.evals) if "fid" in e), {})
        rows.append(
            [
                name,
                method,
                str((cfg.get("model") or {}).get("preset", "–")) if cfg else "–",
                str(diff.get("weighting", "–")) if diff else "–",
                int(log.steps[-1]) if len(log) else "–",
                float(log.loss[-1]) if len(log) else None,
                float(fid[-1]) if fid.size else None,
                last_eval.get("n"),
                last_eval.get("floor"),
                float(np.nanmedian(log.it_per_s)) if np.isfinite(log.it_per_s).any() else None,
            ]
        )
    w.p(
        _table(
            [
                "run",
                "method",
                "model",
                "weighting",
                "last step",
                "last loss",
                "last FID",
                "FID n",
                "FID floor",
                "it/s (median)",
            ],
            rows,
        )
    )


def _clusters_section(w: _Writer, logs: dict[str, TrainingLog]) -> None:
    from . import plots

    w.h(2, "Task clusters")
    drawn = False
    for name, log in logs.items():
        if log.clusters is None:
            w.missing.append(f"clusters of {name} (no clusters.json in the run directory)")
            continue
        cl: TaskClusters = log.clusters
        sch = _schedule_from_config(log.config)
        w.h(3, name)
        w.figure(
            lambda path, c=cl, s=sch: plots.plot_clusters(c, s, path),
            f"clusters_{name}",
            f"clusters of {name}",
        )
        lam = sch.logsnr if sch is not None else None
        rows = []
        for i, (a, b) in enumerate(cl.intervals):
            rows.append(
                [
                    i,
                    f"[{a}, {b}]",
                    f"[{a + 1}, {b + 1}]",
                    b - a + 1,
                    None if lam is None else lam[b],
                    None if lam is None else lam[a],
                ]
            )
        w.p(
            _table(
                [
                    "cluster",
                    "t (0-indexed)",
                    "paper (1-indexed)",
                    "width",
                    "λ at last",
                    "λ at first",
                ],
                rows,
            )
        )
        drawn = True
    if not drawn:
        w.p("*No clusters available.*")


def _run_figure(w: _Writer, name: str, log: TrainingLog, plot: Any, kind: str, what: str) -> None:
    """A run's sub-heading and its ``kind`` figure (``figures/<kind>_<run>.png``)."""
    w.h(3, name)
    w.figure(lambda path: plot(log, path), f"{kind}_{name}", f"{what} of {name}")


def _training_section(w: _Writer, logs: dict[str, TrainingLog]) -> None:
    from . import plots

    w.h(2, "Per-cluster losses")
    for name, log in logs.items():
        if len(log) == 0 or log.k == 0:
            w.missing.append(f"loss curves of {name} (no training lines in metrics.jsonl)")
            continue
        _run_figure(w, name, log, plots.plot_cluster_losses, "losses", "per-cluster losses")
        rows = []
        for frac in (0.1, 0.5, 1.0):
            i, v = _row_at(log.cluster_losses, frac)
            rows.append([int(log.steps[i]), *[float(x) for x in v]])
        w.p(_table(["step", *[f"L_{i}" for i in range(log.k)]], rows))
        if log.cluster_mse.size and np.isfinite(log.cluster_mse).any():
            _loss_parts_table(w, log)
        elif log.cluster_mse.size:  # logs of older code: vmap passes pooled no parts
            w.p(
                "*No loss parts recorded: every step computed its losses inside the gradient "
                "engine's `vmap` pass (`parts_counts` 0), and the antdiff that wrote this log "
                "did not yet bring them out of it (`emit_sample_values`).*"
            )


def _loss_parts_table(w: _Writer, log: TrainingLog) -> None:
    """What each cluster's loss is made of in a weighted or hybrid run: ℓ = w(t)·ℓ_mse + λ·T·L_t,
    the unweighted ε-MSE and the learned-σ term per cluster (the trainer's ``cluster_mse``,
    ``cluster_vb``) at the same steps as the losses."""
    hybrid = log.cluster_vb.size > 0
    head = [f"MSE_{i}" for i in range(log.k)] + (
        [f"vb_{i}" for i in range(log.k)] if hybrid else []
    )
    rows = []
    for frac in (0.1, 0.5, 1.0):
        i, mse = _row_at(log.cluster_mse, frac)
        vb = log.cluster_vb[i] if hybrid else np.zeros(0)
        rows.append([int(log.steps[i]), *[float(x) for x in mse], *[float(x) for x in vb]])
    w.p(
        "Parts of the loss per cluster: unweighted ε-MSE"
        + (" and λ·T·L_t (the learned-σ term, `vb`)" if hybrid else "")
        + " — the logged loss is w(t)·MSE"
        + (" + vb (w(t)·(MSE + vb) with `diffusion.weight_vlb`)" if hybrid else "")
        + ":"
    )
    w.p(_table(["step", *head], rows))


def _bins_section(w: _Writer, logs: dict[str, TrainingLog]) -> None:
    """Every run's loss per fixed bin of t, beside each other and as a ratio to a vanilla run:
    the bins are the same whatever the clusters, so other clusterings compare here."""
    from . import plots

    with_bins = {n: lg for n, lg in logs.items() if lg.bin_loss_profile() is not None}
    w.h(2, "Loss per bin of t")
    if not with_bins:
        w.p("*No run logged its loss per bin of t (`train.log_loss_bins`).*")
        w.missing.append("loss per bin of t (no run logged bin_losses)")
        return
    nb = Counter(lg.bin_losses.shape[1] for lg in with_bins.values()).most_common(1)[0][0]
    left = sorted(n for n, lg in with_bins.items() if lg.bin_losses.shape[1] != nb)
    if left:
        w.missing.append(f"loss per bin of t of {', '.join(left)} (other bin count than {nb})")
    same = {n: lg for n, lg in with_bins.items() if lg.bin_losses.shape[1] == nb}

    # the references: per loss, a vanilla run (no balancer, no loss weighting) — its losses are
    # unweighted, and a hybrid run's loss holds λ·T·L_t beside the ε-MSE, so each run is set
    # against the vanilla run of its own loss
    vanilla: dict[str, str] = {}
    for n, lg in same.items():
        if lg.balancer_name in (None, "vanilla") and not lg.loss_weighted:
            vanilla.setdefault(lg.loss_kind, n)
    pairs = {n: vanilla[lg.loss_kind] for n, lg in same.items() if lg.loss_kind in vanilla}
    pairs = {n: r for n, r in pairs.items() if n != r}
    refs = sorted(set(pairs.values()))
    w.figure(
        lambda path: plots.plot_bin_losses(same, path, reference=pairs or None),
        "bin_losses",
        "loss per bin of t (last 10% of training)"
        + (
            f"; right: ratio to {', '.join(refs)} (the vanilla run of each loss, at the steps "
            "both logged)"
            if refs
            else ""
        ),
    )
    alone = sorted(n for n in same if n not in pairs and n not in refs)
    if refs and alone:
        w.p(f"– {', '.join(alone)}: no vanilla run of its loss among the inputs: no ratio.")
    profiles = {n: lg.bin_loss_profile() for n, lg in same.items()}
    rows = [[n, *[float(x) for x in p]] for n, p in profiles.items() if p is not None]
    head = ["run", *[f"[{lo}, {hi + 1})" for lo, hi in next(iter(same.values())).bin_intervals()]]
    uneven = sorted(n for n, lg in same.items() if lg.uneven_bins().any())
    weighted = sorted(n for n, lg in same.items() if lg.bins_are_weighted)
    w.p(
        "Mean per-sample loss per bin of t over the last 10% of each run's training lines, "
        "unweighted (a weighted run — P2, Min-SNR — from its logged parts per bin, `bin_mse` "
        "and `bin_vb`):\n\n" + _table(head, rows)
    )
    if weighted:
        w.p(
            f"– {', '.join(weighted)}: weighted runs logged before the parts per bin existed: "
            "their rows are w(t)·loss, not comparable with the others."
        )
    if uneven:
        w.p(
            f"– in {', '.join(uneven)}: a bin whose logged value is the sample mean over an "
            "uneven draw of t (a log from before the trainer weighted each sample by 1/(T·p(t)); "
            "stratified sampling over clusters of other widths that meet inside the bin), which "
            "leans to the oversampled timesteps and is left out."
        )


def _weights_section(w: _Writer, logs: dict[str, TrainingLog]) -> None:
    from . import plots

    w.h(2, "Balancer weights (UW ½e^{−s_i}, Nash α)")
    any_ = False
    for name, log in logs.items():
        series = [("UW ½e^{−s_i}", log.uw_weights()), ("Nash α", log.nash_alpha())]
        series = [(n, s) for n, s in series if s is not None]
        if not series:
            if log.balancer_name not in (None, "vanilla"):
                series = (
                    [("effective weight", log.weights)] if np.isfinite(log.weights).any() else []
                )
            if not series:
                continue
        any_ = True
        _run_figure(w, name, log, plots.plot_balancer_weights, "weights", "balancer weights")
        uw, stationary = log.uw_weights(), log.uw_stationary_weights()
        if uw is not None and stationary is not None:
            # 1 where s has caught up with the losses: UW is then the inverse-loss weighting
            point = "k/(2·L_i)" if log.uw_divides_by_k else "1/(2·L_i)"
            series.append((f"UW ½e^{{−s_i}} over its stationary point {point}", uw / stationary))
        for label, s in series:
            rows = []
            for frac in (0.1, 0.5, 1.0):
                i, v = _row_at(s, frac)
                rows.append([int(log.steps[i]), *[float(x) for x in v]])
            w.p(f"{label}:\n\n" + _table(["step", *[f"cluster {i}" for i in range(log.k)]], rows))
    if not any_:
        w.p("*No run logged balancer weights (vanilla runs have none).*")
        w.missing.append("balancer weights (no UW/Nash/other balancer run among the inputs)")


def _optimizer_section(w: _Writer, logs: dict[str, TrainingLog]) -> None:
    from . import plots

    w.h(2, "Gradient norm and Adam's step")
    rows = []
    for name, log in logs.items():
        norm = log.grad_norm
        if not (np.isfinite(norm) & (norm > 0)).any():
            w.missing.append(f"gradient norms of {name} (no grad_norm in metrics.jsonl)")
            continue
        scale = log.adam_step_scale(smooth=5)
        if not np.isfinite(scale).any():
            continue
        _run_figure(
            w, name, log, plots.plot_optimizer, "optimizer", "gradient norm and Adam's step"
        )
        clipped = log.clipped_grad_norm()
        i_low = int(np.nanargmin(scale))
        quarter = max(1, len(log) // 4)
        rows.append([
            name, _fmt(log.grad_clip), _fmt(float(np.nanmedian(clipped[:5]))),
            _fmt(float(np.nanmedian(clipped[-5:]))), f"{scale[i_low]:.2f} ({int(log.steps[i_low])})",
            f"{np.nanmean(scale[:quarter]):.2f}", f"{np.nanmean(scale[-quarter:]):.2f}",
        ])  # fmt: skip
    if rows:
        head = [
            "run",
            "clip",
            "clipped norm, first 5 lines",
            "last 5 lines",
            "lowest Adam step (at step)",
            "mean, first quarter",
            "mean, last quarter",
        ]
        w.p(
            "Adam divides each step by a running RMS of the gradients (β₂: a memory of "
            "~1/(1 − β₂) steps), so when the gradient norm falls — as it does early in "
            "diffusion training — its steps stay below the learning rate until the memory "
            "fades. The step here is the global-norm proxy ĝ/√v̂ from the logged norms "
            "(clipped, one per log window), averaged over 5 log lines; a norm that fluctuates "
            "keeps it below 1 (mean ĝ over root-mean-square ĝ).\n\n" + _table(head, rows)
        )


def _conflicts_section(w: _Writer, logs: dict[str, TrainingLog]) -> None:
    from . import plots

    w.h(2, "Gradient conflicts between clusters")
    any_ = False
    for name, log in logs.items():
        if log.conflicts() is None:
            continue
        any_ = True
        _run_figure(w, name, log, plots.plot_conflicts, "conflicts", "gradient conflicts")
        vs = log.conflict_vs_distance()
        if vs is not None:
            rows = [
                [f"{a}-{b}", float(d), float(f)]
                for a, b, d, f in zip(vs["a"], vs["b"], vs["distance"], vs["frequency"])
            ]
            w.p(_table(["pair", "centre distance (t)", "conflict frequency"], rows))
    if not any_:
        w.p("*No run logged gradient conflicts (PCGrad and other gradient balancers log them).*")
        w.missing.append("gradient conflicts (no PCGrad/gradient-balancer run among the inputs)")


def _eval_section(w: _Writer, logs: dict[str, TrainingLog]) -> None:
    from . import plots

    w.h(2, "FID during training")
    with_fid = {n: lg for n, lg in logs.items() if lg.eval_series("fid")[0].size}
    if not with_fid:
        w.p("*No evaluation lines with FID in any run (set train.eval_every and train.eval_ref).*")
        w.missing.append("FID curves (no evaluation lines)")
        return
    w.figure(
        lambda path: plots.plot_eval_curves(with_fid, path),
        "fid_curves",
        "FID against training steps",
    )
    steps = sorted({int(s) for lg in with_fid.values() for s in lg.eval_series("fid")[0]})
    rows = []
    for s in steps:
        row: list[Any] = [s]
        for lg in with_fid.values():
            ss, vv = lg.eval_series("fid")
            hit = vv[ss == s]
            row.append(float(hit[-1]) if hit.size else None)
        rows.append(row)
    w.p(_table(["step", *with_fid.keys()], rows))
    floors = []
    for n, lg in with_fid.items():
        e = next((e for _, e in reversed(lg.evals) if "fid" in e), {})
        floors.append([n, e.get("n"), e.get("floor")])
    w.p(
        "Sample count and real-vs-real FID floor of the last evaluation:\n\n"
        + _table(["run", "n", "floor"], floors)
    )


def _affinity_section(w: _Writer, items: dict[str, Path], logs: dict[str, TrainingLog]) -> None:
    from . import plots

    w.h(2, "Task affinity (O1)")
    if not items:
        w.p(
            "*No task-affinity result given.* Produce one with `antdiff affinity RUN --out DIR` and pass DIR."
        )
        w.missing.append("task affinity (run `antdiff affinity RUN --out DIR`)")
        return
    for name, path in items.items():
        aff = TaskAffinity.load(path)
        sch = NoiseSchedule.from_dict(aff.meta["schedule"]) if aff.meta.get("schedule") else None
        if sch is not None and sch.num_timesteps != aff.bins.num_timesteps:
            sch = None
        w.h(3, name)
        w.figure(
            lambda path, a=aff, s=sch: plots.plot_affinity(a, path, s),
            f"affinity_{name}",
            f"task affinity of {name}",
        )
        w.figure(
            lambda path, a=aff, s=sch: plots.plot_affinity_vs_distance(a, path, s),
            f"affinity_gap_{name}",
            f"affinity against the noise-level gap, {name}",
        )
        corr = aff.distance_correlation(sch)
        rows = []
        for key in ("timestep", "logsnr"):
            if key in corr:
                rho = corr[key]["spearman"]
                verdict = (
                    "–"
                    if rho is None
                    else (
                        "O1 holds (clearly negative)"
                        # p underflows to 0 for the strongest evidence: 0 is not "missing"
                        if rho < -0.3
                        and corr[key]["p_value"] is not None
                        and corr[key]["p_value"] < 0.01
                        else "O1 not clearly supported"
                    )
                )
                rows.append(
                    [
                        f"|Δ{'t' if key == 'timestep' else ' log-SNR'}|",
                        rho,
                        "< 1e-300" if corr[key]["p_value"] == 0 else corr[key]["p_value"],
                        verdict,
                    ]
                )
        w.p(_table(["gap", "Spearman ρ", "p-value", "reading"], rows))
        if len(aff.bins) > 1:
            # the decay profile, and whether distant tasks conflict or only ignore each other
            profile = aff.mean_at_gaps()
            shares = aff.share_below()
            w.p(
                _table(
                    ["bins apart", *map(str, profile)], [["mean affinity", *profile.values()]]
                ).rstrip("\n")
                + "\n\nShare of the pairs of distinct bins with affinity below "
                + ", ".join(f"{c:g}: {100 * v:.1f}%" for c, v in shares.items())
                + " (below 0: the tasks' gradients conflict)."
            )
        mem = aff.meta.get("memory", {})
        model = aff.meta.get("model", {})
        info = [
            ["bins", f"{len(aff.bins)} ({aff.bins.kind})"],
            ["images", aff.num_images],
            [
                "checkpoints",
                ", ".join(map(str, aff.meta.get("checkpoints", []))) or aff.num_checkpoints,
            ],
            ["mode", aff.mode + (f", d = {aff.sketch_dim}" if aff.sketch_dim else "")],
            ["parameters P", model.get("num_parameters")],
            ["gradient evaluations", aff.meta.get("gradient_evaluations")],
            ["memory bound (bytes)", mem.get("bytes")],
            ["seconds", aff.meta.get("seconds")],
            ["peak CUDA memory (bytes)", aff.meta.get("peak_cuda_bytes")],
        ]
        half = aff.meta.get("split_half") or {}
        if half.get("r") is not None:  # `antdiff affinity --split-half`
            info.append(
                [
                    "split-half agreement r (reliability of the whole, Spearman–Brown)",
                    f"{half['r']:.3f} ({half['spearman_brown']:.3f}), halves of "
                    f"{' and '.join(map(str, half.get('images') or []))} images",
                ]
            )
        w.p(_table(["", "value"], info))
        if len(aff.bins) <= 12:
            header = ["bin"] + [f"{a}–{b}" for a, b in aff.bins.groups]
            rows = [
                [f"{a}–{b}", *[float(x) for x in aff.matrix[i]]]
                for i, (a, b) in enumerate(aff.bins.groups)
            ]
            w.p("Affinity matrix (checkpoint mean):\n\n" + _table(header, rows))
        else:
            w.p(f"The {len(aff.bins)}×{len(aff.bins)} matrix is in `{path.with_suffix('.npy')}`.")


def _ntg_section(w: _Writer, items: dict[str, Path]) -> None:
    from . import plots

    w.h(2, "Negative transfer gap (O2)")
    if not items:
        w.p(
            "*No NTG result given.* Produce one with `antdiff ntg --joint RUN --intervals uniform:5 --train-specialists --ref REF.npz --out DIR` and pass DIR."
        )
        w.missing.append("negative transfer gap (run `antdiff ntg ... --out DIR`)")
        return
    tables = {name: NTGTable.load(p) for name, p in items.items()}
    w.figure(
        lambda path: plots.plot_ntg(tables, path),
        "ntg",
        "NTG per interval (< 0: negative transfer)",
    )
    for name, t in tables.items():
        w.h(3, name)
        joint = t.meta.get("joint")
        if joint:
            w.p(
                f"Joint model: `{joint}`; sampler: {t.meta.get('sampler', '–')}, {t.meta.get('steps', '–')} steps."
            )
        w.p(t.to_markdown())


def write_report(
    paths: Sequence[str | Path],
    out_dir: str | Path,
    title: str = "antdiff report",
) -> Path:
    """Write ``out_dir/report.md`` (+ ``figures/``) for the given inputs; returns its path."""
    inputs = classify_inputs(paths)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    w = _Writer(out)
    logs: dict[str, TrainingLog] = {}
    for name, p in inputs.runs.items():
        try:
            logs[name] = read_training_log(p)
        except ValueError as e:
            w.missing.append(f"training log of {name}: {e}")
    w.h(1, title)
    listing = [f"- run `{p}`" for p in inputs.runs.values()]
    listing += [f"- task affinity `{p}`" for p in inputs.affinity.values()]
    listing += [f"- NTG `{p}`" for p in inputs.ntg.values()]
    w.p("Inputs:\n\n" + "\n".join(listing))
    if logs:
        _run_overview(w, logs)
        _clusters_section(w, logs)
        _training_section(w, logs)
        _bins_section(w, logs)
        _weights_section(w, logs)
        _optimizer_section(w, logs)
        _conflicts_section(w, logs)
        _eval_section(w, logs)
    else:
        w.missing.append("training runs (no run directory among the inputs)")
    _affinity_section(w, inputs.affinity, logs)
    _ntg_section(w, inputs.ntg)
    w.h(2, "Missing parts")
    if w.missing or w.errors:
        w.p("\n".join(f"- {m}" for m in [*w.missing, *w.errors]))
    else:
        w.p("Nothing: every section was produced from the inputs.")
    for name, log in logs.items():
        if log.skipped_lines:
            w.p(f"- note: {log.skipped_lines} unreadable line(s) skipped in {name}/metrics.jsonl")
    path = out / "report.md"
    path.write_text("\n".join(w.parts))
    return path
