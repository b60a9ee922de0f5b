"""Denoiser presets built from diffusers models, behind one call signature, and the latent codec.

Every preset is a stock diffusers model (``UNet2DModel`` or ``DiTTransformer2DModel``) wrapped in
:class:`Denoiser`, whose ``forward(x_t, t, class_labels=None)`` returns the raw model output
``[B, out_channels, H, W]`` whatever the family. ``denoiser.inner`` is the diffusers model itself
(``save_pretrained``-able, see :meth:`Denoiser.export_inner`).

Class-conditional models reserve one extra label, the *null class* ``num_classes``, for
classifier-free guidance; the trainer replaces labels by it with its own seeded generator
(diffusers' built-in random label dropout of the DiT embedding is switched off, because it draws
from the global RNG and would break bit-exact resume).

Latent models run on the latents of an ``AutoencoderKL`` that :class:`LatentCodec` loads from a
local directory only (never from a hub at run time).
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "PRESETS",
    "Denoiser",
    "LatentCodec",
    "Preset",
    "build_denoiser",
    "count_parameters",
]


@dataclass(frozen=True)
class Preset:
    """A named architecture: the diffusers class, its keyword arguments and a description."""

    family: str  # "unet" | "dit"
    config: Mapping[str, Any]
    description: str
    nominal_size: int  # the resolution (pixels or latent cells) the preset is designed for
    latent: bool = False  # meant for latents (LDM / DiT) rather than pixels
    extra: Mapping[str, Any] = field(default_factory=dict)  # our own options (zero_init, ...)


def _unet(down: tuple[str, ...], up: tuple[str, ...], **kw: Any) -> dict[str, Any]:
    return {"down_block_types": down, "up_block_types": up, **kw}


#: Presets by name. ``nominal_size`` is the input size the attention placement refers to; the
#: UNets are fully convolutional and run at any size divisible by 2^(levels-1), DiT at any size
#: divisible by its patch (positional embeddings are recomputed).
PRESETS: dict[str, Preset] = {
    "unet-tiny": Preset(
        "unet",
        _unet(
            ("DownBlock2D", "AttnDownBlock2D"),
            ("AttnUpBlock2D", "UpBlock2D"),
            block_out_channels=(8, 16),
            layers_per_block=1,
            norm_num_groups=4,
            attention_head_dim=8,
        ),
        "2-level UNet with attention at the lower level, for CPU tests (a few 10k parameters)",
        nominal_size=16,
    ),
    "unet-small": Preset(
        "unet",
        _unet(
            ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
            ("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
            block_out_channels=(32, 64, 64),
            layers_per_block=1,
            norm_num_groups=8,
            attention_head_dim=32,
        ),
        "3-level UNet for the CPU demo on 16x16 digits (attention at 4x4)",
        nominal_size=16,
    ),
    # DDPM (Ho et al. 2020) CIFAR-10, as diffusers' google/ddpm-cifar10-32 plus dropout 0.1:
    # 4 levels of 2 res-blocks, single-head attention at 16x16, sinusoidal embedding with
    # the TF code's frequency shift.
    "unet-ddpm-cifar10": Preset(
        "unet",
        _unet(
            ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
            ("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
            block_out_channels=(128, 256, 256, 256),
            layers_per_block=2,
            attention_head_dim=None,
            dropout=0.1,
            norm_eps=1e-6,
            downsample_padding=0,
            flip_sin_to_cos=False,
            freq_shift=1,
        ),
        "DDPM CIFAR-10 UNet (Ho et al. 2020), 35.7M parameters at 3 channels",
        nominal_size=32,
    ),
    # ADM "light" (Dhariwal & Nichol 2021 architecture, P2's FFHQ/CelebA-HQ model): 128 channels,
    # 1 res-block per level, attention at 16x16 with 64 head channels, res-block up/down-sampling,
    # scale-shift norm.
    "adm-64": Preset(
        "unet",
        _unet(
            (
                "ResnetDownsampleBlock2D",
                "ResnetDownsampleBlock2D",
                "AttnDownBlock2D",
                "ResnetDownsampleBlock2D",
            ),
            (
                "ResnetUpsampleBlock2D",
                "AttnUpBlock2D",
                "ResnetUpsampleBlock2D",
                "ResnetUpsampleBlock2D",
            ),
            block_out_channels=(128, 256, 384, 512),
            layers_per_block=1,
            attention_head_dim=64,
            resnet_time_scale_shift="scale_shift",
            downsample_type="resnet",
            upsample_type="resnet",
        ),
        "ADM-light at 64x64: channel_mult (1,2,3,4), attention at 16x16",
        nominal_size=64,
    ),
    "adm-256-light": Preset(
        "unet",
        _unet(
            (
                "ResnetDownsampleBlock2D",
                "ResnetDownsampleBlock2D",
                "ResnetDownsampleBlock2D",
                "ResnetDownsampleBlock2D",
                "AttnDownBlock2D",
                "ResnetDownsampleBlock2D",
            ),
            (
                "ResnetUpsampleBlock2D",
                "AttnUpBlock2D",
                "ResnetUpsampleBlock2D",
                "ResnetUpsampleBlock2D",
                "ResnetUpsampleBlock2D",
                "ResnetUpsampleBlock2D",
            ),
            block_out_channels=(128, 128, 256, 256, 512, 512),
            layers_per_block=1,
            attention_head_dim=64,
            resnet_time_scale_shift="scale_shift",
            downsample_type="resnet",
            upsample_type="resnet",
        ),
        "ADM-light at 256x256 (P2-weighting's FFHQ model): channel_mult (1,1,2,2,4,4)",
        nominal_size=256,
    ),
    # LDM UNet (Rombach et al. 2022, CompVis ffhq-ldm-vq-4): 224 channels, mult (1,2,3,4),
    # 2 res-blocks, attention at downsampling x2/x4/x8 with 32 head channels.
    "ldm-unet": Preset(
        "unet",
        _unet(
            ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
            ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
            block_out_channels=(224, 448, 672, 896),
            layers_per_block=2,
            attention_head_dim=32,
        ),
        "LDM-4 UNet on 64x64 latents (CompVis FFHQ/CelebA-HQ config)",
        nominal_size=64,
        latent=True,
    ),
    "ldm-unet-tiny": Preset(
        "unet",
        _unet(
            ("DownBlock2D", "AttnDownBlock2D"),
            ("AttnUpBlock2D", "UpBlock2D"),
            block_out_channels=(16, 32),
            layers_per_block=1,
            norm_num_groups=8,
            attention_head_dim=8,
        ),
        "2-level latent UNet for CPU tests",
        nominal_size=8,
        latent=True,
    ),
    # DiT (Peebles & Xie 2023), patch 2; hidden = heads x 64.
    "dit-tiny": Preset(
        "dit",
        {"num_layers": 2, "num_attention_heads": 2, "attention_head_dim": 16, "patch_size": 2},
        "2-block DiT (hidden 32) for CPU tests",
        nominal_size=8,
        latent=True,
    ),
    "dit-s2": Preset(
        "dit",
        {"num_layers": 12, "num_attention_heads": 6, "attention_head_dim": 64, "patch_size": 2},
        "DiT-S/2: depth 12, hidden 384, 6 heads",
        nominal_size=32,
        latent=True,
    ),
    "dit-b2": Preset(
        "dit",
        {"num_layers": 12, "num_attention_heads": 12, "attention_head_dim": 64, "patch_size": 2},
        "DiT-B/2: depth 12, hidden 768, 12 heads",
        nominal_size=32,
        latent=True,
    ),
    "dit-l2": Preset(
        "dit",
        {"num_layers": 24, "num_attention_heads": 16, "attention_head_dim": 64, "patch_size": 2},
        "DiT-L/2: depth 24, hidden 1024, 16 heads",
        nominal_size=32,
        latent=True,
    ),
}

#: Options of ours (not diffusers') that ``build_denoiser`` accepts as overrides.
_OWN_OPTIONS = {
    # UNet: zero-initialise the last conv of every res-block, the attention output projections
    # and the output conv, as the DDPM (TF) and ADM code do. DiT: the adaLN-Zero initialisation.
    "zero_init": True,
    # DiT: one timestep/label embedder shared by all blocks, as in the original DiT (diffusers
    # builds one per block; the DiT -> diffusers conversion copies the shared weights into each).
    "share_embedder": True,
}
# Set by build_denoiser's own arguments; an override may not change them.
_RESERVED = {
    "sample_size",
    "in_channels",
    "out_channels",
    "num_class_embeds",
    "num_embeds_ada_norm",
}


def count_parameters(module: nn.Module) -> int:
    """Number of distinct parameters (shared tensors counted once)."""
    return sum(p.numel() for p in module.parameters())


def _diffusers_class(family: str) -> type:
    if family == "unet":
        from diffusers import UNet2DModel

        return UNet2DModel
    from diffusers import DiTTransformer2DModel

    return DiTTransformer2DModel


class Denoiser(nn.Module):
    """A diffusers denoiser behind ``forward(x_t, t, class_labels=None) -> Tensor``.

    * ``t``: integer timesteps ``[B]`` (or one int / 0-d tensor for the whole batch).
    * ``class_labels``: LongTensor ``[B]`` in ``0 … num_classes`` for a class-conditional model,
      where ``num_classes`` (= :attr:`null_class`) is the null label of classifier-free guidance;
      ``None`` means the null label for every sample. Must be ``None`` for an unconditional model.
    * Returns the raw output ``[B, out_channels, H, W]`` (mean + variance halves when the
      objective learns the variance).

    An unconditional DiT is built with a single dummy class (diffusers' DiT always conditions
    on a label) and is always fed label 0; this costs one embedding row and changes nothing else.
    """

    def __init__(self, inner: nn.Module, preset: str, config: dict[str, Any]) -> None:
        super().__init__()
        self.inner = inner
        self.preset = preset
        self.config = dict(config)
        self.family: str = PRESETS[preset].family if preset in PRESETS else config["family"]
        self.num_classes: int | None = config.get("num_classes")
        self.in_channels: int = int(config["in_channels"])
        self.out_channels: int = int(config["out_channels"])
        self.sample_size: int = int(config["sample_size"])

    @property
    def null_class(self) -> int | None:
        """The label that means "no class" (classifier-free guidance); None if unconditional."""
        return self.num_classes

    @property
    def class_conditional(self) -> bool:
        return self.num_classes is not None

    def forward(self, x_t: Tensor, t: Tensor | int, class_labels: Tensor | None = None) -> Tensor:
        if x_t.ndim != 4 or x_t.shape[1] != self.in_channels:
            raise ValueError(
                f"{self.preset}: expected input [B, {self.in_channels}, H, W], got {tuple(x_t.shape)}"
            )
        B = x_t.shape[0]
        t = torch.as_tensor(t, device=x_t.device)
        if t.ndim == 0:
            t = t.expand(B)
        if t.shape != (B,):
            raise ValueError(
                f"t must have one timestep per sample ({B}), got shape {tuple(t.shape)}"
            )
        labels = self._labels(class_labels, B, x_t.device)
        if self.family == "dit":
            out = self.inner(x_t, timestep=t, class_labels=labels, return_dict=False)[0]
        else:
            out = self.inner(x_t, t, class_labels=labels, return_dict=False)[0]
        return out

    def _labels(self, class_labels: Tensor | None, B: int, device: torch.device) -> Tensor | None:
        if self.num_classes is None:
            if class_labels is not None:
                raise ValueError(
                    f"{self.preset} was built unconditional (num_classes=None) but class labels "
                    "were given; build it with num_classes=... or pass class_labels=None"
                )
            # diffusers' DiT always conditions on a label: the single dummy class 0.
            return torch.zeros(B, dtype=torch.long, device=device) if self.family == "dit" else None
        if class_labels is None:
            return torch.full((B,), self.num_classes, dtype=torch.long, device=device)
        labels = torch.as_tensor(class_labels, device=device)
        if labels.ndim == 0:
            labels = labels.expand(B)
        if labels.shape != (B,) or labels.dtype.is_floating_point:
            raise ValueError(
                f"class_labels must be an integer tensor of shape ({B},), got "
                f"{labels.dtype} {tuple(labels.shape)}"
            )
        # Checking values syncs with the device; on CPU it is free and catches the common
        # mistakes (label -1 for "unlabelled", labels from a bigger dataset) early.
        if labels.device.type == "cpu" and labels.numel():
            lo, hi = int(labels.min()), int(labels.max())
            if lo < 0 or hi > self.num_classes:
                raise ValueError(
                    f"class labels must lie in 0 … {self.num_classes} ({self.num_classes} = null "
                    f"class), got values in [{lo}, {hi}]"
                )
        return labels.long()

    def num_parameters(self) -> int:
        return count_parameters(self)

    def export_inner(self) -> nn.Module:
        """A standalone copy of the diffusers model for ``save_pretrained`` / pipelines.

        For a DiT with a shared embedder the copy gets one (identical) embedder per block, the
        layout diffusers' loader expects (safetensors refuses tensors shared between keys).
        """
        inner = copy.deepcopy(self.inner)
        if self.family == "dit":
            blocks = inner.transformer_blocks
            for block in blocks[1:]:
                if block.norm1.emb is blocks[0].norm1.emb:
                    block.norm1.emb = copy.deepcopy(blocks[0].norm1.emb)
        return inner

    def save_pretrained(self, path: str | Path, **kw: Any) -> None:
        """Write the diffusers model to ``path`` (loads with ``<Class>.from_pretrained(path)``)."""
        self.export_inner().save_pretrained(str(path), **kw)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Denoiser:
        """Rebuild (fresh weights) from :attr:`config`; load a state dict on top to restore."""
        cfg = dict(config)
        return build_denoiser(
            cfg.pop("preset"),
            sample_size=cfg.pop("sample_size"),
            in_channels=cfg.pop("in_channels"),
            out_channels=cfg.pop("out_channels"),
            num_classes=cfg.pop("num_classes", None),
            **cfg.pop("overrides", {}),
        )

    def extra_repr(self) -> str:
        return (
            f"preset={self.preset!r}, family={self.family!r}, params={self.num_parameters():,}, "
            f"num_classes={self.num_classes}"
        )


def build_denoiser(
    preset: str,
    *,
    sample_size: int,
    in_channels: int,
    out_channels: int,
    num_classes: int | None = None,
    seed: int | None = None,
    **overrides: Any,
) -> Denoiser:
    """Build a :class:`Denoiser` from a preset of :data:`PRESETS`.

    ``sample_size`` is the spatial size of the model's input (pixels, or latent cells for latent
    presets); ``out_channels`` is ``objective.model_channels(in_channels)`` (``2·C`` with learned
    variance). ``num_classes`` makes the model class-conditional with ``num_classes + 1`` label
    embeddings (the last one is the null class). ``seed`` fixes the initial weights without
    touching the global RNG. ``overrides`` are keyword arguments of the diffusers model
    (``block_out_channels=(32, 64)``, ``dropout=0.1``, ...) or our ``zero_init`` /
    ``share_embedder`` options.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; choose one of {', '.join(PRESETS)}")
    spec = PRESETS[preset]
    for name, value in (
        ("sample_size", sample_size),
        ("in_channels", in_channels),
        ("out_channels", out_channels),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
        raise ValueError(f"num_classes must be a positive integer or None, got {num_classes!r}")
    cls = _diffusers_class(spec.family)
    allowed = set(inspect.signature(cls.__init__).parameters) - {"self"} - _RESERVED
    bad = set(overrides) - allowed - set(_OWN_OPTIONS)
    if bad:
        hint = "; ".join(
            f"{b} is set by build_denoiser's own argument" for b in sorted(bad & _RESERVED)
        )
        raise ValueError(
            f"unknown override(s) {sorted(bad)} for preset {preset!r} ({cls.__name__})"
            + (f" ({hint})" if hint else "")
            + f"; valid: {sorted(allowed | set(_OWN_OPTIONS))}"
        )
    own = {k: overrides.get(k, v) for k, v in _OWN_OPTIONS.items()}
    kw = {**spec.config, **{k: v for k, v in overrides.items() if k not in _OWN_OPTIONS}}
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in kw.items()}
    kw.update(sample_size=sample_size, in_channels=in_channels, out_channels=out_channels)
    if spec.family == "unet":
        levels = len(kw["block_out_channels"])
        if sample_size % 2 ** (levels - 1):
            raise ValueError(
                f"{preset}: sample_size {sample_size} must be divisible by {2 ** (levels - 1)} "
                f"({levels} resolution levels)"
            )
        if num_classes is not None:
            kw["num_class_embeds"] = num_classes + 1  # + the null class
    else:
        if sample_size % kw["patch_size"]:
            raise ValueError(
                f"{preset}: sample_size {sample_size} must be divisible by the patch size {kw['patch_size']}"
            )
        # diffusers adds a null-label row when its (built-in) label dropout is > 0, which it is by
        # construction; label 0 is the dummy class of an unconditional DiT.
        kw["num_embeds_ada_norm"] = num_classes if num_classes is not None else 1

    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        try:
            inner = cls(**kw)
        except (TypeError, ValueError) as e:
            raise ValueError(f"cannot build preset {preset!r} with {kw}: {e}") from None
        if spec.family == "dit":
            _prepare_dit(inner, share=own["share_embedder"], adaln_zero=own["zero_init"])
        elif own["zero_init"]:
            _zero_init_unet(inner)

    config = {
        "preset": preset,
        "sample_size": sample_size,
        "in_channels": in_channels,
        "out_channels": out_channels,
        "num_classes": num_classes,
        "overrides": {k: list(v) if isinstance(v, tuple) else v for k, v in overrides.items()},
    }
    return Denoiser(inner, preset, config)


def _zero_init_unet(unet: nn.Module) -> None:
    """DDPM/ADM initialisation of the residual branches: their last layer starts at zero."""
    from diffusers.models.attention_processor import Attention
    from diffusers.models.resnet import ResnetBlock2D

    for m in unet.modules():
        if isinstance(m, ResnetBlock2D):
            nn.init.zeros_(m.conv2.weight)
            nn.init.zeros_(m.conv2.bias)
        elif isinstance(m, Attention):
            out = m.to_out[0]
            nn.init.zeros_(out.weight)
            if out.bias is not None:
                nn.init.zeros_(out.bias)
    nn.init.zeros_(unet.conv_out.weight)
    nn.init.zeros_(unet.conv_out.bias)


def _prepare_dit(dit: nn.Module, share: bool, adaln_zero: bool) -> None:
    """Shared embedder, no built-in label dropout, and DiT's own initialisation."""
    blocks = dit.transformer_blocks
    if share:
        for block in blocks[1:]:
            block.norm1.emb = blocks[0].norm1.emb
    for block in blocks:
        # Label dropout for CFG is the trainer's job (seeded); diffusers' draws from the global RNG.
        block.norm1.emb.class_embedder.dropout_prob = 0.0
    if not adaln_zero:
        return
    # DiT's initialize_weights: xavier-uniform linears with zero bias, N(0, 0.02) label and
    # timestep embeddings, zero adaLN modulation and zero final layer (adaLN-Zero).
    for m in dit.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    proj = dit.pos_embed.proj
    nn.init.xavier_uniform_(proj.weight.view(proj.weight.shape[0], -1))
    nn.init.zeros_(proj.bias)
    seen: set[int] = set()
    for block in blocks:
        emb = block.norm1.emb
        if id(emb) not in seen:
            seen.add(id(emb))
            nn.init.normal_(emb.class_embedder.embedding_table.weight, std=0.02)
            nn.init.normal_(emb.timestep_embedder.linear_1.weight, std=0.02)
            nn.init.normal_(emb.timestep_embedder.linear_2.weight, std=0.02)
        nn.init.zeros_(block.norm1.linear.weight)
        nn.init.zeros_(block.norm1.linear.bias)
    for layer in (dit.proj_out_1, dit.proj_out_2):
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)


# ----------------------------------------------------------------------------- latent codec
class LatentCodec:
    """An ``AutoencoderKL`` that maps images in [-1, 1] to scaled latents and back.

    ``encode(x) = (z − shift) · scaling_factor`` with ``z`` sampled from the posterior (or its mean),
    ``decode(l) = D(l / scaling_factor + shift)``; ``scaling_factor`` (0.18215 for the SD VAEs)
    and ``shift_factor`` come from the autoencoder's config. The autoencoder is frozen (eval
    mode, no gradients).
    """

    def __init__(
        self,
        vae: nn.Module,
        *,
        scaling_factor: float | None = None,
        source: dict[str, Any] | None = None,
    ) -> None:
        self.vae = vae.eval().requires_grad_(False)
        cfg = vae.config
        sf = scaling_factor if scaling_factor is not None else getattr(cfg, "scaling_factor", None)
        if sf is None or not math.isfinite(float(sf)) or float(sf) <= 0:
            raise ValueError(
                f"the autoencoder has no valid scaling_factor ({sf!r}); pass scaling_factor="
            )
        self.scaling_factor = float(sf)
        self.shift_factor = float(getattr(cfg, "shift_factor", None) or 0.0)
        self.latent_channels = int(cfg.latent_channels)
        self.downsample_factor = 2 ** (len(cfg.block_out_channels) - 1)
        self.source = dict(source or {})

    @classmethod
    def from_pretrained_local(
        cls, path: str | Path, *, scaling_factor: float | None = None, subfolder: str | None = None
    ) -> LatentCodec:
        """Load from a LOCAL diffusers directory (``config.json`` + weights), never a hub id.

        A full pipeline directory works too: its ``vae/`` sub-folder is used.
        """
        p = Path(path).expanduser()
        if not p.is_dir():
            raise FileNotFoundError(
                f"autoencoder directory {str(path)!r} not found; LatentCodec loads only a local "
                "diffusers AutoencoderKL directory (config.json + weights). Download it once, "
                "e.g. `huggingface-cli download stabilityai/sd-vae-ft-ema --local-dir DIR`, then "
                "pass DIR"
            )
        if (
            subfolder is None
            and not (p / "config.json").is_file()
            and (p / "vae" / "config.json").is_file()
        ):
            subfolder = "vae"
        root = p / subfolder if subfolder else p
        if not (root / "config.json").is_file():
            raise FileNotFoundError(
                f"{root} has no config.json; it is not a diffusers AutoencoderKL directory"
            )
        from diffusers import AutoencoderKL

        try:
            vae = AutoencoderKL.from_pretrained(str(root), local_files_only=True)
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot load an AutoencoderKL from {root}: {e}") from None
        return cls(vae, scaling_factor=scaling_factor, source={"path": str(root.resolve())})

    @classmethod
    def tiny_random(cls, seed: int = 0, latent_channels: int = 4) -> LatentCodec:
        """A randomly initialised 2x-downsampling autoencoder (for plumbing tests only)."""
        from diffusers import AutoencoderKL

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            vae = AutoencoderKL(
                in_channels=3,
                out_channels=3,
                down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
                block_out_channels=(8, 16),
                layers_per_block=1,
                latent_channels=latent_channels,
                norm_num_groups=4,
                sample_size=16,
            )
        return cls(
            vae,
            scaling_factor=1.0,
            source={"tiny_random": seed, "latent_channels": latent_channels},
        )

    @classmethod
    def from_spec(cls, spec: str | Mapping[str, Any]) -> LatentCodec:
        """From ``"tiny-random"``, ``"tiny-random:SEED"``, a local path, or :meth:`describe`'s dict."""
        if isinstance(spec, Mapping):
            if "tiny_random" in spec:
                return cls.tiny_random(
                    int(spec["tiny_random"]), int(spec.get("latent_channels", 4))
                )
            return cls.from_pretrained_local(
                spec["path"], scaling_factor=spec.get("scaling_factor")
            )
        if spec == "tiny-random" or spec.startswith("tiny-random:"):
            return cls.tiny_random(int(spec.split(":", 1)[1]) if ":" in spec else 0)
        return cls.from_pretrained_local(spec)

    def describe(self) -> dict[str, Any]:
        return {
            **self.source,
            "scaling_factor": self.scaling_factor,
            "shift_factor": self.shift_factor,
        }

    def to(self, device: Any = None, dtype: torch.dtype | None = None) -> LatentCodec:
        self.vae.to(device=device, dtype=dtype)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    def latent_shape(self, resolution: int) -> tuple[int, int, int]:
        """(C, h, w) of the latents of a ``resolution``² image."""
        if resolution % self.downsample_factor:
            raise ValueError(
                f"image resolution {resolution} is not divisible by the autoencoder's "
                f"downsampling factor {self.downsample_factor}"
            )
        s = resolution // self.downsample_factor
        return (self.latent_channels, s, s)

    @torch.no_grad()
    def encode(
        self, images: Tensor, *, sample: bool = True, generator: torch.Generator | None = None
    ) -> Tensor:
        """Images in [-1, 1] ``[B, 3, H, W]`` -> scaled latents ``[B, C, H/f, W/f]``.

        ``sample=True`` draws from the posterior as LDM/DiT training does (seeded by
        ``generator``); ``sample=False`` returns its mean (deterministic, e.g. for caching).
        """
        if images.ndim != 4 or images.shape[1] != self.vae.config.in_channels:
            raise ValueError(
                f"expected images [B, {self.vae.config.in_channels}, H, W] in [-1, 1], got {tuple(images.shape)}"
            )
        p = next(self.vae.parameters())
        dist = self.vae.encode(images.to(device=p.device, dtype=p.dtype)).latent_dist
        z = dist.sample(generator=generator) if sample else dist.mean
        return (z - self.shift_factor) * self.scaling_factor

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Scaled latents -> images (nominally in [-1, 1]; clamp before quantising)."""
        p = next(self.vae.parameters())
        z = latents.to(device=p.device, dtype=p.dtype) / self.scaling_factor + self.shift_factor
        return self.vae.decode(z).sample

    def __repr__(self) -> str:
        return f"LatentCodec({self.describe()})"
