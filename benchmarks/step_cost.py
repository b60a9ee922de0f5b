"""Cost of one ANT training step for every balancer, relative to vanilla training.

For each model, every configuration runs the same training step (forward, backward, AdamW) on
the same kind of batch, and the median (and mean) step time is divided by vanilla's, measured in
the same process. Peak GPU memory (``torch.cuda.max_memory_allocated``) is recorded per
configuration. Configurations:

* ``vanilla``            plain mean loss, one backward (no antdiff at all)
* ``mean``/``uw``/``dwa``/``rlw``/``famo``/``continuous_uw``   loss-based balancers through the engine
* ``nash@1``, ``nash@25``  NashMTL recomputing α every step / every 25 steps (ANT's default)
* ``pcgrad``, ``mgda``, ``imtlg``, ``cagrad``, ``upgrad``      gradient balancers, engine ``split`` mode
* ``pcgrad[retain_graph]`` the official per-cluster gradients (k backwards through one graph)
* ``pcgrad[gramian]``      torchjd autogram Gramian + one weighted backward (memory mode)

Models: an ADM/DDPM-CIFAR-10-like ``UNet2DModel`` (35.7M parameters, 32×32×3, channels
(128, 256, 256, 256), 2 res-blocks per level, attention at 16×16) and a DiT-S/2-sized
``DiTTransformer2DModel`` (depth 12, hidden 384, 6 heads, patch 2, 32×32×4 latents, learned σ).
k = 5 clusters, batch 128, bf16 autocast, on the GPU. ``--smoke`` runs tiny models on the CPU in
seconds (it checks that every configuration runs; its ratios mean nothing).

    python benchmarks/step_cost.py                # GPU, ~3-5 min on one H100
    python benchmarks/step_cost.py --smoke        # CPU, seconds
    python benchmarks/step_cost.py --models unet --configs vanilla,pcgrad[vmap] --sdpa flash,efficient,math
                                                  # attention kernels limited (default: PyTorch's)

Writes a JSON file (``--out``) and prints a Markdown table, then the targets of issue 3 with the
measured values.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from antdiff import NoiseSchedule, TaskClusters, TimestepSampler
from antdiff.mtl import ClusterGradientEngine, make_balancer


# ============================================================================ models
def build_unet(smoke: bool) -> tuple[nn.Module, tuple[int, int, int], bool]:
    from diffusers import UNet2DModel

    if smoke:
        cfg: dict[str, Any] = dict(
            sample_size=8,
            block_out_channels=(8, 16),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D"),
            norm_num_groups=4,
            attention_head_dim=8,
        )
        shape = (3, 8, 8)
    else:
        # google/ddpm-cifar10-32 (the DDPM CIFAR-10 UNet, ≈35.7M parameters).
        cfg = dict(
            sample_size=32,
            block_out_channels=(128, 256, 256, 256),
            layers_per_block=2,
            down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
            norm_eps=1e-6,
        )
        shape = (3, 32, 32)
    return UNet2DModel(in_channels=3, out_channels=3, **cfg), shape, False


def build_dit(smoke: bool) -> tuple[nn.Module, tuple[int, int, int], bool]:
    from diffusers import DiTTransformer2DModel

    if smoke:
        cfg: dict[str, Any] = dict(
            num_attention_heads=2, attention_head_dim=8, num_layers=2, sample_size=8
        )
        shape = (4, 8, 8)
    else:
        cfg = dict(num_attention_heads=6, attention_head_dim=64, num_layers=12, sample_size=32)
        shape = (4, 32, 32)
    model = DiTTransformer2DModel(
        in_channels=4, out_channels=8, patch_size=2, num_embeds_ada_norm=1000, **cfg
    )
    # Label dropout is drawn outside the model (the engine needs a deterministic closure).
    for module in model.modules():
        if hasattr(module, "dropout_prob"):
            module.dropout_prob = 0.0
    return model, shape, True


MODELS: dict[str, Callable[[bool], tuple[nn.Module, tuple[int, int, int], bool]]] = {
    "unet": build_unet,
    "dit": build_dit,
}

# (label, balancer name or None for vanilla, hyper-parameters, engine mode)
CONFIGS: list[tuple[str, str | None, dict[str, Any], str]] = [
    ("vanilla", None, {}, "split"),
    ("mean", "mean", {}, "split"),
    ("uw", "uw", {}, "split"),
    ("dwa", "dwa", {}, "split"),
    ("rlw", "rlw", {}, "split"),
    ("famo", "famo", {}, "split"),
    ("continuous_uw", "continuous_uw", {}, "split"),
    ("nash@25", "nash", {"update_every": 25}, "split"),
    ("nash@1", "nash", {"update_every": 1}, "split"),
    ("pcgrad", "pcgrad", {}, "split"),
    ("mgda", "mgda", {}, "split"),
    ("imtlg", "imtlg", {}, "split"),
    ("cagrad", "cagrad", {}, "split"),
    ("upgrad", "upgrad", {}, "split"),
    ("nash@1[vmap]", "nash", {"update_every": 1}, "vmap"),
    ("pcgrad[vmap]", "pcgrad", {}, "vmap"),
    ("pcgrad[retain_graph]", "pcgrad", {}, "retain_graph"),
    ("pcgrad[gramian]", "pcgrad", {}, "gramian"),
    # GPU only: vanilla with forward+backward+AdamW captured in one CUDA graph, i.e. without the
    # Python/launch overhead — the floor that says whether a step is bound by launches or by work.
    ("vanilla[cuda_graph]", None, {}, "cuda_graph"),
]


@dataclass
class Measurement:
    model: str
    label: str
    balancer: str | None
    mode: str
    times_ms: list[float] = field(default_factory=list)
    median_ms: float = math.nan
    mean_ms: float = math.nan
    ratio_median: float = math.nan
    ratio_mean: float = math.nan
    peak_mem_gib: float | None = None
    error: str | None = None


# ============================================================================ one configuration
class Workload:
    """Random data and the ε-prediction closure for one model (same for every configuration)."""

    def __init__(self, model_name: str, args: argparse.Namespace, device: torch.device) -> None:
        self.name = model_name
        self.args = args
        self.device = device
        self.schedule = NoiseSchedule.from_name("linear", 1000)
        self.abar = self.schedule.tensor(device=device)
        self.sampler = TimestepSampler(TaskClusters.uniform(1000, args.k), "stratified")
        _, self.shape, self.conditional = MODELS[model_name](args.smoke)
        self.gen = torch.Generator().manual_seed(0)

    def new_model(self) -> nn.Module:
        torch.manual_seed(0)
        model, _, _ = MODELS[self.name](self.args.smoke)
        model = model.to(self.device).train()
        if self.args.compile:
            # e.g. "reduce-overhead": inductor kernels replayed from CUDA graphs, which removes the
            # per-kernel Python/launch overhead that dominates eager steps of small models.
            model = torch.compile(model, mode=self.args.compile)
        return model

    def new_batch(
        self,
    ) -> tuple[Any, Callable[[torch.Tensor], torch.Tensor], Callable[[], torch.Tensor]]:
        B, dev = self.args.batch, self.device
        batch = self.sampler.sample(B, generator=self.gen).to(dev)
        x0 = torch.randn((B, *self.shape), generator=self.gen).clamp(-1, 1).to(dev)
        noise = torch.randn((B, *self.shape), generator=self.gen).to(dev)
        labels = torch.randint(0, 1000, (B,), generator=self.gen).to(dev)
        a = self.abar[batch.timesteps].view(-1, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        return batch, x_t, noise, labels

    def closure(self, model, batch, x_t, noise, labels):
        autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if self.device.type == "cuda"
            else torch.autocast("cpu", enabled=False)
        )
        c = self.shape[0]

        def compute_losses(index: torch.Tensor) -> torch.Tensor:
            with autocast:
                if self.conditional:
                    out = model(
                        x_t[index], timestep=batch.timesteps[index], class_labels=labels[index]
                    ).sample
                else:
                    out = model(x_t[index], batch.timesteps[index]).sample
            return ((out[:, :c].float() - noise[index]) ** 2).mean(dim=(1, 2, 3))

        return compute_losses


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_graph(work: Workload, label: str) -> Measurement:
    """Vanilla step replayed from a CUDA graph (no CPU launch overhead)."""
    args, dev = work.args, work.device
    m = Measurement(work.name, label, None, "cuda_graph")
    if dev.type != "cuda":
        m.error = "needs a GPU"
        return m
    model = opt = graph = None
    try:
        model = work.new_model()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0, capturable=True)
        batch, x_t, noise, labels = work.new_batch()
        closure = work.closure(model, batch, x_t, noise, labels)
        index = torch.arange(batch.batch_size, device=dev)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                opt.zero_grad(set_to_none=True)
                closure(index).mean().backward()
                opt.step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        opt.zero_grad(set_to_none=True)
        with torch.cuda.graph(graph):
            closure(index).mean().backward()
            opt.step()
        for _ in range(args.warmup):
            graph.replay()
        sync(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        for _ in range(args.steps):
            t0 = time.perf_counter()
            graph.replay()
            sync(dev)
            m.times_ms.append((time.perf_counter() - t0) * 1e3)
        m.median_ms = statistics.median(m.times_ms)
        m.mean_ms = statistics.fmean(m.times_ms)
        m.peak_mem_gib = torch.cuda.max_memory_allocated(dev) / 2**30
    except Exception as e:
        m.error = f"{type(e).__name__}: {e}"
        traceback.print_exc(file=sys.stderr)
    finally:
        model = opt = graph = None
        gc.collect()
        torch.cuda.empty_cache()
    return m


class Runner:
    """One configuration's training step on the shared model and optimiser."""

    def __init__(
        self,
        work: Workload,
        model: nn.Module,
        label: str,
        balancer: str | None,
        hyper: dict[str, Any],
        mode: str,
    ) -> None:
        self.work, self.model = work, model
        self.m = Measurement(work.name, label, balancer, mode if balancer else "-")
        self.bal = self.engine = None
        self.params: list[dict[str, Any]] = []
        if balancer is not None:
            if balancer == "continuous_uw":
                hyper = {**hyper, "schedule": work.schedule}
            self.bal = make_balancer(balancer, work.args.k, **hyper).to(work.device)
            self.params = self.bal.param_groups()
            self.engine = ClusterGradientEngine(model, self.bal, mode=mode)
        self.i = 0

    def step(self, opt: torch.optim.Optimizer, batches: list[Any]) -> None:
        batch, x_t, noise, labels = batches[self.i % len(batches)]
        self.i += 1
        closure = self.work.closure(self.model, batch, x_t, noise, labels)
        opt.zero_grad(set_to_none=True)
        if self.engine is None:
            closure(torch.arange(batch.batch_size, device=self.work.device)).mean().backward()
            opt.step()
        else:
            self.engine.step(closure, batch, record=False)
            opt.step()
            self.engine.after_optimizer_step(closure, batch)

    def run(self, opt: torch.optim.Optimizer, batches: list[Any], n: int, timed: bool) -> None:
        dev = self.work.device
        try:
            for _ in range(n):
                t0 = time.perf_counter()
                self.step(opt, batches)
                sync(dev)
                if timed:
                    self.m.times_ms.append((time.perf_counter() - t0) * 1e3)
        except Exception as e:
            self.m.error = f"{type(e).__name__}: {e}"
            traceback.print_exc(file=sys.stderr)
        finally:
            if self.engine is not None:
                self.engine.release_buffers()  # each configuration's memory is measured alone


def measure_model(
    work: Workload, configs: list[tuple[str, str | None, dict[str, Any], str]], started: float
) -> list[Measurement]:
    """All configurations of one model, interleaved: every round runs a few timed steps of each
    configuration in turn, so slow drifts of the machine (clocks, other tenants) hit all of them
    alike instead of biasing whichever ran last."""
    args, dev = work.args, work.device
    model = work.new_model()
    runners, graph_rows = [], []
    for label, balancer, hyper, mode in configs:
        if mode == "cuda_graph":
            graph_rows.append(label)
            continue
        try:
            runners.append(Runner(work, model, label, balancer, hyper, mode))
        except Exception as e:
            m = Measurement(work.name, label, balancer, mode)
            m.error = f"{type(e).__name__}: {e}"
            runners.append(m)  # type: ignore[arg-type]
    live = [r for r in runners if isinstance(r, Runner)]
    groups: list[dict[str, Any]] = [{"params": list(model.parameters())}]
    for r in live:
        groups += r.params
    opt = torch.optim.AdamW(groups, lr=1e-4, weight_decay=0.0)
    batches = [work.new_batch() for _ in range(args.distinct_batches)]
    # warm-up round, with each configuration's peak memory measured on its own
    for r in live:
        if dev.type == "cuda":
            sync(dev)
            torch.cuda.reset_peak_memory_stats(dev)
        r.run(opt, batches, args.warmup, timed=False)
        if dev.type == "cuda" and not r.m.error:
            r.m.peak_mem_gib = torch.cuda.max_memory_allocated(dev) / 2**30
    per_round = max(1, min(args.steps, args.steps_per_round))
    rounds = math.ceil(args.steps / per_round)
    spent = {id(r): 0.0 for r in live}
    for rnd in range(rounds):
        for r in live:
            # Slow configurations (retain_graph, gramian) stop once they used their time budget.
            if r.m.error or spent[id(r)] > args.budget_s:
                continue
            t0 = time.perf_counter()
            r.run(opt, batches, per_round, timed=True)
            spent[id(r)] += time.perf_counter() - t0
        print(
            f"[{time.perf_counter() - started:6.1f}s] {work.name}: round {rnd + 1}/{rounds}",
            flush=True,
        )
    results = [r.m if isinstance(r, Runner) else r for r in runners]
    model = opt = None
    runners = live = []
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    for label in graph_rows:
        results.append(measure_graph(work, label))
    for m in results:
        if m.times_ms:
            m.median_ms = statistics.median(m.times_ms)
            m.mean_ms = statistics.fmean(m.times_ms)
    base = next((m for m in results if m.label == "vanilla" and not m.error), None)
    if base is not None:
        for m in results:
            if m.times_ms and not m.error:
                m.ratio_median = m.median_ms / base.median_ms
                m.ratio_mean = m.mean_ms / base.mean_ms
    return results


# ============================================================================ report
def markdown(results: list[Measurement], device_name: str) -> str:
    lines = [
        f"Step cost on {device_name} (k = {ARGS.k}, batch {ARGS.batch}"
        f"{', bf16 autocast' if 'cuda' in ARGS.device else ''}"
        f"{f', torch.compile mode={ARGS.compile}' if ARGS.compile else ', eager'}); "
        "ratio = step time / vanilla step time "
        "measured in the same run.",
        "",
        "| model | configuration | engine mode | median ms | ratio (median) | ratio (mean) | peak GiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in results:
        if m.error:
            lines.append(f"| {m.model} | {m.label} | {m.mode} | error: {m.error[:60]} | | | |")
            continue
        mem = f"{m.peak_mem_gib:.2f}" if m.peak_mem_gib is not None else "-"
        lines.append(
            f"| {m.model} | {m.label} | {m.mode} | {m.median_ms:.1f} | {m.ratio_median:.3f} | "
            f"{m.ratio_mean:.3f} | {mem} |"
        )
    return "\n".join(lines)


def targets(results: list[Measurement]) -> str:
    by = {(m.model, m.label): m for m in results if not m.error}
    out = ["", "Targets (issue 3):", ""]
    for model in sorted({m.model for m in results}):
        checks = [
            ("uw", "ratio_median", 1.02, "UW ≤ 1.02× vanilla (median)"),
            ("nash@25", "ratio_mean", 1.02, "Nash every 25 steps ≤ 1.02× (mean: amortised)"),
            ("nash@1", "ratio_median", 1.20, "Nash every step ≤ 1.20× (median)"),
            ("pcgrad", "ratio_median", 1.15, "PCGrad ≤ 1.15× (median)"),
        ]
        for label, key, limit, text in checks:
            m = by.get((model, label))
            if m is None:
                continue
            v = getattr(m, key)
            out.append(f"- {model}: {text}: {v:.3f} → {'met' if v <= limit else 'MISSED'}")
        for label in ("nash@1[vmap]", "pcgrad[vmap]"):
            m = by.get((model, label))
            if m is not None:
                limit = 1.20 if label.startswith("nash") else 1.15
                out.append(
                    f"- {model}: {label} ≤ {limit:.2f}× (median): {m.ratio_median:.3f} → "
                    f"{'met' if m.ratio_median <= limit else 'MISSED'}"
                )
        retain = by.get((model, "pcgrad[retain_graph]"))
        for label in ("pcgrad", "pcgrad[vmap]"):
            fast = by.get((model, label))
            if fast and retain:
                s = retain.median_ms / fast.median_ms
                out.append(
                    f"- {model}: {label} ≥ 2.5× faster than retain_graph PCGrad: {s:.2f}× → "
                    f"{'met' if s >= 2.5 else 'MISSED'}"
                )
        floor = by.get((model, "vanilla[cuda_graph]"))
        if floor is not None:
            out.append(
                f"- {model}: vanilla step replayed from a CUDA graph: {floor.ratio_median:.3f}× the "
                "eager vanilla step (below 1: the eager step is bound by Python/launch overhead)"
            )
    return "\n".join(out)


SDPA_BACKENDS = ("flash", "efficient", "cudnn", "math")


def sdpa_backends(spec: str) -> list[Any]:
    """``"flash,efficient,math"`` → the ``torch.nn.attention.SDPBackend`` members, for
    ``sdpa_kernel``; an unknown name is an error that lists the known ones."""
    from torch.nn.attention import SDPBackend

    members = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "math": SDPBackend.MATH,
    }
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in members]
    if unknown or not names:
        raise ValueError(
            f"--sdpa {spec!r}: unknown backend(s) {unknown or '(none given)'}; "
            f"use a comma-separated list of {', '.join(SDPA_BACKENDS)}"
        )
    return [members[n] for n in names]


def sdpa_kernel(backends: list[Any]) -> Any:
    from torch.nn.attention import sdpa_kernel as kernel

    return kernel(backends)


def main(argv: list[str] | None = None) -> int:
    global ARGS
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny models on the CPU, a few seconds")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--models", default="unet,dit")
    p.add_argument("--configs", default=None, help="comma-separated labels (default: all)")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--batch", type=int, default=None, help="default 128 (10 with --smoke)")
    p.add_argument(
        "--steps", type=int, default=None, help="timed steps (default 30; 3 with --smoke)"
    )
    p.add_argument("--warmup", type=int, default=None, help="default 5 (1 with --smoke)")
    p.add_argument("--budget-s", type=float, default=20.0, help="time cap per configuration")
    p.add_argument("--steps-per-round", type=int, default=5, help="timed steps per turn")
    p.add_argument(
        "--compile",
        default=None,
        help="torch.compile every model with this mode (e.g. reduce-overhead, default)",
    )
    p.add_argument("--distinct-batches", type=int, default=4)
    p.add_argument(
        "--sdpa",
        default=None,
        help="attention backends allowed for every configuration, comma-separated from "
        f"{', '.join(SDPA_BACKENDS)} (e.g. flash,efficient,math: no cuDNN, whose backward has no "
        "vmap batching rule); default: PyTorch's choice",
    )
    p.add_argument(
        "--out", default=None, help="JSON file (default benchmarks/results/step_cost_<device>.json)"
    )
    args = p.parse_args(argv)
    try:
        attention_backends = sdpa_backends(args.sdpa) if args.sdpa else None
    except ValueError as e:
        p.error(str(e))
    args.device = args.device or ("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    args.batch = args.batch or (10 if args.smoke else 128)
    args.steps = args.steps or (3 if args.smoke else 30)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.smoke else 5)
    ARGS = args
    dev = torch.device(args.device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        device_name = torch.cuda.get_device_name(dev)
    else:
        if args.smoke:
            # Smoke mode only checks that everything runs; one thread keeps it fast on a busy
            # machine (OpenMP threads spin-waiting for a shared core cost 10-100x there).
            torch.set_num_threads(1)
        device_name = (
            f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
        )
    wanted = None if args.configs is None else set(args.configs.split(","))
    configs = [c for c in CONFIGS if wanted is None or c[0] in wanted or c[0] == "vanilla"]
    if dev.type != "cuda" or args.compile:
        configs = [c for c in configs if c[3] != "cuda_graph"]
    if args.compile:  # functorch transforms and autogram hooks need the eager module
        configs = [c for c in configs if c[3] not in ("vmap", "gramian")]
        # retain_graph backpropagates k times through one compiled graph: no donated buffers.
        from torch._functorch import config as functorch_config

        functorch_config.donated_buffer = False

    results: list[Measurement] = []
    started = time.perf_counter()
    attention = contextlib.ExitStack()  # the --sdpa choice, for every configuration
    if attention_backends:
        attention.enter_context(sdpa_kernel(attention_backends))
    for model_name in args.models.split(","):
        if model_name not in MODELS:
            p.error(f"unknown model {model_name!r}; choose from {', '.join(MODELS)}")
        rows = measure_model(Workload(model_name, args, dev), configs, started)
        for m in rows:
            print(
                f"        {model_name:5s} {m.label:22s} "
                + (
                    f"error {m.error}"
                    if m.error
                    else f"median {m.median_ms:8.2f} ms ({len(m.times_ms)} steps)"
                ),
                flush=True,
            )
        results += rows
    attention.close()

    table = markdown(results, device_name)
    report = {
        "device": device_name,
        "torch": torch.__version__,
        "diffusers": __import__("diffusers").__version__,
        "python": platform.python_version(),
        "args": vars(args),
        "seconds": time.perf_counter() - started,
        "results": [asdict(r) for r in results],
    }
    out = (
        Path(args.out)
        if args.out
        else Path(__file__).parent
        / "results"
        / (f"step_cost_{'smoke' if args.smoke else dev.type}.json")
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print()
    print(table)
    print(targets(results))
    print(f"\nwrote {out}")
    return 1 if any(r.error for r in results) else 0


ARGS: argparse.Namespace

if __name__ == "__main__":
    sys.exit(main())
