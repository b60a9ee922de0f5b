"""Figures (matplotlib, Agg backend). Imported lazily by the CLI and the report; the core never
imports this module.

* :func:`plot_clusters` — the clusters over t and over log-SNR.
* :func:`plot_affinity` — task-affinity heat-maps over t and over log-SNR (paper Figure 1).
* :func:`plot_affinity_vs_distance` — affinity against |Δt| and |Δlog-SNR| with Spearman's ρ (O1).
* :func:`plot_ntg` — negative transfer gap per interval, one bar group per model (Figure 2, §6.7).
* :func:`plot_cluster_losses`, :func:`plot_balancer_weights`, :func:`plot_conflicts`,
  :func:`plot_eval_curves` — MTL behaviour from ``metrics.jsonl`` (the paper's Figure 4).

Every function writes one PNG and returns its path, through :func:`save_figure`: a 256-colour
palette PNG, about a third of matplotlib's RGBA file for these flat-coloured plots (results
folders keep many of them, and they travel with the working tree).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .clustering import TaskClusters
from .schedule import NoiseSchedule

if TYPE_CHECKING:
    from .analysis.affinity import TaskAffinity
    from .analysis.logs import TrainingLog
    from .analysis.ntg import NTGTable

__all__ = [
    "plot_affinity",
    "plot_affinity_vs_distance",
    "plot_balancer_weights",
    "plot_bin_losses",
    "plot_cluster_losses",
    "plot_clusters",
    "plot_conflicts",
    "plot_eval_curves",
    "plot_ntg",
    "pyplot",
    "save_figure",
]


def pyplot() -> Any:
    """matplotlib.pyplot on the non-interactive Agg backend (safe on headless machines)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_clusters(
    clusters: TaskClusters,
    schedule: NoiseSchedule | None,
    path: str | Path,
    title: str | None = None,
) -> Path:
    """The clusters over t (left) and over log-SNR (right), with the log-SNR curve λ(t).

    Each interval is a coloured band; the right panel shows where each cluster's tasks sit on
    the log-SNR axis, which is what the SNR and log-SNR costs cluster.
    """
    plt = pyplot()
    T = clusters.num_timesteps
    t = np.arange(T)
    colours = plt.get_cmap("tab10" if clusters.k <= 10 else "viridis")
    ncols = 2 if schedule is not None else 1
    fig, axes = plt.subplots(1, ncols, figsize=(5.5 * ncols, 3.6), squeeze=False)
    ax = axes[0, 0]
    lam = None if schedule is None else schedule.logsnr
    for i, (a, b) in enumerate(clusters.intervals):
        c = colours(i % 10) if clusters.k <= 10 else colours(i / max(1, clusters.k - 1))
        ax.axvspan(a - 0.5, b + 0.5, color=c, alpha=0.35, lw=0)
        ax.text(
            (a + b) / 2, 0.02, str(i), transform=ax.get_xaxis_transform(), ha="center", fontsize=8
        )
    if lam is not None:
        ax.plot(t, lam, color="black", lw=1.2, label="log-SNR λ(t)")
        ax.set_ylabel("log-SNR λ(t)")
        ax.legend(loc="upper right", fontsize=8)
    else:
        ax.set_yticks([])
    ax.set_xlim(-0.5, T - 0.5)
    ax.set_xlabel("timestep t (0 = cleanest)")
    ax.set_title("clusters over t")
    if schedule is not None and lam is not None:
        ax2 = axes[0, 1]
        finite = np.isfinite(lam)
        for i, (a, b) in enumerate(clusters.intervals):
            c = colours(i % 10) if clusters.k <= 10 else colours(i / max(1, clusters.k - 1))
            seg = lam[a : b + 1][finite[a : b + 1]]
            if seg.size:
                ax2.axvspan(seg.min(), seg.max(), color=c, alpha=0.35, lw=0)
                ax2.plot(seg, np.full(seg.size, i), "|", color=c, ms=6)
        ax2.set_xlabel("log-SNR λ")
        ax2.set_ylabel("cluster")
        ax2.set_yticks(range(clusters.k))
        ax2.invert_xaxis()
        ax2.set_title("clusters over log-SNR (noisier →)")
    cost = "" if clusters.cost is None else f", cost {clusters.cost:.4g}"
    fig.suptitle(
        title or f"k={clusters.k} clusters ({clusters.cost_name or 'custom'}{cost})", fontsize=10
    )
    fig.tight_layout()
    return save_figure(fig, path)


def save_figure(fig: Any, path: str | Path, dpi: int = 120, *, close: bool = True) -> Path:
    """Write ``fig`` to ``path`` (parents created). A ``.png`` is stored as a 256-colour palette
    PNG: plots are a few flat colours plus anti-aliased edges and colour bars, which a
    maximum-coverage palette keeps within 16 of 255 levels per channel (every figure of the
    reproduction study; most pixels exact) at about a third of the RGBA file's size;
    transparent pixels are composited on white. Any other suffix is matplotlib's own format."""
    import io

    plt = pyplot()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() != ".png":
        fig.savefig(out, dpi=dpi)
    else:
        from PIL import Image

        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi)
        rgba = Image.open(io.BytesIO(buf.getvalue())).convert("RGBA")
        rgb = Image.new("RGB", rgba.size, (255, 255, 255))
        rgb.paste(rgba, mask=rgba.getchannel("A"))
        pal = rgb.quantize(colors=256, method=Image.Quantize.MAXCOVERAGE, dither=Image.Dither.NONE)
        pal.save(out, format="PNG", optimize=True)
    if close:
        plt.close(fig)
    return out


def _save(fig: Any, path: str | Path, dpi: int = 120) -> Path:
    fig.tight_layout()
    return save_figure(fig, path, dpi)


# ============================================================================ task affinity (O1)
def _timestep_edges(aff: TaskAffinity) -> np.ndarray:
    """Cell edges on the t axis: the true bin boundaries when the bins tile 0 … T−1, else the
    midpoints between bin centres."""
    b = aff.bins
    if b.covers_all:
        return np.concatenate([b.firsts, [b.num_timesteps]]).astype(np.float64) - 0.5
    c = b.centres
    if c.size == 1:
        return np.array([b.firsts[0] - 0.5, b.lasts[0] + 0.5])
    mid = (c[1:] + c[:-1]) / 2
    return np.concatenate(
        [
            [min(b.firsts[0] - 0.5, 2 * c[0] - mid[0])],
            mid,
            [max(b.lasts[-1] + 0.5, 2 * c[-1] - mid[-1])],
        ]
    )


def _logsnr_at(schedule: NoiseSchedule, t: np.ndarray) -> np.ndarray:
    """λ at fractional timesteps (linear interpolation, linear extrapolation past the ends)."""
    lam = schedule.logsnr
    T = lam.size
    x = np.arange(T, dtype=np.float64)
    out = np.interp(t, x, lam)
    if T > 1:
        lo, hi = t < 0, t > T - 1
        out[lo] = lam[0] + (t[lo] - 0) * (lam[1] - lam[0])
        out[hi] = lam[-1] + (t[hi] - (T - 1)) * (lam[-1] - lam[-2])
    return out


def plot_affinity(
    aff: TaskAffinity,
    path: str | Path,
    schedule: NoiseSchedule | None = None,
    title: str | None = None,
) -> Path:
    """Heat-maps of the task-affinity matrix over t (left) and over log-SNR λ (right, with a
    schedule), as in the paper's Figure 1, with a colour bar. Cells are the bins."""
    plt = pyplot()
    A = np.asarray(aff.matrix, dtype=np.float64)
    finite = A[np.isfinite(A)]
    vmin = min(0.0, float(finite.min())) if finite.size else 0.0
    cmap = "RdBu_r" if vmin < 0 else "viridis"
    norm_kw = {"vmin": -1.0, "vmax": 1.0} if vmin < 0 else {"vmin": 0.0, "vmax": 1.0}
    ncols = 2 if schedule is not None else 1
    fig, axes = plt.subplots(1, ncols, figsize=(5.2 * ncols, 4.4), squeeze=False)
    e = _timestep_edges(aff)
    ax = axes[0, 0]
    mesh = ax.pcolormesh(e, e, np.ma.masked_invalid(A), cmap=cmap, shading="flat", **norm_kw)
    ax.set_xlabel("timestep t (0 = cleanest)")
    ax.set_ylabel("timestep t")
    ax.set_aspect("equal")
    ax.set_title("by timestep")
    fig.colorbar(mesh, ax=ax, fraction=0.046, pad=0.04, label="task affinity (gradient cosine)")
    if schedule is not None:
        le = _logsnr_at(schedule, e)
        ax2 = axes[0, 1]
        m2 = ax2.pcolormesh(le, le, np.ma.masked_invalid(A), cmap=cmap, shading="flat", **norm_kw)
        lo, hi = float(np.min(le)), float(np.max(le))
        ax2.set_xlim(lo, hi)
        ax2.set_ylim(lo, hi)
        ax2.set_xlabel("log-SNR λ")
        ax2.set_ylabel("log-SNR λ")
        ax2.set_aspect("equal")
        ax2.set_title("by log-SNR")
        fig.colorbar(m2, ax=ax2, fraction=0.046, pad=0.04, label="task affinity")
    d = f", d={aff.sketch_dim}" if aff.sketch_dim else ""
    fig.suptitle(
        title
        or f"task affinity: {len(aff.bins)} bins, {aff.num_images} images, "
        f"{aff.num_checkpoints} checkpoint(s), {aff.mode}{d}",
        fontsize=10,
    )
    return _save(fig, path)


def _binned_trend(
    x: np.ndarray, y: np.ndarray, nbins: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if nbins is None:  # about 6 points per bin keeps the median from zig-zagging
        nbins = int(np.clip(x.size // 6, 2, 12))
    if x.size < 2 or np.ptp(x) == 0:
        return x, y
    edges = np.quantile(x, np.linspace(0, 1, min(nbins, x.size) + 1))
    edges = np.unique(edges)
    idx = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, edges.size - 2)
    cx = np.array([x[idx == i].mean() for i in range(edges.size - 1) if np.any(idx == i)])
    cy = np.array([np.median(y[idx == i]) for i in range(edges.size - 1) if np.any(idx == i)])
    return cx, cy


def plot_affinity_vs_distance(
    aff: TaskAffinity,
    path: str | Path,
    schedule: NoiseSchedule | None = None,
    title: str | None = None,
) -> Path:
    """Affinity of every pair of distinct bins against the gap |Δt| (and |Δlog-SNR| with a
    schedule), with the binned median and Spearman's ρ in each panel (O1: ρ clearly < 0)."""
    plt = pyplot()
    pairs = aff.distance_pairs(schedule)
    corr = aff.distance_correlation(schedule)
    panels = [("dt", "timestep", "|Δt| (bin centres)")]
    if "dlogsnr" in pairs:
        panels.append(("dlogsnr", "logsnr", "|Δ log-SNR| (bin means)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 3.8), squeeze=False)
    for ax, (key, name, label) in zip(axes[0], panels):
        x, y = pairs[key], pairs["affinity"]
        ax.scatter(x, y, s=8, alpha=0.5, color="tab:blue", lw=0)
        tx, ty = _binned_trend(x, y)
        if tx.size:
            ax.plot(tx, ty, color="black", lw=1.5, label="binned median")
            ax.legend(fontsize=8, loc="upper right")
        rho = corr.get(name, {}).get("spearman")
        pv = corr.get(name, {}).get("p_value")
        # p underflows to 0 for a strong correlation over thousands of pairs
        p_text = "p < 1e-300" if pv == 0 else f"p = {pv:.2g}" if pv is not None else "p undefined"
        ax.set_title(
            f"Spearman ρ = {rho:+.3f} ({p_text})" if rho is not None else "Spearman ρ undefined",
            fontsize=9,
        )
        ax.set_xlabel(label)
        ax.set_ylabel("task affinity")
        ax.axhline(0, color="grey", lw=0.6)
    fig.suptitle(title or f"affinity vs. noise-level gap ({corr['num_pairs']} pairs)", fontsize=10)
    return _save(fig, path)


# ============================================================================ NTG (O2)
def plot_ntg(
    tables: NTGTable | Mapping[str, NTGTable],
    path: str | Path,
    title: str | None = None,
) -> Path:
    """NTG per interval (paper Figure 2): one bar per model and interval, error bars = std over
    the seed pairs; NTG < 0 (below the line) is negative transfer. Several tables (e.g.
    vanilla and ANT-UW, as the paper's §6.7 figure) are drawn side by side."""
    plt = pyplot()
    tabs = dict(tables) if isinstance(tables, Mapping) else {"joint": tables}
    if not tabs:
        raise ValueError("no NTG table to plot")
    intervals: list[tuple[int, int]] = []
    for t in tabs.values():
        for iv in t.intervals:
            if iv not in intervals:
                intervals.append(iv)
    intervals.sort()
    n_models = len(tabs)
    width = 0.8 / n_models
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(intervals) * max(1, n_models / 2)), 4.0))
    colours = plt.get_cmap("tab10")
    x = np.arange(len(intervals))
    floors = []
    for m, (label, t) in enumerate(tabs.items()):
        rows = {r.interval: r for r in t.rows}
        ys = np.array([rows[iv].mean if iv in rows else np.nan for iv in intervals])
        # no bar where there is no spread (one pair): a zero-length cap would read as "exact"
        stds = [rows[iv].std if iv in rows else None for iv in intervals]
        es = np.array([np.nan if v is None else v for v in stds], dtype=float)
        ax.bar(
            x - 0.4 + width * (m + 0.5),
            ys,
            width,
            yerr=es if np.isfinite(es).any() else None,
            capsize=3,
            color=colours(m % 10),
            label=label,
        )
        if t.floor is not None:
            floors.append(f"{label}: n={t.n}, floor {t.floor:.2f}")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(x)
    ax.set_xticklabels([f"[{a + 1},{b + 1}]" for a, b in intervals], fontsize=8)
    ax.set_xlabel("interval I (paper's 1-indexed t)")
    ax.set_ylabel("NTG (FID)   < 0: negative transfer")
    if n_models > 1:
        ax.legend(fontsize=8)
    sub = "; ".join(floors) if floors else "FID floor not measured"
    ax.set_title(title or f"negative transfer gap\n({sub})", fontsize=9)
    return _save(fig, path)


# ============================================================================ MTL behaviour
def _cluster_labels(log: TrainingLog) -> list[str]:
    cl = log.clusters
    if cl is not None and cl.k == log.k:
        return [f"{i}: [{a},{b}]" for i, (a, b) in enumerate(cl.intervals)]
    return [f"cluster {i}" for i in range(log.k)]


def _cluster_colours(k: int) -> list[Any]:
    plt = pyplot()
    cmap = plt.get_cmap("viridis")
    return [cmap(i / max(1, k - 1)) for i in range(k)]


def plot_cluster_losses(log: TrainingLog, path: str | Path, title: str | None = None) -> Path:
    """Per-cluster loss L_i over training (log scale), cleanest cluster first."""
    plt = pyplot()
    if log.k == 0 or len(log) == 0:
        raise ValueError(f"{log.path} has no per-cluster losses to plot")
    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    for i, (lab, c) in enumerate(zip(_cluster_labels(log), _cluster_colours(log.k))):
        y = log.cluster_losses[:, i]
        ok = np.isfinite(y) & (y > 0)
        ax.plot(log.steps[ok], y[ok], color=c, lw=1.2, label=lab)
    if np.isfinite(log.loss).any():  # the trainer's "loss": mean per-sample loss of the window
        ax.plot(log.steps, log.loss, color="black", lw=1.0, ls="--", label="mean per-sample loss")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("cluster loss L_i")
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(title or "per-cluster losses", fontsize=10)
    return _save(fig, path)


def plot_bin_losses(
    logs: Mapping[str, TrainingLog],
    path: str | Path,
    reference: str | Mapping[str, str] | None = None,
    last: float = 0.1,
    title: str | None = None,
) -> Path:
    """Each run's mean loss per fixed bin of t (``bin_losses``, the last ``last`` fraction of
    its training lines) against the bin's centre t, log scale; with ``reference`` (a run among
    ``logs``) a second panel of every other run's ratio to it, or with a mapping ``{run:
    reference run}`` each listed run's ratio to its own reference (runs of other losses need
    other references: the hybrid loss adds λ·T·L_t to the ε-MSE), over the last ``last`` of
    the log steps the two runs share (none shared: no ratio). The bins are the same for every
    clustering, so runs of other clusterings compare on the same timesteps. A weighted run's
    unweighted loss is drawn where it logged it; one that could only log w(t)·loss
    (:attr:`TrainingLog.bins_are_weighted`) is dashed and labelled so."""
    profiles = {
        n: (lg, p) for n, lg in logs.items() if (p := lg.bin_loss_profile(last)) is not None
    }
    if not profiles:
        raise ValueError("no run logged losses per bin of t (train.log_loss_bins)")
    widths = {p.size for _, p in profiles.values()}
    if len(widths) > 1:
        raise ValueError(f"the runs logged different numbers of bins: {sorted(widths)}")
    pairs: dict[str, str] = {}  # run -> the run its ratio is taken to
    if isinstance(reference, str):
        pairs = {n: reference for n in profiles if n != reference}
    elif reference is not None:
        pairs = {n: r for n, r in reference.items() if n != r and n in profiles}
    for ref_name in sorted(
        set(pairs.values()) | ({reference} if isinstance(reference, str) else set())
    ):
        if ref_name not in profiles:
            raise ValueError(f"reference run {ref_name!r} has no bin losses among the inputs")
    first = next(iter(profiles.values()))[0]
    centres = np.array([(lo + hi + 1) / 2 for lo, hi in first.bin_intervals()])
    plt = pyplot()
    panels = 2 if pairs else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.0 * panels, 3.8), squeeze=False)
    colours = {n: plt.get_cmap("tab10")(i % 10) for i, n in enumerate(profiles)}
    weighted = {n for n, (lg, _) in profiles.items() if lg.bins_are_weighted}
    style = {n: ("--", f"{n} (w(t)·loss)") if n in weighted else ("-", n) for n in profiles}
    for name, (_, prof) in profiles.items():
        ok = np.isfinite(prof) & (prof > 0)
        axes[0][0].plot(centres[ok], prof[ok], marker="o", ms=3, lw=1.2, color=colours[name],
                        ls=style[name][0], label=style[name][1])  # fmt: skip
    axes[0][0].set_yscale("log")
    axes[0][0].set_xlabel("t (bin centre)")
    axes[0][0].set_ylabel("mean per-sample loss")
    axes[0][0].legend(fontsize=7)
    axes[0][0].set_title(title or f"loss per bin of t (last {last:.0%} of training)", fontsize=10)
    if panels == 2:
        refs = sorted(set(pairs.values()))
        ax = axes[0][1]
        for name, (log, _) in profiles.items():
            if name not in pairs:
                continue
            # at the steps both logged (the last `last` of them): a longer run's late losses
            # against a shorter reference's would show training time, not the method
            ref_log = profiles[pairs[name]][0]
            common = np.intersect1d(log.steps, ref_log.steps)
            if not common.size:
                continue
            at = common[-max(1, int(np.ceil(last * common.size))) :]
            mine, theirs = log.bin_loss_profile(steps=at), ref_log.bin_loss_profile(steps=at)
            if mine is None or theirs is None:
                continue
            label = style[name][1] + (f" / {pairs[name]}" if len(refs) > 1 else "")
            with np.errstate(invalid="ignore", divide="ignore"):
                ax.plot(centres, mine / theirs, marker="o", ms=3, lw=1.2, color=colours[name],
                        ls=style[name][0], label=label)  # fmt: skip
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xlabel("t (bin centre)")
        ax.set_ylabel(f"loss / {refs[0]}'s" if len(refs) == 1 else "loss / its reference's")
        ax.legend(fontsize=7)
        ax.set_title(f"ratio to {', '.join(refs)}", fontsize=10)
    return _save(fig, path)


def plot_balancer_weights(log: TrainingLog, path: str | Path, title: str | None = None) -> Path:
    """The balancer's per-cluster weights over training: UW's ½e^{−s_i} (log scale, dashed:
    its stationary point k/(2·L_i) from the logged cluster losses,
    :meth:`~antdiff.analysis.logs.TrainingLog.uw_stationary_weights`) and/or Nash's α when
    logged, else the generic effective weights."""
    plt = pyplot()
    series: list[tuple[str, np.ndarray, bool]] = []
    uw = log.uw_weights()
    if uw is not None:
        series.append(("UW weight ½·exp(−s_i)", uw, True))
    alpha = log.nash_alpha()
    if alpha is not None:
        series.append(("Nash-MTL α_i", alpha, False))
    if not series:
        if not np.isfinite(log.weights).any():
            raise ValueError(f"{log.path} has no balancer weights to plot")
        series.append(("effective weight w_i", log.weights, False))
    fig, axes = plt.subplots(1, len(series), figsize=(5.6 * len(series), 3.8), squeeze=False)
    labels, colours = _cluster_labels(log), _cluster_colours(log.k)
    for ax, (name, w, logy) in zip(axes[0], series):
        for i in range(log.k):
            y = w[:, i]
            ok = np.isfinite(y)
            ax.plot(log.steps[ok], y[ok], color=colours[i], lw=1.2, label=labels[i])
        stationary = log.uw_stationary_weights() if w is uw else None
        if stationary is not None:
            for i in range(log.k):
                y = stationary[:, i]
                ok = np.isfinite(y)
                label = "stationary point (UW optimum for the logged L_i)" if i == 0 else None
                ax.plot(log.steps[ok], y[ok], color=colours[i], lw=0.9, ls="--", label=label)
        if logy and np.nanmin(w) > 0:
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel(name)
        ax.legend(fontsize=7, ncol=2)
    fig.suptitle(
        title or f"balancer weights ({log.balancer_name or 'unknown balancer'})", fontsize=10
    )
    return _save(fig, path)


def plot_optimizer(log: TrainingLog, path: str | Path, title: str | None = None) -> Path:
    """The gradient norm over training (before clipping, and the clip) and Adam's step relative
    to its steady state (:meth:`~antdiff.analysis.logs.TrainingLog.adam_step_scale`): where the
    norm falls, Adam keeps stepping below its learning rate for ~1/(1 − β₂) steps."""
    norm = log.grad_norm
    ok = np.isfinite(norm) & (norm > 0)
    if not ok.any():
        raise ValueError(f"{log.path} has no gradient norms to plot (grad_norm)")
    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11.2, 3.8))
    a.plot(log.steps[ok], norm[ok], lw=1.0, label="‖g‖ before clipping")
    if log.grad_clip is not None:
        a.axhline(log.grad_clip, color="k", lw=0.8, ls="--", label=f"clip {log.grad_clip:g}")
    a.set_yscale("log")
    a.set_xlabel("step")
    a.set_ylabel("gradient norm")
    a.legend(fontsize=7)
    scale, smooth = log.adam_step_scale(), log.adam_step_scale(smooth=5)
    fine = np.isfinite(scale)
    b.plot(log.steps[fine], scale[fine], lw=0.8, color="C2", alpha=0.35, label="per log line")
    b.plot(log.steps[fine], smooth[fine], lw=1.4, color="C2", label="trailing mean of 5 lines")
    b.axhline(1.0, color="k", lw=0.8, ls=":")
    b.set_ylim(0, max(1.1, float(np.nanmax(scale)) * 1.05) if fine.any() else 1.1)
    b.legend(fontsize=7)
    b.set_xlabel("step")
    b.set_ylabel("Adam step / steady state  (ĝ/√v̂)")
    fig.suptitle(title or "gradient norm and Adam's step", fontsize=10)
    return _save(fig, path)


def plot_conflicts(
    log: TrainingLog,
    path: str | Path,
    clusters: TaskClusters | None = None,
    window: int | None = None,
    title: str | None = None,
) -> Path:
    """Gradient conflicts between clusters (PCGrad's view): the conflict frequency of each
    cluster pair over training (trailing window of logged steps), and the whole-run frequency
    against the distance of the clusters' centres."""
    plt = pyplot()
    fr = log.conflict_frequency(window)
    if fr is None:
        raise ValueError(
            f"{log.path} has no gradient-conflict records (only gradient balancers such as "
            "PCGrad log them)"
        )
    steps, freq = fr
    vs = log.conflict_vs_distance(clusters)
    ncols = 2 if vs is not None else 1
    fig, axes = plt.subplots(1, ncols, figsize=(5.6 * ncols, 3.8), squeeze=False)
    ax = axes[0, 0]
    ia, ib = np.triu_indices(log.k, 1)
    cmap = plt.get_cmap("plasma")
    span = max(1, log.k - 1)
    for a, b in zip(ia, ib):
        y = freq[:, a, b]
        ok = np.isfinite(y)
        ax.plot(steps[ok], y[ok], lw=1.0, color=cmap((b - a - 1) / span), label=f"{a}-{b}")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("step")
    ax.set_ylabel("conflict frequency (g_i·g_j < 0)")
    ax.legend(fontsize=6, ncol=3, loc="best", title="pair (colour: distance)", title_fontsize=6)
    if vs is not None:
        ax2 = axes[0, 1]
        ax2.scatter(vs["distance"], vs["frequency"], color="tab:red", s=20)
        for a, b, d, f in zip(vs["a"], vs["b"], vs["distance"], vs["frequency"]):
            if np.isfinite(f):
                ax2.annotate(
                    f"{a}-{b}", (d, f), fontsize=6, xytext=(2, 2), textcoords="offset points"
                )
        ax2.set_xlabel("distance of cluster centres (timesteps)")
        ax2.set_ylabel("conflict frequency over the run")
        ax2.set_ylim(-0.02, 1.02)
    fig.suptitle(title or "gradient conflicts between clusters", fontsize=10)
    return _save(fig, path)


def plot_eval_curves(
    logs: Mapping[str, TrainingLog],
    path: str | Path,
    metric: str = "fid",
    title: str | None = None,
) -> Path:
    """An evaluation metric (FID by default) against training steps, one curve per run."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    drawn = 0
    for i, (label, log) in enumerate(logs.items()):
        s, v = log.eval_series(metric)
        if s.size:
            ax.plot(
                s, v, marker="o", ms=3, lw=1.2, color=plt.get_cmap("tab10")(i % 10), label=label
            )
            drawn += 1
    if not drawn:
        plt.close(fig)
        raise ValueError(f"no run has evaluation lines with {metric!r}")
    ax.set_xlabel("step")
    ax.set_ylabel(metric.upper() if metric in ("fid", "kid") else metric)
    ax.legend(fontsize=8)
    ax.set_title(title or f"{metric} during training", fontsize=10)
    return _save(fig, path)
