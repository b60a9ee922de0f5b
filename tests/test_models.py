"""Denoiser presets (diffusers), the uniform wrapper, and the latent codec."""

from __future__ import annotations

import json

import pytest
import torch

from antdiff.training.models import PRESETS, Denoiser, LatentCodec, build_denoiser, count_parameters

# Big presets are built with the same block layout but narrow channels for the forward test;
# their real sizes are checked by the parameter-count tests.
SHRINK = {
    "ldm-unet": {"block_out_channels": [32, 32, 32, 32], "attention_head_dim": 8},
    "adm-64": {"block_out_channels": [32, 32, 32, 32], "attention_head_dim": 8},
    "adm-256-light": {"block_out_channels": [32] * 6, "attention_head_dim": 8},
    "unet-ddpm-cifar10": {"block_out_channels": [32, 32, 32, 32]},
    "dit-b2": {"num_layers": 2},
    "dit-l2": {"num_layers": 2},
}


def tiny_size(name: str) -> int:
    spec = PRESETS[name]
    if spec.family == "unet":
        levels = len(spec.config["block_out_channels"])
        return max(8, 2 ** (levels - 1))
    return 8


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("num_classes", [None, 3])
def test_every_preset_builds_and_runs_forward(name, num_classes):
    C = 4 if PRESETS[name].latent else 3
    S = tiny_size(name)
    m = build_denoiser(
        name,
        sample_size=S,
        in_channels=C,
        out_channels=2 * C,
        num_classes=num_classes,
        seed=0,
        **SHRINK.get(name, {}),
    )
    x = torch.randn(2, C, S, S)
    t = torch.tensor([3, 700])
    labels = None if num_classes is None else torch.tensor([0, num_classes])  # a class and the null
    with torch.no_grad():
        out = m(x, t, labels)
    assert out.shape == (2, 2 * C, S, S)
    assert torch.isfinite(out).all()
    assert m.null_class == num_classes and m.class_conditional == (num_classes is not None)


def test_ddpm_cifar10_has_35_7M_parameters():
    m = build_denoiser("unet-ddpm-cifar10", sample_size=32, in_channels=3, out_channels=3)
    assert abs(m.num_parameters() - 35.7e6) / 35.7e6 < 0.02, m.num_parameters()
    assert m.inner.config.dropout == 0.1


def test_dit_s2_matches_the_original_33M():
    # Original DiT-S/2 (ImageNet, learn-sigma): 33.0M; diffusers' per-block embedders are shared.
    m = build_denoiser("dit-s2", sample_size=32, in_channels=4, out_channels=8, num_classes=1000)
    assert abs(m.num_parameters() - 33.0e6) / 33.0e6 < 0.02, m.num_parameters()
    unshared = build_denoiser(
        "dit-s2",
        sample_size=32,
        in_channels=4,
        out_channels=8,
        num_classes=1000,
        share_embedder=False,
    )
    assert unshared.num_parameters() > m.num_parameters() + 5e6


def test_adm_256_light_is_p2s_93M_model():
    m = build_denoiser("adm-256-light", sample_size=256, in_channels=3, out_channels=6)
    assert abs(m.num_parameters() - 93e6) / 93e6 < 0.02, m.num_parameters()


def test_zero_init_makes_the_initial_output_zero():
    for name, C in (("unet-tiny", 3), ("dit-tiny", 4)):
        m = build_denoiser(name, sample_size=8, in_channels=C, out_channels=C, seed=0)
        out = m(torch.randn(2, C, 8, 8), torch.tensor([1, 500]))
        assert out.abs().max() == 0
        m2 = build_denoiser(
            name, sample_size=8, in_channels=C, out_channels=C, seed=0, zero_init=False
        )
        assert m2(torch.randn(2, C, 8, 8), torch.tensor([1, 500])).abs().max() > 0


def test_seed_fixes_weights_without_touching_global_rng():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = build_denoiser("unet-tiny", sample_size=8, in_channels=1, out_channels=1, seed=5)
    assert torch.equal(torch.get_rng_state(), before)
    b = build_denoiser("unet-tiny", sample_size=8, in_channels=1, out_channels=1, seed=5)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


@pytest.mark.parametrize("name", ["unet-tiny", "dit-tiny"])
def test_class_labels_condition_the_output_and_null_class(name):
    C = 4 if name.startswith("dit") else 3
    m = build_denoiser(
        name, sample_size=8, in_channels=C, out_channels=C, num_classes=5, seed=1, zero_init=False
    )
    x = torch.randn(1, C, 8, 8).expand(3, -1, -1, -1)
    t = torch.tensor([10, 10, 10])
    out = m(x, t, torch.tensor([0, 4, 5]))
    assert not torch.allclose(out[0], out[1]) and not torch.allclose(out[1], out[2])
    # None = the null class for every sample.
    torch.testing.assert_close(m(x, t), m(x, t, torch.tensor([5, 5, 5])))
    with pytest.raises(ValueError, match=r"0 … 5"):
        m(x, t, torch.tensor([0, 1, 6]))
    with pytest.raises(ValueError, match=r"0 … 5"):
        m(x, t, torch.tensor([-1, 1, 2]))


def test_dit_has_no_hidden_label_dropout_and_shares_one_embedder():
    m = build_denoiser(
        "dit-tiny",
        sample_size=8,
        in_channels=4,
        out_channels=4,
        num_classes=3,
        seed=0,
        zero_init=False,
    )
    blocks = m.inner.transformer_blocks
    assert all(b.norm1.emb is blocks[0].norm1.emb for b in blocks)
    assert blocks[0].norm1.emb.class_embedder.embedding_table.num_embeddings == 4  # + null class
    m.train()
    x, t, y = torch.randn(4, 4, 8, 8), torch.tensor([1, 2, 3, 4]), torch.tensor([0, 1, 2, 0])
    torch.testing.assert_close(m(x, t, y), m(x, t, y))  # diffusers would drop 10 % of labels


def test_unconditional_models_refuse_labels_and_dit_uses_a_dummy_class():
    m = build_denoiser("dit-tiny", sample_size=8, in_channels=4, out_channels=4)
    assert m.inner.config.num_embeds_ada_norm == 1
    m(torch.randn(2, 4, 8, 8), 5)  # scalar t broadcast; dummy label 0 inside
    with pytest.raises(ValueError, match="unconditional"):
        m(torch.randn(2, 4, 8, 8), 5, torch.tensor([0, 0]))


def test_wrapper_input_errors():
    m = build_denoiser("unet-tiny", sample_size=8, in_channels=3, out_channels=3)
    with pytest.raises(ValueError, match=r"expected input \[B, 3, H, W\]"):
        m(torch.randn(2, 1, 8, 8), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="one timestep per sample"):
        m(torch.randn(2, 3, 8, 8), torch.tensor([1, 2, 3]))


def test_build_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown model preset 'unet-huge'"):
        build_denoiser("unet-huge", sample_size=8, in_channels=3, out_channels=3)
    with pytest.raises(ValueError, match=r"unknown override\(s\) \['block_channels'\]"):
        build_denoiser(
            "unet-tiny", sample_size=8, in_channels=3, out_channels=3, block_channels=[1]
        )
    with pytest.raises(ValueError, match="set by build_denoiser's own argument"):
        build_denoiser(
            "unet-tiny", sample_size=8, in_channels=3, out_channels=3, num_class_embeds=3
        )
    with pytest.raises(ValueError, match="divisible by 32"):
        build_denoiser("adm-256-light", sample_size=48, in_channels=3, out_channels=3)
    with pytest.raises(ValueError, match="patch size"):
        build_denoiser("dit-tiny", sample_size=7, in_channels=4, out_channels=4)
    with pytest.raises(ValueError, match="in_channels must be a positive integer"):
        build_denoiser("unet-tiny", sample_size=8, in_channels=0, out_channels=3)


def test_from_config_rebuilds_the_same_architecture():
    m = build_denoiser(
        "unet-tiny",
        sample_size=8,
        in_channels=1,
        out_channels=2,
        num_classes=10,
        seed=0,
        block_out_channels=[8, 16],
        dropout=0.0,
    )
    cfg = json.loads(json.dumps(m.config))  # the config is plain JSON
    again = Denoiser.from_config(cfg)
    again.load_state_dict(m.state_dict())
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([3, 4]), torch.tensor([1, 10])
    torch.testing.assert_close(again(x, t, y), m(x, t, y))
    assert count_parameters(again) == count_parameters(m)


@pytest.mark.parametrize("name", ["unet-tiny", "dit-tiny"])
def test_save_pretrained_loads_back_in_diffusers(tmp_path, name):
    from diffusers import DiTTransformer2DModel, UNet2DModel

    C = 4 if name.startswith("dit") else 3
    m = build_denoiser(
        name,
        sample_size=8,
        in_channels=C,
        out_channels=2 * C,
        num_classes=2,
        seed=0,
        zero_init=False,
    ).eval()
    m.save_pretrained(tmp_path / "model")
    cls = DiTTransformer2DModel if name.startswith("dit") else UNet2DModel
    loaded = cls.from_pretrained(tmp_path / "model").eval()
    x, t, y = torch.randn(2, C, 8, 8), torch.tensor([5, 600]), torch.tensor([1, 2])
    with torch.no_grad():
        ref = m(x, t, y)
        got = loaded(x, t, class_labels=y).sample
    torch.testing.assert_close(got, ref)


# ----------------------------------------------------------------------------- latent codec
def test_tiny_codec_round_trip_shapes_and_determinism():
    codec = LatentCodec.tiny_random(seed=0)
    assert codec.latent_channels == 4 and codec.downsample_factor == 2
    assert codec.latent_shape(16) == (4, 8, 8)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    z_mean = codec.encode(x, sample=False)
    assert z_mean.shape == (2, 4, 8, 8)
    torch.testing.assert_close(codec.encode(x, sample=False), z_mean)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    torch.testing.assert_close(codec.encode(x, generator=g1), codec.encode(x, generator=g2))
    assert codec.decode(z_mean).shape == (2, 3, 16, 16)
    assert not any(p.requires_grad for p in codec.vae.parameters())
    other = LatentCodec.tiny_random(seed=1)
    assert not torch.allclose(other.encode(x, sample=False), z_mean)
    with pytest.raises(ValueError, match="not divisible"):
        codec.latent_shape(15)


def test_local_codec_loads_from_directory_with_its_scaling_factor(tmp_path):
    codec = LatentCodec.tiny_random(seed=3)
    codec.vae.register_to_config(scaling_factor=0.5)
    codec.vae.save_pretrained(tmp_path / "pipe" / "vae")
    for path in (tmp_path / "pipe" / "vae", tmp_path / "pipe"):  # the vae/ sub-folder is found
        loaded = LatentCodec.from_pretrained_local(path)
        assert loaded.scaling_factor == 0.5
        x = torch.rand(1, 3, 16, 16) * 2 - 1
        torch.testing.assert_close(
            loaded.encode(x, sample=False), codec.encode(x, sample=False) * 0.5
        )
    spec_again = LatentCodec.from_spec(loaded.describe())
    assert spec_again.scaling_factor == 0.5


def test_codec_never_goes_to_a_hub(tmp_path):
    with pytest.raises(FileNotFoundError, match="local"):
        LatentCodec.from_pretrained_local("stabilityai/sd-vae-ft-ema")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        LatentCodec.from_pretrained_local(tmp_path / "empty")
    assert LatentCodec.from_spec("tiny-random:2").describe()["tiny_random"] == 2
