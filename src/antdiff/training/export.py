"""Export a trained run to the diffusers format (``antdiff export``).

What is written to ``DIR`` depends on the model (the EMA weights by default):

==========================  =================================================  ==========================
model                       files                                              loads with
==========================  =================================================  ==========================
pixel UNet, unconditional   ``unet/``, ``scheduler/`` (DDPMScheduler)          ``DDPMPipeline.from_pretrained(DIR)``
DiT on latents              ``transformer/``, ``vae/``, ``scheduler/``         ``DiTPipeline.from_pretrained(DIR)``
latent UNet (LDM)           ``unet/``, ``vae/``, ``scheduler/`` (DDIM)         ``LDMPipeline.from_pretrained(DIR)``
class-conditional UNet,     the model and ``scheduler/`` only                  ``UNet2DModel.from_pretrained(DIR, subfolder="unet")``
DiT on pixels                                                                  (no diffusers pipeline fits)
==========================  =================================================  ==========================

plus ``antdiff_export.json`` (source checkpoint, step, objective, clusters, class names, notes).

The scheduler has this run's exact betas and prediction type. A DDPM scheduler keeps the learned
variance (``variance_type="learned_range"``) for UNets; ``DiTPipeline`` drops the variance
channels itself, so its scheduler uses the fixed posterior variance. ``DiTPipeline`` hard-codes
the null label 1000 for guidance: ``guidance_scale > 1`` is only right for a 1000-class model
(ImageNet); ``antdiff sample`` has no such limit. The VAE's ``scaling_factor`` is the one the
model was trained with.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

from .inference import load_for_inference

__all__ = ["export_diffusers"]


def export_diffusers(
    run_or_checkpoint: str | Path,
    out_dir: str | Path,
    *,
    use_ema: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write the diffusers export of a run to ``out_dir``; returns the ``antdiff_export.json`` dict."""
    out = Path(out_dir).expanduser()
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} exists and is not empty; pass --force to replace it")
        shutil.rmtree(out)
    bundle = load_for_inference(run_or_checkpoint, use_ema=use_ema, device="cpu")
    model, objective, codec = bundle.model, bundle.objective, bundle.codec
    inner = model.export_inner()
    notes: list[str] = []
    vae = None
    if codec is not None:
        vae = copy.deepcopy(codec.vae)
        # Pipelines divide latents by vae.config.scaling_factor: make it the one we trained with.
        vae.register_to_config(scaling_factor=codec.scaling_factor)
        if codec.shift_factor:
            notes.append(
                f"the autoencoder has shift_factor={codec.shift_factor}, which DiTPipeline and "
                "LDMPipeline ignore; use antdiff sample for exact decoding"
            )
    pipeline_name: str | None
    if model.family == "unet" and codec is None and model.num_classes is None:
        from diffusers import DDPMPipeline

        scheduler = objective.diffusers_scheduler("ddpm")
        DDPMPipeline(unet=inner, scheduler=scheduler).save_pretrained(str(out))
        pipeline_name = "DDPMPipeline"
    elif model.family == "dit" and codec is not None:
        from diffusers import DiTPipeline

        # DiTPipeline splits off the variance channels itself and steps with the mean only.
        scheduler = objective.diffusers_scheduler(
            "ddpm", variance_type="fixed_small", clip_sample=False
        )
        id2label = None
        names = bundle.class_names
        if names and model.num_classes is not None:
            id2label = {i: str(n) for i, n in enumerate(names)}
        DiTPipeline(transformer=inner, vae=vae, scheduler=scheduler).save_pretrained(str(out))
        if id2label:
            # save_pretrained does not keep id2label; DiTPipeline.from_pretrained reads it from
            # model_index.json (as in the facebook/DiT-* repositories).
            index_path = out / "model_index.json"
            index = json.loads(index_path.read_text())
            index["id2label"] = {str(i): n for i, n in id2label.items()}
            index_path.write_text(json.dumps(index, indent=2) + "\n")
        pipeline_name = "DiTPipeline"
        if model.num_classes is None:
            notes.append(
                "unconditional DiT: call the pipeline with class_labels=[0, ...] and guidance_scale=1"
            )
        elif model.num_classes != 1000:
            notes.append(
                f"DiTPipeline uses label 1000 as the null class; this model's is {model.num_classes}: "
                "call it with guidance_scale=1 (or use antdiff sample --guidance)"
            )
    elif model.family == "unet" and codec is not None and model.num_classes is None:
        from diffusers import LDMPipeline

        scheduler = objective.diffusers_scheduler("ddim", clip_sample=False)
        LDMPipeline(vqvae=vae, unet=inner, scheduler=scheduler).save_pretrained(str(out))
        pipeline_name = "LDMPipeline"
        notes.append("LDMPipeline takes the AutoencoderKL in its 'vqvae' slot (it only decodes)")
    else:
        out.mkdir(parents=True, exist_ok=True)
        sub = "transformer" if model.family == "dit" else "unet"
        inner.save_pretrained(str(out / sub))
        objective.diffusers_scheduler("ddpm", clip_sample=codec is None).save_pretrained(
            str(out / "scheduler")
        )
        if vae is not None:
            vae.save_pretrained(str(out / "vae"))
        pipeline_name = None
        why = "class-conditional UNet" if model.family == "unet" else "DiT without an autoencoder"
        notes.append(
            f"no diffusers pipeline fits a {why}: load the parts with from_pretrained(DIR, "
            f"subfolder=...) or sample with antdiff sample"
        )
    if model.num_classes is not None:
        notes.append(
            f"class-conditional: labels 0 … {model.num_classes - 1}, null label {model.null_class}"
        )
    info = {
        "pipeline": pipeline_name,
        "source_checkpoint": str(bundle.checkpoint),
        "step": bundle.step,
        "weights": "ema" if use_ema else "raw",
        "model": model.config,
        "objective": objective.to_dict(),
        "clusters": None if bundle.clusters is None else bundle.clusters.to_dict(),
        "codec": None if codec is None else codec.describe(),
        "notes": notes,
    }
    (out / "antdiff_export.json").write_text(json.dumps(info, indent=1) + "\n")
    return info
