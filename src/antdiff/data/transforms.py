"""Image decoding and preprocessing shared by every data source (PIL + numpy only)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

__all__ = [
    "IMAGE_EXTENSIONS",
    "UnreadableImageError",
    "UnreadableImageWarning",
    "decode_image",
    "flip_bit",
    "resize_array",
    "set_channels",
]

#: File extensions recognised as images (lower case).
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {
        ".jpg",
        ".jpeg",
        ".png",
        ".bmp",
        ".gif",
        ".webp",
        ".tif",
        ".tiff",
        ".ppm",
        ".pgm",
        ".pbm",
        ".jfif",
    }
)

_GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


class UnreadableImageError(Exception):
    """An image file that PIL cannot decode completely (corrupt, truncated, not an image)."""


class UnreadableImageWarning(UserWarning):
    """Emitted once per dataset when unreadable images were skipped."""


def _to_8bit_grey(img: Image.Image) -> Image.Image:
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # 16-bit / float grey: scale the full range of the type to 0..255.
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        if img.mode == "F":
            top = 1.0 if arr.max() <= 1.0 else 255.0
        return Image.fromarray(np.clip(np.rint(arr / top * 255.0), 0, 255).astype(np.uint8), "L")
    return img.convert("L")


def decode_image(data: bytes | str, name: str = "") -> Image.Image:
    """Decode fully (so truncated files fail here, not later) to mode ``L`` or ``RGB``.

    Raises :class:`UnreadableImageError` for anything PIL cannot read.
    """
    try:
        src = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
        # No warnings.catch_warnings here: it swaps process-global state and is not thread-safe
        # (this runs in a thread pool), so PIL's own warnings pass through as usual.
        with Image.open(src) as img:
            img.load()
            if img.mode in _GREY_MODES:
                return _to_8bit_grey(img)
            # RGBA/LA: drop alpha as ADM does; P/CMYK/YCbCr: convert.
            return img.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, EOFError) as e:
        raise UnreadableImageError(f"{name or 'image'}: {type(e).__name__}: {e}") from None


def resize_pil(img: Image.Image, resolution: int, center_crop: bool) -> Image.Image:
    """ADM's ``center_crop_arr`` (BOX halving while ≥ 2× too big, then BICUBIC so that the short
    side is ``resolution``, then the centre square), or a plain BICUBIC resize to
    ``resolution``² without cropping (aspect ratio not kept)."""
    if img.size == (resolution, resolution):
        return img
    if not center_crop:
        return img.resize((resolution, resolution), resample=Image.BICUBIC, reducing_gap=3.0)
    while min(img.size) >= 2 * resolution:
        img = img.resize(tuple(x // 2 for x in img.size), resample=Image.BOX)
    scale = resolution / min(img.size)
    img = img.resize(tuple(round(x * scale) for x in img.size), resample=Image.BICUBIC)
    left = (img.size[0] - resolution) // 2
    top = (img.size[1] - resolution) // 2
    return img.crop((left, top, left + resolution, top + resolution))


def resize_array(arr: np.ndarray, resolution: int | None, center_crop: bool) -> np.ndarray:
    """Resize one uint8 ``[H, W, C]`` image (C = 1 or 3) with :func:`resize_pil`."""
    if resolution is None or arr.shape[:2] == (resolution, resolution):
        return arr
    img = Image.fromarray(
        arr[..., 0] if arr.shape[2] == 1 else arr, "L" if arr.shape[2] == 1 else "RGB"
    )
    out = np.asarray(resize_pil(img, resolution, center_crop))
    return out[..., None] if out.ndim == 2 else out


def pil_to_array(img: Image.Image) -> np.ndarray:
    """``[H, W, C]`` uint8 with C = 1 (mode L) or 3 (RGB)."""
    a = np.asarray(img, dtype=np.uint8)
    return a[..., None] if a.ndim == 2 else a


def set_channels(arr: np.ndarray, channels: int) -> np.ndarray:
    """Convert ``[..., H, W, C]`` uint8 to 1 or 3 channels (grey → RGB replicates; RGB → grey
    uses ITU-R 601-2 luma as PIL's ``convert("L")`` does)."""
    c = arr.shape[-1]
    if c == channels:
        return arr
    if c == 1 and channels == 3:
        return np.repeat(arr, 3, axis=-1)
    if c == 3 and channels == 1:
        rgb = arr.astype(np.uint32)
        luma = (rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16
        return luma.astype(np.uint8)[..., None]
    raise ValueError(f"cannot convert {c}-channel images to {channels} channels")


_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def flip_bit(seed: int, epoch: int, index: int) -> bool:
    """A fair coin that is a pure function of (seed, epoch, index): the random horizontal flip.

    Being stateless, it gives the same flips in every DataLoader worker and after a resume.
    """
    h = _splitmix64(
        _splitmix64(_splitmix64(seed & _MASK64) ^ (epoch & _MASK64)) ^ (index & _MASK64)
    )
    return bool(h >> 63)
