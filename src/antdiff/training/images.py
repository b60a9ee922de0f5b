"""Conversions between model tensors in [-1, 1] and uint8 images, and PNG sample grids."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

__all__ = ["image_grid", "save_grid", "to_uint8_nhwc"]


def to_uint8_nhwc(x: torch.Tensor) -> np.ndarray:
    """``[N, C, H, W]`` floats in [-1, 1] -> ``[N, H, W, C]`` uint8 (values clamped, rounded)."""
    if x.ndim != 4:
        raise ValueError(f"expected an [N, C, H, W] tensor, got shape {tuple(x.shape)}")
    y = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return y.permute(0, 2, 3, 1).cpu().numpy()


def image_grid(images: np.ndarray, ncols: int | None = None, pad: int = 1) -> np.ndarray:
    """Tile ``[N, H, W, C]`` uint8 images into one ``[H', W', C]`` image (near-square by default)."""
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError("expected a uint8 array [N, H, W, C]")
    n, h, w, c = images.shape
    if n == 0:
        raise ValueError("no images to tile")
    ncols = ncols or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    grid = np.zeros((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, ncols)
        y, x = pad + r * (h + pad), pad + q * (w + pad)
        grid[y : y + h, x : x + w] = images[i]
    return grid


def save_grid(
    images: np.ndarray, path: str | Path, ncols: int | None = None, scale: int = 1
) -> Path:
    """Write a PNG grid of ``[N, H, W, C]`` uint8 images; ``scale`` enlarges tiny images."""
    from PIL import Image

    grid = image_grid(images, ncols)
    if scale > 1:
        grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    img.save(path)
    return path
