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
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from .images import to_uint8_nhwc

__all__ = ["SAMPLERS", "SamplingInterrupted", "make_sampling_scheduler", "sample_images"]


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
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(image_shape) != 3:
        raise ValueError(f"image_shape must be (C, H, W), got {tuple(image_shape)}")
    if guidance < 1.0:
        raise ValueError(f"guidance must be >= 1 (1 = none), got {guidance}")
    device = torch.device(device)
    labels = None
    if class_labels is not None:
        labels = torch.as_tensor(class_labels, dtype=torch.long).reshape(-1)
        if labels.numel() != n:
            raise ValueError(f"got {labels.numel()} class labels for n={n} samples")
    guided = guidance > 1.0
    if guided and (labels is None or null_class_label is None):
        raise ValueError(
            "classifier-free guidance needs class_labels and the model's null_class_label "
            "(a class-conditional model trained with label dropout)"
        )
    C = int(image_shape[0])
    clip = codec is None if clip_sample is None else bool(clip_sample)
    gen = torch.Generator(device=device).manual_seed(int(seed))
    out: list[np.ndarray] = []
    batches = range(0, n, batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc=f"sampling ({sampler}, {steps} steps)", unit="batch")
    for start in batches:
        if should_stop is not None and should_stop():
            raise SamplingInterrupted(f"sampling stopped after {start} of {n} images")
        b = min(batch_size, n - start)
        sched = make_sampling_scheduler(objective, sampler, steps, clip_sample=clip)
        x = torch.randn((b, *image_shape), generator=gen, device=device)
        y = None if labels is None else labels[start : start + b].to(device)
        if guided:
            assert y is not None and null_class_label is not None
            y_in = torch.cat([y, torch.full_like(y, null_class_label)])
        for t in sched.timesteps:
            tt = torch.full((b,), int(t), device=device, dtype=torch.long)
            with _autocast(device, autocast_dtype):
                if guided:
                    raw = model_fn(torch.cat([x, x]), torch.cat([tt, tt]), y_in)
                else:
                    raw = model_fn(x, tt, y)
            raw = raw.float()
            if guided:
                cond, uncond = raw.chunk(2)
                eps = uncond[:, :C] + guidance * (cond[:, :C] - uncond[:, :C])
                raw = torch.cat([eps, cond[:, C:]], dim=1)
            if sampler == "ddim":
                x = sched.step(raw[:, :C], t, x, eta=eta, generator=gen).prev_sample
            else:
                x = sched.step(raw, t, x, generator=gen).prev_sample
        if codec is not None:
            x = codec.decode(x)
        out.append(to_uint8_nhwc(x))
    return np.concatenate(out)
