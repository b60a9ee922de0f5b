"""Datasets of images for training and evaluation (no trainer dependency).

``open_dataset(spec, ...)`` reads the embedded ``digits`` set, image folders, ``.npz``/``.npy``
arrays, tar archives of images and MNIST IDX files into an :class:`ImageDataset` of float
``[C, H, W]`` tensors in [-1, 1] with integer labels; :func:`load_images_uint8` gives a seeded,
shuffled uint8 subset for evaluation; :class:`ResumableSampler` is the seeded, DDP-sharded,
exactly resumable index stream.
"""

from .dataset import EMBEDDED_DATASETS, ImageDataset, clear_cache, load_images_uint8, open_dataset
from .sampler import ResumableSampler
from .transforms import IMAGE_EXTENSIONS, UnreadableImageWarning, flip_bit

__all__ = [
    "EMBEDDED_DATASETS",
    "IMAGE_EXTENSIONS",
    "ImageDataset",
    "ResumableSampler",
    "UnreadableImageWarning",
    "clear_cache",
    "flip_bit",
    "load_images_uint8",
    "open_dataset",
]
