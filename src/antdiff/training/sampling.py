"""Ancestral (DDPM) and DDIM sampling with diffusers schedulers, for ANY denoiser callable.

``model_fn(x_t, t, class_labels) -> raw model output`` is all that is needed: a trained
:class:`~antdiff.training.models.Denoiser`, an EMA copy, or the NTG hybrid sampler's wrapper that
switches networks by timestep. ``t`` is a LongTensor ``[B]`` of training timesteps (0 … T-1).

The reverse step comes from the objective's matching diffusers scheduler:

* ``ddpm``: ``DDPMScheduler`` with ``timestep_spacing="linspace"`` — for fewer steps than T the
  timesteps are ``round(linspace(0, T-1, steps))``, the same respacing as iDDPM/ADM/DiT's
  ``space_timesteps(T, "250")``, and with a learned variance (``variance_type="learned_range"``)
  the network's interpolation v gives ``Σ = exp(v log β_t + (1−v) log β̃_t)`` on the respaced
  chain, as in iDDPM.
* ``ddim``: ``DDIMScheduler`` with ``timestep_spacing="trailing"`` and ``set_alpha_to_one``, so
  the first step starts at t = T-1 (pure noise) and the last lands on x₀ (Lin et al., 2024);
  ``eta`` = 0 is deterministic. A learned variance is not used by DDIM.

Classifier-free guidance (Ho & Salimans) on the prediction's data channels::

    ε̂ = ε(x_t, ∅) + s · (ε(x_t, y) − ε(x_t, ∅)),

the variance channels (if any) taken from the conditional pass.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from .images import to_uint8_nhwc

__all__ = [
    "SAMPLERS",
    "SamplingInterrupted",
    "make_sampling_scheduler",
    "sample_images",
    "sample_images_branching",
]


class SamplingInterrupted(RuntimeError):
    """:func:`sample_images` was told to stop (its ``should_stop`` answered True)."""


SAMPLERS = ("ddpm", "ddim")

ModelFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def make_sampling_scheduler(
    objective: Any, sampler: str = "ddpm", steps: int = 250, *, clip_sample: bool = True
) -> Any:
    """The objective's diffusers scheduler for ``sampler``, set to ``steps`` inference steps.

    ``clip_sample`` clips the predicted x0 to [-1, 1] at each step (pixels: yes; latents: no).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    T = objective.schedule.num_timesteps
    if not 1 <= steps <= T:
        raise ValueError(f"sampling steps must be in [1, T={T}], got {steps}")
    if sampler == "ddpm":
        sched = objective.diffusers_scheduler(
            "ddpm", timestep_spacing="linspace", clip_sample=clip_sample
        )
    else:
        sched = objective.diffusers_scheduler(
            "ddim", timestep_spacing="trailing", set_alpha_to_one=True, clip_sample=clip_sample
        )
    sched.set_timesteps(steps)
    return sched


def _autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _reverse_step(
    model_fn: ModelFn,
    sched: Any,
    x: torch.Tensor,
    t: Any,
    *,
    y: torch.Tensor | None,
    y_in: torch.Tensor | None,
    guidance: float,
    sampler: str,
    eta: float,
    generator: torch.Generator,
    autocast_dtype: torch.dtype | None,
) -> torch.Tensor:
    """One reverse step x_t → x_{t−Δ} of ``model_fn`` (with guidance when ``y_in`` is given)."""
    b, C = x.shape[0], x.shape[1]
    tt = torch.full((b,), int(t), device=x.device, dtype=torch.long)
    with _autocast(x.device, autocast_dtype):
        if y_in is not None:
            raw = model_fn(torch.cat([x, x]), torch.cat([tt, tt]), y_in)
        else:
            raw = model_fn(x, tt, y)
    raw = raw.float()
    if y_in is not None:
        cond, uncond = raw.chunk(2)
        eps = uncond[:, :C] + guidance * (cond[:, :C] - uncond[:, :C])
        raw = torch.cat([eps, cond[:, C:]], dim=1)
    if sampler == "ddim":
        return sched.step(raw[:, :C], t, x, eta=eta, generator=generator).prev_sample
    return sched.step(raw, t, x, generator=generator).prev_sample


def _check_sampling_args(
    n: int,
    batch_size: int,
    image_shape: Sequence[int],
    guidance: float,
    class_labels: torch.Tensor | Sequence[int] | None,
    null_class_label: int | None,
) -> torch.Tensor | None:
    """Validate the arguments shared by the samplers; the labels as a LongTensor (or None)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(image_shape) != 3:
        raise ValueError(f"image_shape must be (C, H, W), got {tuple(image_shape)}")
    if guidance < 1.0:
        raise ValueError(f"guidance must be >= 1 (1 = none), got {guidance}")
    labels = None
    if class_labels is not None:
        labels = torch.as_tensor(class_labels, dtype=torch.long).reshape(-1)
        if labels.numel() != n:
            raise ValueError(f"got {labels.numel()} class labels for n={n} samples")
    if guidance > 1.0 and (labels is None or null_class_label is None):
        raise ValueError(
            "classifier-free guidance needs class_labels and the model's null_class_label "
            "(a class-conditional model trained with label dropout)"
        )
    return labels


def _batch_labels(
    labels: torch.Tensor | None,
    start: int,
    b: int,
    guided: bool,
    null_class_label: int | None,
    device: torch.device,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``(y, y_in)`` of one batch: its labels and, with guidance, labels + null labels."""
    y = None if labels is None else labels[start : start + b].to(device)
    if not guided:
        return y, None
    assert y is not None and null_class_label is not None
    return y, torch.cat([y, torch.full_like(y, null_class_label)])


@torch.no_grad()
def sample_images(
    model_fn: ModelFn,
    objective: Any,
    n: int,
    *,
    image_shape: Sequence[int],
    sampler: str = "ddpm",
    steps: int = 250,
    batch_size: int = 256,
    seed: int = 0,
    class_labels: torch.Tensor | Sequence[int] | None = None,
    guidance: float = 1.0,
    null_class_label: int | None = None,
    eta: float = 0.0,
    codec: Any = None,
    device: str | torch.device = "cpu",
    autocast_dtype: torch.dtype | None = None,
    clip_sample: bool | None = None,
    progress: bool = False,
    should_stop: Callable[[], bool] | None = None,
) -> np.ndarray:
    """Draw ``n`` images; returns uint8 ``[n, H, W, C]`` (decoded by ``codec`` for latent models).

    ``image_shape`` is ``(C, H, W)`` of the space the model denoises (latents when ``codec`` is
    given). Results are a deterministic function of ``seed`` and ``batch_size``.
    ``clip_sample`` (default: True for pixels, False with a ``codec``) clips x̂0 to [-1, 1].
    ``guidance > 1`` needs ``class_labels`` and the model's ``null_class_label``.
    ``should_stop`` is asked before every batch; when it answers True sampling ends with
    :class:`SamplingInterrupted` (a trainer told to stop need not finish a long evaluation).
    """
    (images,) = sample_images_branching(
        model_fn, [], objective, n, image_shape=image_shape, sampler=sampler, steps=steps,
        batch_size=batch_size, seed=seed, class_labels=class_labels, guidance=guidance,
        null_class_label=null_class_label, eta=eta, codec=codec, device=device,
        autocast_dtype=autocast_dtype, clip_sample=clip_sample, progress=progress,
        should_stop=should_stop,
    )  # fmt: skip
    return images


def _clone_generator(gen: torch.Generator) -> torch.Generator:
    copy_ = torch.Generator(device=gen.device)
    copy_.set_state(gen.get_state())
    return copy_


@torch.no_grad()
def sample_images_branching(
    base_fn: ModelFn,
    branches: Sequence[tuple[int, ModelFn]],
    objective: Any,
    n: int,
    *,
    include_base: bool = True,
    image_shape: Sequence[int],
    sampler: str = "ddpm",
    steps: int = 250,
    batch_size: int = 256,
    seed: int = 0,
    class_labels: torch.Tensor | Sequence[int] | None = None,
    guidance: float = 1.0,
    null_class_label: int | None = None,
    eta: float = 0.0,
    codec: Any = None,
    device: str | torch.device = "cpu",
    autocast_dtype: torch.dtype | None = None,
    clip_sample: bool | None = None,
    progress: bool = False,
    should_stop: Callable[[], bool] | None = None,
) -> list[np.ndarray]:
    """The images of ``base_fn`` and of models that agree with it on the noisiest timesteps,
    with the shared part of their reverse trajectories computed once.

    A branch ``(last, fn)`` promises ``fn(x, t, y) == base_fn(x, t, y)`` for every ``t > last``:
    the NTG hybrid of an interval ``[first, last]`` is the joint model above it. Its images equal
    ``sample_images(fn, …)`` with the same arguments and seed — the same initial noise and, for
    DDPM, the same step noise (one draw per step for every model) — but the steps at ``t > last``
    are those of the base trajectory: the branch starts from a copy of the base's state, scheduler
    and generator at its first timestep ≤ ``last``.

    Returns ``[base images (if include_base), images of each branch in the given order]``, uint8
    ``[n, H, W, C]`` each. Cost, in reverse steps per image: the base trajectory down to the
    deepest branch point (all of it with ``include_base``) plus each branch's remaining steps —
    for the joint model and the 5 equal-interval NTG hybrids 3 trajectories' worth instead of 6.
    Memory: one more state ``[batch, C, H, W]`` than :func:`sample_images` (branches run depth
    first). ``progress`` and ``should_stop`` as in :func:`sample_images`, which is this function
    without branches.
    """
    labels = _check_sampling_args(
        n, batch_size, image_shape, guidance, class_labels, null_class_label
    )
    device = torch.device(device)
    guided = guidance > 1.0
    clip = codec is None if clip_sample is None else bool(clip_sample)
    gen = torch.Generator(device=device).manual_seed(int(seed))
    timesteps = [int(t) for t in make_sampling_scheduler(objective, sampler, steps).timesteps]
    # the index of the first visited timestep <= last: where each branch leaves the base
    starts = [next((i for i, t in enumerate(timesteps) if t <= last), len(timesteps))
              for last, _ in branches]  # fmt: skip
    base_until = len(timesteps) if include_base else max(starts, default=0)
    out: list[list[np.ndarray]] = [[] for _ in range(len(branches) + int(include_base))]

    def finish(x: torch.Tensor) -> np.ndarray:
        return to_uint8_nhwc(codec.decode(x) if codec is not None else x)

    batches: Any = range(0, n, batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc=f"sampling ({sampler}, {steps} steps)", unit="batch")
    for start in batches:
        if should_stop is not None and should_stop():
            raise SamplingInterrupted(f"sampling stopped after {start} of {n} images")
        b = min(batch_size, n - start)
        sched = make_sampling_scheduler(objective, sampler, steps, clip_sample=clip)
        x = torch.randn((b, *image_shape), generator=gen, device=device)
        y, y_in = _batch_labels(labels, start, b, guided, null_class_label, device)
        kw = dict(y=y, y_in=y_in, guidance=guidance, sampler=sampler, eta=eta,
                  autocast_dtype=autocast_dtype)  # fmt: skip
        end_state = None  # the generator after one whole trajectory: every model draws alike
        for i in range(len(timesteps) + 1):
            for j, (_, fn) in enumerate(branches):
                if starts[j] != i:
                    continue
                xb, sb, gb = x.clone(), copy.deepcopy(sched), _clone_generator(gen)
                for t in sched.timesteps[i:]:
                    xb = _reverse_step(fn, sb, xb, t, generator=gb, **kw)  # type: ignore[arg-type]
                out[j + int(include_base)].append(finish(xb))
                end_state = gb.get_state()
            if i >= base_until:
                break
            x = _reverse_step(base_fn, sched, x, sched.timesteps[i], generator=gen, **kw)  # type: ignore[arg-type]
        if include_base:
            out[0].append(finish(x))
        elif end_state is not None:
            gen.set_state(end_state)  # as if the base had run to the end
    return [np.concatenate(o) for o in out]
