"""``open_dataset``: one entry point for every image format, and the :class:`ImageDataset`."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .._io import atomic_target
from .sources import (
    TAR_SUFFIXES,
    ArrayStore,
    LazyFileStore,
    Store,
    decode_many,
    is_idx_file,
    iter_tar_images,
    labels_from_names,
    list_image_files,
    read_array_file,
    read_digits,
    read_idx,
    stack_uniform,
    tar_image_names,
)
from .transforms import (
    UnreadableImageError,
    UnreadableImageWarning,
    decode_image,
    flip_bit,
    resize_array,
    set_channels,
)

__all__ = ["EMBEDDED_DATASETS", "ImageDataset", "load_images_uint8", "open_dataset"]

#: Datasets that need no file: ``digits`` is scikit-learn's ``load_digits()``.
EMBEDDED_DATASETS: tuple[str, ...] = ("digits",)

#: Folders whose decoded size would exceed this many bytes are read lazily (``in_memory=None``).
LAZY_THRESHOLD_BYTES = 8 << 30

_FORMATS_HELP = (
    "give 'digits' (embedded), an image folder, a .npz/.npy array, a tar archive of images "
    "(.tar, .tar.gz, .tar.xz) or an MNIST IDX file (…-images-idx3-ubyte[.gz])"
)


class ImageDataset(Dataset):
    """Images as float tensors ``[C, H, W]`` in [-1, 1] with an int label (-1 if unlabelled).

    ``dataset[i]`` accepts any ``i >= 0``: item ``i % len``, in epoch ``i // len``. The epoch only
    seeds the random horizontal flip, which is the pure function
    ``flip_bit(flip_seed, epoch, item)`` — no state, so it is identical in every DataLoader worker
    and after a resume. :class:`antdiff.data.ResumableSampler` emits such epoch-tagged indices
    for this class automatically, so flips differ between epochs.

    Attributes: ``num_classes`` (None if unlabelled), ``class_names``, ``resolution``,
    ``channels``, ``num_skipped`` (unreadable images skipped so far), ``labels`` (int64 ``[N]``).
    """

    #: Tells :class:`ResumableSampler` that indices ``>= len`` carry the epoch.
    accepts_epoch_tags = True

    def __init__(
        self,
        store: Store,
        *,
        spec: str,
        random_flip: bool = False,
        flip_seed: int = 0,
    ) -> None:
        self.store = store
        self.spec = spec
        self.random_flip = bool(random_flip)
        self.flip_seed = int(flip_seed)
        h, w, c = store.shape  # type: ignore[attr-defined]
        if h != w:
            warnings.warn(f"{spec}: images are {h}x{w}, not square", stacklevel=2)
        self.resolution: int = int(h)
        self.channels: int = int(c)
        self.labels: np.ndarray = store.labels
        self.class_names: list[str] | None = store.class_names
        self.num_classes: int | None = None
        if (self.labels >= 0).any():
            self.num_classes = (
                len(self.class_names) if self.class_names else int(self.labels.max()) + 1
            )

    def __len__(self) -> int:
        return len(self.store)

    @property
    def num_skipped(self) -> int:
        """Unreadable images skipped (at open time, plus those met on access in this process)."""
        return self.store.num_skipped

    def _split(self, i: int) -> tuple[int, int]:
        i = int(i)
        if i < 0:
            raise IndexError(f"negative index {i}")
        n = len(self)
        return i % n, i // n

    def image_uint8(self, i: int) -> np.ndarray:
        """Item ``i`` as uint8 ``[H, W, C]`` (no flip)."""
        return self.store.get(self._split(i)[0])

    def images_uint8(self, indices: Any = None) -> np.ndarray:
        """uint8 ``[N, H, W, C]`` of the given items (all when None), no flip."""
        if indices is None and isinstance(self.store, ArrayStore):
            return self.store.images
        idx = range(len(self)) if indices is None else np.asarray(indices).reshape(-1)
        if isinstance(self.store, ArrayStore):
            return self.store.images[np.asarray(idx, dtype=np.int64)]
        if len(idx) == 0:
            return np.zeros((0, self.resolution, self.resolution, self.channels), np.uint8)
        return np.stack([self.store.get(int(j) % len(self)) for j in idx])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        item, epoch = self._split(i)
        arr = self.store.get(item)
        if self.random_flip and flip_bit(self.flip_seed, epoch, item):
            arr = arr[:, ::-1]
        x = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).float()
        return x / 127.5 - 1.0, int(self.labels[item])

    def describe(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "size": len(self),
            "resolution": self.resolution,
            "channels": self.channels,
            "num_classes": self.num_classes,
            "num_skipped": self.num_skipped,
            "random_flip": self.random_flip,
            "lazy": isinstance(self.store, LazyFileStore),
        }

    def __repr__(self) -> str:
        d = self.describe()
        return "ImageDataset(" + ", ".join(f"{k}={v!r}" for k, v in d.items()) + ")"


# ----------------------------------------------------------------------------- caching
_CACHE: OrderedDict[tuple, ArrayStore] = OrderedDict()
_CACHE_LOCK = threading.Lock()
_CACHE_MAX_BYTES = 4 << 30


def _cache_get(key: tuple) -> ArrayStore | None:
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
        if hit is not None:
            _CACHE.move_to_end(key)
        return hit


def _cache_put(key: tuple, store: ArrayStore) -> None:
    with _CACHE_LOCK:
        _CACHE[key] = store
        _CACHE.move_to_end(key)
        total = sum(s.images.nbytes for s in _CACHE.values())
        while total > _CACHE_MAX_BYTES and len(_CACHE) > 1:
            _, old = _CACHE.popitem(last=False)
            total -= old.images.nbytes


def clear_cache() -> None:
    """Forget the decoded datasets kept in memory."""
    with _CACHE_LOCK:
        _CACHE.clear()


def _file_key(path: Path) -> tuple:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns)


def _disk_cache_path(cache_dir: Path, key: tuple) -> Path:
    h = hashlib.sha256(json.dumps([str(k) for k in key]).encode()).hexdigest()[:20]
    return cache_dir / f"antdiff-data-{h}.npz"


def _load_disk_cache(p: Path) -> ArrayStore | None:
    try:
        with np.load(p, allow_pickle=False) as z:
            names = json.loads(str(z["meta"]))
            return ArrayStore(
                labels=z["labels"].astype(np.int64),
                class_names=names["class_names"],
                skipped=names["skipped"],
                images=z["images"],
            )
    except (OSError, ValueError, KeyError) as e:
        warnings.warn(f"ignoring unreadable data cache {p}: {e}", stacklevel=3)
        return None


def _save_disk_cache(p: Path, store: ArrayStore) -> None:
    meta = json.dumps({"class_names": store.class_names, "skipped": store.skipped})
    with atomic_target(p) as f:  # concurrent ranks each write a whole file; the last rename wins
        np.savez(f, images=store.images, labels=store.labels, meta=np.array(meta))


# ----------------------------------------------------------------------------- opening
def _classify(spec: str) -> tuple[str, Path | None]:
    if spec.lower() in EMBEDDED_DATASETS:
        return spec.lower(), None
    p = Path(spec).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"dataset {spec!r} not found; {_FORMATS_HELP}")
    if p.is_dir():
        return "folder", p
    name = p.name.lower()
    if name.endswith((".npz", ".npy")):
        return "array", p
    if name.endswith(TAR_SUFFIXES):
        return "tar", p
    if is_idx_file(p):
        return "idx", p
    raise ValueError(f"unknown dataset format for {spec!r}; {_FORMATS_HELP}")


def _finish_arrays(
    images: np.ndarray,
    labels: np.ndarray | None,
    class_names: list[str] | None,
    resolution: int | None,
    center_crop: bool,
    max_items: int | None,
) -> ArrayStore:
    if max_items is not None:
        images = images[:max_items]
        labels = None if labels is None else labels[:max_items]
    if resolution is not None and images.shape[1:3] != (resolution, resolution):
        images = (
            np.stack([resize_array(a, resolution, center_crop) for a in images])
            if len(images)
            else images
        )
    if labels is None:
        labels = np.full(images.shape[0], -1, np.int64)
    return ArrayStore(labels=labels, class_names=class_names, images=images)


def _read_store(
    kind: str,
    path: Path | None,
    resolution: int | None,
    center_crop: bool,
    max_items: int | None,
    value_range: tuple[float, float] | None,
    target_channels: int | None,
    in_memory: bool | None,
    spec: str,
) -> Store:
    """Decode a dataset into a store with *native* channels (or ``target_channels`` for lazy)."""
    if kind == "digits":
        images, labels, names = read_digits()
        return _finish_arrays(images, labels, names, resolution, center_crop, max_items)
    assert path is not None
    if kind == "array":
        images, labels = read_array_file(path, value_range)
        return _finish_arrays(images, labels, None, resolution, center_crop, max_items)
    if kind == "idx":
        images, labels = read_idx(path)
        names = (
            [str(i) for i in range(int(labels.max()) + 1)]
            if labels is not None and labels.size
            else None
        )
        return _finish_arrays(images, labels, names, resolution, center_crop, max_items)
    if kind == "tar":
        names, arrays, skipped = decode_many(
            iter_tar_images(path), resolution, center_crop, max_items
        )
        # With max_items, find the classes on the whole archive so that labels do not depend on
        # how many images were taken.
        universe = tar_image_names(path) if max_items is not None else None
        return _stack_decoded(names, arrays, skipped, spec, universe)
    # folder
    files = list_image_files(path)
    if not files:
        raise ValueError(
            f"no image files found in folder {spec!r} (looked for {', '.join(sorted({'.png', '.jpg', '.jpeg', '.webp', '.bmp'}))}, …)"
        )
    # max_items counts readable images: keep every file for the in-memory decode (it stops
    # early), but only the first max_items for a lazy store.
    lazy = in_memory is False
    if in_memory is None:
        lazy = _estimate_bytes(files, resolution) > LAZY_THRESHOLD_BYTES
    if not lazy:
        rel = ((os.path.relpath(f, path), f) for f in files)
        names, arrays, skipped = decode_many(rel, resolution, center_crop, max_items)
        universe = [os.path.relpath(f, path) for f in files]
        return _stack_decoded(names, arrays, skipped, spec, universe)
    return _lazy_folder(
        path,
        files[:max_items] if max_items else files,
        files,
        resolution,
        center_crop,
        target_channels,
        spec,
    )


def _estimate_bytes(files: list[str], resolution: int | None) -> int:
    if resolution is None:
        for f in files[:5]:
            try:
                resolution = max(decode_image(f, f).size)
                break
            except UnreadableImageError:
                continue
    return len(files) * (resolution or 256) ** 2 * 3


def _lazy_folder(
    root: Path,
    files: list[str],
    all_files: list[str],
    resolution: int | None,
    center_crop: bool,
    channels: int | None,
    spec: str,
) -> LazyFileStore:
    first = None
    for f in files:
        try:
            first = decode_image(f, f)
            break
        except UnreadableImageError:
            continue
    if first is None:
        raise ValueError(f"no readable image in folder {spec!r}")
    if resolution is None:
        if first.size[0] != first.size[1]:
            raise ValueError(f"{spec}: images are not square ({first.size}); pass resolution=N")
        resolution = first.size[0]
    if channels is None:
        channels = 1 if first.mode == "L" else 3
    labels, class_names = labels_from_names(
        [os.path.relpath(f, root) for f in files], [os.path.relpath(f, root) for f in all_files]
    )
    return LazyFileStore(
        labels=labels,
        class_names=class_names,
        paths=files,
        resolution=resolution,
        center_crop=center_crop,
        channels=channels,
        source=spec,
    )


def _stack_decoded(
    names: list[str],
    arrays: list[np.ndarray],
    skipped: list[str],
    spec: str,
    universe: list[str] | None = None,
) -> ArrayStore:
    if not arrays:
        raise ValueError(
            f"no readable image in {spec!r}"
            + (f" ({len(skipped)} unreadable; first: {skipped[0]})" if skipped else "")
        )
    channels = 3 if any(a.shape[2] == 3 for a in arrays) else 1
    images = stack_uniform(arrays, channels, spec)
    labels, class_names = labels_from_names(names, universe)
    return ArrayStore(labels=labels, class_names=class_names, skipped=skipped, images=images)


def open_dataset(
    spec: str,
    *,
    resolution: int | None = None,
    channels: int | None = None,
    center_crop: bool = True,
    random_flip: bool = False,
    grey_to_rgb: bool = False,
    max_items: int | None = None,
    seed: int = 0,
    value_range: tuple[float, float] | None = None,
    in_memory: bool | None = None,
    cache_dir: str | Path | None = None,
) -> ImageDataset:
    """Open a dataset of images by specification.

    ``spec``: ``"digits"`` (scikit-learn's 1,797 8×8 digits, the embedded default), an image
    folder (recursive; class labels from the first sub-folder level), a ``.npz``/``.npy`` array
    (``[N,H,W]``, NHWC or NCHW; uint8, or float in [-1,1]/[0,1] — say which with
    ``value_range`` when the data cannot tell), a tar archive of images (labels from the folder
    names inside) or an MNIST IDX images file (labels from the ``…-labels-idx1-ubyte`` beside it).

    * ``resolution``: resize so the short side is ``resolution`` then centre-crop
      (``center_crop=True``, ADM's recipe) or resize to a square; None keeps the size.
    * ``channels``: 1 or 3 to convert; None keeps the data's (3 if any image is colour).
      ``grey_to_rgb=True`` is ``channels=3``.
    * ``random_flip``: horizontal flip with probability ½, a pure function of
      (``seed``, epoch, item) — see :class:`ImageDataset`.
    * ``max_items``: keep only the first N readable images in storage order (a tar or folder
      sorted by class gives one class: use :func:`load_images_uint8` for a shuffled subset).
    * Unreadable images are skipped with ONE :class:`UnreadableImageWarning` and counted in
      ``num_skipped``. Folders larger than 8 GiB decoded (or ``in_memory=False``) are decoded on
      access; everything else is decoded once, kept in a process-wide memory cache, and also in
      ``cache_dir`` (an ``.npz`` keyed by file, size, mtime and options) when given.
    """
    if not isinstance(spec, (str, os.PathLike)) or not str(spec):
        raise ValueError(f"dataset spec must be a non-empty string; {_FORMATS_HELP}")
    spec = str(spec)
    if resolution is not None and (not isinstance(resolution, int) or resolution < 1):
        raise ValueError(f"resolution must be a positive integer or None, got {resolution!r}")
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1, 3 or None, got {channels!r}")
    if grey_to_rgb:
        if channels == 1:
            raise ValueError("grey_to_rgb=True contradicts channels=1")
        channels = 3
    if max_items is not None and (not isinstance(max_items, int) or max_items < 1):
        raise ValueError(f"max_items must be a positive integer or None, got {max_items!r}")
    kind, path = _classify(spec)
    key = (
        kind,
        _file_key(path)
        if path is not None and kind != "folder"
        else str(path.resolve())
        if path
        else None,
        resolution,
        center_crop,
        max_items,
        tuple(value_range) if value_range else None,
    )
    store: Store | None = None if kind == "folder" else _cache_get(key)
    disk = None
    if store is None and cache_dir is not None and kind != "folder":
        disk = _disk_cache_path(Path(cache_dir).expanduser(), key)
        if disk.is_file():
            store = _load_disk_cache(disk)
    fresh = store is None
    if store is None:
        store = _read_store(
            kind, path, resolution, center_crop, max_items, value_range, channels, in_memory, spec
        )
        if isinstance(store, ArrayStore) and kind != "folder":
            _cache_put(key, store)
            if disk is not None:
                _save_disk_cache(disk, store)
    if fresh and store.num_skipped:
        warnings.warn(
            f"skipped {store.num_skipped} unreadable image(s) in {spec} (dataset.num_skipped); "
            f"first: {store.skipped[0]}",
            UnreadableImageWarning,
            stacklevel=2,
        )
    if isinstance(store, ArrayStore) and channels is not None and store.images.shape[3] != channels:
        store = ArrayStore(
            labels=store.labels,
            class_names=store.class_names,
            skipped=list(store.skipped),
            images=set_channels(store.images, channels),
        )
    return ImageDataset(store, spec=spec, random_flip=random_flip, flip_seed=seed)


def load_images_uint8(
    spec: str,
    n: int | None = None,
    seed: int = 0,
    resolution: int | None = None,
    *,
    channels: int | None = None,
    center_crop: bool = True,
) -> np.ndarray:
    """``n`` images as uint8 ``[n, H, W, C]`` for evaluation, drawn without replacement after a
    shuffle with ``seed`` (archives are often sorted by class, so never take the first n).
    ``n=None`` returns every image, shuffled. ``channels=3`` makes grey data RGB (for FID)."""
    ds = open_dataset(spec, resolution=resolution, channels=channels, center_crop=center_crop)
    N = len(ds)
    if n is not None and (n < 1 or n > N):
        raise ValueError(f"asked for {n} images but {spec!r} has {N}")
    perm = np.random.default_rng(seed).permutation(N)
    return ds.images_uint8(perm if n is None else perm[:n])
