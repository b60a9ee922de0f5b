"""The per-cluster gradient engine: one training step of any balancer at about the cost of an
ordinary step.

Gradient-based methods need ``g_i = ∇_θ L_i`` for every cluster. The official code (like LibMTL,
nash-mtl and Pytorch-PCGrad) runs k backward passes through the whole batch graph with
``retain_graph=True``: about 1 + 2k units of work instead of 3. In diffusion the k cluster losses
depend on *disjoint sub-batches*, which this engine exploits:

``split``
    forward + backward of each cluster's sub-batch separately. Total work ≈ one ordinary step
    (smaller kernels), activation memory ÷ k, plus a k×P float32 gradient buffer. Exact because
    diffusion networks normalise per sample (GroupNorm/LayerNorm); BatchNorm would couple the
    samples of a batch, so it is refused. With ``pad_split=True`` every sub-batch is padded to
    the step's largest (copies of its first sample, left out of the loss), so that a compiled
    model — and CUDA graphs — see one batch size: under stratified sampling ⌈B/k⌉ for the whole
    run (B = 128, k = 5: five calls of 26 instead of 25 or 26 in a random order), for < k extra
    samples of work.
``vmap``
    the same sub-batch gradients in *one* batched pass: ``torch.func.vmap`` over the clusters of
    ``torch.func.grad`` of each cluster's loss sum (sub-batches padded to the largest at weight 0).
    Same FLOPs as ``split``, but one set of kernel launches instead of k — what counts when a
    step is bound by Python/launch overhead. Needs a functorch-compatible model (diffusers UNets
    and DiTs are); parameters unused by the forward get a zero gradient instead of none.
``gramian``
    one forward, the k×k Gramian from torchjd's ``autogram`` per-sample Gramian pooled by cluster
    (``G = M G_sample Mᵀ``), then one weighted backward: no k×P buffer. Single process only (the
    Gramian of a distributed batch needs cross-rank products).
``retain_graph``
    the official method (one forward, k backwards), kept as the baseline for tests and benchmarks.
``auto``
    ``split``, or ``retain_graph`` when the model contains BatchNorm.

Loss-based balancers (UW, FAMO, ...) and NashMTL's reuse steps take one ordinary backward in every
mode. Under DDP, gradient sub-passes run under ``no_sync()`` and the k×P buffer (with the cluster
loss sums, counts and which parameters received a gradient) is all-reduced once per step; every
rank then forms the same update. Mixed precision: the user's closure runs under autocast; with a
``GradScaler`` the cluster gradients are unscaled before any dot product, solver or clipping, and
``.grad`` is left in the scaler's convention (so ``scaler.step`` works and skips non-finite steps).
Weight decay is the optimiser's business (use AdamW).
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .._device import to_device
from ..sampling import TimestepBatch
from .base import Balancer, ClusterLosses, cluster_losses
from .distributed import all_reduce_sum, is_ddp, unwrap_model, world_size

__all__ = ["ENGINE_MODES", "ClusterGradientEngine", "StepResult", "emit_sample_values"]

ENGINE_MODES = ("auto", "split", "vmap", "gramian", "retain_graph")

ComputeLosses = Callable[[Tensor], Tensor]

_sample_value_sinks = threading.local()


def emit_sample_values(**values: Tensor) -> bool:
    """Hand the engine per-sample side values of the running ``compute_losses(index)`` call —
    e.g. the parts of a mixed loss, for logging — one tensor ``[len(index)]`` per name.

    Only the ``vmap`` mode needs this: its closure runs inside a ``torch.func`` transform, where
    tensors have no plain values, so whatever a closure keeps for later is lost. Values emitted
    there come back with the step, in batch order, as :attr:`StepResult.sample_values`. Returns
    False (nothing kept) outside a ``vmap`` pass, where the caller's tensors are plain: keep
    them directly.
    """
    stack = getattr(_sample_value_sinks, "stack", None)
    if not stack:
        return False
    stack[-1].update(values)
    return True


@contextlib.contextmanager
def _collect_sample_values() -> Iterator[dict[str, Tensor]]:
    stack = _sample_value_sinks.__dict__.setdefault("stack", [])
    sink: dict[str, Tensor] = {}
    stack.append(sink)
    try:
        yield sink
    finally:
        stack.pop()


@dataclass
class StepResult:
    """What one :meth:`ClusterGradientEngine.step` did. Tensors are detached and stay on the device
    (no synchronisation); :meth:`to_dict` converts to JSON-ready numbers.

    ``loss`` is the global per-sample mean (comparable to vanilla training), ``weights[i]`` the
    effective coefficient of ``∇L_i`` in the update, ``grad_norm`` the norm of the (unscaled)
    update before clipping when it was computed (gradient steps, or when clipping), ``skipped``
    is True when the gradients were not finite and the step was left for the GradScaler to skip.
    ``sample_losses`` holds this process's per-sample losses ℓ_b in batch order (float32; None
    after a skipped step), for statistics over any other grouping of t than the clusters, and
    ``sample_values`` what ``compute_losses`` handed over with :func:`emit_sample_values` during
    a ``vmap`` pass, by name, in the same order (None when nothing was).
    """

    loss: Tensor
    cluster_losses: Tensor
    counts: Tensor
    weights: Tensor
    grad_norm: Tensor | None
    used_gradients: bool
    skipped: bool
    mode: str
    record: dict[str, Any] | None = None
    sample_losses: Tensor | None = None
    sample_values: dict[str, Tensor] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "loss": float(self.loss),
            "cluster_losses": [float(x) for x in self.cluster_losses.tolist()],
            "counts": [int(x) for x in self.counts.tolist()],
            "weights": [float(x) for x in self.weights.tolist()],
            "grad_norm": None if self.grad_norm is None else float(self.grad_norm),
            "used_gradients": self.used_gradients,
            "skipped": self.skipped,
            "mode": self.mode,
            "balancer": self.record or {},
        }


def find_batchnorm(model: nn.Module) -> str | None:
    """Qualified name of the first BatchNorm-like module (``_BatchNorm``, SyncBatchNorm), or None."""
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            return name or type(module).__name__
    return None


class ClusterGradientEngine:
    """Run one training step of ``balancer`` on ``model``; fills ``p.grad`` like ``backward()``.

    ``compute_losses(index)`` must run the forward pass for the samples at ``index`` (a LongTensor
    of batch positions) and return their per-sample losses ``[len(index)]``. It must be
    deterministic given ``index``: draw the noise, timesteps and label dropout of the batch once,
    outside the closure. Like ``loss.backward()``, :meth:`step` *adds* to existing ``.grad``; call
    ``optimizer.zero_grad()`` between steps.

    >>> engine = ClusterGradientEngine(model, make_balancer("pcgrad", 5))   # doctest: +SKIP
    >>> result = engine.step(lambda i: per_sample_loss(x[i], t[i], noise[i]), batch)
    >>> optimizer.step(); optimizer.zero_grad(); engine.after_optimizer_step(...)

    ``model`` may be wrapped in ``DistributedDataParallel``; ``process_group`` then defaults to
    the wrapper's group. ``scaler`` is an optional ``torch.amp.GradScaler`` (fp16).
    """

    def __init__(
        self,
        model: nn.Module,
        balancer: Balancer,
        mode: str = "auto",
        scaler: Any | None = None,
        process_group: Any | None = None,
        pad_split: bool = False,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(balancer, Balancer):
            raise TypeError(
                f"balancer must be an antdiff Balancer (see antdiff.mtl.make_balancer), got "
                f"{type(balancer).__name__}"
            )
        if mode not in ENGINE_MODES:
            raise ValueError(
                f"unknown engine mode {mode!r}; choose one of {', '.join(ENGINE_MODES)}"
            )
        self.model = model
        self.module = unwrap_model(model)
        self.balancer = balancer
        self.scaler = scaler
        if process_group is None and is_ddp(model):
            process_group = model.process_group
        self.process_group = process_group
        self.mode = self._resolve_mode(mode)
        if pad_split and self.mode != "split":
            raise ValueError(
                f"pad_split pads the sub-batches of mode='split'; this engine runs "
                f"mode={self.mode!r} (vmap pads by itself). Drop pad_split or use mode='split'"
            )
        self.pad_split = pad_split
        self._buffer: _GradBuffer | None = None

    # ------------------------------------------------------------------ configuration
    def _resolve_mode(self, mode: str) -> str:
        bn = find_batchnorm(self.module)
        if mode == "auto":
            return "retain_graph" if bn else "split"
        if mode in ("split", "vmap", "gramian") and bn:
            raise ValueError(
                f"the model contains BatchNorm ({bn}): mode={mode!r} evaluates each cluster's "
                "samples separately, so BatchNorm would normalise with other statistics than on "
                "the full batch. Use mode='retain_graph', or GroupNorm/LayerNorm in the model"
            )
        if mode == "gramian" and world_size(self.process_group) > 1:
            raise ValueError(
                "mode='gramian' cannot run under DDP: the cluster Gramian of a distributed batch "
                "needs products of gradients held by different ranks. Use mode='split'"
            )
        return mode

    def release_buffers(self) -> None:
        """Free the k×P gradient buffer (reallocated by the next gradient step)."""
        self._buffer = None

    def _params(self) -> list[nn.Parameter]:
        params = [p for p in self.module.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no parameter with requires_grad=True")
        devices = {p.device for p in params}
        if len(devices) > 1:
            raise ValueError(
                f"the model's trainable parameters live on several devices ({sorted(map(str, devices))}); "
                "the engine supports one device per process (use DDP for several GPUs)"
            )
        return params

    def _scaler_enabled(self) -> bool:
        return self.scaler is not None and bool(self.scaler.is_enabled())

    def _backward(self, loss: Tensor, retain_graph: bool = False) -> None:
        if self._scaler_enabled():
            loss = self.scaler.scale(loss)
        loss.backward(retain_graph=retain_graph)

    def _scale(self) -> float:
        return float(self.scaler.get_scale()) if self._scaler_enabled() else 1.0

    def _no_sync(self) -> contextlib.AbstractContextManager[Any]:
        return self.model.no_sync() if is_ddp(self.model) else contextlib.nullcontext()

    @staticmethod
    def _call(compute_losses: ComputeLosses, index: Tensor, need_grad: bool = True) -> Tensor:
        out = compute_losses(index)
        if not torch.is_tensor(out) or out.ndim != 1 or out.shape[0] != index.numel():
            shape = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
            raise ValueError(
                f"compute_losses(index) must return one loss per index, a tensor of shape "
                f"[{index.numel()}]; got {shape}. Use reduction='none' and average over the "
                "non-batch dimensions"
            )
        if need_grad and not out.requires_grad:
            raise ValueError(
                "compute_losses(index) returned losses that do not require grad: run the model's "
                "forward pass inside compute_losses, with gradients enabled"
            )
        return out

    def _check_batch(self, batch: TimestepBatch) -> None:
        if not isinstance(batch, TimestepBatch):
            raise TypeError(f"batch must be a TimestepBatch, got {type(batch).__name__}")
        if batch.num_clusters != self.balancer.num_clusters:
            raise ValueError(
                f"the batch has {batch.num_clusters} clusters but the balancer was built for "
                f"{self.balancer.num_clusters}"
            )

    # ------------------------------------------------------------------ public API
    def step(
        self, compute_losses: ComputeLosses, batch: TimestepBatch, *, record: bool = True
    ) -> StepResult:
        """One training step: fills ``.grad`` of the model (and of the balancer's parameters).

        ``record=False`` skips ``balancer.record()`` (which reads numbers back to the host); use
        it on steps that are not logged to keep the GPU queue full.
        """
        self._check_batch(batch)
        bal = self.balancer
        if not bal.gradients_due():
            return self._loss_step(compute_losses, batch, record)
        if self.mode == "gramian":
            return self._gramian_step(compute_losses, batch, record)
        return self._buffer_step(compute_losses, batch, record, self.mode)

    @torch.no_grad()
    def recompute_cluster_losses(
        self, compute_losses: ComputeLosses, batch: TimestepBatch
    ) -> ClusterLosses:
        """Cluster losses of ``batch`` under ``no_grad`` (one forward), globally reduced."""
        self._check_batch(batch)
        index = torch.arange(batch.batch_size, device=batch.cluster_ids.device)
        per = self._call(compute_losses, index, need_grad=False)
        return cluster_losses(per, batch, self.process_group)

    def after_optimizer_step(
        self,
        compute_losses: ComputeLosses | None = None,
        batch: TimestepBatch | None = None,
    ) -> None:
        """Call after ``optimizer.step()``. For FAMO it recomputes the cluster losses on the same
        batch (same closure, no gradients) and updates the weights; for other balancers it only
        forwards the call."""
        bal = self.balancer
        if not bal.needs_post_step_losses:
            bal.after_optimizer_step(None)
            return
        if compute_losses is None or batch is None:
            raise ValueError(
                f"balancer {bal.name!r} needs the losses after the optimizer step: call "
                "engine.after_optimizer_step(compute_losses, batch) with the step's closure and batch"
            )
        bal.after_optimizer_step(self.recompute_cluster_losses(compute_losses, batch).losses)

    # ------------------------------------------------------------------ loss-based step
    def _loss_step(
        self, compute_losses: ComputeLosses, batch: TimestepBatch, record: bool
    ) -> StepResult:
        bal = self.balancer
        index = torch.arange(batch.batch_size, device=batch.cluster_ids.device)
        per = self._call(compute_losses, index)
        loss = bal.loss(per, batch, process_group=self.process_group)
        cl = bal.last_cluster_losses
        if cl is None:  # a custom balancer that does not record them
            cl = cluster_losses(per.detach(), batch, self.process_group)
        self._backward(loss)
        bal.sync_gradients(self.process_group)
        grad_norm = None
        if bal.max_grad_norm is not None:
            scale = self._scale()
            params = self._params()
            total = torch.nn.utils.clip_grad_norm_(params, bal.max_grad_norm * scale)
            grad_norm = total.detach() / scale
        return StepResult(
            loss=cl.mean,
            cluster_losses=cl.losses.detach(),
            counts=cl.counts,
            weights=bal.last_weights,
            grad_norm=grad_norm,
            used_gradients=False,
            skipped=False,
            mode="loss",
            record=bal.record() if record else None,
            sample_losses=per.detach().float(),
        )

    # ------------------------------------------------------------------ split / retain_graph
    def _get_buffer(self, params: list[nn.Parameter], k: int) -> _GradBuffer:
        buf = self._buffer
        if buf is None or not buf.matches(params, k):
            self._buffer = None  # free the old one before allocating
            buf = _GradBuffer(params, k)
            self._buffer = buf
        else:
            buf.data.zero_()
        return buf

    @contextlib.contextmanager
    def _track_touched(self, params: list[nn.Parameter], touched: list[bool]) -> Iterator[None]:
        def hook(j: int) -> Callable[[Tensor], None]:
            def mark(_: Tensor) -> None:
                touched[j] = True

            return mark

        handles = [p.register_post_accumulate_grad_hook(hook(j)) for j, p in enumerate(params)]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def _buffer_step(
        self, compute_losses: ComputeLosses, batch: TimestepBatch, record: bool, mode: str
    ) -> StepResult:
        bal = self.balancer
        params = self._params()
        k = batch.num_clusters
        gb = self._get_buffer(params, k)
        buf, size = gb.data, gb.size
        counts = [int(c) for c in batch.counts.tolist()]
        ids = batch.cluster_ids
        touched = [False] * len(params)
        stash = [p.grad for p in params]
        sample = torch.zeros(batch.batch_size, device=ids.device)  # ℓ_b in batch order
        values: dict[str, Tensor] | None = None  # emit_sample_values of a vmap pass
        try:
            with self._no_sync(), self._track_touched(params, touched):
                if mode == "vmap":
                    values = self._vmap_fill(compute_losses, batch, params, gb, counts, sample)
                    touched[:] = [True] * len(params)
                elif mode == "split":
                    order = torch.argsort(ids, stable=True)
                    width = max(counts) if self.pad_split else 0
                    start = 0
                    for i in range(k):
                        n = counts[i]
                        if n == 0:
                            continue
                        index = order[start : start + n]
                        start += n
                        gb.bind(params, i)
                        if n < width:  # padding rows are computed, never summed: zero gradient
                            padded = torch.cat([index, index[:1].expand(width - n)])
                            per_i = self._call(compute_losses, padded).float()[:n]
                        else:
                            per_i = self._call(compute_losses, index).float()
                        sample.index_copy_(0, index, per_i.detach().to(sample.device))
                        s = per_i.sum()
                        buf[i, size] = s.detach()
                        buf[i, size + 1] = n
                        self._backward(s)
                        gb.collect(params, i)
                else:
                    index = torch.arange(batch.batch_size, device=ids.device)
                    per = self._call(compute_losses, index).float()
                    sample = per.detach().to(sample.device)
                    sums = per.new_zeros(k).index_add(0, ids.to(per.device), per)
                    present_local = [i for i in range(k) if counts[i] > 0]
                    for j, i in enumerate(present_local):
                        gb.bind(params, i)
                        self._backward(sums[i], retain_graph=j < len(present_local) - 1)
                        gb.collect(params, i)
                    buf[:, size] = sums.detach().to(buf.device)
                    buf[:, size + 1] = to_device(torch.tensor(counts, dtype=buf.dtype), buf.device)
        finally:
            for p, g in zip(params, stash):
                p.grad = g
        flags = torch.zeros(k * gb.n_flags, dtype=buf.dtype)
        flags[: len(params)] = torch.tensor(touched, dtype=buf.dtype)
        buf[:, size + 2 :] = to_device(flags.view(k, gb.n_flags), buf.device)

        all_reduce_sum(buf, self.process_group)

        loss_sums = buf[:, size].clone()
        n_global = buf[:, size + 1].clone()
        touched_global = (buf[:, size + 2 :].reshape(-1)[: len(params)] > 0).tolist()
        present = n_global > 0
        scale = self._scale()
        grads = buf[:, :size]
        grads.mul_(torch.where(present, 1.0 / (n_global.clamp_min(1.0) * scale), 0.0)[:, None])
        gram = grads @ grads.T
        losses = loss_sums / n_global.clamp_min(1.0)
        mean = loss_sums.sum() / n_global.sum().clamp_min(1.0)
        if not bool(torch.isfinite(gram).all()):
            return self._non_finite(params, stash, losses, n_global, mean, mode)

        w = bal.weights(gram, losses, present).to(grads.device, grads.dtype)
        update = w @ grads
        grad_norm = update.norm()
        if bal.max_grad_norm is not None:
            update.mul_(torch.clamp(bal.max_grad_norm / (grad_norm + 1e-6), max=1.0))
        if scale != 1.0:
            update.mul_(scale)
        for p, (off, _), has in zip(params, gb.layout, touched_global):
            if not has:
                continue
            u = _param_view(update, off, p)
            if p.grad is None:
                p.grad = u.to(p.dtype) if p.dtype != u.dtype else u
            else:
                p.grad.add_(u.to(p.grad.dtype))
        return StepResult(
            loss=mean,
            cluster_losses=losses,
            counts=n_global,
            weights=bal.last_weights,
            grad_norm=grad_norm.detach(),
            used_gradients=True,
            skipped=False,
            mode=mode,
            record=bal.record() if record else None,
            sample_losses=sample,
            sample_values=values or None,
        )

    def _vmap_fill(
        self,
        compute_losses: ComputeLosses,
        batch: TimestepBatch,
        params: list[nn.Parameter],
        gb: _GradBuffer,
        counts: list[int],
        sample: Tensor,
    ) -> dict[str, Tensor]:
        """All cluster gradients in one batched pass: ``vmap`` over the present clusters of
        ``grad`` of the cluster's loss sum, the parameters substituted into the module for the
        duration of the closure. Sub-batches are padded to the largest with copies of their first
        sample at weight 0. Same FLOPs as ``split`` (plus padding) but one set of kernel launches
        instead of k, which is what counts when the step is bound by launch overhead. The
        per-sample losses go to ``sample`` (batch order; the padding left out); returned: the
        closure's :func:`emit_sample_values`, in the same order."""
        from torch.nn.utils.stateless import _reparametrize_module  # what functional_call uses

        names = {id(p): n for n, p in self.module.named_parameters()}
        keys = [names[id(p)] for p in params]
        present = [i for i, n in enumerate(counts) if n > 0]
        width = max(counts)
        order = torch.argsort(batch.cluster_ids, stable=True)
        starts = [sum(counts[:i]) for i in range(len(counts))]
        index = torch.empty(len(present), width, dtype=torch.long, device=order.device)
        weight = torch.zeros(len(present), width, device=order.device)
        for r, i in enumerate(present):
            sl = order[starts[i] : starts[i] + counts[i]]
            index[r, : counts[i]] = sl
            index[r, counts[i] :] = sl[0]
            weight[r, : counts[i]] = 1.0
        if self._scaler_enabled():
            self.scaler.scale(torch.ones((), device=params[0].device))  # initialise the scale
        scale = self._scale()

        def cluster_sum(p: dict[str, Tensor], idx: Tensor, w: Tensor) -> tuple[Tensor, Any]:
            with _reparametrize_module(self.module, p), _collect_sample_values() as emitted:
                losses = compute_losses(idx)
            if losses.ndim != 1 or losses.shape[0] != idx.shape[0]:
                raise ValueError(
                    f"compute_losses(index) must return one loss per index, a tensor of shape "
                    f"[{idx.shape[0]}]; got {tuple(losses.shape)}"
                )
            for name, v in emitted.items():
                if v.shape != losses.shape:
                    raise ValueError(
                        f"emit_sample_values({name}=...) needs one value per index, a tensor of "
                        f"shape [{idx.shape[0]}]; got {tuple(v.shape)}"
                    )
            total = (losses.float() * w).sum()
            extra = {n: v.detach().float() for n, v in emitted.items()}
            return total * scale, (total.detach(), losses.detach().float(), extra)

        detached = {n: p.detach() for n, p in zip(keys, params)}
        grads, (sums, per, extra) = torch.func.vmap(
            torch.func.grad(cluster_sum, has_aux=True), in_dims=(None, 0, 0), randomness="different"
        )(detached, index, weight)
        # the real (unpadded) entries, chosen on the host from the counts: no synchronisation
        valid = to_device(
            torch.cat([r * width + torch.arange(counts[i]) for r, i in enumerate(present)]),
            index.device,
        )
        into = index.reshape(-1)[valid].to(sample.device)
        sample.index_copy_(0, into, per.reshape(-1)[valid].to(sample.device))
        values = {
            n: torch.zeros_like(sample).index_copy_(0, into, v.reshape(-1)[valid].to(sample.device))
            for n, v in extra.items()
        }
        rows = to_device(torch.tensor(present), gb.data.device)
        flat = torch.cat([_flatten_like(grads[n], p).float() for n, p in zip(keys, params)], dim=1)
        gb.data[rows, : gb.size] = flat
        gb.data[rows, gb.size] = sums.float()
        gb.data[rows, gb.size + 1] = to_device(
            torch.tensor([float(counts[i]) for i in present]), gb.data.device
        )
        return values

    def _non_finite(
        self,
        params: list[nn.Parameter],
        stash: list[Tensor | None],
        losses: Tensor,
        counts: Tensor,
        mean: Tensor,
        mode: str,
    ) -> StepResult:
        if not self._scaler_enabled():
            raise FloatingPointError(
                "the cluster gradients are not finite (inf/nan) and there is no enabled GradScaler "
                "to skip the step: training diverged; lower the learning rate, or use fp16 with a "
                "GradScaler / bf16 autocast"
            )
        # Leave a non-finite gradient so that scaler.step() skips the update and scaler.update()
        # lowers the scale, exactly as for an ordinary overflowing fp16 step. The balancer's state
        # is not touched (NashMTL recomputes at the next step).
        p = params[0]
        p.grad = torch.full_like(p, float("inf"))
        return StepResult(
            loss=mean,
            cluster_losses=losses,
            counts=counts,
            weights=torch.zeros_like(losses),
            grad_norm=None,
            used_gradients=True,
            skipped=True,
            mode=mode,
            record=None,
        )

    # ------------------------------------------------------------------ gramian
    def _gramian_step(
        self, compute_losses: ComputeLosses, batch: TimestepBatch, record: bool
    ) -> StepResult:
        from torchjd.autogram import Engine

        bal = self.balancer
        params = self._params()
        k = batch.num_clusters
        ids = batch.cluster_ids
        index = torch.arange(batch.batch_size, device=ids.device)
        # autogram re-runs every module's forward while it differentiates: it must see the same
        # autocast state as the user's closure had, or bf16 activations meet fp32 weights.
        device_type = params[0].device.type
        autocast_state: dict[str, Any] = {}

        def remember_autocast(_module: nn.Module, _args: Any) -> None:
            autocast_state["enabled"] = torch.is_autocast_enabled(device_type)
            autocast_state["dtype"] = torch.get_autocast_dtype(device_type)

        autogram = Engine(self.module, batch_dim=0)
        handle = self.module.register_forward_pre_hook(remember_autocast)
        try:
            per = self._call(compute_losses, index)
            handle.remove()
            scaled = self.scaler.scale(per.float()) if self._scaler_enabled() else per.float()
            replay = (
                torch.autocast(device_type, dtype=autocast_state["dtype"])
                if autocast_state.get("enabled")
                else contextlib.nullcontext()
            )
            with replay:
                sample_gram = autogram.compute_gramian(scaled).double()
        finally:
            handle.remove()
            _remove_autogram_hooks(autogram)
        scale = self._scale()
        dev = sample_gram.device
        onehot = torch.zeros(k, batch.batch_size, dtype=torch.float64, device=dev)
        onehot[ids.to(dev), torch.arange(batch.batch_size, device=dev)] = 1.0
        n = onehot.sum(1)
        present = n > 0
        inv = torch.where(present, 1.0 / (n.clamp_min(1.0) * scale), 0.0)
        pool = onehot * inv[:, None]  # row i: 1/(n_i·S) on the samples of cluster i
        gram = pool @ sample_gram @ pool.T
        losses = (onehot @ per.detach().double()) / n.clamp_min(1.0)
        mean = per.detach().double().mean()
        if not bool(torch.isfinite(gram).all()):
            return self._non_finite(params, [p.grad for p in params], losses, n, mean, "gramian")
        w = bal.weights(gram, losses, present).to(dev)
        grad_norm = torch.sqrt(torch.clamp(w @ gram @ w, min=0.0))
        coef = torch.ones((), dtype=torch.float64, device=dev)
        if bal.max_grad_norm is not None:
            coef = torch.clamp(bal.max_grad_norm / (grad_norm + 1e-6), max=1.0)
        per_sample_weight = (w * torch.where(present, 1.0 / n.clamp_min(1.0), 0.0) * coef)[
            ids.to(dev)
        ]
        (scaled * per_sample_weight.to(scaled.dtype)).sum().backward()
        return StepResult(
            loss=mean.float(),
            cluster_losses=losses.float(),
            counts=n.float(),
            weights=bal.last_weights,
            grad_norm=grad_norm.float().detach(),
            used_gradients=True,
            skipped=False,
            mode="gramian",
            record=bal.record() if record else None,
            sample_losses=per.detach().float(),
        )


class _GradBuffer:
    """The k × (P + 2 + flags) float32 buffer of the split/retain_graph modes, with a cached
    ``.grad`` view of every parameter into every row.

    Row i holds ``[Σ_{b∈i} ∇ℓ_b (P) | Σ_{b∈i} ℓ_b | n_i | received-a-gradient flags]`` so that one
    all-reduce carries everything. Autograd accumulates *in place* into an existing ``.grad``, so
    pointing ``.grad`` at the row makes the backward write the cluster gradient there directly
    (no copy, no extra P floats). Views are built once: re-slicing ~300 parameters per sub-pass
    costs milliseconds of Python per step, the cached assignment a fraction of one.
    """

    def __init__(self, params: list[nn.Parameter], k: int) -> None:
        self.key = [(id(p), p.shape, p.dtype, p.device) for p in params]
        self.k = k
        self.layout: list[tuple[int, int]] = []
        off = 0
        for p in params:
            self.layout.append((off, p.numel()))
            off += p.numel()
        self.size = off
        self.n_flags = math.ceil(len(params) / k)
        device = params[0].device
        self.data = torch.zeros(k, self.size + 2 + self.n_flags, dtype=torch.float32, device=device)
        # Parameters of another dtype (e.g. bf16 weights) get their own .grad, copied after.
        self.copied = [
            j for j, p in enumerate(params) if p.dtype != self.data.dtype or p.device != device
        ]
        skip = set(self.copied)
        self.views = [
            [
                None if j in skip else _param_view(self.data[i], off, p)
                for j, (p, (off, _)) in enumerate(zip(params, self.layout))
            ]
            for i in range(k)
        ]

    def matches(self, params: list[nn.Parameter], k: int) -> bool:
        return k == self.k and self.key == [(id(p), p.shape, p.dtype, p.device) for p in params]

    def bind(self, params: list[nn.Parameter], i: int) -> None:
        for p, v in zip(params, self.views[i]):
            p.grad = v

    def collect(self, params: list[nn.Parameter], i: int) -> None:
        row = self.data[i]
        for j in self.copied:
            p = params[j]
            if p.grad is not None:
                _param_view(row, self.layout[j][0], p).copy_(p.grad)
            p.grad = None


def _memory_order(p: Tensor) -> list[int] | None:
    """The dims of ``p`` from outermost to innermost in memory when ``p`` is dense but not
    contiguous (e.g. a channels-last weight); None when it is contiguous or not dense."""
    if p.is_contiguous():
        return None
    order = sorted(range(p.dim()), key=lambda d: -p.stride(d))
    expected = 1
    for d in reversed(order):
        if p.size(d) != 1 and p.stride(d) != expected:
            return None  # overlapping or with gaps: fall back to the logical order
        expected *= p.size(d)
    return order


def _param_view(flat: Tensor, off: int, p: Tensor) -> Tensor:
    """``flat[off : off + p.numel()]`` as a tensor shaped and laid out in memory like ``p``.

    Channels-last weights thus get channels-last gradients: autograd accumulates into a
    ``.grad`` of the parameter's own layout and the optimizer sees matching layouts (a
    contiguous view would break PyTorch's gradient layout contract and cost copies). Every
    consumer of the buffer (Gram matrix, balancers, all-reduce) is elementwise or a dot product
    over rows of one common layout, so the order within a parameter's slice is free."""
    chunk = flat[off : off + p.numel()]
    if _memory_order(p) is None:
        return chunk.view_as(p)
    return chunk.as_strided(p.shape, p.stride())


def _flatten_like(g: Tensor, p: Tensor) -> Tensor:
    """Rows ``[m, p.numel()]`` of the batched gradients ``g`` (``[m, *p.shape]``) in the memory
    order of ``p``, i.e. what :func:`_param_view` reads back."""
    order = _memory_order(p)
    if order is None:
        return g.reshape(len(g), -1)
    return g.permute(0, *(d + 1 for d in order)).reshape(len(g), -1)


def _remove_autogram_hooks(autogram: Any) -> None:
    # torchjd removes its module hooks only when the engine is garbage-collected; remove them now
    # so that later forward passes (EMA updates, sampling) run unhooked. Private API of torchjd
    # 0.18 (pinned < 0.19 in pyproject); if it changes, garbage collection still removes them.
    manager = getattr(autogram, "_module_hook_manager", None)
    handles = getattr(manager, "_handles", None)
    if manager is not None and handles is not None:
        type(manager).remove_hooks(handles)
        handles.clear()
