"""`antdiff export` writes diffusers directories that load and run in their pipelines."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from antdiff.cli import main
from antdiff.objective import DiffusionObjective
from antdiff.training.checkpoint import CheckpointManager, load_checkpoint
from antdiff.training.config import load_config
from antdiff.training.trainer import train

BASE = [
    "optim.batch_size=10",
    "train.steps=2",
    "train.progress=false",
    "train.tensorboard=false",
    "train.sample_n=2",
    "train.device=cpu",
    "sample.steps=2",
    "sample.sampler=ddim",
    "ema.decay=0.5",
]

KINDS = {
    "pixel-unet": [
        "model.preset=unet-tiny",
        "data.resolution=8",
        "diffusion.learned_variance=true",
    ],
    "latent-dit": [
        "model.preset=dit-tiny",
        "model.codec=tiny-random",
        "data.resolution=16",
        "data.channels=3",
        "data.class_conditional=true",
    ],
    "latent-unet": [
        "model.preset=ldm-unet-tiny",
        "model.codec=tiny-random",
        "data.resolution=16",
        "data.channels=3",
    ],
    "classcond-unet": [
        "model.preset=unet-tiny",
        "data.resolution=8",
        "data.class_conditional=true",
    ],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("export")
    out = {}
    for name, extra in KINDS.items():
        train(load_config(None, [f"run.dir={root / name}", *BASE, *extra]), log=None)
        out[name] = root / name
    yield out
    torch.set_num_threads(threads)


def export(run: Path, out: Path, *extra: str) -> dict:
    assert main(["export", str(run), "--out", str(out), *extra]) == 0
    return json.loads((out / "antdiff_export.json").read_text())


def ema_weights(run: Path) -> dict[str, torch.Tensor]:
    ck = load_checkpoint(CheckpointManager(run / "checkpoints").latest())
    return {k.removeprefix("inner."): v for k, v in ck["ema"]["model"].items()}


def test_pixel_unet_loads_in_ddpm_pipeline(runs: dict[str, Path], tmp_path: Path) -> None:
    from diffusers import DDPMPipeline

    info = export(runs["pixel-unet"], tmp_path / "d")
    assert info["pipeline"] == "DDPMPipeline" and info["weights"] == "ema" and info["step"] == 2
    pipe = DDPMPipeline.from_pretrained(tmp_path / "d")
    # the EMA weights, the run's betas, and the learned variance
    ema = ema_weights(runs["pixel-unet"])
    for k, v in pipe.unet.state_dict().items():
        assert torch.equal(v, ema[k]), k
    assert pipe.scheduler.config.variance_type == "learned_range"
    assert pipe.unet.config.out_channels == 2
    img = pipe(
        batch_size=2,
        num_inference_steps=3,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images
    assert img.shape == (2, 8, 8, 1) and np.isfinite(img).all()
    # an existing export is not replaced without --force
    assert main(["export", str(runs["pixel-unet"]), "--out", str(tmp_path / "d")]) == 2
    export(runs["pixel-unet"], tmp_path / "d", "--force", "--no-ema")


def test_latent_dit_loads_in_dit_pipeline(runs: dict[str, Path], tmp_path: Path) -> None:
    from diffusers import DiTPipeline

    info = export(runs["latent-dit"], tmp_path / "d")
    assert info["pipeline"] == "DiTPipeline"
    assert any("null class" in n for n in info["notes"])  # 10 classes, not ImageNet's 1000
    pipe = DiTPipeline.from_pretrained(tmp_path / "d")
    assert pipe.vae.config.scaling_factor == 1.0  # the tiny codec's, not diffusers' default
    assert pipe.get_label_ids(["3", "7"]) == [3, 7]  # the dataset's class names
    out = pipe(
        class_labels=[1, 2], guidance_scale=1.0, num_inference_steps=2, output_type="np"
    ).images
    assert out.shape == (2, 16, 16, 3) and np.isfinite(out).all()


def test_latent_unet_loads_in_ldm_pipeline(runs: dict[str, Path], tmp_path: Path) -> None:
    from diffusers import LDMPipeline

    info = export(runs["latent-unet"], tmp_path / "d")
    assert info["pipeline"] == "LDMPipeline"
    pipe = LDMPipeline.from_pretrained(tmp_path / "d")
    out = pipe(batch_size=1, num_inference_steps=2, output_type="np").images
    assert out.shape == (1, 16, 16, 3) and np.isfinite(out).all()


def test_class_conditional_unet_exports_its_parts(runs: dict[str, Path], tmp_path: Path) -> None:
    from diffusers import DDPMScheduler, UNet2DModel

    info = export(runs["classcond-unet"], tmp_path / "d")
    assert info["pipeline"] is None and not (tmp_path / "d" / "model_index.json").exists()
    unet = UNet2DModel.from_pretrained(tmp_path / "d", subfolder="unet")
    sched = DDPMScheduler.from_pretrained(tmp_path / "d", subfolder="scheduler")
    assert unet.config.num_class_embeds == 11  # 10 digits + the null label
    x = torch.randn(2, 1, 8, 8)
    out = unet(x, torch.tensor([5, 7]), class_labels=torch.tensor([3, 10])).sample
    assert out.shape == (2, 1, 8, 8)
    betas = DiffusionObjective.from_dict(info["objective"]).schedule.betas
    assert np.allclose(sched.betas.numpy(), betas, rtol=1e-5)
