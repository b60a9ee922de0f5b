"""Every preset family trains a few steps on tiny shapes (same code path, tiny model and data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from antdiff.training.config import PRESET_DIR, load_config
from antdiff.training.demo import DEMO_CONFIG
from antdiff.training.inference import load_for_inference
from antdiff.training.monitor import MetricsLog
from antdiff.training.trainer import train

REPO = Path(__file__).resolve().parents[1]
CONFIGS = PRESET_DIR  # the shipped presets (the repository's configs/ links here)

#: full-size architecture -> the tiny one of the same family
SHRINK = {
    "unet-ddpm-cifar10": "unet-tiny",
    "adm-256-light": "unet-tiny",
    "ldm-unet": "ldm-unet-tiny",
    "dit-s2": "dit-tiny",
    "dit-l2": "dit-tiny",
}

CASES = {
    "cifar10/p2.yaml": [],
    "cifar10/ant_snr_nash.yaml": ["ant.balancer_params={update_every: 1}"],
    "cifar10/ant_affinity_pcgrad.yaml": ["ant.engine=retain_graph"],
    "faces256/ffhq_adm_ant_uw.yaml": [],
    "faces256/celebahq_ldm_vanilla.yaml": [],
    "imagenet256/dit_s2_ant_pcgrad.yaml": [],
    "imagenet256/dit_l2_min_snr.yaml": [],
}


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("preset", sorted(CASES))
def test_preset_family_trains_on_tiny_shapes(tmp_path: Path, preset: str) -> None:
    probe = load_config(
        CONFIGS / preset, ["data.spec=digits", "model.codec=tiny-random", "ant.affinity=x"]
    )
    latent = probe.model.preset in ("ldm-unet", "dit-s2", "dit-l2")
    extra = [
        f"run.dir={tmp_path / 'run'}",
        "data.spec=digits",
        "data.num_workers=0",
        f"data.resolution={16 if latent else 8}",
        "optim.batch_size=10",
        "train.steps=2",
        "train.log_every=1",
        "train.ckpt_every=2",
        "train.sample_every=0",
        "train.sample_n=4",
        "train.device=cpu",
        "train.progress=false",
        "train.tensorboard=false",
        "sample.steps=2",
        "sample.batch_size=8",
    ]
    extra += ["model.codec=tiny-random", "data.channels=3"] if latent else ["model.codec=null"]
    if "affinity" in preset:
        A = np.random.default_rng(0).normal(size=(20, 20))
        np.save(tmp_path / "aff.npy", (A + A.T) / 2)
        extra.append(f"ant.affinity={tmp_path / 'aff.npy'}")
    base = load_config(CONFIGS / preset, [*extra, *CASES[preset]])
    assert base.model.preset in SHRINK, "a preset with a full-size architecture"
    cfg = load_config(
        CONFIGS / preset, [*extra, *CASES[preset], f"model.preset={SHRINK[base.model.preset]}"]
    )
    res = train(cfg, log=None)
    assert res.step == 2
    lines = MetricsLog.read(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in lines] == [1, 2]
    assert all(np.isfinite(r["loss"]) for r in lines)
    if cfg.ant.enabled:
        assert lines[-1]["balancer"], "an ANT run logs its balancer's record"
    assert (tmp_path / "run" / "samples" / "step_000000002.png").is_file()
    bundle = load_for_inference(tmp_path / "run")
    assert (bundle.codec is not None) == latent
    assert bundle.objective.learned_variance == cfg.diffusion.learned_variance
    assert bundle.model.num_classes == (10 if cfg.data.class_conditional else None)


def test_the_demo_trains_the_shipped_demo_preset_as_documented() -> None:
    """`antdiff demo` reads the shipped preset; its settings are the ones docs/training.md and
    the README state (digits 16x16, unet-small, CPU, 600 steps, ANT-UW with k = 5)."""
    a = load_config(CONFIGS / "demo.yaml").to_dict()
    b = load_config(None, defaults=DEMO_CONFIG).to_dict()
    a["run"].pop("dir"), b["run"].pop("dir")
    assert a == b
    assert (b["data"]["spec"], b["data"]["resolution"], b["model"]["preset"]) == (
        "digits",
        16,
        "unet-small",
    )
    assert (b["train"]["steps"], b["train"]["device"], b["ant"]["balancer"], b["ant"]["k"]) == (
        600,
        "cpu",
        "uw",
        5,
    )
