"""Figures (matplotlib, Agg backend). Imported lazily by the CLI and the report; the core never
imports this module."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .clustering import TaskClusters
from .schedule import NoiseSchedule

__all__ = ["plot_clusters", "pyplot"]


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
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
