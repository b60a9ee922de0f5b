"""The reference training loop behind ``antdiff train``: one function, read top to bottom.

Vanilla training, loss weightings (P2, Min-SNR, EDM) and ANT are settings of the same loop:

* **vanilla**: ``t ~ U{first … last}`` (the whole chain unless ``diffusion.timestep_range``),
  update ``∇_θ (1/B) Σ_b ℓ_b`` with ℓ the objective's per-sample loss (weighting included);
* **ANT** (``ant.enabled``): the k clusters of ``ant`` (written to ``RUN/clusters.json``),
  timesteps from a :class:`~antdiff.sampling.TimestepSampler`, and the update of the balancer
  ``ant.balancer`` on the cluster losses ``L_i = mean_{c_b = i} ℓ_b``, obtained through
  :class:`~antdiff.mtl.ClusterGradientEngine` (one backward for UW-like methods, cluster
  gradients for NashMTL / PCGrad / ...).

Randomness: the model is initialised from ``run.seed``; the data order is a
:class:`~antdiff.data.ResumableSampler`; timesteps, noise and CFG label dropout come from seeded
generators that are drawn for the *global* batch on every process, each process keeping the
samples ``rank, rank + W, …`` — the same samples the data sampler gives it — so that a run's
batches do not depend on the number of processes. Every stream is saved in the checkpoints, which
makes ``N steps + resume + M steps`` equal to ``N + M steps`` bit for bit (fp32, same hardware).
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._device import to_device
from ..sampling import TimestepBatch, TimestepSampler
from .build import (
    build_balancer,
    build_clusters,
    build_codec,
    build_objective,
    denoiser_kwargs,
    open_training_dataset,
)
from .checkpoint import CheckpointManager, load_checkpoint, resolve_checkpoint
from .config import RESUME_SAFE_KEYS, Config, ConfigError, diff_configs
from .distributed import DistContext, init_distributed
from .ema import EMA
from .images import image_grid, save_grid
from .lr import lr_factor
from .monitor import LossParts, MetricsLog, TensorBoardLog, WindowStats
from .rng import capture_rng_state, restore_rng_state, seed_everything
from .rundir import RunDirectory
from .sampling import SamplingInterrupted, sample_images
from .signals import GracefulStop, ignore_stop_signals

__all__ = [
    "TrainResult",
    "TrainingDiverged",
    "check_resumable",
    "find_resume_checkpoint",
    "train",
]

Log = Callable[[str], None]


class TrainingDiverged(RuntimeError):
    """The loss or the gradient became NaN/inf; nothing from that step on was saved."""


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    step: int  # optimizer steps done
    interrupted: bool  # stopped by SIGTERM/SIGINT before train.steps
    checkpoint: Path | None  # the last checkpoint written or resumed from


# ====================================================================================== resume
def find_resume_checkpoint(resume: str | Path | None, ckpts: CheckpointManager) -> Path | None:
    """The checkpoint to resume from: ``None`` (fresh run), ``"auto"`` or a path.

    A fresh run refuses a run directory that already holds checkpoints, so that a repeated
    command can never overwrite a run by accident.
    """
    if resume is None:
        existing = ckpts.latest()
        if existing is not None:
            raise ValueError(
                f"{ckpts.directory.parent} already contains checkpoints (latest: {existing.name}); "
                "pass --resume auto to continue that run, or choose another run.dir"
            )
        return None
    if str(resume) == "auto":
        return ckpts.latest()
    return resolve_checkpoint(resume)


def check_resumable(saved: dict[str, Any], cfg: Config, path: Path) -> None:
    """Refuse to resume when the config changes what is trained (keys outside RESUME_SAFE_KEYS)."""

    def safe(key: str) -> bool:
        return any(key == s or (s.endswith(".") and key.startswith(s)) for s in RESUME_SAFE_KEYS)

    bad = [(k, a, b) for k, a, b in diff_configs(saved, cfg.to_dict()) if not safe(k)]
    if bad:
        what = "; ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, a, b in bad[:6])
        more = f" (and {len(bad) - 6} more)" if len(bad) > 6 else ""
        raise ValueError(
            f"cannot resume from {path}: the config differs in what is trained ({what}{more}). "
            "Restore these values (the run's config.yaml has them) or start a new run.dir"
        )


def _seed(seed: int, stream: int) -> int:
    """Independent seeds per stream (SeedSequence), so runs with seeds s and s+1 share nothing."""
    return int(np.random.SeedSequence([seed, stream]).generate_state(1, np.uint64)[0] >> 1)


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


# ====================================================================================== train
def train(
    config: Config, *, resume: str | Path | None = None, log: Log | None = print
) -> TrainResult:
    """Train (or resume) the run described by ``config``; see the module docstring.

    ``resume``: ``None`` (a fresh run; the run directory must hold no checkpoint), ``"auto"``
    (the run directory's latest checkpoint if any) or a checkpoint / run directory path.
    Raises :class:`TrainingDiverged` on a non-finite loss or gradient (no checkpoint is written
    after the last good one). On SIGTERM/SIGINT it finishes the step, checkpoints and returns.
    """
    ctx = init_distributed(config.train.device)
    try:
        return _train(config, ctx, resume, log if ctx.is_main else None)
    finally:
        ctx.shutdown()


def _train(
    cfg: Config, ctx: DistContext, resume: str | Path | None, log: Log | None
) -> TrainResult:
    say = log or (lambda _msg: None)
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DataLoader

    from ..data import ResumableSampler
    from .models import build_denoiser

    # ------------------------------------------------------------ 1. run directory, resume point
    run = RunDirectory(cfg.run.dir)
    ckpts = CheckpointManager(run.checkpoints, cfg.train.keep_last)
    ckpt_path = find_resume_checkpoint(resume, ckpts)
    ckpt = load_checkpoint(ckpt_path) if ckpt_path is not None else None
    if ckpt is not None:
        check_resumable(ckpt["config"], cfg, ckpt_path)  # type: ignore[arg-type]
    rank, world, device = ctx.rank, ctx.world_size, ctx.device
    B = cfg.optim.batch_size
    if B % world:
        raise ConfigError(
            "optim.batch_size",
            f"the global batch {B} is not divisible by the {world} processes; use a multiple of {world}",
        )
    b = B // world
    precision = cfg.train.precision
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError(
            "train.precision", "fp16 (with a GradScaler) needs CUDA; use bf16 or fp32"
        )
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = cfg.train.tf32
        torch.backends.cudnn.allow_tf32 = cfg.train.tf32
    seed = cfg.run.seed
    seed_everything(seed + rank)  # global streams: dropout inside the model, per process

    # ------------------------------------------------------------ 2. what is learned
    objective = build_objective(cfg)
    clusters = build_clusters(cfg, objective.schedule)
    k = clusters.k
    dataset = open_training_dataset(cfg)
    codec = build_codec(cfg)
    if codec is not None:
        codec.to(device)
    model_kw = denoiser_kwargs(
        cfg,
        data_channels=dataset.channels,
        resolution=dataset.resolution,
        num_classes=dataset.num_classes,
        objective=objective,
        codec=codec,
    )
    try:
        model = build_denoiser(**model_kw, seed=seed).to(device)
    except ValueError as e:
        raise ConfigError("model", str(e)) from None
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    shape = (model.in_channels, model.sample_size, model.sample_size)
    ema = EMA(model, cfg.ema.decay, cfg.ema.warmup)
    balancer = build_balancer(cfg).to(device) if cfg.ant.enabled else None
    groups: list[dict[str, Any]] = [
        {
            "params": [p for p in model.parameters() if p.requires_grad],
            "weight_decay": cfg.optim.weight_decay,
        }
    ]
    if balancer is not None:
        groups += balancer.param_groups()  # e.g. UW's log-variances: lr 0.025, no weight decay
    optimizer = torch.optim.AdamW(
        groups, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps
    )
    base_lr = cfg.optim.lr  # warm-up/decay act on the model's group; the balancer keeps its own
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None

    # ------------------------------------------------------------ 3. randomness and data order
    sampler = ResumableSampler(dataset, seed=seed, rank=rank, world_size=world)
    t_sampler = TimestepSampler(clusters, cfg.ant.sampling) if balancer is not None else None
    gens = {
        "timesteps": torch.Generator().manual_seed(_seed(seed, 1)),
        "labels": torch.Generator().manual_seed(_seed(seed, 2)),
        "noise": torch.Generator(device).manual_seed(_seed(seed, 3)),
        "latents": torch.Generator(device).manual_seed(_seed(seed, 4) + rank),
    }

    # ------------------------------------------------------------ 4. restore a checkpoint
    step, train_time = 0, 0.0
    # The step whose evaluation a stop request interrupted: it runs first after a resume.
    pending_eval: int | None = None
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        ema.load_state_dict(ckpt["ema"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        if balancer is not None:
            balancer.load_state_dict(ckpt["balancer"])
        sampler.load_state_dict(ckpt["data"])
        states = ckpt["rng"]
        if len(states) != world:
            warnings.warn(
                f"the checkpoint was written by {len(states)} process(es), this run has {world}: "
                "random streams continue from process 0's, not bit-exactly",
                stacklevel=2,
            )
        try:
            restore_rng_state(states[min(rank, len(states) - 1)], gens)
        except RuntimeError as e:  # e.g. a CPU checkpoint resumed on a GPU
            warnings.warn(f"random generators re-seeded, not restored: {e}", stacklevel=2)
        step, train_time = int(ckpt["step"]), float(ckpt.get("train_time", 0.0))
        pending_eval = ckpt.get("pending_eval")
        say(f"resumed from {ckpt_path} at step {step}")
    data_cursor0, step0 = sampler.cursor, step
    last_ckpt = ckpt_path

    def checkpoint_state() -> dict[str, Any]:
        rng = ctx.all_gather_object(capture_rng_state(gens))  # every process's streams
        return {
            "config": cfg.to_dict(),
            "model": model.state_dict(),
            "model_config": model.config,
            "ema": ema.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "balancer": balancer.state_dict() if balancer is not None else None,
            "data": sampler.state_dict(consumed=data_cursor0 + (step - step0) * b),
            "rng": rng,
            "objective": objective.to_dict(),
            "clusters": clusters.to_dict(),
            "codec": codec.describe() if codec is not None else None,
            "class_names": list(dataset.class_names) if dataset.class_names else None,
            "world_size": world,
            "train_time": train_time + (time.perf_counter() - t_start),
            "pending_eval": pending_eval,
        }

    def save_checkpoint(replace: bool = False) -> Path | None:
        state = checkpoint_state()  # collective: every process takes part
        if not ctx.is_main:
            return None
        return ckpts.save(state, step, replace=replace)

    # ------------------------------------------------------------ 5. run directory (rank 0 writes)
    metrics = tb = evaluator = None
    if ctx.is_main:
        run.create()
        cfg.save(run.config)
        clusters.to_json(run.clusters, indent=1)
        metrics = MetricsLog(run.metrics, resume_step=step if ckpt is not None else None)
        if cfg.train.tensorboard:
            tb = TensorBoardLog(run.tensorboard, purge_step=step + 1 if ckpt is not None else 0)
        if cfg.train.eval_every:
            from ..evaluation import Evaluator  # fails now, not hours later, if weights are missing

            assert cfg.train.eval_ref is not None
            evaluator = Evaluator(
                cfg.train.eval_ref,
                cfg.train.eval_n,
                cfg.train.eval_metrics,
                str(device),
                inception=cfg.train.eval_inception,
            )
    say(
        f"run {run.root}: {model.preset} ({model.num_parameters():,} parameters) on "
        f"{dataset.spec} ({len(dataset)} images, {dataset.channels}x{dataset.resolution}"
        f"x{dataset.resolution}{', latents ' + 'x'.join(map(str, shape)) if codec else ''}); "
        f"{'ANT ' + cfg.ant.balancer if balancer is not None else 'vanilla'}, k={k} clusters "
        f"{list(clusters.intervals)}; batch {B} on {world} x {device}, {precision}"
    )
    if pending_eval is not None and (pending_eval != step or not cfg.train.eval_every):
        pending_eval = None  # evaluation switched off, or a foreign checkpoint: nothing owed
    if step >= cfg.train.steps and pending_eval is None:
        say(f"already at step {step} >= train.steps={cfg.train.steps}: nothing to do")
        return TrainResult(run.root, step, False, last_ckpt)

    # ------------------------------------------------------------ 6. wrappers for speed / DDP
    fwd: torch.nn.Module = model
    if cfg.train.compile:
        fwd = torch.compile(model, mode=cfg.train.compile_mode)  # type: ignore[assignment]
    if world > 1:
        fwd = DistributedDataParallel(
            fwd, device_ids=[device.index] if device.type == "cuda" else None
        )
    engine = None
    if balancer is not None:
        from ..mtl import ClusterGradientEngine

        engine = ClusterGradientEngine(
            fwd,
            balancer,
            mode=cfg.ant.engine,
            scaler=scaler,
            process_group=ctx.process_group,
            pad_split=cfg.ant.pad_split,
        )
        if (
            cfg.train.compile
            and balancer.needs_gradients
            and engine.mode == "split"
            and not cfg.ant.pad_split
            and (cfg.ant.sampling != "stratified" or b % k != 0)
        ):
            # Measured (docs/performance.md): unpadded, the compiled 35.7M UNet logged no step in
            # 195 s on an H100 under either compile mode; padded, 2.13x the vmap engine.
            warnings.warn(
                f"the split engine calls the compiled model once per cluster on sub-batches whose "
                f"size changes from step to step ({b} samples over k={k} clusters, "
                f"{cfg.ant.sampling} sampling), so torch.compile recompiles (and CUDA graphs "
                "re-record) for each size; set ant.pad_split=true for one size and the same update",
                stacklevel=2,
            )
    workers = cfg.data.num_workers
    loader = iter(
        DataLoader(
            dataset,
            batch_size=b,
            sampler=sampler,
            num_workers=workers,
            pin_memory=device.type == "cuda",
            drop_last=True,
            persistent_workers=workers > 0,
            worker_init_fn=ignore_stop_signals if workers > 0 else None,
        )
    )
    autocast = _autocast(device, precision)
    first, last = cfg.diffusion.timestep_range or (0, objective.num_timesteps - 1)
    mine = torch.arange(rank, B, world)  # this process's positions in the global batch
    mine_dev = mine.to(device)
    null_label = model.null_class
    clip = cfg.optim.grad_clip if cfg.optim.grad_clip is not None else math.inf
    # listed once: walking the modules costs ~0.2 ms of Python per walk (35.7M UNet), each step
    params, buffers = list(model.parameters()), list(model.buffers())

    def draw(
        positions: torch.Tensor, sample_seed: int, should_stop: Callable[[], bool] | None = None
    ) -> np.ndarray:
        """EMA samples for the given sample positions (balanced labels ``i mod C``)."""
        labels = None
        if model.num_classes is not None:
            labels = positions % model.num_classes
        return sample_images(
            ema.model,
            objective,
            len(positions),
            image_shape=shape,
            sampler=cfg.sample.sampler,
            steps=cfg.sample.steps,
            batch_size=cfg.sample.batch_size,
            seed=sample_seed,
            class_labels=labels,
            guidance=cfg.sample.guidance,
            null_class_label=null_label,
            eta=cfg.sample.eta,
            codec=codec,
            device=device,
            autocast_dtype=None if precision != "bf16" else torch.bfloat16,
            should_stop=should_stop,
        )

    cuda = device.type == "cuda"

    def peak_memory() -> float | None:
        """GiB of CUDA memory allocated at the peak since the last call (what a method costs)."""
        if not cuda:
            return None
        peak = torch.cuda.max_memory_allocated(device) / 2**30
        torch.cuda.reset_peak_memory_stats(device)
        return round(peak, 3)

    def sample_grid() -> None:
        images = draw(torch.arange(cfg.train.sample_n), seed)
        path = save_grid(images, run.sample_grid(step), scale=max(1, 64 // images.shape[1]))
        if tb is not None:
            tb.image("samples", image_grid(images), step)
        say(f"step {step}: sample grid {path}")

    def evaluate(stop: GracefulStop) -> bool:
        """Evaluate the EMA model at ``step``; False when a stop request cut the sampling short.

        Every process samples its share; rank 0 gathers and computes the metrics. A process that
        is told to stop abandons its share (no collective inside the sampling, so none waits
        for another), and the gather tells every process that the evaluation was abandoned."""
        nonlocal pending_eval
        n = cfg.train.eval_n
        share = torch.arange(rank, n, world)
        images: np.ndarray | None
        peak_memory()  # the evaluation's own peak, not the training window's
        t0 = time.perf_counter()
        try:
            images = draw(share, _seed(seed, 100 + rank), lambda: stop.requested)
        except SamplingInterrupted:
            images = None
        parts = ctx.all_gather_object(images)
        if any(p is None for p in parts):
            pending_eval = step
            say(f"step {step}: evaluation stopped by the stop request; it runs first on resume")
            return False
        pending_eval = None
        if evaluator is not None and metrics is not None:
            t1 = time.perf_counter()
            gathered = np.concatenate(parts)
            if gathered.shape[-1] == 1:  # the FID network takes RGB
                gathered = np.repeat(gathered, 3, axis=-1)
            result = evaluator(gathered)
            # what an evaluation costs, so that time budgets can be planned from the log
            seconds = {"sampling": t1 - t0, "metrics": time.perf_counter() - t1}
            line = {"step": step, "eval": result, "eval_seconds": seconds}
            if cuda:
                line["eval_peak_mem_gib"] = peak_memory()
            metrics.write(line)
            if tb is not None:
                tb.scalars(
                    step,
                    {k_: v for k_, v in result.items() if isinstance(v, (int, float))},
                    "eval/",
                )
            say(f"step {step}: evaluation {result}")
        return True

    def batch_losses(
        x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, y: Any
    ) -> Callable[..., torch.Tensor]:
        """The engine's ``compute_losses`` for one batch (forward pass under autocast)."""

        def compute_losses(index: torch.Tensor | None = None) -> torch.Tensor:
            """Per-sample losses ``[len(index)]`` of the samples at ``index`` (all when None)."""
            sel: Any = slice(None) if index is None else index
            with autocast:
                out = fwd(x_t[sel], t[sel], None if y is None else y[sel])
            terms = objective.loss_terms(out.float(), x0[sel], x_t[sel], t[sel], noise[sel])
            if loss_parts is not None:
                loss_parts.record(index, terms.mse, terms.vb)
            return terms.loss

        return compute_losses

    # ------------------------------------------------------------ 7. the loop
    nbins = cfg.train.log_loss_bins  # bin_losses: fixed bins of t, the same for every run
    # Stratified sampling draws t unevenly inside a bin that straddles clusters of other widths
    # (raw-SNR clusters: 80% of every batch at t ≤ 17, all in the first bin), so a plain sample
    # mean per bin would compare other timesteps across runs. Each sample is weighted by
    # 1/(T·p(t)): every run's bin_losses then estimate the mean over t uniform in the bin.
    bin_iw = None
    if nbins and t_sampler is not None and t_sampler.mode == "stratified":
        p_t = t_sampler.probabilities()
        bin_iw = to_device((1.0 / (p_t.numel() * p_t)).float(), device)
    # A weighted or hybrid loss is a mixture: log its parts per cluster too (LossParts).
    loss_parts = None
    mixture = objective.weighting is not None or objective.learned_variance
    if cfg.train.log_loss_parts and mixture:
        loss_parts = LossParts(mine.numel(), objective.learned_variance, device)
    part_names = () if loss_parts is None else ("mse", "vb") if loss_parts.hybrid else ("mse",)
    window = WindowStats(k, bins=nbins, parts=part_names)
    t_start = time.perf_counter()
    t_window, hook_time = t_start, 0.0
    interrupted = False
    pbar = None
    if cfg.train.progress and ctx.is_main:
        from tqdm.auto import tqdm

        # Redrawing 10×/s is right on a terminal but floods a log file: redraw every 30 s there.
        interactive = sys.stderr.isatty()
        pbar = tqdm(
            total=cfg.train.steps,
            initial=step,
            unit="step",
            dynamic_ncols=True,
            file=sys.stderr,
            mininterval=0.1 if interactive else 30.0,
        )
    with GracefulStop() as stop:
        if pending_eval is not None:
            say(f"step {step}: running the evaluation a stop request interrupted")
            interrupted = not evaluate(stop)
            if not interrupted:  # the checkpoint no longer owes it
                last_ckpt = save_checkpoint(replace=True) or last_ckpt
        while step < cfg.train.steps and not interrupted:
            log_now = (step + 1) % cfg.train.log_every == 0 or step + 1 == cfg.train.steps

            # (a) this process's share of the global batch
            images, labels = next(loader)
            images = images.to(device, non_blocking=True)
            x0 = codec.encode(images, generator=gens["latents"]) if codec is not None else images
            if cfg.train.channels_last:
                x0 = x0.contiguous(memory_format=torch.channels_last)

            # (b) timesteps, noise and label dropout, drawn for the global batch
            if t_sampler is not None:
                tb_batch = t_sampler.sample(B, generator=gens["timesteps"]).select(mine)
            else:
                t_all = torch.randint(first, last + 1, (B,), generator=gens["timesteps"])
                tb_batch = TimestepBatch.from_timesteps(t_all[mine], clusters)
            if nbins:  # per-bin counts from the host copy of t: no device synchronisation
                bin_cnt = torch.bincount(
                    tb_batch.timesteps.cpu() * nbins // objective.num_timesteps, minlength=nbins
                ).float()
            # timesteps and cluster ids on the device, the per-cluster counts stay on the host
            # (reading them there costs no device synchronisation)
            tb_batch = TimestepBatch(
                to_device(tb_batch.timesteps, device),
                to_device(tb_batch.cluster_ids, device),
                tb_batch.counts,
                k,
            )
            t = tb_batch.timesteps
            noise = torch.randn((B, *x0.shape[1:]), generator=gens["noise"], device=device)
            if world > 1:
                noise = noise[mine_dev]
            y = None
            if model.num_classes is not None:
                drop = torch.rand(B, generator=gens["labels"])[mine] < cfg.model.class_dropout
                y = to_device(torch.where(drop, null_label, labels), device)
            x_t = objective.q_sample(x0, t, noise)
            compute_losses = batch_losses(x0, x_t, t, noise, y)

            # (c) gradients
            factor = lr_factor(
                step,
                warmup_steps=cfg.optim.warmup_steps,
                total_steps=cfg.train.steps,
                schedule=cfg.optim.schedule,
                min_ratio=cfg.optim.min_lr / cfg.optim.lr,
            )
            optimizer.param_groups[0]["lr"] = base_lr * factor
            optimizer.zero_grad(set_to_none=True)
            if loss_parts is not None:
                loss_parts.start()
            if engine is not None:
                try:
                    res = engine.step(compute_losses, tb_batch, record=log_now)
                except FloatingPointError as e:
                    raise TrainingDiverged(f"training diverged at step {step + 1}: {e}") from None
                # the engine's cluster statistics are already global: pre-divide for the sum below
                cl_sum = res.cluster_losses * res.counts / world
                cl_cnt = res.counts.float() / world
                sample_losses = res.sample_losses
                if loss_parts is not None and res.sample_values:  # a vmap pass's parts
                    v = res.sample_values
                    loss_parts.record(None, v["mse"], v.get("vb"))
                weights, record, gn = res.weights, res.record, res.grad_norm
                if scaler is not None:
                    scaler.unscale_(optimizer)
                if gn is None:
                    gn = torch.nn.utils.get_total_norm(
                        [p.grad for p in params if p.grad is not None]
                    )
            else:
                per = compute_losses()
                loss = per.mean()
                (scaler.scale(loss) if scaler is not None else loss).backward()
                if scaler is not None:
                    scaler.unscale_(optimizer)
                gn = torch.nn.utils.clip_grad_norm_(params, clip)
                ids = tb_batch.cluster_ids
                sample_losses = per.detach().float()
                cl_sum = torch.zeros(k, device=device).index_add(0, ids, sample_losses)
                cl_cnt = tb_batch.counts.float()  # host-side: no synchronisation
                weights, record = None, None
            part_stats: list[torch.Tensor] = []
            if loss_parts is not None:  # this process's samples, summed by the all-reduce too
                loss_parts.stop()
                part_stats = loss_parts.cluster_sums(tb_batch.cluster_ids, k)
            bin_stats: list[torch.Tensor] = []
            if nbins:  # this process's samples; the all-reduce below sums the processes
                if sample_losses is None:  # a skipped step: no losses, no counts
                    bin_sum, bin_n = torch.zeros(nbins, device=device), torch.zeros(nbins)
                    bin_w: torch.Tensor = bin_n
                    bin_parts = [torch.zeros(nbins, device=device) for _ in (*part_names, "w")]
                else:
                    bins_t = t * nbins // objective.num_timesteps
                    losses_t = sample_losses.to(device)
                    bin_w = bin_n = bin_cnt
                    iw = None
                    if bin_iw is not None:
                        iw = bin_iw[t]
                        losses_t = losses_t * iw
                        bin_w = torch.zeros(nbins, device=device).index_add(0, bins_t, iw)
                    bin_sum = torch.zeros(nbins, device=device).index_add(0, bins_t, losses_t)
                    # the unweighted parts per bin, with bin_losses' weights (LossParts)
                    bin_parts = [] if loss_parts is None else loss_parts.bin_sums(bins_t, nbins, iw)
                bin_stats = [bin_sum, to_device(bin_w, device), to_device(bin_n, device)]
                if loss_parts is not None:
                    bin_stats += bin_parts

            # (d) statistics of the step (one small all-reduce), the update, then the step's one
            # host sync: the update is queued first so the device never waits for the host check
            stats = torch.cat(
                [
                    cl_sum.float(),
                    # host values travel without a stream sync, so that the update is queued
                    # before the step's one host synchronisation below
                    to_device(cl_cnt, device),
                    gn.float().reshape(1).to(device) / world,
                    to_device(torch.tensor([float(stop.requested)]), device),
                    *bin_stats,
                    *part_stats,
                ]
            )
            if world > 1:
                torch.distributed.all_reduce(stats)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            if (step + 1) % cfg.ema.update_every == 0:
                ema.update_from(params, buffers)
            vals = stats.tolist()
            sums, counts, grad_norm = vals[:k], vals[k : 2 * k], vals[2 * k]
            stop_now = vals[2 * k + 1] > 0
            bin_sums = vals[2 * k + 2 : 2 * k + 2 + nbins]
            bin_weights = vals[2 * k + 2 + nbins : 2 * k + 2 + 2 * nbins]
            at = 2 * k + 2 + 3 * nbins
            bin_counts = vals[2 * k + 2 + 2 * nbins : at]
            n_parts, nb_parts = len(part_names), nbins if part_names else 0
            bin_part_sums = [vals[at + i * nbins : at + (i + 1) * nbins] for i in range(n_parts)]
            at += n_parts * nbins
            bin_part_weights = vals[at : at + nb_parts]
            at += nb_parts
            part_sums = [vals[at + i * k : at + (i + 1) * k] for i in range(len(part_names))]
            part_counts = vals[at + len(part_names) * k :]
            bad = [i for i in range(k) if counts[i] > 0 and not math.isfinite(sums[i])]
            if bad or (scaler is None and not math.isfinite(grad_norm)):
                # Nothing of this step is ever saved: the in-memory model is abandoned.
                raise TrainingDiverged(
                    _diverged_message(step + 1, clusters, sums, counts, grad_norm, bad, last_ckpt)
                )
            if engine is not None:
                engine.after_optimizer_step(compute_losses, tb_batch)
            step += 1
            window.add(
                sums, counts, bin_sums, bin_counts, bin_weights, part_sums, part_counts,
                bin_part_sums if nbins else None, bin_part_weights if nbins else None,
            )  # fmt: skip
            if pbar is not None:
                total_n = sum(counts)
                pbar.update(1)
                if total_n:
                    pbar.set_postfix(loss=f"{sum(sums) / total_n:.4f}", refresh=False)

            # (f) logging, samples, evaluation, checkpoints
            hook_start = time.perf_counter()
            if log_now and ctx.is_main:
                elapsed = hook_start - t_window - hook_time
                summary = window.summary()
                its = summary["window"] / elapsed if elapsed > 0 else float("nan")
                if weights is None:  # vanilla: ∇ mean = Σ_i (n_i / B) ∇L_i
                    weights = torch.tensor(counts) / max(sum(counts), 1.0)
                line = {
                    "step": step,
                    **summary,
                    "weights": weights.tolist(),
                    "balancer": record or {},
                    "lr": optimizer.param_groups[0]["lr"],
                    "grad_norm": grad_norm,
                    "it_per_s": its,
                    "img_per_s": its * B,
                    "time": train_time + hook_start - t_start,
                }
                if cuda:
                    line["peak_mem_gib"] = peak_memory()
                assert metrics is not None
                metrics.write(line)
                if tb is not None:
                    tb.scalars(
                        step,
                        {
                            "loss/total": line["loss"],
                            "loss/cluster": line["cluster_losses"],
                            **{
                                f"loss/cluster_{name}": line[f"cluster_{name}"]
                                for name in part_names
                            },
                            "weights/cluster": line["weights"],
                            "balancer": {
                                k_: v for k_, v in (record or {}).items() if k_ != "weights"
                            },
                            "lr": line["lr"],
                            "grad_norm": grad_norm,
                            "throughput/it_per_s": its,
                            "throughput/img_per_s": its * B,
                        },
                    )
            if log_now:
                window.reset()
                t_window, hook_time = time.perf_counter(), 0.0
                hook_start = t_window
            if cfg.train.sample_every and step % cfg.train.sample_every == 0 and ctx.is_main:
                sample_grid()
            if cfg.train.eval_every and step % cfg.train.eval_every == 0 and not evaluate(stop):
                stop_now = True  # the stop request came during the evaluation
            if stop_now or step % cfg.train.ckpt_every == 0 or step == cfg.train.steps:
                path = save_checkpoint()
                last_ckpt = path or last_ckpt
            hook_time += time.perf_counter() - hook_start
            if stop_now:
                interrupted = True
                say(
                    f"stop requested ({stop.signal_name or 'signal'}): checkpoint at step {step} written"
                )
                break
    if pbar is not None:
        pbar.close()
    if not interrupted and ctx.is_main:
        if not (cfg.train.sample_every and step % cfg.train.sample_every == 0):
            sample_grid()  # every finished run ends with a grid
    if metrics is not None:
        metrics.close()
    if tb is not None:
        tb.close()
    ctx.barrier()
    return TrainResult(run.root, step, interrupted, last_ckpt)


def _diverged_message(
    step: int,
    clusters: Any,
    sums: list[float],
    counts: list[float],
    grad_norm: float,
    bad: list[int],
    last_ckpt: Path | None,
) -> str:
    losses = [s / c if c > 0 else None for s, c in zip(sums, counts)]
    shown = ", ".join("-" if v is None else f"{v:.4g}" for v in losses)
    if bad:
        where = "; ".join(
            f"cluster {i} (t in [{clusters.intervals[i][0]}, {clusters.intervals[i][1]}]) has loss "
            f"{losses[i]}"
            for i in bad
        )
        what = f"non-finite loss at step {step}: {where}"
    else:
        what = f"non-finite gradient norm ({grad_norm}) at step {step}"
    keep = (
        f"the last good checkpoint {last_ckpt} is untouched"
        if last_ckpt
        else "no checkpoint was written"
    )
    return (
        f"training diverged: {what}; cluster losses = [{shown}]. Nothing after the last good "
        f"step was saved: {keep}. Lower optim.lr, set optim.grad_clip, or train in fp32/bf16"
    )
