"""The negative-transfer-gap study end to end: specialists, hybrid sampling, FID, the table.

1. **Intervals**: k equal slices (``uniform:5`` — the paper's [1,200] … [801,1000]), a
   ``clusters.json``, a run's clusters, or explicit ``first-last`` lists.
2. **Specialists** (:func:`train_specialists`): for each interval I, the joint run's resolved
   config is copied with ``diffusion.timestep_range: [first, last]`` — same architecture, data,
   objective, optimiser, batch and number of steps — and trained with ``antdiff train`` in its
   own run directory (several at once, one process per device; resumable, so a study can be
   spread over several short jobs). The specialist is a plain learner on I: ``ant.enabled`` is
   turned off (an MTL balancer over clusters outside I would have nothing to balance).
   Existing specialist runs can be given instead (:func:`find_specialists`).
3. **Measurement** (:func:`measure_ntg`): for every sampling seed, the joint model alone and,
   for every interval and specialist seed, the hybrid (the specialist does the reverse steps
   whose t lies in I) are sampled with the same sampler, steps and initial noise, and their FID
   against a reference is computed with :mod:`antdiff.evaluation`. Each FID is appended to
   ``OUT/measurements*.jsonl`` as soon as it is known, so an interrupted study resumes where it
   stopped; ``shard=(i, n)`` splits the measurements over n processes/GPUs. A hybrid is the
   joint model above its interval, so by default the hybrids of one sampling seed branch off
   the joint trajectory instead of repeating it (exactly the same images, about half the
   reverse steps for 5 equal intervals).
4. **Table**: :func:`antdiff.analysis.ntg.compute_ntg` pairs each hybrid FID with the joint FID
   of the same sampling seed and reports the mean ± std per interval, n and the FID floor.

This module is analysis orchestration: it imports the trainer, the data and evaluation packages
only inside the functions that need them.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..clustering import TaskClusters
from .hybrid import TimestepSwitchingDenoiser
from .ntg import FIDMeasurement, NTGTable, compute_ntg

__all__ = [
    "NTGSetup",
    "child_visible_devices",
    "find_specialists",
    "load_run_config",
    "measure_ntg",
    "parse_intervals",
    "run_finished",
    "run_trainers",
    "specialist_config",
    "specialist_run_dir",
    "train_specialists",
    "write_specialist_configs",
]

Interval = tuple[int, int]


# ============================================================================ intervals
def load_run_config(run: str | Path) -> dict[str, Any]:
    """The resolved ``config.yaml`` of a run directory, as a nested dict."""
    import yaml

    p = Path(run)
    f = p / "config.yaml" if p.is_dir() else p
    if not f.is_file():
        raise ValueError(f"no config.yaml in {str(p)!r}: is it an antdiff run directory?")
    cfg = yaml.safe_load(f.read_text())
    if not isinstance(cfg, dict):
        raise ValueError(f"config {str(f)!r} is not a YAML mapping")
    return cfg


def parse_intervals(spec: str, num_timesteps: int) -> list[Interval]:
    """``uniform:K`` | a ``clusters.json`` | a run directory (its clusters) |
    ``first-last,first-last,...`` (0-indexed, inclusive; need not cover every t)."""
    s = str(spec).strip()
    if s.startswith("uniform:"):
        try:
            k = int(s.split(":", 1)[1])
        except ValueError:
            raise ValueError(
                f"bad interval spec {spec!r}; write uniform:K, e.g. uniform:5"
            ) from None
        return list(TaskClusters.uniform(num_timesteps, k).intervals)
    p = Path(s)
    if p.is_dir():
        p = p / "clusters.json"
    if p.suffix == ".json" or p.exists():
        if not p.is_file():
            raise ValueError(f"interval file {str(p)!r} does not exist")
        cl = TaskClusters.from_json(p)
        if cl.num_timesteps != num_timesteps:
            raise ValueError(
                f"file {str(p)!r} has clusters for T={cl.num_timesteps}, the joint model has T={num_timesteps}"
            )
        return list(cl.intervals)
    out: list[Interval] = []
    for part in s.split(","):
        try:
            a, b = (int(v) for v in part.strip().split("-"))
        except ValueError:
            raise ValueError(
                f"bad interval {part!r} in {spec!r}; use uniform:K, a clusters.json, a run "
                "directory, or first-last pairs such as 0-199,800-999 (0-indexed, inclusive)"
            ) from None
        if not 0 <= a <= b < num_timesteps:
            raise ValueError(f"interval {a}-{b} is not inside [0, {num_timesteps - 1}]")
        out.append((a, b))
    out.sort()
    for (a, b), (c, d) in zip(out, out[1:]):
        if c <= b:
            raise ValueError(f"intervals {a}-{b} and {c}-{d} overlap")
    return out


# ============================================================================ specialists
def specialist_run_dir(root: str | Path, interval: Interval, seed: int) -> Path:
    return Path(root) / f"specialist_{interval[0]:04d}-{interval[1]:04d}_seed{seed}"


def specialist_config(
    joint_config: Mapping[str, Any],
    interval: Interval,
    run_dir: str | Path,
    seed: int | None = None,
    steps: int | None = None,
) -> dict[str, Any]:
    """The joint run's resolved config, restricted to ``interval``: same model, data, objective,
    optimiser, batch and (unless ``steps``) number of steps; no ANT balancer; no periodic FID."""
    cfg = copy.deepcopy(dict(joint_config))
    for section in ("run", "diffusion", "ant", "train"):
        cfg.setdefault(section, {})
    T = int(cfg["diffusion"].get("num_timesteps", 1000))
    a, b = int(interval[0]), int(interval[1])
    if not 0 <= a <= b < T:
        raise ValueError(f"interval {interval} is not inside [0, {T - 1}]")
    if cfg["diffusion"].get("timestep_range"):
        raise ValueError(
            "the joint run is itself restricted to timesteps "
            f"{cfg['diffusion']['timestep_range']}; NTG needs a joint model trained on every t"
        )
    cfg["diffusion"]["timestep_range"] = [a, b]
    cfg["run"]["dir"] = str(run_dir)
    if seed is not None:
        cfg["run"]["seed"] = int(seed)
    cfg["ant"]["enabled"] = False
    cfg["train"]["eval_every"] = 0
    if steps is not None:
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        cfg["train"]["steps"] = int(steps)
    return cfg


def _latest_step(run: Path) -> int:
    f = run / "checkpoints" / "latest.txt"
    if not f.is_file():
        return 0
    name = f.read_text().strip()
    try:
        return int(name.removeprefix("step_").removesuffix(".pt"))
    except ValueError:
        return 0


#: The CPU-thread settings that a trainer's numerical libraries (OpenMP, OpenBLAS, MKL) read at
#: start-up.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _visible_entries(visible: str | None) -> list[str]:
    """The entries of a ``CUDA_VISIBLE_DEVICES`` value (indices or UUIDs); [] when unset or empty."""
    return [e.strip() for e in (visible or "").split(",") if e.strip()]


def host_card_share(visible: str | None = None, host_cards: int | None = None) -> float:
    """The share of this host's GPUs that this process sees: ``len(CUDA_VISIBLE_DEVICES) /
    host_cards`` (default: the environment's variable and the cards the NVIDIA driver lists in
    ``/proc/driver/nvidia/gpus``), 1 when either is unknown.

    Several independent launchers on one host (``device_session.sh`` instances, each with its own
    cards) then split the cores by cards instead of each claiming all of them."""
    if visible is None:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if host_cards is None:
        try:
            host_cards = len(os.listdir("/proc/driver/nvidia/gpus"))
        except OSError:  # no NVIDIA driver, or not Linux
            host_cards = 0
    seen = len(_visible_entries(visible))
    return min(1.0, seen / host_cards) if seen and host_cards > 0 else 1.0


def trainer_threads(
    concurrent: int, cpus: int | None = None, card_share: float | None = None
) -> int:
    """CPU threads for each of ``concurrent`` trainers on one host: an equal share of the cores
    that go with this process's cards (``card_share`` of them, :func:`host_card_share`).

    Without a cap every trainer's BLAS starts one thread per core; eight trainers on a 64-core
    host then run 512 spinning threads, and the CPU side of an evaluation (covariances and
    eigendecompositions of the FID) slows down many times over."""
    if cpus is None:
        try:
            cpus = len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            cpus = os.cpu_count() or 1
    if card_share is None:
        card_share = host_card_share()
    return max(1, int(cpus * card_share) // max(1, concurrent))


def child_visible_devices(device: str, visible: str | None = None) -> str:
    """The ``CUDA_VISIBLE_DEVICES`` of a child process that is to run on this process's ``device``
    (``"cuda:i"``): entry ``i`` of this process's own ``CUDA_VISIBLE_DEVICES`` (``visible``,
    default: the environment's), or ``"i"`` when that is unset.

    ``cuda:i`` numbers the cards this process sees. Setting the child's variable to ``i`` itself
    would, under a parent started with ``CUDA_VISIBLE_DEVICES=2,3``, put its ``cuda:0`` trainers
    on physical card 0: in the tenth session three instances of ``device_session.sh`` ran every
    first-card trainer on card 0 while cards 2 and 3 stood idle."""
    head, sep, index = device.partition(":")
    if head != "cuda" or not sep or not index.isdigit():
        raise ValueError(f"device {device!r}: expected cuda:<index>, e.g. cuda:0")
    if visible is None:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    entries = _visible_entries(visible)
    if not entries:
        return index
    i = int(index)
    if i >= len(entries):
        raise ValueError(
            f"device {device} is not among the {len(entries)} card(s) this process sees "
            f"(CUDA_VISIBLE_DEVICES={visible}): use cuda:0 to cuda:{len(entries) - 1}"
        )
    return entries[i]


def _default_launcher(
    config_path: Path, device: str, log: Path, *, threads: int | None = None
) -> subprocess.Popen:
    env = dict(os.environ)
    if threads is not None:
        for var in THREAD_VARIABLES:
            env.setdefault(var, str(threads))  # the caller's own setting wins
    cmd = [sys.executable, "-m", "antdiff.cli", "train", str(config_path), "--resume", "auto"]
    if device.startswith("cuda:"):
        env["CUDA_VISIBLE_DEVICES"] = child_visible_devices(device)
        cmd += ["--set", "train.device=cuda"]
    elif device != "auto":
        cmd += ["--set", f"train.device={device}"]
    f = log.open("ab")
    # A new process group, so a deadline can stop the trainer (SIGTERM: it checkpoints and
    # exits) without touching this process.
    return subprocess.Popen(
        cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )


def run_finished(run: str | Path, steps: int) -> bool:
    """True when the run's latest checkpoint is at ``steps`` or later and owes no evaluation
    (a stop request during the final evaluation leaves it to the next resume)."""
    run = Path(run)
    if not _latest_step(run) >= steps > 0:
        return False
    from ..training.checkpoint import pending_evaluation

    path = run / "checkpoints" / (run / "checkpoints" / "latest.txt").read_text().strip()
    # latest.txt naming a file that is not there (a stand-in launcher): judged by its step alone
    return not path.is_file() or pending_evaluation(path) is None


@dataclass(frozen=True)
class NextResult:
    """When a running trainer's next result is due, projected from its ``metrics.jsonl``.

    ``step`` is its next evaluation (the first multiple of ``train.eval_every`` past the last
    evaluated step), or ``train.steps`` when no evaluation remains; ``done_at`` the wall time
    (``time.time()``) at which it would be done: the time of the log's last line (the file's
    modification time) + the steps still to train at the fastest steady window's rate of the
    current trainer process + the last evaluation's duration (0 before the first;
    :func:`run_trainers` then takes another run's). The fastest window, not the last, because a
    stop cannot be undone and early windows are slowed by other trainers compiling on the host
    (slice 11 lost a run that way at step 404). ``from_step``, ``rate`` (it/s) and
    ``eval_seconds`` are the inputs, for the log line that reports a decision made from it;
    ``measured_eval_seconds`` is the run's own last evaluation's duration (None before its
    first)."""

    step: int
    done_at: float
    is_evaluation: bool
    from_step: int = 0
    rate: float = 0.0
    eval_seconds: float = 0.0
    measured_eval_seconds: float | None = None


def _same_process(previous: dict[str, Any] | None, row: dict[str, Any]) -> bool:
    """Whether training line ``row`` continues the process that wrote ``previous`` (see
    :func:`next_result`); a line without ``window`` and ``time`` cannot tell and counts."""
    window, t = row.get("window"), row.get("time")
    if window is None and t is None:
        return True
    if previous is None:
        return False
    if window is not None and int(row["step"]) - int(window) != int(previous.get("step", -1)):
        return False
    prev_t = previous.get("time")
    if t is None or prev_t is None:
        return True
    if window is None:
        return float(t) > float(prev_t)  # a restarted clock
    # within a process the time between two lines covers the window (and any evaluation)
    return int(window) / float(row["it_per_s"]) <= 1.05 * (float(t) - float(prev_t)) + 1.0


def next_result(run: str | Path, *, eval_every: int, steps: int) -> NextResult | None:
    """The projected :class:`NextResult` of ``run``; None while its log has no training line
    with a steady rate (the trainer is still starting or compiling) or when nothing is left to do.

    A trainer process's first logged window also holds its start: data loading and, with
    ``train.compile``, ~100 s of compilation, so its ``it_per_s`` is 10-40x below the steady
    rate (a resumed run logs 0.47 it/s where it trains at 16). That window is never the rate:
    a training line starts a new process when it is the log's first, when its window does not
    begin where the previous training line ended (``step - window``), or when the window's own
    duration (``window / it_per_s``) is longer than the time since that line (``time`` counts
    seconds since the process started: a restarted clock, or one whose first window also holds
    the start-up); the rate waits for that process's second line. Lines without ``window`` and
    ``time`` are taken as they are."""
    log = Path(run) / "metrics.jsonl"
    try:
        text = log.read_text()
        last_line_at = log.stat().st_mtime
    except OSError:
        return None
    step, rate, evaluated, eval_seconds, measured = 0, None, 0, 0.0, None
    last: dict[str, Any] | None = None  # the previous training line
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:  # a line the trainer is still writing
            continue
        step = max(step, int(row.get("step", 0)))
        if "eval" in row:
            evaluated = max(evaluated, int(row["step"]))
            eval_seconds = float(sum((row.get("eval_seconds") or {}).values()))
            measured = eval_seconds if row.get("eval_seconds") else None
        elif row.get("it_per_s"):
            if not _same_process(last, row):
                rate = None  # a new process: its first window holds the start-up
            elif rate is None or float(row["it_per_s"]) > rate:
                rate = float(row["it_per_s"])
            last = row
    if rate is None:
        return None
    target = (evaluated // eval_every + 1) * eval_every if eval_every > 0 else steps + 1
    is_evaluation = target <= steps
    if not is_evaluation:
        target = steps
        if step >= steps:
            return None
    to_train = max(0, target - step)
    done_at = last_line_at + to_train / rate + (eval_seconds if is_evaluation else 0.0)
    return NextResult(
        step=target,
        done_at=done_at,
        is_evaluation=is_evaluation,
        from_step=step,
        rate=rate,
        eval_seconds=eval_seconds if is_evaluation else 0.0,
        measured_eval_seconds=measured,
    )


def with_borrowed_evaluation(nxt: NextResult, seen_eval: float) -> NextResult:
    """``nxt`` with ``seen_eval`` seconds added for an evaluation its run has not measured yet.

    Before a run's first evaluation :func:`next_result` counts it as 0 s; :func:`run_trainers`
    charges it the longest evaluation any of its runs has measured while it still had work left
    (a run's final evaluation never counts: the run is done once it is logged) instead (slice 9:
    a lone 0-s guess let a run start an evaluation it could not end). Unchanged when the next
    result is no evaluation, when the run measured its own, or when nothing has been measured
    (0)."""
    if nxt.is_evaluation and nxt.measured_eval_seconds is None and seen_eval:
        return replace(nxt, done_at=nxt.done_at + seen_eval, eval_seconds=seen_eval)
    return nxt


def run_trainers(
    configs: Sequence[str | Path],
    *,
    devices: Sequence[str] = ("auto",),
    per_device: int = 1,
    time_limit: float | None = None,
    launcher: Callable[[Path, str, Path], Any] | None = None,
    progress: Callable[[str], None] | None = None,
    deadline_is_final: bool = False,
) -> list[Path]:
    """Train (or resume, ``--resume auto``) every config whose run is not finished yet, up to
    ``len(devices) × per_device`` at once, each new run on the least busy device; a run's log
    is ``RUN/train.log``. Each trainer gets an equal share of the host's CPU threads
    (:func:`trainer_threads`, through ``OMP/OPENBLAS/MKL_NUM_THREADS`` unless already set).
    With ``time_limit`` (seconds) the trainers still running are sent SIGTERM when it expires
    (they write a checkpoint and exit 0); call again to continue. ``deadline_is_final``: no
    later call will continue these runs (a machine that goes away with its run directories), so
    a trainer whose next result — its next evaluation, or its last step when none remains
    (:func:`next_result`) — cannot be done before the deadline is stopped at once instead of
    training on for nothing; its card is free for whatever comes next.
    Returns the run directories; raises if a trainer fails, quoting the end of its log."""
    import yaml

    if per_device < 1:
        raise ValueError(f"per_device must be >= 1, got {per_device}")
    devs = list(dict.fromkeys(devices)) or ["auto"]
    say = progress or (lambda _m: None)
    launch = launcher or functools.partial(
        _default_launcher, threads=trainer_threads(len(devs) * per_device)
    )
    todo: list[tuple[Path, Path]] = []
    schedule: dict[Path, tuple[int, int]] = {}  # run -> (train.eval_every, train.steps)
    runs: list[Path] = []
    for c in configs:
        cfg = yaml.safe_load(Path(c).read_text()) or {}
        run_dir = (cfg.get("run") or {}).get("dir")
        if not run_dir:
            raise ValueError(
                f"config {str(c)!r} has no run.dir: every trainer needs its own run directory"
            )
        run = Path(run_dir)
        runs.append(run)
        steps = int((cfg.get("train") or {}).get("steps", 0))
        schedule[run] = (int((cfg.get("train") or {}).get("eval_every") or 0), steps)
        if run_finished(run, steps):
            say(f"{run.name}: done ({steps} steps)")
            continue
        run.mkdir(parents=True, exist_ok=True)
        todo.append((Path(c), run))
    running: list[tuple[Any, str, Path]] = []
    deadline = None if time_limit is None else time.monotonic() + time_limit
    failures: list[str] = []
    stopped = False
    early: set[Path] = set()  # runs stopped because their next result could not be done in time
    next_check = 0.0
    # the longest evaluation measured by any of these runs: a run's first evaluation is projected
    # to take as long (slice 9: a lone 0-s guess let a run start an evaluation it could not end)
    seen_eval = 0.0
    while todo or running:
        while todo and len(running) < len(devs) * per_device and not stopped:
            load = {d: sum(r[1] == d for r in running) for d in devs}
            dev = min(devs, key=lambda d: load[d])
            cfg_path, run = todo.pop(0)
            say(f"{run.name}: training on {dev} (from step {_latest_step(run)})")
            running.append((launch(cfg_path, dev, run / "train.log"), dev, run))
        if not running:
            break
        time.sleep(0.5)
        if deadline is not None and time.monotonic() > deadline and not stopped:
            stopped = True
            todo = []
            say("time limit reached: stopping the trainers (they checkpoint and exit)")
            for proc, _, _ in running:
                if proc.poll() is None:
                    # The trainer alone: it stops its DataLoader workers after checkpointing.
                    proc.send_signal(signal.SIGTERM)
        if deadline_is_final and deadline is not None and not stopped:
            now = time.monotonic()
            if now >= next_check:
                next_check = now + 10.0
                wall_deadline = time.time() + (deadline - now)
                projected = {
                    run: next_result(run, eval_every=schedule[run][0], steps=schedule[run][1])
                    for _, _, run in running
                }
                seen_eval = max(
                    [seen_eval]
                    + [n.measured_eval_seconds or 0.0 for n in projected.values() if n is not None]
                )
                for proc, _, run in running:
                    nxt = projected[run]
                    if run in early or proc.poll() is not None or nxt is None:
                        continue
                    nxt = with_borrowed_evaluation(nxt, seen_eval)
                    if nxt.done_at > wall_deadline:
                        early.add(run)
                        what = "evaluation" if nxt.is_evaluation else "last step"
                        say(
                            f"{run.name}: its next {what} (step {nxt.step}) would be done "
                            f"~{nxt.done_at - wall_deadline:.0f} s after the deadline (from "
                            f"step {nxt.from_step} at {nxt.rate:.2f} it/s, evaluation "
                            f"{nxt.eval_seconds:.0f} s): stopping it"
                        )
                        proc.send_signal(signal.SIGTERM)
        still = []
        for proc, dev, run in running:
            rc = proc.poll()
            if rc is None:
                still.append((proc, dev, run))
            elif rc != 0 and not stopped and run not in early:
                log = run / "train.log"
                tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
                failures.append(f"{run} failed (exit {rc}); end of {log}:\n{tail}")
            else:
                how = "stopped" if stopped or run in early else "finished"
                say(f"{run.name}: {how} at step {_latest_step(run)}")
        running = still
    if failures:
        raise RuntimeError("\n\n".join(failures))
    return runs


def write_specialist_configs(
    joint_config: Mapping[str, Any],
    intervals: Sequence[Interval],
    root: str | Path,
    seeds: Sequence[int],
    steps: int | None = None,
) -> dict[Interval, list[tuple[int, Path]]]:
    """Write ``root/specialist_FFFF-LLLL_seedS/specialist.yaml`` for every interval and seed;
    returns ``{interval: [(seed, config path), ...]}``."""
    import yaml

    out: dict[Interval, list[tuple[int, Path]]] = {}
    for iv in intervals:
        iv = (int(iv[0]), int(iv[1]))
        out[iv] = []
        for s in seeds:
            run = specialist_run_dir(root, iv, s)
            cfg = specialist_config(joint_config, iv, run, seed=s, steps=steps)
            run.mkdir(parents=True, exist_ok=True)
            path = run / "specialist.yaml"
            path.write_text(yaml.safe_dump(cfg, sort_keys=False))
            out[iv].append((int(s), path))
    return out


def train_specialists(
    joint_run: str | Path,
    intervals: Sequence[Interval],
    root: str | Path,
    *,
    seeds: Sequence[int] | None = None,
    devices: Sequence[str] = ("auto",),
    per_device: int = 1,
    steps: int | None = None,
    time_limit: float | None = None,
    launcher: Callable[[Path, str, Path], Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[Interval, list[tuple[int, Path]]]:
    """Train (or continue) one specialist per interval and seed from the joint run's resolved
    config; returns ``{interval: [(seed, run_dir), ...]}`` (see :func:`run_trainers` for
    devices, time limits and failures). Finished runs are skipped."""
    joint_cfg = load_run_config(joint_run)
    default_seed = int((joint_cfg.get("run") or {}).get("seed", 0))
    seeds = [default_seed] if not seeds else [int(s) for s in seeds]
    Path(root).mkdir(parents=True, exist_ok=True)
    cfgs = write_specialist_configs(joint_cfg, intervals, root, seeds, steps)
    run_trainers(
        [p for v in cfgs.values() for _, p in v],
        devices=devices,
        per_device=per_device,
        time_limit=time_limit,
        launcher=launcher,
        progress=progress,
    )
    return {iv: [(s, p.parent) for s, p in v] for iv, v in cfgs.items()}


def find_specialists(
    runs: Sequence[str | Path], intervals: Sequence[Interval]
) -> dict[Interval, list[tuple[int, Path]]]:
    """Match existing specialist runs to intervals by their ``diffusion.timestep_range``."""
    wanted = {tuple(iv) for iv in intervals}
    out: dict[Interval, list[tuple[int, Path]]] = {tuple(iv): [] for iv in intervals}  # type: ignore[misc]
    for r in runs:
        cfg = load_run_config(r)
        tr = (cfg.get("diffusion") or {}).get("timestep_range")
        if not tr:
            raise ValueError(
                f"run {str(r)!r} is not a specialist: its config has no diffusion.timestep_range"
            )
        iv = (int(tr[0]), int(tr[1]))
        if iv not in wanted:
            raise ValueError(
                f"specialist {str(r)!r} covers {list(iv)} but the intervals are {sorted(wanted)}"
            )
        out[iv].append((int((cfg.get("run") or {}).get("seed", 0)), Path(r)))
    for iv, lst in out.items():
        seeds = [s for s, _ in lst]
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"two specialists for {list(iv)} have the same seed {seeds}")
    return out


# ============================================================================ measurement
@dataclass
class NTGSetup:
    """Everything that fixes one NTG measurement (the same for the joint model and the hybrids)."""

    joint: Path
    specialists: dict[Interval, list[tuple[int, Path]]]
    ref: Path
    n: int = 10_000
    sampling_seeds: list[int] = field(default_factory=lambda: [0])
    sampler: str = "ddim"
    steps: int = 100
    batch_size: int = 500
    device: str = "auto"
    use_ema: bool = True
    autocast: str | None = None  # "bf16" | "fp16" | None
    inception: str | None = None

    def jobs(self) -> list[tuple[str, Interval | None, int | None, Path | None, int]]:
        """``(key, interval, specialist seed, specialist run, sampling seed)`` of every FID."""
        out: list[tuple[str, Interval | None, int | None, Path | None, int]] = []
        for s in self.sampling_seeds:
            out.append((f"joint/s{s}", None, None, None, s))
            for iv in sorted(self.specialists):
                for r, run in self.specialists[iv]:
                    out.append((f"{iv[0]}-{iv[1]}/r{r}/s{s}", iv, r, run, s))
        return out

    def describe(self) -> dict[str, Any]:
        return {
            "joint": str(self.joint),
            "specialists": {
                f"{a}-{b}": [[s, str(p)] for s, p in v] for (a, b), v in self.specialists.items()
            },
            "ref": str(self.ref),
            "n": self.n,
            "sampling_seeds": self.sampling_seeds,
            "sampler": self.sampler,
            "steps": self.steps,
            "batch_size": self.batch_size,
            "use_ema": self.use_ema,
            "autocast": self.autocast,
        }


def _provenance(setup: NTGSetup, measured: Sequence[FIDMeasurement]) -> dict[str, Any]:
    """The setup plus what the measurements recorded: the cards, the training step of the
    joint model and of each specialist, and the antdiff and torch versions."""
    import torch

    from .. import __version__

    def seen(key: str, ms: Sequence[FIDMeasurement]) -> list[Any]:
        return sorted({m.extra[key] for m in ms if m.extra.get(key) is not None})

    return {
        **setup.describe(),
        "cards": seen("card", measured),
        "joint_steps": seen("joint_step", measured),
        "specialist_steps": {
            f"{a}-{b}": seen("specialist_step", [m for m in measured if m.interval == (a, b)])
            for a, b in sorted(setup.specialists)
        },
        "antdiff_version": __version__,
        "torch_version": torch.__version__,
    }


def _read_measurements(out: Path) -> dict[str, FIDMeasurement]:
    got: dict[str, FIDMeasurement] = {}
    for f in sorted(out.glob("measurements*.jsonl")):
        for line in f.read_text().splitlines():
            try:
                rec = json.loads(line)
                got[rec["key"]] = FIDMeasurement.from_dict(rec["measurement"])
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by an interruption: measured again
    return got


def _resolve_device(device: str) -> str:
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _load_for_inference(run: Path, use_ema: bool, device: str) -> Any:
    from ..training.inference import load_for_inference

    return load_for_inference(run, use_ema=use_ema, device=device)


def assign_shards(
    jobs: Sequence[tuple[str, Interval | None, int | None, Path | None, int]], n_shard: int
) -> list[int]:
    """The shard of each job of :meth:`NTGSetup.jobs`: contiguous runs of the job list with the
    largest sampling cost as small as possible, when hybrids share the joint trajectory.

    Cost in trajectories: a job group of one sampling seed costs the longest joint prefix it
    needs (1 with the joint model itself, 1 − (last+1)/T for a hybrid that branches off below
    its interval's top, T taken as the largest interval end + 1) plus each hybrid's own
    (last+1)/T. Every shard computes the same assignment from the job list alone.
    """
    if n_shard < 1:
        raise ValueError(f"n_shard must be >= 1, got {n_shard}")
    J = len(jobs)
    if J == 0:
        return []
    T = max((iv[1] + 1 for _, iv, *_ in jobs if iv is not None), default=1)

    def cost(lo: int, hi: int) -> float:  # jobs[lo:hi]
        prefix: dict[int, float] = {}
        own = 0.0
        for _, iv, _, _, s in jobs[lo:hi]:
            rest = 0.0 if iv is None else (iv[1] + 1) / T
            prefix[s] = max(prefix.get(s, 0.0), 1.0 - rest)
            own += rest
        return own + sum(prefix.values())

    parts = min(n_shard, J)
    inf = float("inf")
    # best[p][j]: the smallest largest cost of jobs[:j] in p contiguous non-empty parts
    best = [[inf] * (J + 1) for _ in range(parts + 1)]
    cut = [[0] * (J + 1) for _ in range(parts + 1)]
    best[0][0] = 0.0
    for p in range(1, parts + 1):
        for j in range(p, J + 1):
            for i in range(p - 1, j):
                v = max(best[p - 1][i], cost(i, j))
                if v < best[p][j] - 1e-12:
                    best[p][j], cut[p][j] = v, i
    shard = [0] * J
    j = J
    for p in range(parts, 0, -1):
        i = cut[p][j]
        for k in range(i, j):
            shard[k] = p - 1
        j = i
    return shard


def measure_ntg(
    setup: NTGSetup,
    out_dir: str | Path,
    *,
    shard: tuple[int, int] = (0, 1),
    progress: Callable[[str], None] | None = None,
    sample_fn: Callable[..., np.ndarray] | None = None,
    fid_fn: Callable[[np.ndarray], dict[str, Any]] | None = None,
    load_fn: Callable[[Path, bool, str], Any] | None = None,
    share_trajectory: bool = True,
) -> NTGTable | None:
    """Measure every FID of ``setup`` not yet in ``out_dir``, then build the table.

    Returns the :class:`NTGTable` (also written to ``out_dir/ntg.json``) once every measurement
    of every shard exists, else ``None`` (other shards are still working). ``sample_fn``,
    ``fid_fn`` and ``load_fn`` default to :func:`antdiff.training.sampling.sample_images`, an
    :class:`antdiff.evaluation.Evaluator` on ``setup.ref`` and the trainer's
    ``load_for_inference``; they are parameters so that the orchestration can be tested.

    ``share_trajectory`` (with the default sampler): the joint model and the hybrids of one
    sampling seed are drawn together by
    :func:`antdiff.training.sampling.sample_images_branching` — the same images as one run each,
    with the joint model's steps above each interval computed once. It holds the shard's
    specialists of that seed in memory at once (one at a time otherwise). Shards get contiguous
    parts of the job list balanced for this cost (:func:`assign_shards`).
    """
    i_shard, n_shard = shard
    if not 0 <= i_shard < n_shard:
        raise ValueError(f"shard must be i/n with 0 <= i < n, got {i_shard}/{n_shard}")
    if setup.n < 2:
        raise ValueError(f"n must be >= 2, got {setup.n}")
    if not setup.sampling_seeds:
        raise ValueError("give at least one sampling seed")
    missing_iv = [iv for iv, v in setup.specialists.items() if not v]
    if missing_iv:
        raise ValueError(f"no specialist for intervals {missing_iv}: train them or pass their runs")
    say = progress or (lambda _m: None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "setup.json").write_text(json.dumps(setup.describe(), indent=2) + "\n")
    device = _resolve_device(setup.device)
    load = load_fn or _load_for_inference
    jobs = setup.jobs()
    done = _read_measurements(out)
    owner = assign_shards(jobs, n_shard)
    mine = [j for k, j in enumerate(jobs) if owner[k] == i_shard and j[0] not in done]
    if mine:
        import torch

        joint = load(setup.joint, setup.use_ema, device)
        T = joint.objective.schedule.num_timesteps
        if sample_fn is None:
            from ..training.sampling import make_sampling_scheduler

            visited = [
                int(t)
                for t in make_sampling_scheduler(
                    joint.objective, setup.sampler, setup.steps
                ).timesteps
            ]
        else:
            visited = None
        if fid_fn is None:
            from ..evaluation import Evaluator

            fid_fn = Evaluator(
                setup.ref, n=setup.n, metrics=("fid",), device=device, inception=setup.inception
            )
        model = joint.model
        shape = (int(model.in_channels), int(model.sample_size), int(model.sample_size))
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, None: None}[setup.autocast]
        log_path = out / f"measurements_{i_shard}of{n_shard}.jsonl"
        shared = share_trajectory and sample_fn is None
        if sample_fn is None:
            from ..training.sampling import sample_images, sample_images_branching

            sample_fn = sample_images
        cache: dict[Path, Any] = {}

        def hybrid(iv: Interval, run: Path, keep: bool) -> Any:
            """The joint model with ``run``'s specialist on ``iv`` (``keep``: hold all loaded)."""
            if run not in cache:
                if not keep:
                    cache.clear()  # one specialist in memory at a time
                spec = load(run, setup.use_ema, device)
                if spec.objective.schedule.num_timesteps != T:
                    raise ValueError(
                        f"specialist {run} has T={spec.objective.schedule.num_timesteps}, the joint model T={T}"
                    )
                cache[run] = spec
            fn = TimestepSwitchingDenoiser(joint.model, {iv: cache[run].model}, num_timesteps=T)
            if visited is not None and fn.steps_in(visited) == [0]:
                raise ValueError(
                    f"the {setup.sampler} sampler with {setup.steps} steps never visits interval "
                    f"{list(iv)}; use more sampling steps"
                )
            return fn

        labels = None
        if getattr(model, "class_conditional", False):
            # Balanced labels (i mod C), the same for the joint model and every hybrid.
            labels = np.arange(setup.n) % int(model.num_classes)
        guidance = (
            float((joint.config.get("sample") or {}).get("guidance", 1.0))
            if isinstance(joint.config, dict)
            else 1.0
        )
        sample_kw: dict[str, Any] = dict(
            image_shape=shape,
            sampler=setup.sampler,
            steps=setup.steps,
            batch_size=setup.batch_size,
            class_labels=labels,
            guidance=guidance if labels is not None else 1.0,
            null_class_label=getattr(model, "null_class", None),
            codec=joint.codec,
            device=device,
            autocast_dtype=dtype,
        )

        card = torch.cuda.get_device_name(device) if device.startswith("cuda") else device

        def record(job: tuple[Any, ...], images: np.ndarray, seconds: float, **extra: Any) -> None:
            key, iv, r, run, s = job
            t0 = time.perf_counter()
            res = fid_fn(images)
            # Provenance: which card measured it, and the training step of each model it used
            # (the table's "same budget" claim is checked from these, not assumed).
            steps = {"joint_step": getattr(joint, "step", None)}
            if run is not None and run in cache:
                steps["specialist_step"] = getattr(cache[run], "step", None)
            m = FIDMeasurement(
                fid=float(res["fid"]),
                sampling_seed=s,
                interval=iv,
                specialist_seed=r,
                n=int(res.get("n_gen", res.get("n", setup.n))),
                floor=None if res.get("floor") is None else float(res["floor"]),
                extra={
                    "seconds": round(seconds + time.perf_counter() - t0, 2),
                    "run": None if run is None else str(run),
                    "card": card,
                    **steps,
                    **extra,
                },
            )
            with log_path.open("a") as f:
                f.write(json.dumps({"key": key, "measurement": m.to_dict()}) + "\n")
            say(f"{key}: FID {m.fid:.3f} ({m.extra['seconds']} s)")

        if shared:
            for s in dict.fromkeys(job[4] for job in mine):  # sampling seeds, in order
                group = [job for job in mine if job[4] == s]
                base = [job for job in group if job[1] is None]
                hybrids = [job for job in group if job[1] is not None]
                t0 = time.perf_counter()
                branches = [(iv[1], hybrid(iv, run, keep=True)) for _, iv, _, run, _ in hybrids]
                images = sample_images_branching(
                    joint.model, branches, joint.objective, setup.n, include_base=bool(base),
                    seed=s, **sample_kw,
                )  # fmt: skip
                seconds = time.perf_counter() - t0
                say(
                    f"sampling seed {s}: {len(images)} image sets, shared trajectory, {seconds:.1f} s"
                )
                for job, im in zip(base + hybrids, images):
                    record(
                        job, im, seconds / len(images), shared_sampling_seconds=round(seconds, 2)
                    )
                cache.clear()
        else:
            for job in mine:
                _, iv, _, run, s = job
                t0 = time.perf_counter()
                fn: Any = joint.model if iv is None else hybrid(iv, run, keep=False)
                images = sample_fn(fn, joint.objective, setup.n, seed=s, **sample_kw)
                record(job, images, time.perf_counter() - t0)
        del cache
    done = _read_measurements(out)
    left = [j[0] for j in jobs if j[0] not in done]
    if left:
        say(f"{len(left)} measurement(s) still missing (other shards): {left[:4]}")
        return None
    measured = [done[j[0]] for j in jobs]
    table = compute_ntg(measured, sorted(setup.specialists), meta=_provenance(setup, measured))
    table.save(out / "ntg.json")
    (out / "ntg.md").write_text(table.to_markdown())
    return table
