"""Driver of the CIFAR-10 reproduction study (issue 7; protocol in ``docs/reproduction.md``).

It runs a *named slice* of the study with the antdiff trainer, resumably, and turns finished
runs into result files under ``benchmarks/results/repro/`` (one JSON per run: resolved config,
seed, git commit, card, iterations, FID/precision/recall curve with n and floor, throughput).

    python benchmarks/repro_cifar.py list                                   # the whole grid
    python benchmarks/repro_cifar.py train phase1 --data D --ref REF.npz --devices cuda:0,cuda:1 \\
        --per-device 2 --time-limit 540                                     # one ≤ 10-minute slice
    python benchmarks/repro_cifar.py train phase1 --only vanilla-eps-s0,uw-eps-s0 ...
    python benchmarks/repro_cifar.py collect phase1                         # result JSONs
    python benchmarks/repro_cifar.py summary --root R --results OUT         # training-side table
    python benchmarks/repro_cifar.py table --from DIR [DIR ...] --results OUT  # Table-1 shape
    python benchmarks/repro_cifar.py project --root R --logs L --deadline HH:MM:SS  # who is stopped

Slices: ``phase1`` (convergence: vanilla, ANT-UW/Nash/PCGrad with timestep clusters, Min-SNR-5,
P2, each with ε-MSE and the learned-σ hybrid loss; a second seed of vanilla and ANT-UW) and
``phase2`` (the grid: vanilla, P2, Min-SNR-5, {timestep, snr, logsnr, affinity} × {uw, nash,
pcgrad}, ANT-UW + P2; seeds 0 and 1; ``--loss`` picks ε-MSE or hybrid, ``--affinity A.npy`` the
matrix from a vanilla checkpoint, see ``antdiff affinity``). Every run evaluates its EMA model
every ``--eval-every`` steps on ``--eval-n`` samples (FID, precision, recall). Run directories
persist under ``--root``; a slice stopped by ``--time-limit`` continues on the next call
(``--resume auto``), so the study fits into jobs of a few minutes each.

``--smoke`` shrinks everything (digits, tiny UNet, a few steps, CPU) to check the plumbing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "cifar10"

LOSSES = {"eps": [], "hybrid": ["diffusion.learned_variance=true"]}
LOSS_NAMES = {"eps": "ε-MSE", "hybrid": "hybrid"}  # as the tables name the losses
COSTS = ("timestep", "snr", "logsnr", "affinity")  # the clustering costs of the ANT cells
METHODS = {
    "vanilla": ("vanilla.yaml", []),
    "p2": ("p2.yaml", []),
    "minsnr": ("min_snr.yaml", ["diffusion.weighting_params={gamma: 5.0}"]),
    **{
        f"{cost}-{bal}": (
            f"ant_{'snr' if cost == 'logsnr' else cost}_{bal}.yaml",
            # Protocol change 7: the gradient balancers get their per-cluster gradients from the
            # engine's vmap mode — the same update as split (tested), several times faster.
            [f"ant.cost={cost}", *(["ant.engine=vmap"] if bal != "uw" else [])],
        )
        for cost in COSTS
        for bal in ("uw", "nash", "pcgrad")
    },
    "timestep-uw+p2": (
        "ant_timestep_uw.yaml",
        ["diffusion.weighting=p2", "diffusion.weighting_params={gamma: 1.0, k: 1.0}"],
    ),
}
#: Protocol change 8: Phase 2's hybrid PCGrad cells (none run before it) compute the same
#: per-cluster gradients with the split engine, every sub-batch padded to one width, under CUDA
#: graphs — 8.32 it/s against vmap's 3.90 alone on an H100 (slice 13's probe), the same loss to
#: 4 digits after 350 steps of one seed. The ε-MSE PCGrad cells keep vmap (change 7), so no
#: cell mixes engines across its seeds.
PCGRAD_SPLIT_GRAPHS = [
    "ant.engine=split",
    "ant.pad_split=true",
    "train.compile_mode=reduce-overhead",
]


def phase2_overrides(method: str, loss: str) -> list[str]:
    """The method's overrides in Phase 2 for ``loss`` (protocol change 8 for hybrid PCGrad)."""
    extra = METHODS[method][1]
    if loss == "hybrid" and method.endswith("-pcgrad"):
        return [o for o in extra if o != "ant.engine=vmap"] + PCGRAD_SPLIT_GRAPHS
    return list(extra)


# Diagnostics: not protocol cells, each a protocol run with one setting changed to test a reading
# of the results (docs/reproduction.md names the question). Listed with the Phase-1 grid, so that
# a session can put them beside protocol runs; the table compares each with vanilla of its loss.
DIAGNOSTICS = {
    # Slice 7: the 2.5k FIDs split by the fall of the gradient norm, which Adam (β₂ = 0.999)
    # remembers for ~1,000 steps. With β₂ = 0.99 (~100 steps) vanilla should lose most of its
    # early lag if that reading holds.
    "diag-adam099-vanilla": ("vanilla", ["optim.betas=[0.9, 0.99]"]),
}
#: Seeds of each diagnostic (slice 8: the ε-MSE one's 5k FID equals ANT-NashMTL's, one seed each;
#: a second seed says whether that is more than one seed's luck).
DIAGNOSTIC_SEEDS = (0, 1)

# Phase-2 diagnostics (listed with the Phase-2 grid of either loss unless
# PHASE2_DIAGNOSTIC_LOSSES names some, seed 0 only).
PHASE2_DIAGNOSTICS = {
    # Slice 10: with raw-SNR clusters ([0, 0], [1, 1], [2, 4], [5, 17], [18, 999]) stratified
    # sampling (B/k per cluster, the protocol's and the official code's) puts 80% of every batch
    # at t ≤ 17 (FID 75.7, recall 0.07). The paper's SNR cells are sane (Table 1), and its batch
    # construction is not stated (digest §10.3): t ~ U with per-cluster means of variable size
    # asks whether that choice, not SNR clustering itself, makes the cell fail.
    "diag-tuniform-snr-uw": ("snr-uw", ["ant.sampling=uniform"]),
    # Slice 13: timestep × PCGrad (seed 0) is 2.7 below vanilla's seed 0 at 5k with vanilla's
    # loss per cluster and vanilla's Adam start-up, as Phase 1's one PCGrad run was (3.3). Its
    # batches are stratified (B/k per cluster) where vanilla draws t ~ U: the ANT timestep cell
    # with plain averaging over clusters asks whether the batch construction, not PCGrad's
    # projection, gives that lead.
    "diag-stratified-mean": ("timestep-uw", ["ant.balancer=mean"]),
    # Slice 15: ANT-UW + P2 with the hybrid loss (192.5, seed 0) is far behind its ε-MSE cell
    # (111.7). P2 weights only the MSE term by default, so the unweighted λ·L_vlb term lifts the
    # cleanest cluster's loss ~4× and UW weights that cluster ~4× less. Weighting the whole hybrid
    # loss (weight_vlb) removes that lift: if the reading holds, FID moves towards the ε-MSE cell.
    "diag-uw+p2-weightvlb": ("timestep-uw+p2", ["diffusion.weight_vlb=true"]),
}
PHASE2_DIAGNOSTIC_SEEDS = (0,)
#: Diagnostics that only mean something for some losses (weight_vlb changes nothing without L_vlb).
PHASE2_DIAGNOSTIC_LOSSES = {"diag-uw+p2-weightvlb": ("hybrid",)}


def grid(slice_name: str, loss: str) -> dict[str, tuple[str, list[str]]]:
    """Run name → (preset file, overrides) for a slice (Phase 1 with the :data:`DIAGNOSTICS`,
    seeds :data:`DIAGNOSTIC_SEEDS`, both losses; Phase 2 with the :data:`PHASE2_DIAGNOSTICS`,
    seeds :data:`PHASE2_DIAGNOSTIC_SEEDS`, the slice's loss)."""
    runs: dict[str, tuple[str, list[str]]] = {}
    if slice_name == "phase1":
        names = ["vanilla", "timestep-uw", "timestep-nash", "timestep-pcgrad", "minsnr", "p2"]
        for method in names:
            for lo in LOSSES:
                seeds = (0, 1) if method in ("vanilla", "timestep-uw") else (0,)
                for s in seeds:
                    preset, extra = METHODS[method]
                    runs[f"{method}-{lo}-s{s}"] = (preset, [*extra, *LOSSES[lo], f"run.seed={s}"])
        for name, (method, changed) in DIAGNOSTICS.items():
            preset, extra = METHODS[method]
            for lo in LOSSES:
                for s in DIAGNOSTIC_SEEDS:
                    runs[f"{name}-{lo}-s{s}"] = (
                        preset,
                        [*extra, *changed, *LOSSES[lo], f"run.seed={s}"],
                    )
    elif slice_name == "phase2":
        for method, (preset, _) in METHODS.items():
            extra = phase2_overrides(method, loss)
            for s in (0, 1):
                runs[f"{method}-{loss}-s{s}"] = (preset, [*extra, *LOSSES[loss], f"run.seed={s}"])
        for name, (method, changed) in PHASE2_DIAGNOSTICS.items():
            if loss not in PHASE2_DIAGNOSTIC_LOSSES.get(name, tuple(LOSSES)):
                continue
            preset, extra = METHODS[method]
            for s in PHASE2_DIAGNOSTIC_SEEDS:
                runs[f"{name}-{loss}-s{s}"] = (
                    preset,
                    [*extra, *changed, *LOSSES[loss], f"run.seed={s}"],
                )
    else:
        raise SystemExit(f"unknown slice {slice_name!r}: phase1 or phase2")
    return runs


def _common(a: argparse.Namespace, run_dir: Path) -> list[str]:
    sets = [
        f"run.dir={run_dir}",
        f"data.spec={a.data}",
        f"train.steps={a.steps}",
        f"train.eval_every={a.eval_every}",
        f"train.eval_n={a.eval_n}",
        f"train.eval_ref={a.ref}",
        "train.eval_metrics=[fid, pr]",
        f"train.ckpt_every={min(a.eval_every, 5000)}",
        "train.keep_last=2",
        "train.progress=false",
        # EMA warm-up (min(0.9999, (1+n)/(10+n))): without it the EMA after n = 5k steps is
        # still 0.9999^5000 = 61% initial weights, so every curve point before ~30k iterations
        # would measure the initialisation. Training itself is unchanged (docs/reproduction.md).
        "ema.warmup=true",
    ]
    if a.inception:
        sets.append(f"train.eval_inception={a.inception}")
    if a.affinity:
        sets.append(f"ant.affinity={a.affinity}")
    sets += a.overrides  # e.g. train.compile=true: speed only, recorded in every run's config
    if a.smoke:
        sets += [
            "model.preset=unet-tiny",
            "data.resolution=8",
            "optim.batch_size=10",
            "optim.warmup_steps=1",
            "train.device=cpu",
            "train.precision=fp32",
            "train.channels_last=false",
            "train.tensorboard=false",
            "train.sample_n=4",
            "data.num_workers=0",
            "sample.steps=2",
            "sample.batch_size=8",
        ]
    return sets


def write_configs(a: argparse.Namespace) -> list[Path]:
    from antdiff.training.config import load_config

    runs = grid(a.slice, a.loss)
    if a.only:
        wanted = set(a.only.split(","))
        unknown = wanted - set(runs)
        if unknown:
            raise SystemExit(f"not in slice {a.slice}: {sorted(unknown)}; see `list`")
        runs = {k: v for k, v in runs.items() if k in wanted}
    out = []
    cfg_dir = Path(a.root) / "configs"
    cfg_dir.mkdir(parents=True, exist_ok=True)
    for name, (preset, extra) in runs.items():
        if "affinity" in name and not a.affinity:
            print(f"skip {name}: needs --affinity A.npy (antdiff affinity of a vanilla run)")
            continue
        cfg = load_config(CONFIGS / preset, [*extra, *_common(a, Path(a.root) / name)])
        path = cfg_dir / f"{name}.yaml"
        path.write_text(cfg.to_yaml())
        out.append(path)
    return out


def _git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def source_digest(root: Path = ROOT) -> str:
    """sha256 over the code that trains and evaluates (``src/antdiff``, its shipped configs and
    this driver), path by path. A device machine's copy of the repository may carry a stale
    ``.git`` (seen on this workplace's device machines), so the commit alone does not identify
    the code; the digest does, and ``git`` can find the commit whose tree gives the same one."""
    import hashlib

    h = hashlib.sha256()
    files = sorted(
        f
        for f in [*(root / "src" / "antdiff").rglob("*"), root / "benchmarks" / "repro_cifar.py"]
        if f.is_file() and "__pycache__" not in f.parts and f.suffix in {".py", ".yaml", ".typed"}
    )
    for f in files:
        h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def peak_memory(log: Any) -> dict[str, float | None]:
    """Largest peak CUDA memory (GiB) of a run's training windows and of its evaluations, from
    its :class:`~antdiff.analysis.logs.TrainingLog` (None where the trainer did not log it: CPU,
    or an older trainer)."""
    train = log.peak_mem_gib[np.isfinite(log.peak_mem_gib)]
    evals = [e["peak_mem_gib"] for _, e in log.evals if e.get("peak_mem_gib") is not None]
    return {
        "train_peak_mem_gib": float(train.max()) if train.size else None,
        "eval_peak_mem_gib": max(evals) if evals else None,
    }


def collect(a: argparse.Namespace) -> list[Path]:
    """One result JSON per run directory of the slice that has evaluations."""
    import yaml

    from antdiff.analysis.logs import read_training_log

    results = Path(a.results)
    results.mkdir(parents=True, exist_ok=True)
    written = []
    for name in grid(a.slice, a.loss):
        run = Path(a.root) / name
        if not (run / "metrics.jsonl").exists():
            continue
        log = read_training_log(run)
        if not log.evals:
            continue
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        speeds = log.it_per_s[log.it_per_s > 0] if log.it_per_s.size else log.it_per_s
        res = {
            "run": name,
            "slice": a.slice,
            "config": cfg,
            "seed": cfg["run"]["seed"],
            "git_commit": _git_commit(),
            "source_digest": source_digest(),
            "card": _card(),
            "iterations": int(log.steps[-1]) if log.steps.size else 0,
            "curve": [
                {
                    "step": step,
                    "n": e.get("n"),
                    "fid": e.get("fid"),
                    "precision": e.get("precision"),
                    "recall": e.get("recall"),
                    "floor": e.get("floor"),
                    "seconds": e.get("seconds"),
                }
                for step, e in log.evals
            ],
            "it_per_s_median": float(np.median(speeds)) if speeds.size else None,
            **peak_memory(log),
        }
        path = results / f"{a.slice}-{name}.json"
        path.write_text(json.dumps(res, indent=1, default=str))
        written.append(path)
    return written


def supervisor_groups(logs: Path | None, runs: Sequence[Path]) -> dict[str, list[Path]]:
    """The runs each supervisor (`repro_cifar.py train`, one per `repro_<device>.log` in
    ``logs``) started, by the log's "<run>: training on <device>" lines; runs no log names, or
    every run without ``logs``, form one group (the longest evaluation is then borrowed across
    all of them, the cautious reading)."""
    by_name = {r.name: r for r in runs}
    groups: dict[str, list[Path]] = {}
    claimed: set[str] = set()
    for log in sorted(logs.glob("repro_*.log")) if logs is not None else []:
        names = re.findall(r"\] (\S+): training on ", log.read_text(errors="replace"))
        members = [by_name[n] for n in dict.fromkeys(names) if n in by_name and n not in claimed]
        if members:
            groups[log.stem.removeprefix("repro_")] = members
            claimed.update(r.name for r in members)
    rest = [r for r in runs if r.name not in claimed]
    if rest:
        groups["(no supervisor log)" if logs is not None else "all"] = rest
    return groups


def parse_deadline(text: str, reference: float) -> float:
    """A deadline as epoch seconds (``$DEV_DIR/deadline``) or ``HH:MM:SS`` UTC (as
    device_session.sh prints it) on the UTC day of ``reference`` (epoch seconds)."""
    import datetime as dt

    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    m = re.fullmatch(r"(\d{1,2}):(\d{2}):(\d{2})", text)
    if not m:
        raise SystemExit(f"--deadline {text!r}: give epoch seconds or HH:MM:SS (UTC)")
    day = dt.datetime.fromtimestamp(reference, dt.timezone.utc).date()
    at = dt.datetime(day.year, day.month, day.day, *map(int, m.groups()), tzinfo=dt.timezone.utc)
    return at.timestamp()


def _logged(run: Path) -> Iterator[dict[str, Any]]:
    for line in (run / "metrics.jsonl").read_text().splitlines():
        try:
            yield json.loads(line)
        except ValueError:  # a line the trainer is still writing
            continue


def _last_logged_step(run: Path) -> int:
    return max((int(row.get("step", 0)) for row in _logged(run)), default=0)


def _evaluations_a_supervisor_saw(run: Path, steps: int) -> float:
    """The longest evaluation of ``run`` that its supervisor counted: it keeps the longest
    last-evaluation of a run with work left (:func:`next_result`), so every evaluation before
    the final step, never the final one (the run has nothing left once it is logged)."""
    return max(
        (
            float(sum((row.get("eval_seconds") or {}).values()))
            for row in _logged(run)
            if "eval" in row and int(row["step"]) < steps
        ),
        default=0.0,
    )


def project(a: argparse.Namespace) -> list[dict[str, Any]]:
    """What the final deadline's projection (``run_trainers(deadline_is_final=True)``) makes of
    every run under ``--root`` now: its next result (evaluation or last step), when it would be
    done — from the log's last line (the file's modification time), the fastest steady window's
    rate and its last evaluation's duration, or, before its first, the longest one measured by a
    run of its supervisor (``--logs``: the ``repro_*.log`` files) before its final step — the
    supervisor never counts a final evaluation, so runs with one evaluation each (Phase 2) borrow
    nothing — or ``--assume-eval`` seconds where that is more (a guess to check before acting on
    it) — and the margin to ``--deadline``. A negative margin is a run the supervisor stops (or has stopped); with no
    evaluation counted, the margin is the longest evaluation that would still end in time. A run
    at its evaluation step whose evaluation is not logged yet is in that evaluation. Read-only:
    run it on live run folders or on a bundle's ``results/runs`` (whose copies carry the
    bundling time, a little later than the last line: the projection errs late)."""
    import yaml

    from antdiff.analysis.ntg_pipeline import next_result, with_borrowed_evaluation

    root = Path(a.root)
    runs = (
        sorted(p for p in root.iterdir() if (p / "metrics.jsonl").exists()) if root.is_dir() else []
    )
    if not runs:  # the trainers are still starting (or --root names the wrong folder)
        return []
    newest = max((r / "metrics.jsonl").stat().st_mtime for r in runs)
    deadline = parse_deadline(a.deadline, newest)
    rows: list[dict[str, Any]] = []
    for group, members in supervisor_groups(Path(a.logs) if a.logs else None, runs).items():
        train = {
            r: (yaml.safe_load((r / "config.yaml").read_text()) or {}).get("train") or {}
            for r in members
        }
        nexts = {
            r: next_result(
                r, eval_every=int(t.get("eval_every") or 0), steps=int(t.get("steps", 0))
            )
            for r, t in train.items()
        }
        seen = max(
            [_evaluations_a_supervisor_saw(r, int(t.get("steps", 0))) for r, t in train.items()]
            + [0.0]
        )
        assumed = float(a.assume_eval or 0.0) > seen
        seen = max(seen, float(a.assume_eval or 0.0))
        for r in members:
            nxt = nexts[r]
            row: dict[str, Any] = {"run": r.name, "group": group}
            if nxt is None:
                steps = int(train[r].get("steps", 0))
                done = steps > 0 and _last_logged_step(r) >= steps
                row["state"] = "finished" if done else "starting (no steady rate yet)"
            else:
                own = nxt.measured_eval_seconds is not None or not nxt.is_evaluation
                nxt = with_borrowed_evaluation(nxt, seen)
                row.update(
                    step=nxt.from_step,
                    rate=nxt.rate,
                    next=nxt.step,
                    what="evaluation" if nxt.is_evaluation else "last step",
                    eval_seconds=nxt.eval_seconds,
                    eval_source="own"
                    if own
                    else (
                        "none yet" if not nxt.eval_seconds else "assumed" if assumed else "borrowed"
                    ),
                    done_at=nxt.done_at,
                    margin=deadline - nxt.done_at,
                    state="in time" if nxt.done_at <= deadline else "would be stopped",
                )
                if nxt.is_evaluation and nxt.from_step >= nxt.step:
                    row["state"] += " (in its evaluation)"
            rows.append(row)
    return rows


def print_projection(rows: list[dict[str, Any]], deadline: str, root: str) -> None:
    import datetime as dt

    def clock(t: float) -> str:
        return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%H:%M:%S")

    if re.fullmatch(r"\d+(\.\d+)?", deadline):  # epoch seconds ($DEV_DIR/deadline)
        deadline = clock(float(deadline))
    print(f"projection against the deadline {deadline} (UTC times, as the supervisor sees them)")
    if not rows:
        print(f"(no run folder under {root} has a training log yet)")
        return
    print("| run | supervisor | step | it/s | next | evaluation s | done at | margin s | state |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "done_at" not in r:
            print(f"| {r['run']} | {r['group']} | | | | | | | {r['state']} |")
            continue
        print(
            f"| {r['run']} | {r['group']} | {r['step']} | {r['rate']:.2f} | {r['next']} "
            f"({r['what']}) | {r['eval_seconds']:.0f} ({r['eval_source']}) | {clock(r['done_at'])} "
            f"| {r['margin']:+.0f} | {r['state']} |"
        )


def summarize(a: argparse.Namespace) -> list[Path]:
    """Training-side summary of every run directory under ``--root`` (also runs stopped before
    their first evaluation): iterations, median it/s, cluster losses and balancer weights over
    the last ``--tail`` log windows. Writes ``summary.json`` and ``summary.md`` to ``--results``.
    """
    from antdiff.analysis.logs import read_training_log

    rows = []
    for run in sorted(p for p in Path(a.root).iterdir() if (p / "metrics.jsonl").exists()):
        log = read_training_log(run)
        if not log.steps.size:
            continue
        last = slice(-a.tail, None)
        speeds = log.it_per_s[1:] if log.it_per_s.size > 1 else log.it_per_s  # skip start-up
        bal = log.balancer[-1] if log.balancer else {}
        rows.append(
            {
                "run": run.name,
                "method": log.balancer_name,
                "loss_type": "hybrid" if log.config["diffusion"]["learned_variance"] else "eps",
                "weighting": log.config["diffusion"]["weighting"],
                "seed": log.config["run"]["seed"],
                "iterations": int(log.steps[-1]),
                "it_per_s_median": float(np.nanmedian(speeds)),
                "loss_tail": float(np.nanmean(log.loss[last])),
                "cluster_losses_tail": np.nanmean(log.cluster_losses[last], axis=0).tolist(),
                # a weighted or hybrid loss's parts per cluster (None where not logged)
                "cluster_mse_tail": tail_mean(log.cluster_mse, last),
                "cluster_vb_tail": tail_mean(log.cluster_vb, last),
                "weights_last": log.weights[-1].tolist(),
                "uw_weights_last": bal.get("uw_weights"),
                "evals": [[s, e] for s, e in log.evals],
                **peak_memory(log),
            }
        )
    out = Path(a.results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = [
        f"| run | iterations | it/s (median) | peak GiB (train / eval) | "
        f"loss (last {a.tail} windows) | cluster losses, clean → noisy | "
        "balancer weights at the end (UW: ½e^(−s)) |",
        "|---|---|---|---|---|---|---|",
    ]

    def gib(v: float | None) -> str:
        return "—" if v is None else f"{v:.1f}"

    for r in rows:
        cl = ", ".join(f"{v:.4f}" for v in r["cluster_losses_tail"])
        w = r["uw_weights_last"] or r["weights_last"]
        shown = ", ".join(f"{v:.3g}" for v in w) if r["method"] not in (None, "vanilla") else "—"
        lines.append(
            f"| {r['run']} | {r['iterations']} | {r['it_per_s_median']:.2f} | "
            f"{gib(r['train_peak_mem_gib'])} / {gib(r['eval_peak_mem_gib'])} | "
            f"{r['loss_tail']:.4f} | {cl} | {shown} |"
        )
    with_parts = [r for r in rows if r["cluster_mse_tail"] is not None]
    if with_parts:
        lines += [
            "",
            f"Parts of the loss per cluster, clean → noisy (last {a.tail} windows; the loss is "
            "w(t)·MSE + vb, w(t)·(MSE + vb) with `diffusion.weight_vlb`):",
            "",
            "| run | unweighted ε-MSE | vb = λ·T·L_t (hybrid) |",
            "|---|---|---|",
        ]

        def nums(xs: list[float] | None) -> str:  # — : not logged, or no sample recorded
            return (
                "—" if xs is None else ", ".join(f"{v:.4f}" if np.isfinite(v) else "—" for v in xs)
            )

        for r in with_parts:
            lines.append(
                f"| {r['run']} | {nums(r['cluster_mse_tail'])} | {nums(r['cluster_vb_tail'])} |"
            )
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    return [out / "summary.json", out / "summary.md"]


def tail_mean(x: np.ndarray, last: slice) -> list[float] | None:
    """Column means over the ``last`` rows ignoring NaN (None for a series the run did not log;
    NaN where no recorded window had the cluster)."""
    return _nan_column_means(x[last]).tolist() if x.size else None


def _nan_column_means(x: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column is NaN, said so
        return np.nanmean(x, axis=0)


def _method_of(run: str) -> str:
    """``vanilla-hybrid-s1`` → ``vanilla-hybrid`` (the cell a seed belongs to)."""
    head, sep, tail = run.rpartition("-s")
    return head if sep and tail.isdigit() else run


def vanilla_contrasts(fids: dict[str, list[float]], loss: str) -> dict[str, Any] | None:
    """Each cell's FID against ``vanilla-<loss>``'s at one step, measured against the spread
    between seeds; None without vanilla or without a cell of ≥ 2 seeds.

    FID's spread between seeds grows with its level (collapsed cells' seeds differ by tens of
    points, those near vanilla's by one to three), so the comparison is on log FID, i.e. relative:
    the variance is pooled over every protocol cell of the loss with ≥ 2 seeds (vanilla included,
    diagnostics not), s² = Σ_c Σ_i (y_ci − ȳ_c)² / Σ_c (n_c − 1) with y = ln FID; a cell's
    difference d = ȳ_c − ȳ_v (its FID ratio to vanilla's is e^d) has the standard error
    s·√(1/n_c + 1/n_v), and |d/se| above Student's t at Σ_c (n_c − 1) degrees of freedom
    (two-sided 5%) is beyond the seeds' spread.
    """
    from scipy.stats import t as student_t

    if not fids.get(f"vanilla-{loss}"):
        return None
    logs = {
        c: np.log(np.asarray(x, dtype=float))
        for c, x in fids.items()
        if c.endswith(f"-{loss}") and x
    }
    pool = [c for c in sorted(logs) if len(logs[c]) > 1 and not c.startswith("diag-")]
    df = sum(len(logs[c]) - 1 for c in pool)
    if not df:
        return None
    sd = float(np.sqrt(sum(float(np.sum((logs[c] - logs[c].mean()) ** 2)) for c in pool) / df))
    crit = float(student_t.ppf(0.975, df))
    ref = logs[f"vanilla-{loss}"]
    cells = {}
    for c in sorted(logs, key=lambda c: logs[c].mean()):
        if c == f"vanilla-{loss}":
            continue
        d = float(logs[c].mean() - ref.mean())
        se = sd * float(np.sqrt(1 / len(logs[c]) + 1 / len(ref)))
        cells[c] = {
            "seeds": len(logs[c]),
            "fid_diff": float(np.mean(fids[c]) - np.mean(fids[f"vanilla-{loss}"])),
            "ratio": float(np.exp(d)),
            "t": d / se,
            "beyond": abs(d / se) > crit,
        }
    return {"pooled_cells": pool, "sd_log": sd, "df": df, "t_crit": crit, "cells": cells}


def _contrast_lines(contrasts: dict[str, dict[str, Any]], step: int) -> list[str]:
    """Markdown of :func:`vanilla_contrasts` per loss at one step."""
    names = LOSS_NAMES
    lines = []
    for lo, c in contrasts.items():
        # the smallest ratio of two two-seed geometric means beyond the spread: e^(t·s·√(1/2 + 1/2))
        edge = float(np.exp(c["t_crit"] * c["sd_log"]))
        lines += [
            "",
            f"#### {names[lo]}: differences from vanilla against the seeds' spread, {step} iterations",
            "",
            f"Standard deviation of ln FID between seeds, pooled over the {len(c['pooled_cells'])} "
            f"cells with ≥ 2 seeds: {c['sd_log']:.4f} ({c['df']} degrees of freedom), i.e. "
            f"{100 * (np.exp(c['sd_log']) - 1):.1f}% of FID. A cell of two seeds differs from "
            f"vanilla's two beyond the seeds' spread (two-sided 5%, t = {c['t_crit']:.2f}) when "
            f"their FIDs' geometric means differ by more than a factor {edge:.3f} "
            f"({100 * (edge - 1):.1f}%).",
            "",
            *_md_table(
                [
                    "cell",
                    "seeds",
                    "Δ FID (means)",
                    "FID ratio (geometric means)",
                    "t",
                    "beyond the seeds' spread",
                ],
                [
                    [
                        cell,
                        str(r["seeds"]),
                        f"{r['fid_diff']:+.1f}",
                        f"{r['ratio']:.3f}",
                        f"{r['t']:+.2f}",
                        "yes" if r["beyond"] else "no",
                    ]
                    for cell, r in c["cells"].items()
                ],
            ),  # fmt: skip
        ]
    return lines


def convergence(curves: dict[str, dict[int, float]]) -> dict[str, dict[str, Any]]:
    """Every cell against the vanilla cell of its loss (``vanilla-<loss>``, the name's last part),
    on FIDs averaged over seeds, at evaluated steps only:

    * ``target``: vanilla's FID at its last evaluated step S_v, and that step;
    * ``steps_to_target``: the cell's first evaluated step with FID ≤ that target (an upper bound on
      the iterations it needs; None if no evaluated step reaches it) and ``speedup`` = S_v / it,
      the paper's "converges ×-faster" at this budget;
    * ``crossings``: consecutive common steps (a, b) between which the sign of
      FID(cell) − FID(vanilla) changes, with the order before and after ("ahead" = lower FID);
    * ``targets``: the same question for vanilla's FID at *each* of its evaluated steps s, with
      the speed-up bracketed by the evaluations: first reached at m after the cell's evaluation
      at p (still above), the iterations it needs lie in (p, m], so s/it lies in [s/m, s/p)
      (``speedup_range``; upper bound None when m is its first evaluation); not reached by its
      last evaluated step L, the speed-up is below s/L (``speedup_below``). A bracket assumes
      FID falls between evaluations, as it does along every curve of the study.
    """
    out: dict[str, dict[str, Any]] = {}
    for cell, curve in sorted(curves.items()):
        loss = cell.rsplit("-", 1)[-1]
        ref = curves.get(f"vanilla-{loss}")
        if ref is None or cell == f"vanilla-{loss}" or not curve or not ref:
            continue
        last = max(ref)
        target = ref[last]
        reached = [st for st in sorted(curve) if curve[st] <= target]
        first = reached[0] if reached else None
        common = sorted(set(curve) & set(ref))
        crossings = []
        for a_, b_ in zip(common, common[1:]):
            before, after = curve[a_] - ref[a_], curve[b_] - ref[b_]
            if before * after < 0:
                order = ("ahead", "behind") if before < 0 else ("behind", "ahead")
                crossings.append({"between": [a_, b_], "from": order[0], "to": order[1]})
        targets = []
        for s_v in sorted(ref):
            steps = sorted(curve)
            hit = next((i for i, st in enumerate(steps) if curve[st] <= ref[s_v]), None)
            entry: dict[str, Any] = {"step": s_v, "fid": ref[s_v], "reached_at": None}
            if hit is None:
                entry["speedup_below"] = s_v / steps[-1]
            else:
                m, prev = steps[hit], steps[hit - 1] if hit else None
                entry["reached_at"] = m
                entry["speedup_range"] = [s_v / m, None if prev is None else s_v / prev]
            targets.append(entry)
        out[cell] = {
            "vanilla": f"vanilla-{loss}",
            "targets": targets,
            "target": {"step": last, "fid": target},
            "steps_to_target": first,
            "speedup": None if first is None else last / first,
            "crossings": crossings,
            "last_step": max(curve),
        }
    return out


def _target_text(conv_cell: dict[str, Any], step: int) -> str:
    """One cell of the iterations-to-vanilla's-FID table (see :func:`convergence`)."""
    t = next((t for t in conv_cell["targets"] if t["step"] == step), None)
    if t is None:
        return "—"
    head = f"{t['fid']:.1f}: "
    if t["reached_at"] is None:
        return head + f"not by its last (< {t['speedup_below']:.2f}×)"
    lo, hi = t["speedup_range"]
    span = f"≥ {lo:.2f}×" if hi is None else f"{lo:.2f}–{hi:.2f}×"
    return head + f"{t['reached_at']} ({span})"


def longest_log(instances: list[Path]) -> Path:
    """Of one run name's folders (in the order named), the one whose ``metrics.jsonl`` reaches
    the furthest step, the first on a tie: the loss sections take it, so that a short rerun in a
    newer folder (slice 9's vanilla hybrid seed 0, 2,500 steps) does not cut a longer run's
    curve (slice 7's)."""

    from antdiff.analysis.logs import read_training_log

    def last_step(run: Path) -> int:
        steps = read_training_log(run).steps
        return int(steps.max()) if steps.size else 0

    return max(instances, key=lambda r: (last_step(r), -instances.index(r)))


def cluster_loss_ratios(
    runs: list[Path], window: int = 5, left_out: dict[str, str] | None = None
) -> dict[str, dict[str, Any]]:
    """Per-cluster training loss of every balanced run (ANT, no loss weighting) over that of the
    vanilla run with the same loss and seed, at their common log steps: both losses averaged
    over ``window`` consecutive log windows first (a rolling mean), then divided. Returns
    ``{run: {"vanilla": run, "steps": [...], "ratio": [[k values] per step], "last": [k]}}``,
    ``last`` being the ratio of the last ``window`` windows' means. Min-SNR and P2 runs log
    their weighted losses, not comparable: they are compared on the fixed bins of t where they
    logged their unweighted parts per bin (``bin_mse``, ``bin_vb``:
    :meth:`TrainingLog.unweighted_bin_losses`), else left out. A run whose clusters are other
    intervals than its vanilla's (SNR, log-SNR or affinity clusters against vanilla's timestep
    ones) is compared on the fixed bins of t that both logs hold (``bin_losses``,
    ``train.log_loss_bins``; ``"over": "bins"`` and the bins' ``"intervals"`` in its entry, else
    ``"over": "clusters"``): each log's cluster losses are of its *own* intervals, so cluster i
    of the two would be other timesteps. Without such bins the run is left out, and
    ``left_out`` (if given) gets ``{run: reason}``. A bin either log holds as a sample mean over
    an uneven draw of t (:meth:`TrainingLog.uneven_bins`: logs from before the trainer's
    ``"bin_mean": "uniform_t"``) has the ratio None, and its index is in ``"uneven"``."""
    from antdiff.analysis.logs import read_training_log

    logs = {}
    for run in runs:
        log = read_training_log(run)
        weighted = log.loss_weighted
        if not log.steps.size or log.k == 0 or (weighted and log.unweighted_bin_losses() is None):
            continue
        logs[run.name] = (log, log.loss_kind, log.config.get("run", {}).get("seed"), weighted)
    out: dict[str, dict[str, Any]] = {}
    for name, (log, loss, seed, weighted) in sorted(logs.items()):
        if log.balancer_name in (None, "vanilla") and not weighted:
            continue
        # the protocol's vanilla run by name: a diagnostic (vanilla balancer, another optimiser
        # setting) of the same loss and seed is not the reference
        partner = f"vanilla-{loss}-s{seed}"
        if partner not in logs or logs[partner][0].balancer_name not in (None, "vanilla"):
            continue
        ref = logs[partner][0]
        mine, theirs, over, bins = log.cluster_losses, ref.cluster_losses, "clusters", None
        uneven: list[int] = []
        other = (
            log.clusters is not None and ref.clusters is not None and log.clusters != ref.clusters
        )
        if weighted or other:
            nb = log.bin_losses.shape[1]
            if not nb or ref.bin_losses.shape[1] != nb:
                if left_out is not None:
                    left_out[name] = (
                        f"clusters {_intervals_text(log.clusters)} are not {partner}'s "
                        f"{_intervals_text(ref.clusters)}, and the logs hold no common bins of t"
                        if other
                        else f"its loss is weighted and {partner} logged no bins of t"
                    )
                continue
            mine, theirs, over = log.unweighted_bin_losses(), ref.unweighted_bin_losses(), "bins"
            bins = [list(b) for b in log.bin_intervals()]
            uneven = np.flatnonzero(log.uneven_bins() | ref.uneven_bins()).tolist()
        common, ia, ib = np.intersect1d(log.steps, ref.steps, return_indices=True)
        if common.size < window:
            continue

        def rolling(x: np.ndarray) -> np.ndarray:
            c = np.cumsum(np.vstack([np.zeros((1, x.shape[1])), x]), axis=0)
            return (c[window:] - c[:-window]) / window

        ratio = rolling(mine[ia]) / rolling(theirs[ib])
        ratio_list = [[None if not np.isfinite(x) else float(x) for x in row] for row in ratio]
        out[name] = {
            "vanilla": partner,
            "over": over,
            **({"intervals": bins, "uneven": uneven} if bins is not None else {}),
            "steps": common[window - 1 :].tolist(),
            "ratio": ratio_list,
            "last": ratio_list[-1],
        }
    return out


def loss_parts_across_runs(runs: list[Path], window: int = 5) -> dict[str, dict[str, Any]]:
    """What each cluster's loss is made of, for every run that logged its parts (a weighted or
    hybrid loss, ``train.log_loss_parts``): over the last ``window`` log windows, the unweighted
    ε-MSE per cluster, the learned-σ term λ·T·L_t (``vb``) and its share of the logged cluster
    loss (hybrid only), and the ε-MSE over that of ``vanilla-<loss>-s<seed>`` when that run
    logged its parts, or is plain unweighted ε-MSE (its cluster losses are its ε-MSE), over the
    same clusters (None otherwise: cluster i of other intervals is other timesteps), both over
    the last ``window`` log steps the two logs share (the step of the last in ``ratio_step``: a
    run stopped at 5k against a vanilla run of 10k compares at 5k). With ``diffusion.weight_vlb`` the logged loss is w(t)·(MSE + vb) while the parts are
    unweighted, so the share is vb / (MSE + vb) instead (``vb_share_of``: "unweighted hybrid
    loss"; w(t)·vb's share of the logged loss when w is constant over the cluster).
    ``{run: {"last step", "clusters", "mse", "vb", "vb_share", "vb_share_of", "vanilla",
    "mse_ratio", "ratio_step"}}``, each list clean → noisy, None where a cluster had no sample."""
    from antdiff.analysis.logs import read_training_log

    def tail(x: np.ndarray) -> np.ndarray:  # a cluster never sampled: NaN
        return _nan_column_means(x[-window:])

    def listed(x: np.ndarray | None) -> list[float | None] | None:
        return None if x is None else [float(v) if np.isfinite(v) else None for v in x]

    logs, eps_mse = {}, {}  # eps_mse: each run's unweighted ε-MSE per cluster and log line
    for run in runs:
        log = read_training_log(run)
        if not log.steps.size:
            continue
        if log.cluster_mse.size:
            seed = log.config.get("run", {}).get("seed")
            logs[run.name] = (log, f"vanilla-{log.loss_kind}-s{seed}")
            eps_mse[run.name] = (log, log.cluster_mse)
        elif log.loss_kind == "eps" and not log.loss_weighted and log.cluster_losses.size:
            # plain ε-MSE logs no parts: its cluster losses are its ε-MSE
            eps_mse[run.name] = (log, log.cluster_losses)
    out: dict[str, dict[str, Any]] = {}
    for name, (log, partner) in sorted(logs.items()):
        mse = tail(log.cluster_mse)
        vb = tail(log.cluster_vb) if log.cluster_vb.size else None
        # the parts are unweighted; a weight on the whole hybrid loss multiplies both
        whole = bool(log.config.get("diffusion", {}).get("weight_vlb"))
        share = None if vb is None else vb / ((mse + vb) if whole else tail(log.cluster_losses))
        ratio, ratio_step = None, None
        if partner in eps_mse and partner != name:
            ref, ref_mse = eps_mse[partner]
            common, ia, ib = np.intersect1d(log.steps, ref.steps, return_indices=True)
            if ref.clusters == log.clusters and common.size:
                ratio = tail(log.cluster_mse[ia]) / tail(ref_mse[ib])
                ratio_step = int(common[-1])
        out[name] = {
            "last step": int(log.steps[-1]),
            "clusters": None if log.clusters is None else [list(c) for c in log.clusters.intervals],
            "mse": listed(mse),
            "vb": listed(vb),
            "vb_share": listed(share),
            "vb_share_of": None
            if vb is None
            else ("unweighted hybrid loss" if whole else "logged loss"),
            "vanilla": partner if ratio is not None else None,
            "mse_ratio": listed(ratio),
            "ratio_step": ratio_step,
        }
    return out


def _intervals_text(clusters: Any) -> str:
    return ", ".join(f"[{a}, {b}]" for a, b in clusters.intervals)


def optimizer_view(
    runs: list[Path], early: int = 500, window: tuple[int, int] = (1500, 2500)
) -> dict[str, dict[str, Any]]:
    """Per run: the median clipped gradient norm over the log lines at steps ≤ ``early`` and in
    ``window``, their ratio (the fall), the mean of Adam's step scale
    (:func:`antdiff.analysis.logs.adam_step_scale`, with the run's clip and β₂)
    over the lines in (``early``, ``window[1]``], and the run's FID at its first evaluation
    (from its log). Returns ``{run: {...}}`` for the runs whose log covers ``window``."""
    from antdiff.analysis.logs import read_training_log

    out: dict[str, dict[str, Any]] = {}
    for run in runs:
        log = read_training_log(run)
        clip = log.grad_clip
        g = log.clipped_grad_norm()
        a = g[(log.steps <= early) & np.isfinite(g)]
        in_window = (log.steps >= window[0]) & (log.steps <= window[1]) & np.isfinite(g)
        if not a.size or not in_window.any() or log.steps.max() < window[1]:
            continue
        b = g[in_window]
        scale = log.adam_step_scale()
        between = (log.steps > early) & (log.steps <= window[1]) & np.isfinite(scale)
        first_eval = next(((s, e) for s, e in log.evals if e.get("fid") is not None), None)
        out[run.name] = {
            "clip": clip,
            "norm_early": float(np.median(a)),
            "norm_window": float(np.median(b)),
            "fall": float(np.median(a) / np.median(b)),
            "adam_step": float(np.mean(scale[between])),
            "first_eval": None
            if first_eval is None
            else {"step": int(first_eval[0]), "fid": float(first_eval[1]["fid"])},
        }
    return out


def _evaluated_at(runs: list[Path], step: int) -> Path:
    """The first of ``runs`` (the same name in several folders) whose log has an evaluation at
    ``step``; the first run when none has."""
    from antdiff.analysis.logs import read_training_log

    for run in runs:
        if any(s == step and e.get("fid") is not None for s, e in read_training_log(run).evals):
            return run
    return runs[0]


def _optimizer_lines(view: dict[str, dict[str, Any]]) -> list[str]:
    from scipy.stats import spearmanr

    rows = [
        [
            run,
            f"{v['norm_early']:.3g}",
            f"{v['norm_window']:.3g}",
            f"{v['fall']:.1f}",
            f"{v['adam_step']:.2f}",
            "—"
            if v["first_eval"] is None
            else f"{v['first_eval']['fid']:.1f} ({v['first_eval']['step']})",
        ]
        for run, v in sorted(view.items(), key=lambda rv: (rv[1]["fall"], rv[0]))
    ]
    lines = [
        "",
        "### Gradient norm and Adam's step early in training",
        "",
        "Clipped gradient norm min(‖g‖, clip), median over the log lines at steps ≤ 500 and in "
        "[1500, 2500], and its fall between them; Adam's step relative to its steady state "
        "(ĝ/sqrt(v̂) with the run's β₂, 0.999 in the protocol, from the logged norms — one per "
        "log window — as a global-norm "
        "proxy of Adam's per-coordinate scaling), mean over steps 501–2500; FID at the run's "
        "first evaluation.",
        "",
        *_md_table(
            [
                "run",
                "norm ≤ 500",
                "norm 1500–2500",
                "fall",
                "Adam step 501–2500",
                "first FID (step)",
            ],
            rows,
        ),  # fmt: skip
    ]
    at_2500 = [v for v in view.values() if v["first_eval"] and v["first_eval"]["step"] == 2500]
    if len(at_2500) >= 3:
        fid = [v["first_eval"]["fid"] for v in at_2500]
        for key, what in (("fall", "the fall"), ("adam_step", "Adam's step")):
            rho, p = spearmanr([v[key] for v in at_2500], fid)
            lines.append(
                f"{'' if key == 'fall' else '- '}Spearman ρ between {what} and the FID at 2500 "
                f"over the {len(at_2500)} runs evaluated there: {rho:+.2f} (p = {p:.1g})"
            )
        lines[-2] = "\n- " + lines[-2]
    return lines


# Figure 2 of the paper (ADM), read from the bar chart (digest §3.2): the reference row of O2.
PAPER_NTG_ADM = {(0, 199): 4.6, (200, 399): 0.15, (400, 599): -1.6, (600, 799): -5.9,
                 (800, 999): -7.6}  # fmt: skip


def _iterations(folder: Path, run: str) -> int | None:
    """A run's iterations from its result file in ``folder``, else from its copied training log
    (``runs/<run>/metrics.jsonl``: an O2 joint without periodic evaluation has no result file)."""
    for result in sorted(folder.glob(f"phase*-{run}.json")):
        return json.loads(result.read_text()).get("iterations")
    if (folder / "runs" / run / "metrics.jsonl").exists():
        from antdiff.analysis.logs import read_training_log

        steps = read_training_log(folder / "runs" / run).steps
        return int(steps[-1]) if steps.size else None
    return None


def _seed_order(seed: int | None) -> tuple[bool, int]:
    """Sort key of training seeds: ascending, an unknown seed (None) last."""
    return (seed is None, seed or 0)


def ntg_across_seeds(folders: list[str | Path]) -> dict[str, dict[str, Any]]:
    """O2 over training seeds: every ``ntg-<run>/ntg.json`` (``antdiff ntg`` of a joint run and
    the specialists of its session) in ``folders``, grouped by the joint's cell. A session's
    NTG per interval (its mean over specialist × sampling seed pairs) is one value per training
    seed; a cell's NTG is the mean of those values ± half their range, as the FID tables. A run
    name found again in a later folder is the same seed and counts once (first folder kept).
    Returns ``{cell: {"seeds", "runs", "intervals", "ntg" (per interval: per-seed values),
    "fid_joint" (per seed), "fid_hybrid", "n", "floor", "joint_iterations", "joint_runs", ...}}``,
    every per-seed list in seed order."""
    from antdiff.analysis.ntg import NTGTable

    cells: dict[str, dict[str, Any]] = {}
    seen: set[str] = set()
    for folder in folders:
        for f in sorted(Path(folder).glob("ntg-*/ntg.json")):
            run = f.parent.name.removeprefix("ntg-")
            if run in seen:
                continue
            seen.add(run)
            table = NTGTable.load(f)
            cell = _method_of(run)
            tail = run.rpartition("-s")[2]
            its = _iterations(Path(folder), run)
            c = cells.setdefault(cell, {
                "seeds": [], "runs": [], "intervals": [list(iv) for iv in table.intervals],
                "ntg": [[] for _ in table.rows], "fid_hybrid": [[] for _ in table.rows],
                "fid_joint": [], "n": table.n, "floor": table.floor, "joint_iterations": [],
                "specialist_iterations": [], "cards": [], "joint_runs": [],
            })  # fmt: skip
            if c["intervals"] != [list(iv) for iv in table.intervals]:
                raise SystemExit(
                    f"{f}: intervals {table.intervals} differ from those of {c['runs'][0]} "
                    f"({c['intervals']}); measure every seed of a cell on the same intervals"
                )
            if c["n"] != table.n:
                raise SystemExit(f"{f}: n = {table.n}, but {c['runs'][0]} used n = {c['n']}")
            c["seeds"].append(int(tail) if tail.isdigit() else None)
            c["joint_runs"].append(run)
            c["runs"].append(f"{folder}/{f.parent.name}")
            c["fid_joint"].append(table.fid_joint_mean)
            c["joint_iterations"].append(its)
            # recorded by antdiff ntg since 2026-11-26 (older tables: unknown)
            spec = table.meta.get("specialist_steps") or {}
            c["specialist_iterations"].append(sorted({x for v in spec.values() for x in v}))
            c["cards"] += [x for x in table.meta.get("cards", []) if x not in c["cards"]]
            for i, row in enumerate(table.rows):
                c["ntg"][i].append(row.mean)
                c["fid_hybrid"][i].append(row.fid_hybrid_mean)
    for c in cells.values():  # each list in seed order, whatever the folders' order
        order = sorted(range(len(c["seeds"])), key=lambda i: _seed_order(c["seeds"][i]))
        for key in ("seeds", "joint_runs", "runs", "fid_joint", "joint_iterations",
                    "specialist_iterations"):  # fmt: skip
            c[key] = [c[key][i] for i in order]
        for key in ("ntg", "fid_hybrid"):
            c[key] = [[per_interval[i] for i in order] for per_interval in c[key]]
    return cells


def trainers_per_card(folder: Path) -> dict[str, int]:
    """How many trainers each run shared its card with at once in a slice, itself included: the
    most runs training on that card at one moment of one of its spans. A span runs from a device log's
    "[repro HH:MM:SS] <name>: training on cuda:N" line to the run's next "stopped at step" or
    "finished at step" line; a line without a time (the O2 specialists' log) or a span without
    an end overlaps every span of its card. Joints, specialists, every run of the slice count,
    and so do the runs in ``host/*.log``: the device logs of other instances that trained on the
    same cards under the same names (``ingest --host-logs``); {} where the logs are missing."""
    line = re.compile(
        r"^(?:\[repro (\d\d):(\d\d):(\d\d)\] |.*?)([\w.+-]+): "  # run names may hold "+"
        r"(?:training on (cuda:\d+)|stopped at step|finished at step)",
        re.M,
    )
    inf = float("inf")
    spans: dict[str, list[tuple[str, float, float]]] = {}  # name -> (card, start, end)
    for log in sorted(folder.glob("*.log")) + sorted(folder.glob("host/*.log")):
        offset, last = 0.0, -inf
        for m in line.finditer(log.read_text()):
            hh, mm, ss, name, card = m.groups()
            t = None
            if hh is not None:
                t = int(hh) * 3600 + int(mm) * 60 + int(ss) + offset
                if t < last - 43200:  # past midnight
                    offset += 86400
                    t += 86400
                last = t
            runs = spans.setdefault(name, [])
            if card:
                runs.append((card, -inf if t is None else t, inf))
            elif runs and runs[-1][2] == inf and t is not None:
                runs[-1] = (runs[-1][0], runs[-1][1], t)
    unique = {name: sorted(set(s)) for name, s in spans.items()}
    counts: dict[str, int] = {}
    for name, own in unique.items():
        for card, start, end in own:
            # the spans on this card within this one, clipped to it; the most at once is
            # reached where one of them begins (runs that only followed each other are not
            # counted together)
            clipped = [
                (other, max(s, start), min(e, end))
                for other, theirs in unique.items()
                for c, s, e in theirs
                if c == card and s <= end and start <= e
            ]
            at_once = max(
                len({other for other, s, e in clipped if s <= t <= e}) for _, t, _ in clipped
            )
            counts[name] = max(counts.get(name, 0), at_once)
    return counts


def cost_across_runs(folders: list[str | Path]) -> list[dict[str, Any]]:
    """The measured cost of every run in ``folders``, per folder: median it/s over the training
    log's windows, the trainers on its card (:func:`trainers_per_card`), its ratio to the vanilla
    run of the same loss and seed *in the same folder* and with as many trainers on its card
    (else None: the rate of a shared card says more about the sharing than about the method),
    peak CUDA memory allocated while training and while evaluating, and the card. From each
    folder's ``summary.json`` (every run of the slice, also those without a result file) and its
    result files; a value neither recorded is None."""
    keys = {"iterations": "iterations", "it_per_s": "it_per_s_median",
            "train_gib": "train_peak_mem_gib", "eval_gib": "eval_peak_mem_gib"}  # fmt: skip
    rows: list[dict[str, Any]] = []
    for folder in folders:
        folder = Path(folder)
        runs: dict[str, dict[str, Any]] = {}
        if (folder / "summary.json").exists():
            for r in json.loads((folder / "summary.json").read_text()):
                runs[r["run"]] = {dst: r.get(src) for dst, src in keys.items()}
        for f in sorted(folder.glob("phase*-*.json")):
            res = json.loads(f.read_text())
            e = runs.setdefault(res["run"], {})
            for dst, src in keys.items():
                if e.get(dst) is None:
                    e[dst] = res.get(src)
            e["card"] = res.get("card")
        env = folder / "environment.json"
        cards = json.loads(env.read_text()).get("cards", []) if env.exists() else []
        sharing = trainers_per_card(folder)
        for run, e in sorted(runs.items()):
            if not e.get("card") and len(set(cards)) == 1:
                e["card"] = cards[0]
            head, _, seed = run.rpartition("-s")
            vanilla = f"vanilla-{head.rpartition('-')[2]}-s{seed}"
            ref = runs.get(vanilla, {}).get("it_per_s")
            same_sharing = sharing.get(run) == sharing.get(vanilla)
            ratio = e["it_per_s"] / ref if e.get("it_per_s") and ref and same_sharing else None
            rows.append({"folder": folder.name, "run": run, **{k: e.get(k) for k in keys},
                         "per_card": sharing.get(run), "card": e.get("card"),
                         "vs_vanilla": ratio})  # fmt: skip
    return rows


def _cost_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The cost section of ``table.md``: one row per run and folder."""

    def num(x: float | None, fmt: str) -> str:
        return "—" if x is None else f"{x:{fmt}}"

    return [
        "",
        "### Cost per run (measured in the same runs)",
        "",
        "Median it/s over the training log's windows; per card: the most trainers on the run's "
        "card at once while it trained, itself included (from the device logs); × vanilla: "
        "against the vanilla run of the same loss and seed in the same folder with as many "
        "trainers on its card (— otherwise); peak CUDA memory allocated.",
        "",
        *_md_table(
            [
                "folder",
                "run",
                "iterations",
                "it/s",
                "per card",
                "× vanilla",
                "train GiB",
                "eval GiB",
                "card",
            ],
            [
                [
                    r["folder"],
                    r["run"],
                    num(r["iterations"], "d"),
                    num(r["it_per_s"], ".2f"),
                    num(r["per_card"], "d"),
                    num(r["vs_vanilla"], ".2f"),
                    num(r["train_gib"], ".2f"),
                    num(r["eval_gib"], ".2f"),
                    r["card"] or "—",
                ]
                for r in rows
            ],
        ),
    ]


O1_GAPS = (1, 2, 5, 10, 20, 50, 99)  # bins apart (100 bins: 10 timesteps each)
O1_THRESHOLDS = (0.0, -0.2, -0.3)
O1_BLOCK = ((0, 100), (500, 1000))  # the cleanest tasks against the noisy half


def o1_across_runs(folders: list[str | Path]) -> list[dict[str, Any]]:
    """O1 for every ``affinity-<run>/affinity.json`` in ``folders``: Spearman's ρ of affinity
    against |Δlog-SNR| and |Δt| (``TaskAffinity.distance_correlation``), the mean affinity at
    :data:`O1_GAPS` bins apart, the share of pairs below :data:`O1_THRESHOLDS` and the mean of
    the :data:`O1_BLOCK` block; ``r`` is the Pearson correlation of the off-diagonal entries with
    every other matrix of the same bins (do two seeds or checkpoints agree). A matrix is named by
    its run and the checkpoint's step; the same (run, step) in a later folder counts once."""
    from antdiff.analysis.affinity import TaskAffinity
    from antdiff.schedule import NoiseSchedule

    entries: list[dict[str, Any]] = []
    matrices: list[tuple[Any, np.ndarray]] = []
    seen: set[tuple[str, int | None]] = set()
    for folder in folders:
        for f in sorted(Path(folder).glob("affinity-*/affinity.json")):
            aff = TaskAffinity.load(f)
            steps = [re.search(r"step_(\d+)", str(c)) for c in aff.meta.get("checkpoints", [])]
            step = int(steps[-1].group(1)) if steps and steps[-1] else None
            run = f.parent.name.removeprefix("affinity-")
            if (run, step) in seen:
                continue
            seen.add((run, step))
            schedule = NoiseSchedule.from_dict(aff.meta["schedule"])  # as antdiff affinity does
            corr = aff.distance_correlation(schedule)
            n = len(aff.bins)
            try:
                block = aff.block_mean(*O1_BLOCK)
            except ValueError:  # bins straddling the block's edges
                block = None
            entries.append({
                "run": run, "step": step, "bins": n, "images": aff.num_images,
                "checkpoints": aff.num_checkpoints, "path": str(f.parent),
                "spearman_logsnr": corr["logsnr"]["spearman"], "p_logsnr": corr["logsnr"]["p_value"],
                "spearman_t": corr["timestep"]["spearman"], "p_t": corr["timestep"]["p_value"],
                "mean_at_gap": {str(g): v for g, v in aff.mean_at_gaps(
                    [g for g in O1_GAPS if g < n]).items()},
                "share_below": {str(c): v for c, v in aff.share_below(O1_THRESHOLDS).items()},
                "block_mean": block, "r": {},
            })  # fmt: skip
            matrices.append((aff.bins, aff.matrix[np.triu_indices(n, k=1)]))
    for i, (bins_i, off_i) in enumerate(matrices):
        for j, (bins_j, off_j) in enumerate(matrices):
            if i != j and bins_i == bins_j:
                key = f"{entries[j]['run']}@{entries[j]['step']}"
                entries[i]["r"][key] = float(np.corrcoef(off_i, off_j)[0, 1])
    return sorted(entries, key=lambda e: (e["bins"], e["run"], e["step"] or 0))


def _o1_lines(entries: list[dict[str, Any]]) -> list[str]:
    """The O1 section of ``table.md``: one row per affinity matrix."""

    def p(x: float | None) -> str:
        return "—" if x is None else ("< 1e-300" if x == 0 else f"{x:.0e}")

    def rho(e: dict[str, Any], k: str) -> str:
        return (
            "—" if e[f"spearman_{k}"] is None else f"{e[f'spearman_{k}']:+.2f} ({p(e[f'p_{k}'])})"
        )

    rows = [
        [
            e["run"], str(e["step"]) if e["step"] is not None else "?", str(e["bins"]),
            rho(e, "logsnr"), rho(e, "t"),
            ", ".join(f"{v:+.2f}" for v in e["mean_at_gap"].values()),
            *(f"{100 * v:.1f}%" for v in e["share_below"].values()),
            "—" if e["block_mean"] is None else f"{e['block_mean']:+.3f}",
            ", ".join(f"{k} {v:.2f}" for k, v in e["r"].items()) or "—",
        ]
        for e in entries
    ]  # fmt: skip
    (lo_a, hi_a), (lo_b, hi_b) = O1_BLOCK
    return [
        "",
        "### O1: affinity against the noise-level gap",
        "",
        "Spearman ρ (p) over all pairs of distinct bins; mean affinity of pairs "
        f"{', '.join(map(str, O1_GAPS))} bins apart (those that exist); share of pairs below "
        f"{', '.join(f'{c:g}' for c in O1_THRESHOLDS)}; mean affinity of t in [{lo_a}, {hi_a}) "
        f"against t in [{lo_b}, {hi_b}); r: Pearson correlation of the off-diagonal entries with "
        "the other matrices of the same bins (run@step).",
        "",
        *_md_table(
            [
                "run",
                "step",
                "bins",
                "ρ vs \\|Δlog-SNR\\|",
                "ρ vs \\|Δt\\|",
                "mean at gaps",
                *(f"< {c:g}" for c in O1_THRESHOLDS),
                "clean vs noisy half",
                "r",
            ],
            rows,
        ),  # fmt: skip
    ]


#: The paper's Table-1 rows in its order, then this study's extra baselines: (clustering, method
#: label, the cell's method part in a run name).
PAPER_ROWS = [
    ("–", "vanilla", "vanilla"),
    *(
        (clustering, label, f"{cost}-{bal}")
        for cost, clustering in (
            ("timestep", "timestep"),
            ("snr", "SNR"),
            ("logsnr", "log-SNR"),
            ("affinity", "gradient (affinity)"),
        )
        for bal, label in (("pcgrad", "PCGrad"), ("nash", "NashMTL"), ("uw", "UW"))
    ),  # fmt: skip
    ("–", "P2 (γ = 1)", "p2"),
    ("–", "Min-SNR-5", "minsnr"),
    ("timestep", "UW + P2", "timestep-uw+p2"),
]


def _paper_layout_lines(
    rows: dict[str, dict[int, dict[str, list[float]]]],
    from_ntg: dict[str, dict[int, list[int]]],
    step: int,
    fid_by_seed: dict[str, dict[int, dict[Any, float]]] | None = None,
) -> list[str]:
    """One step's cells in the layout of the paper's Table 1 — a row per clustering × method,
    a column group per loss — each value the mean over seeds ± half their range (number of
    seeds), the best mean of each column in bold, and per loss how many ANT cells have a lower
    mean FID than vanilla (the paper: 36 of 36). With ``fid_by_seed`` ({cell: {step: {seed:
    FID}}}) also how many are below vanilla's FID of the same seed in every seed both have, each
    with its smallest margin: a mean can lead on one seed's large gap while the other ties."""
    losses = [lo for lo in LOSSES if any(f"{m}-{lo}" in rows and step in rows[f"{m}-{lo}"]
                                         for _, _, m in PAPER_ROWS)]  # fmt: skip
    if not losses:
        return []
    keys = (("fid", ".1f", min), ("precision", ".3f", max), ("recall", ".3f", max))

    def value(cell: str, key: str) -> list[float]:
        return rows.get(cell, {}).get(step, {}).get(key, [])

    best = {
        (lo, key): pick(np.mean(v) for _, _, m in PAPER_ROWS if (v := value(f"{m}-{lo}", key)))
        for lo in losses
        for key, _, pick in keys
        if any(value(f"{m}-{lo}", key) for _, _, m in PAPER_ROWS)
    }
    table_rows = []
    for clustering, label, m in PAPER_ROWS:
        if not any(value(f"{m}-{lo}", "fid") for lo in losses):
            continue
        shown = [clustering, label]
        for lo in losses:
            for key, fmt, _ in keys:
                x = value(f"{m}-{lo}", key)
                if not x:
                    shown.append("—")
                    continue
                mean = float(np.mean(x))
                txt = f"{mean:{fmt}}" + (f" ± {(max(x) - min(x)) / 2:{fmt}}" if len(x) > 1 else "")
                if abs(mean - best[(lo, key)]) < 1e-12:
                    txt = f"**{txt}**"
                mark = " †" if key == "fid" and step in from_ntg.get(f"{m}-{lo}", {}) else ""
                shown.append(f"{txt}{mark} ({len(x)})" if key == "fid" else txt)
        table_rows.append(shown)
    names = LOSS_NAMES
    head = ["clustering", "method"] + [
        f"{names[lo]} {h}" for lo in losses for h in ("FID ↓ (seeds)", "P ↑", "R ↑")
    ]
    lines = ["", f"#### Table-1 layout, {step} iterations", "", *_md_table(head, table_rows), ""]
    for lo in losses:
        ref = value(f"vanilla-{lo}", "fid")
        ant = [m for _, _, m in PAPER_ROWS[1:13] if value(f"{m}-{lo}", "fid")]
        if ref and ant:
            better = [m for m in ant if np.mean(value(f"{m}-{lo}", "fid")) < np.mean(ref)]
            lines.append(
                f"- {names[lo]}: {len(better)} of the {len(ant)} ANT cells measured here have a "
                f"lower mean FID than vanilla's {np.mean(ref):.1f} (the paper: all nine in each "
                "of its four columns, 36 of 36)" + (f" — {', '.join(better)}" if better else "")
            )
        ref_seeds = (fid_by_seed or {}).get(f"vanilla-{lo}", {}).get(step, {})
        paired = {}
        for m in ant:
            own = (fid_by_seed or {}).get(f"{m}-{lo}", {}).get(step, {})
            shared = sorted((s for s in own if s is not None and s in ref_seeds), key=_seed_order)
            if shared:
                paired[m] = [ref_seeds[s] - own[s] for s in shared]
        if paired:
            below = {m: min(g) for m, g in paired.items() if min(g) > 0}
            listed = [
                f"{m} ({len(paired[m])} seed{'s' * (len(paired[m]) > 1)}, smallest margin {g:.2f})"
                for m, g in sorted(below.items(), key=lambda mg: -mg[1])
            ]
            lines.append(
                f"- {names[lo]}, seed by seed: {len(below)} of the {len(paired)} ANT cells with a "
                "seed of vanilla's are below vanilla's FID of the same seed in every seed both "
                "have" + (" — " + ", ".join(listed) if listed else "")
            )
    return lines


def _md_table(head: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table: header, separator, one line per row."""
    return [
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


def _ntg_lines(cells: dict[str, dict[str, Any]]) -> list[str]:
    """The O2 section of ``table.md``: one row per joint cell, one column per interval."""
    intervals = next(iter(cells.values()))["intervals"]
    labels = [f"[{a + 1}, {b + 1}]" for a, b in intervals]

    def pm(x: list[float], signed: bool = True) -> str:
        m, half = float(np.mean(x)), (max(x) - min(x)) / 2
        f = "+.1f" if signed else ".1f"
        if len(x) == 1:
            return f"{m:{f}}"
        return f"{m:{f}} ± {half:.1f} (" + ", ".join(f"{v:{f}}" for v in x) + ")"

    ntg_rows = [
        [cell, str(len(c["seeds"])), pm(c["fid_joint"], signed=False), *map(pm, c["ntg"])]
        for cell, c in sorted(cells.items())
    ]
    if [tuple(iv) for iv in intervals] == list(PAPER_NTG_ADM):
        ntg_rows.append(
            ["paper, ADM (Fig. 2, read from the chart)", "—", "—"]
            + [f"{v:+.2f}" for v in PAPER_NTG_ADM.values()]
        )
    hybrid_rows = [
        [cell, *(pm(v, signed=False) for v in c["fid_hybrid"])] for cell, c in sorted(cells.items())
    ]
    lines = [
        "",
        "### O2: negative transfer gap per interval",
        "",
        "NTG(I) = FID(specialist on I, joint model elsewhere) − FID(joint model); < 0: negative "
        "transfer. Mean over training seeds (each seed: its joint model and its specialists) ± "
        "half their range, each seed's value in brackets (in seed order).",
        "",
        *_md_table(["joint model", "seeds", "joint FID", *labels], ntg_rows),
        "",
        "FID of each hybrid (specialist on I, joint model elsewhere; same mean ± half range). The "
        "joint models of one session share their specialists and initial noise, so a column "
        "compares the joint models on the other intervals directly.",
        "",
        *_md_table(["joint model", *labels], hybrid_rows),
        "",
    ]
    for cell, c in sorted(cells.items()):
        its = ", ".join("?" if i is None else str(i) for i in c["joint_iterations"])
        spec = ", ".join("/".join(map(str, v)) or "?" for v in c["specialist_iterations"])
        floor = f", FID floor {c['floor']:.2f}" if c["floor"] is not None else ""
        cards = f"; measured on {', '.join(c['cards'])}" if c["cards"] else ""
        # the protocol's specialists train at the joint model's budget: say so where they did not
        unequal = [
            str(seed)
            for seed, joint, spec_its in zip(
                c["seeds"], c["joint_iterations"], c["specialist_iterations"]
            )
            if joint is not None and spec_its and spec_its != [joint]
        ]
        warn = (
            f" — **seed(s) {', '.join(unequal)}: specialists not at the joint model's iterations**"
            if unequal
            else ""
        )
        lines.append(
            f"- {cell}: n = {c['n']}{floor}; joint iterations per seed: {its}; specialists' "
            f"iterations per seed: {spec}{cards}{warn}; from "
            + ", ".join(f"`{r}`" for r in c["runs"])
        )
    return lines


def _plot_ntg_across_seeds(cells: dict[str, dict[str, Any]], path: Path) -> Path:
    """The paper's Figure-2 bars for every cell, error bars = std over training seeds."""
    from antdiff.analysis.ntg import NTGRow, NTGTable
    from antdiff.plots import plot_ntg

    tables = {}
    for cell, c in sorted(cells.items()):
        rows = [
            NTGRow(tuple(iv), tuple(v), tuple(h), tuple((s, 0) for s in c["seeds"]))
            for iv, v, h in zip(c["intervals"], c["ntg"], c["fid_hybrid"])
        ]
        tables[cell] = NTGTable(rows, dict(enumerate(c["fid_joint"])), c["n"], c["floor"])
    return plot_ntg(tables, path, title="NTG per interval (bars: std over training seeds)")


def _cells_step(rows: dict[str, dict[int, dict[str, list[float]]]]) -> int | None:
    """The evaluated step with the most cells (the later of a tie); None below three cells."""
    by_step: dict[int, int] = {}
    for cell in rows.values():
        for step, v in cell.items():
            by_step[step] = by_step.get(step, 0) + bool(v.get("fid"))
    best = max(by_step, key=lambda st: (by_step[st], st), default=None)
    return best if best is not None and by_step[best] >= 3 else None


def _plot_cells(rows: dict[str, dict[int, dict[str, list[float]]]], step: int, path: Path) -> Path:
    """Every cell at one step, sorted by mean FID: FID, precision and recall side by side, each
    seed a dot and the mean a bar; vanilla's mean (per loss) as a dashed line, diagnostics in
    grey. A grid evaluated at one budget (Phase 2) has no curve to draw; this is its figure."""
    from antdiff.plots import pyplot, save_figure

    plt = pyplot()
    cells = sorted(
        (c for c, v in rows.items() if v.get(step, {}).get("fid")),
        key=lambda c: -float(np.mean(rows[c][step]["fid"])),
    )
    metrics = [
        m for m in ("fid", "precision", "recall") if any(rows[c][step].get(m) for c in cells)
    ]
    fig, axes = plt.subplots(
        1, len(metrics), figsize=(3.2 * len(metrics) + 1.6, 0.32 * len(cells) + 1.2),
        sharey=True, squeeze=False,
    )  # fmt: skip
    y = np.arange(len(cells))
    for ax, metric in zip(axes[0], metrics):
        for i, c in enumerate(cells):
            vals = rows[c][step].get(metric) or []
            if not vals:
                continue
            color = "0.6" if c.startswith("diag-") else ("C3" if c.startswith("vanilla-") else "C0")
            ax.barh(i, float(np.mean(vals)), height=0.6, color=color, alpha=0.35)
            ax.plot(vals, [i] * len(vals), "o", ms=3.5, color=color)
        for c in cells:
            if c.startswith("vanilla-") and rows[c][step].get(metric):
                ax.axvline(float(np.mean(rows[c][step][metric])), color="C3", ls="--", lw=0.8)
        ax.set_title({"fid": "FID ↓", "precision": "precision ↑", "recall": "recall ↑"}[metric],
                     fontsize=9)  # fmt: skip
        ax.grid(axis="x", lw=0.3)
    axes[0][0].set_yticks(y, cells, fontsize=7)
    fig.suptitle(
        f"{step:,} iterations: each seed a dot, the bar its mean (red: vanilla)", fontsize=9
    )
    fig.tight_layout()
    save_figure(fig, path)
    return path


def _plot_fid_curves(rows: dict[str, dict[int, dict[str, list[float]]]], path: Path) -> Path:
    """FID against iterations: mean over seeds, bars spanning their range; one colour per
    method, dashed for the hybrid loss; a logarithmic FID axis when the FIDs span more than a
    factor of 4 (the early points would otherwise flatten the differences between the late)."""
    from antdiff.plots import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    every = [x for c in rows.values() for v in c.values() for x in v.get("fid", [])]
    if every and min(every) > 0 and max(every) / min(every) > 4:
        from matplotlib.ticker import FormatStrFormatter

        ax.set_yscale("log")
        for axis_format in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
            axis_format(FormatStrFormatter("%g"))  # 20, 30, ..., not 2 × 10¹
    methods = sorted({c.rsplit("-", 1)[0] for c in rows})
    for c, by_step in sorted(rows.items()):
        st = sorted(by_step)
        fid = [by_step[x]["fid"] for x in st]
        method, _, loss = c.rpartition("-")
        color = plt.get_cmap("tab10")(methods.index(method or c) % 10)
        mean = np.array([np.mean(v) for v in fid])
        spread = [mean - [min(v) for v in fid], [max(v) for v in fid] - mean]
        ax.errorbar(
            st, mean, yerr=spread, marker="o", ms=3, lw=1.2, capsize=3, color=color, label=c,
            ls="--" if loss == "hybrid" else "-",
        )  # fmt: skip
    ax.set_xlabel("iteration")
    ax.set_ylabel("FID (EMA, DDIM-100)")
    ax.legend(fontsize=7)
    ax.set_title("FID during training (mean over seeds, bars: their range)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
    return path


def _plot_cluster_loss_ratios(ratios: dict[str, dict[str, Any]], path: Path) -> Path:
    """One panel per cell: each cluster's training-loss ratio to vanilla over training (solid:
    seed 0, dashed: other seeds), from :func:`cluster_loss_ratios`."""
    from matplotlib.ticker import MaxNLocator

    from antdiff.plots import pyplot, save_figure

    plt = pyplot()
    cells = sorted({_method_of(r) for r in ratios})
    fig, axes = plt.subplots(1, len(cells), figsize=(4.2 * len(cells), 3.4), squeeze=False)
    for ax, cell in zip(axes[0], cells):
        labelled = False  # the panel's first run names the colours (a panel may lack seed 0)
        for r, v in ratios.items():
            if _method_of(r) != cell:
                continue
            ratio = np.asarray(v["ratio"], dtype=float)  # None (an uneven bin): NaN, not drawn
            style = "-" if r.endswith("-s0") else "--"
            for i in range(ratio.shape[1]):
                color = plt.get_cmap("viridis")(i / max(1, ratio.shape[1] - 1))
                unit = "cluster" if v.get("over", "clusters") == "clusters" else "t-bin"
                label = None if labelled else f"{unit} {i}"
                ax.plot(v["steps"], ratio[:, i], style, color=color, lw=1.1, label=label)
            labelled = True
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_title(f"{cell} / vanilla (dashed: seed ≥ 1)", fontsize=9)
        ax.set_xlabel("iteration")
        ax.xaxis.set_major_locator(MaxNLocator(5))  # long runs' tick labels ran together
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("training loss ratio per cluster")
    fig.tight_layout()
    save_figure(fig, path)
    return path


def tabulate(a: argparse.Namespace) -> list[Path]:
    """Table-1-shaped results from result JSONs (``collect``'s files) in ``--from`` folders:
    for each evaluated step, every cell's FID, precision and recall as the mean over its seeds ±
    half their range, with each seed's value, the best mean of each column in bold; each cell's
    convergence against the vanilla run of its loss (:func:`convergence`); and the
    FID-vs-iteration figure (mean over seeds, bars spanning the seeds' range; one colour per
    method, dashed for the hybrid loss). A run name found in several folders (a later slice
    training the same config and seed again) counts once: the first folder's points and run
    folder are kept and the others' points listed as repeats. NTG results in the folders
    (``ntg-<run>/ntg.json``) add the O2 table over training seeds (:func:`ntg_across_seeds`) and
    ``ntg.png``; a folder may hold NTG results alone, and an NTG's joint FID is the FID point (†)
    of a joint run that has no periodic evaluation at that step. Affinity results add the O1
    section (:func:`o1_across_runs`), ``summary.json`` and the device logs the cost section
    (:func:`cost_across_runs`). Writes ``table.md``, ``table.json`` and (with FID points)
    ``fid_curves.png`` and ``cells.png`` (every cell at the step with the most, three or more:
    :func:`_plot_cells`) to ``--results``."""
    points: dict[str, dict[int, dict[str, list[tuple[int, float]]]]] = {}
    seeds: dict[str, list[int]] = {}
    meta: dict[int, dict[str, Any]] = {}
    # A run of the same name in two folders is the same config and seed trained again (a later
    # slice repeating an earlier point): it is one seed, not two. The first folder's point wins;
    # later ones are reported as repeats (the run-to-run spread at a fixed seed).
    seen: dict[tuple[str, int], tuple[str, float]] = {}
    repeats: list[dict[str, Any]] = []
    n_source: dict[int, tuple[Any, Path]] = {}  # step -> (n, first file with a point there)
    ntg = ntg_across_seeds(a.sources)
    # An O2 joint model without a periodic evaluation at its last step still has an FID there:
    # the NTG's own joint FID (same EMA sampler; no precision/recall). It is that run's point,
    # taken in folder order with the result files (the first folder's point of a run wins).
    from_ntg: dict[str, dict[int, list[int]]] = {}

    def add_ntg_points(folder: str | Path) -> None:
        for cell, c in ntg.items():
            for run, seed, step, fid, where in zip(
                c["joint_runs"], c["seeds"], c["joint_iterations"], c["fid_joint"], c["runs"]
            ):
                if step is None or Path(where).parent != Path(folder):
                    continue
                if (run, step) in seen:
                    if seen[(run, step)][0] == str(folder):
                        continue  # the same model, evaluated periodically too: not a retraining
                    repeats.append({
                        "run": run, "step": step,
                        "kept": {"folder": seen[(run, step)][0], "fid": seen[(run, step)][1]},
                        "repeat": {"folder": str(folder), "fid": fid, "from_ntg": True},
                    })  # fmt: skip
                    continue
                first = n_source.setdefault(step, (c["n"], Path(where)))
                if first[0] != c["n"]:
                    raise SystemExit(
                        f"{run}: its O2 joint FID at step {step} has n = {c['n']}, but "
                        f"{first[1]} has n = {first[0]} there; tabulate each n on its own"
                    )
                seen[(run, step)] = (str(folder), fid)
                points.setdefault(cell, {}).setdefault(step, {}).setdefault("fid", []).append(
                    (seed, fid)
                )
                marked = from_ntg.setdefault(cell, {}).setdefault(step, [])
                marked.append(seed)
                marked.sort(key=_seed_order)
                if seed not in seeds.get(cell, []):
                    seeds.setdefault(cell, []).append(seed)
                meta.setdefault(step, {"n": c["n"], "floor": c["floor"]})

    for folder in a.sources:
        files = sorted(Path(folder).glob("phase*-*.json"))
        if (
            not files
            and not any(Path(folder).glob("ntg-*/ntg.json"))
            and not any(Path(folder).glob("affinity-*/affinity.json"))
        ):
            # (an O2 session whose joints skip periodic evaluation has only NTG and O1 results)
            raise SystemExit(
                f"no result files (phase*-*.json, ntg-*/ntg.json or affinity-*/affinity.json) in "
                f"{folder}; run `collect` first"
            )
        for f in files:
            res = json.loads(f.read_text())
            cell = _method_of(res["run"])
            if res["seed"] not in seeds.get(cell, []):
                seeds.setdefault(cell, []).append(res["seed"])
            for point in res["curve"]:
                if point.get("fid") is None:
                    continue
                step, n = int(point["step"]), point.get("n")
                first = n_source.setdefault(step, (n, f))
                if first[0] != n:
                    raise SystemExit(
                        f"{f}: its point at step {step} has n = {n}, but {first[1]} has "
                        f"n = {first[0]} there: FIDs of different sample counts have different "
                        "floors and are not comparable; tabulate each n on its own (--from the "
                        "folders of one n)"
                    )
                key = (res["run"], step)
                if key in seen:
                    repeats.append({
                        "run": res["run"], "step": key[1],
                        "kept": {"folder": seen[key][0], "fid": seen[key][1]},
                        "repeat": {"folder": str(folder), "fid": float(point["fid"])},
                    })  # fmt: skip
                    continue
                seen[key] = (str(folder), float(point["fid"]))
                vals = points.setdefault(cell, {}).setdefault(int(point["step"]), {})
                for key in ("fid", "precision", "recall"):
                    if point.get(key) is not None:
                        vals.setdefault(key, []).append((res["seed"], float(point[key])))
                meta.setdefault(
                    int(point["step"]), {"n": point.get("n"), "floor": point.get("floor")}
                )
        add_ntg_points(folder)
    # each cell's values at a step in seed order (the order the folders came in is arbitrary)
    rows: dict[str, dict[int, dict[str, list[float]]]] = {
        cell: {
            step: {
                k: [v for _, v in sorted(x, key=lambda sv: _seed_order(sv[0]))]
                for k, x in by_key.items()
            }
            for step, by_key in by_step.items()
        }
        for cell, by_step in points.items()
    }
    # each cell's FID per seed, for the same-seed comparison with vanilla
    fid_by_seed = {
        cell: {step: dict(by_key.get("fid", [])) for step, by_key in by_step.items()}
        for cell, by_step in points.items()
    }
    o1 = o1_across_runs(a.sources)
    if not rows and not ntg and not o1:
        raise SystemExit("the result files hold no evaluated point")
    best_is_low = {"fid": True, "precision": False, "recall": False}
    out = Path(a.results)
    out.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    table: dict[str, Any] = {}
    contrasts: dict[str, dict[str, Any]] = {}
    for step in sorted({st for cell in rows.values() for st in cell}):
        cells = {c: v[step] for c, v in rows.items() if step in v}
        means = {c: {k: float(np.mean(x)) for k, x in v.items()} for c, v in cells.items()}
        # a diagnostic (one protocol setting changed) is shown, never the best of a column
        ranked = [m for c, m in means.items() if not c.startswith("diag-")]
        best = {
            k: (min if low else max)(m[k] for m in ranked if k in m)
            for k, low in best_is_low.items()
            if any(k in m for m in ranked)
        }
        info = meta[step]
        lines += [
            f"### {step} iterations (n = {info['n']}; real-vs-real floor {info['floor']:.2f})"
            if info.get("floor") is not None
            else f"### {step} iterations (n = {info['n']})",
            "",
            "| cell | seeds | FID ↓ | precision ↑ | recall ↑ |",
            "|---|---|---|---|---|",
        ]
        table[str(step)] = {}
        for c in sorted(cells, key=lambda c: means[c]["fid"]):
            shown = []
            for k in ("fid", "precision", "recall"):
                x = cells[c].get(k, [])
                if not x:
                    shown.append("—")
                    continue
                m, half = float(np.mean(x)), (max(x) - min(x)) / 2
                fmt = ".1f" if k == "fid" else ".3f"
                txt = f"{m:{fmt}}" + (f" ± {half:{fmt}}" if len(x) > 1 else "")
                if k in best and abs(m - best[k]) < 1e-12 and not c.startswith("diag-"):
                    txt = f"**{txt}**"
                if len(x) > 1:
                    txt += " (" + ", ".join(f"{v:{fmt}}" for v in x) + ")"
                shown.append(txt)
            mark = " †" if step in from_ntg.get(c, {}) else ""
            mark += " (diagnostic)" if c.startswith("diag-") else ""
            lines.append(f"| {c}{mark} | {len(cells[c]['fid'])} | " + " | ".join(shown) + " |")
            table[str(step)][c] = {k: cells[c][k] for k in cells[c]}
            if step in from_ntg.get(c, {}):
                table[str(step)][c]["fid_from_ntg_seeds"] = from_ntg[c][step]
        marked = {c: from_ntg[c][step] for c in sorted(cells) if step in from_ntg.get(c, {})}
        if marked:
            lines += [
                "",
                "† FID (no precision/recall) of an O2 joint model without a periodic evaluation "
                "at this step: the joint FID of its NTG measurement (`antdiff ntg`, EMA, same "
                "sampler and n), seed(s) "
                + "; ".join(f"{c} {', '.join(map(str, v))}" for c, v in marked.items()),
            ]
        lines += _paper_layout_lines(rows, from_ntg, step, fid_by_seed)
        step_fids = {c: v.get("fid", []) for c, v in cells.items()}
        found = {lo: r for lo in LOSSES if (r := vanilla_contrasts(step_fids, lo)) is not None}
        if found:
            contrasts[str(step)] = found
            lines += _contrast_lines(found, step)
        lines.append("")
    if rows:
        lines.append(
            "Mean over seeds ± half their range, each seed's value in brackets (in seed order); "
            "best mean per column in bold. Cells: "
            + ", ".join(f"{c} (seeds {sorted(set(s))})" for c, s in sorted(seeds.items()))
        )
    mean_fid = {
        c: {st: float(np.mean(v["fid"])) for st, v in by_step.items() if v.get("fid")}
        for c, by_step in rows.items()
    }
    conv = convergence(mean_fid)
    if conv:
        conv_rows = []
        for c, v in conv.items():
            first = v["steps_to_target"]
            reached = f"{first}" if first is not None else f"not by {v['last_step']} (its last)"
            # the first evaluated step bounds the iterations needed from above: speed-up from below
            speed = f"≥ {v['speedup']:.2f}×" if v["speedup"] is not None else "—"
            cross = "; ".join(
                f"{x['from']} at {x['between'][0]} → {x['to']} at {x['between'][1]}"
                for x in v["crossings"]
            )
            conv_rows.append([
                c, f"{v['target']['fid']:.1f} ({v['target']['step']})", reached, speed,
                cross or "none",
            ])  # fmt: skip
        lines += [
            "",
            "### Convergence against vanilla (mean FID over seeds, evaluated steps only)",
            "",
            *_md_table(
                [
                    "cell",
                    "vanilla's last FID (step)",
                    "first step at or below it",
                    "speed-up (at least)",
                    "crossings of vanilla's curve",
                ],
                conv_rows,
            ),  # fmt: skip
        ]
        v_steps = sorted({t["step"] for v in conv.values() for t in v["targets"]})
        lines += [
            "",
            "### Iterations to vanilla's FID at each of its evaluated steps",
            "",
            "Per column: vanilla's mean FID at that step; per cell: the cell's first evaluated step "
            "at or below it and the speed-up s/iterations that the evaluations bracket (the "
            "iterations needed lie between the cell's previous evaluation, still above, and that "
            "step; ≥ where it is the cell's first evaluation; < where no evaluation reaches it). "
            "The paper's claim is ≥ 2.5× for UW and Nash.",
            "",
            *_md_table(
                ["cell", *[f"{st} it." for st in v_steps]],
                [[c, *[_target_text(v, st) for st in v_steps]] for c, v in conv.items()],
            ),  # fmt: skip
        ]
    if repeats:
        lines += [
            "",
            "### Repeated runs (same name, config and seed in another folder; first folder kept)",
            "",
            *_md_table(
                ["run", "step", "FID kept (folder)", "FID of the repeat (folder)"],
                [
                    [
                        r["run"],
                        str(r["step"]),
                        f"{r['kept']['fid']:.1f} ({r['kept']['folder']})",
                        f"{r['repeat']['fid']:.1f}{' †' if r['repeat'].get('from_ntg') else ''} "
                        f"({r['repeat']['folder']})",
                    ]
                    for r in repeats
                ],
            ),  # fmt: skip
        ]
    instances: dict[str, list[Path]] = {}  # a run name's folders' runs, in folder order
    for f in a.sources:
        for r in sorted(Path(f).glob("runs/*/metrics.jsonl")):
            instances.setdefault(r.parent.name, []).append(r.parent)
    runs = sorted(longest_log(i) for i in instances.values())
    ratios_left_out: dict[str, str] = {}
    ratios = cluster_loss_ratios(runs, left_out=ratios_left_out) if runs else {}
    if ratios or ratios_left_out:
        lines += [
            "",
            "### Training loss per cluster against vanilla (same loss and seed)",
            "",
            "Ratio of the mean per-sample loss over the last five log windows, clean → noisy, "
            "per cluster where the run's clusters are vanilla's, else per fixed bin of t "
            "(`bin_losses`, equal bins of [0, T)); a weighted run (Min-SNR, P2) on the bins, "
            "with its unweighted loss per bin (`bin_mse`, + `bin_vb` with learned σ) where it "
            "logged it:",
            "",
            *_md_table(
                ["run", "vanilla", "last step", "over", "ratio (clean → noisy)"],
                [
                    [
                        r,
                        v["vanilla"],
                        str(v["steps"][-1]),
                        "clusters" if v["over"] == "clusters" else f"{len(v['last'])} bins of t",
                        ", ".join("—" if x is None else f"{x:.2f}" for x in v["last"]),
                    ]
                    for r, v in ratios.items()
                ],
            ),  # fmt: skip
            *(
                [
                    "",
                    "— : a bin that the run's or vanilla's log holds as the sample mean over an "
                    "uneven draw of t (logs written before the trainer weighted each sample by "
                    "1/(T·p(t)), under stratified sampling over clusters of other widths that "
                    "meet inside the bin): it leans to the oversampled timesteps, so it is left "
                    "out.",
                ]
                if any(v.get("uneven") for v in ratios.values())
                else []
            ),
            *(
                [
                    "",
                    "Left out (the cluster losses of other intervals than vanilla's are not "
                    "comparable cluster by cluster): "
                    + "; ".join(f"{r}: {why}" for r, why in sorted(ratios_left_out.items())),
                ]
                if ratios_left_out
                else []
            ),
        ]
    parts = loss_parts_across_runs(runs) if runs else {}
    if parts:

        def nums(xs: list[float | None] | None, fmt: str) -> str:
            return "—" if xs is None else ", ".join("—" if x is None else fmt.format(x) for x in xs)

        lines += [
            "",
            "### Loss parts per cluster (weighted or hybrid runs that logged them)",
            "",
            "Over the last five log windows, clean → noisy: the unweighted ε-MSE, the learned-σ "
            "term λ·T·L_t as a share of the logged cluster loss (hybrid), and the ε-MSE over that "
            "of vanilla of the same loss and seed where vanilla logged its parts over the same "
            "clusters, at the last log steps both share (the step in brackets where it is not "
            "the run's last) (* a weight on the whole hybrid loss, `diffusion.weight_vlb`: the "
            "share is λ·T·L_t / (ε-MSE + λ·T·L_t), since the logged parts are unweighted):",
            "",
            *_md_table(
                ["run", "last step", "ε-MSE", "λ·T·L_t share", "ε-MSE / vanilla's"],
                [
                    [
                        r,
                        str(v["last step"]),
                        nums(v["mse"], "{:.4f}"),
                        nums(v["vb_share"], "{:.2f}")
                        + ("*" if v["vb_share_of"] == "unweighted hybrid loss" else ""),
                        nums(v["mse_ratio"], "{:.2f}")
                        + (
                            f" (at {v['ratio_step']})"
                            if v["ratio_step"] not in (None, v["last step"])
                            else ""
                        ),
                    ]
                    for r, v in parts.items()
                ],
            ),
        ]
    # the early-training view pairs a log with the FID at the window's end (2500): of a name's
    # runs, the first that was evaluated there (a later rerun may evaluate every 5000 only)
    view = optimizer_view([_evaluated_at(i, 2500) for i in instances.values()]) if runs else {}
    if view:
        lines += _optimizer_lines(view)
    if ntg:
        lines += _ntg_lines(ntg)
    if o1:
        lines += _o1_lines(o1)
    cost = cost_across_runs(a.sources)
    if cost:
        lines += _cost_lines(cost)
    (out / "table.md").write_text("\n".join(lines) + "\n")
    (out / "table.json").write_text(
        json.dumps(
            {
                "steps": meta,
                "cells": table,
                "convergence": conv,
                "vanilla_contrasts": contrasts,
                "cluster_loss_ratio": ratios,
                "cluster_loss_ratio_left_out": ratios_left_out,
                "loss_parts": parts,
                "optimizer": view,
                "repeats": repeats,
                "ntg": ntg,
                "o1": o1,
                "cost": cost,
            },
            indent=1,
        )
        + "\n"
    )

    written = [out / "table.md", out / "table.json"]
    if rows:
        written.append(_plot_fid_curves(rows, out / "fid_curves.png"))
        if (step := _cells_step(rows)) is not None:
            written.append(_plot_cells(rows, step, out / "cells.png"))
    if ntg:
        written.append(_plot_ntg_across_seeds(ntg, out / "ntg.png"))
    if ratios:
        written.append(_plot_cluster_loss_ratios(ratios, out / "cluster_loss_ratio.png"))
    return written


def _card() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def environment(a: argparse.Namespace) -> list[Path]:
    """``results/environment.json``: what a session ran on — every visible card, the versions of
    the packages that train and evaluate, the commit and the source digest. Result files name
    the card themselves; this covers what has no result file of its own (NTG, O1, logs)."""
    import importlib.metadata as md
    import platform

    import torch

    def version(pkg: str) -> str | None:
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return None

    env = {
        "cards": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        or ["cpu"],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "packages": {p: version(p) for p in ("diffusers", "torchjd", "cvxpy", "clarabel")},
        "git_commit": _git_commit(),
        "source_digest": source_digest(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    path = Path(a.results) / "environment.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(env, indent=1) + "\n")
    return [path]


def _bundle_results(bundle: Path) -> Iterator[tuple[Path, bytes]]:
    """The non-empty files under a device bundle's ``results/``: (path below it, contents)."""
    import tarfile

    with tarfile.open(bundle) as tar:
        for m in tar.getmembers():
            rel = Path(m.name)
            if not m.isfile() or m.size == 0 or rel.parts[:1] != ("results",):
                continue
            rel = Path(*rel.parts[1:])
            if len(rel.parts) == 0 or ".." in rel.parts:
                continue
            src = tar.extractfile(m)
            assert src is not None
            yield rel, src.read()


def ingest(a: argparse.Namespace) -> list[Path]:
    """Unpack device bundles (``session_*.tar.gz``, a ``results/`` folder each) into ``--into``,
    in the order given: each bundle is a snapshot of the same session folder, so a later one's
    file replaces an earlier one's and files only an earlier one holds (work since deleted on
    the machine) are kept. ``--host-logs`` names the last bundles of other instances whose
    trainers shared this instance's cards under the same card names: their device logs
    (``repro_*.log``) go to ``host/<tag>_<log>``, so the cost table counts those trainers too
    (in the tenth session every instance's ``cuda:0`` was the host's card 0). Empty files (logs
    of work that never wrote) and the ``slice.finished`` marker are left out. Refuses a
    ``--into`` that already holds files: a committed slice folder is never overwritten. Returns
    the files written."""
    into = Path(a.into)
    if into.exists() and any(p.is_file() for p in into.rglob("*")):
        raise SystemExit(
            f"{into} already holds files: ingest into a new folder (a slice folder, once "
            "written, is a record)"
        )
    bundles = [Path(b) for b in a.bundles]
    host_bundles = [Path(b) for b in a.host_logs]
    for b in bundles + host_bundles:
        if not b.is_file():
            raise SystemExit(f"bundle {b} does not exist")
    written: dict[Path, None] = {}

    def write(target: Path, data: bytes) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        written[target] = None

    for b in bundles:
        for rel, data in _bundle_results(b):
            if rel.name != "slice.finished":
                write(into / rel, data)
    if not written:
        raise SystemExit(f"no result files in {', '.join(map(str, bundles))}")
    # Trainers of other instances that shared this one's cards: their device logs go to host/,
    # named by their instance's tag, where trainers_per_card counts them.
    for b in host_bundles:
        tag = b.name.removeprefix("session_").split("-", 1)[0] or "host"
        for rel, data in _bundle_results(b):
            if len(rel.parts) == 1 and re.fullmatch(r"repro_[\w.-]*\.log", rel.name):
                write(into / "host" / f"{tag}_{rel.name}", data)
    return sorted(written)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "action",
        choices=[
            "list",
            "train",
            "collect",
            "summary",
            "table",
            "environment",
            "ingest",
            "project",
        ],
    )
    ap.add_argument("slice", nargs="?", default="phase1", choices=["phase1", "phase2"])
    ap.add_argument("--loss", default="hybrid", choices=list(LOSSES), help="phase 2 loss")
    ap.add_argument("--only", default=None, help="comma-separated run names of the slice")
    ap.add_argument("--data", default=".data/cifar10-train-jpeg.tar.xz")
    ap.add_argument("--ref", default=".data/cifar10_train_ref.npz", help="antdiff stats output")
    ap.add_argument("--inception", default=None, help="FID network file (e.g. an fp16 copy)")
    ap.add_argument("--affinity", default=None, help="affinity matrix for the affinity cells")
    ap.add_argument("--steps", type=int, default=50_000)
    ap.add_argument("--eval-every", type=int, default=5000)
    ap.add_argument("--eval-n", type=int, default=5000)
    ap.add_argument("--root", default="runs/repro")
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "repro"))
    ap.add_argument("--devices", default="auto", help="e.g. cuda:0,cuda:1,cuda:2,cuda:3")
    ap.add_argument("--per-device", type=int, default=1, help="concurrent trainers per device")
    ap.add_argument("--time-limit", type=float, default=None, help="seconds, then checkpoint+stop")
    ap.add_argument(
        "--deadline-is-final",
        action="store_true",
        help="no later call continues these runs (the machine goes away with them): stop a "
        "trainer as soon as its next evaluation cannot end before --time-limit",
    )
    ap.add_argument(
        "--set",
        dest="overrides",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="extra config overrides for every run of the slice (e.g. train.compile=true); "
        "written into each run's config, so a resumed run must be given the same ones",
    )
    ap.add_argument("--smoke", action="store_true", help="digits + tiny UNet on CPU")
    ap.add_argument("--tail", type=int, default=5, help="log windows averaged by `summary`")
    ap.add_argument(
        "--from",
        dest="sources",
        nargs="+",
        default=[],
        metavar="DIR",
        help="`table`: folders of result JSONs (collect's output) to tabulate together",
    )
    ap.add_argument("--into", default=None, metavar="DIR", help="`ingest`: a new slice folder")
    ap.add_argument(
        "--bundles",
        nargs="+",
        default=[],
        metavar="TAR",
        help="`ingest`: device bundles (session_*.tar.gz) of one instance, oldest first",
    )
    ap.add_argument(
        "--host-logs",
        nargs="+",
        default=[],
        metavar="TAR",
        help="`ingest`: the last bundle of each other instance whose trainers shared these "
        "cards under the same names; their device logs go to host/ for the cost table",
    )
    ap.add_argument(
        "--deadline",
        default=None,
        help="`project`: the final deadline, epoch seconds ($DEV_DIR/deadline) or HH:MM:SS UTC",
    )
    ap.add_argument(
        "--logs",
        default=None,
        metavar="DIR",
        help="`project`: the folder of the supervisors' repro_*.log (groups the runs by supervisor)",
    )
    ap.add_argument(
        "--assume-eval",
        type=float,
        default=None,
        metavar="SECONDS",
        help="`project`: an evaluation's duration to assume where none is measured (or more)",
    )
    a = ap.parse_args()
    if a.action == "project":
        if not a.deadline:
            raise SystemExit("project needs --deadline (epoch seconds or HH:MM:SS UTC)")
        print_projection(project(a), a.deadline, a.root)
        return
    if a.action == "ingest":
        if not a.into or not a.bundles:
            raise SystemExit("ingest needs --into DIR and --bundles TAR [TAR ...]")
        files = ingest(a)
        print(f"wrote {len(files)} files into {a.into}")
        return
    if a.action == "list":
        for name, (preset, extra) in grid(a.slice, a.loss).items():
            print(f"{name:28s} configs/cifar10/{preset:28s} {' '.join(extra)}")
        return
    if a.action == "table" and not a.sources:
        raise SystemExit("table needs --from DIR [DIR ...] (folders of result JSONs)")
    writers = {
        "summary": summarize,
        "table": tabulate,
        "collect": collect,
        "environment": environment,
    }
    if a.action in writers:
        for p in writers[a.action](a):
            print(f"wrote {p}")
        return
    from antdiff.analysis.ntg_pipeline import run_trainers

    configs = write_configs(a)
    t0 = time.time()
    run_trainers(
        configs,
        devices=a.devices.split(","),
        per_device=a.per_device,
        time_limit=a.time_limit,
        deadline_is_final=a.deadline_is_final,
        progress=lambda m: print(f"[repro {time.strftime('%H:%M:%S')}] {m}", flush=True),
    )
    print(f"[repro] slice {a.slice}: {len(configs)} runs handled in {time.time() - t0:.0f} s")
    for p in collect(a):
        print(f"wrote {p}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
