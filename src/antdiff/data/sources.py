"""Readers for every supported dataset format, producing uint8 images.

Each reader returns a :class:`Store`: either an in-memory uint8 ``[N, H, W, C]`` array
(:class:`ArrayStore`) or, for image folders too large to decode up front, a list of files decoded
on access (:class:`LazyFileStore`). Labels are int64 (``-1`` when the format has none).
"""

from __future__ import annotations

import gzip
import os
import struct
import tarfile
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from .transforms import (
    IMAGE_EXTENSIONS,
    UnreadableImageError,
    UnreadableImageWarning,
    decode_image,
    pil_to_array,
    resize_pil,
    set_channels,
)

__all__ = [
    "ArrayStore",
    "LazyFileStore",
    "Store",
    "array_to_uint8",
    "labels_from_names",
    "read_array_file",
    "read_digits",
    "read_idx",
]

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".tbz2")


@dataclass
class Store:
    """Images and labels of a dataset, plus what was skipped while reading it."""

    labels: np.ndarray
    class_names: list[str] | None = None
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def get(self, i: int) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)


@dataclass
class ArrayStore(Store):
    images: np.ndarray = field(default_factory=lambda: np.zeros((0, 1, 1, 1), np.uint8))

    def get(self, i: int) -> np.ndarray:
        return self.images[i]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]


@dataclass
class LazyFileStore(Store):
    """Files decoded (and resized) on access. An unreadable file met at run time is replaced by
    the next readable one (deterministically), counted, and reported by one warning."""

    paths: list[str] = field(default_factory=list)
    resolution: int = 0
    center_crop: bool = True
    channels: int = 3
    source: str = ""

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._warned = False

    def __getstate__(self) -> dict:
        d = self.__dict__.copy()
        d.pop("_lock", None)
        return d

    def __setstate__(self, d: dict) -> None:
        self.__dict__.update(d)
        self._lock = threading.Lock()

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.resolution, self.resolution, self.channels)

    def _load(self, i: int) -> np.ndarray:
        img = resize_pil(
            decode_image(self.paths[i], self.paths[i]), self.resolution, self.center_crop
        )
        return set_channels(pil_to_array(img), self.channels)

    def get(self, i: int) -> np.ndarray:
        n = len(self.paths)
        for k in range(n):
            j = (i + k) % n
            try:
                return self._load(j)
            except UnreadableImageError as e:
                with self._lock:
                    if str(e) not in self.skipped:
                        self.skipped.append(str(e))
                    first = not self._warned
                    self._warned = True
                if first:
                    warnings.warn(
                        f"skipping unreadable image(s) in {self.source} (each is replaced by the "
                        f"next readable one; count in dataset.num_skipped); first: {e}",
                        UnreadableImageWarning,
                        stacklevel=3,
                    )
        raise RuntimeError(f"no readable image in {self.source}")


# ----------------------------------------------------------------------------- labels
def labels_from_names(
    names: Sequence[str], universe: Sequence[str] | None = None
) -> tuple[np.ndarray, list[str] | None]:
    """Class labels from relative paths: the first directory below the common prefix.

    ``train/cat/1.jpg, train/dog/2.jpg`` → classes ``[cat, dog]`` (sorted; label = index).
    The prefix and the classes are found on ``universe`` (every file of the dataset, default
    ``names``), so that a subset keeps the labels of the full dataset. Without at least two
    class folders that hold every image, the data is unlabelled (-1).
    """
    universe = names if universe is None else universe

    def dirs_of(seq: Sequence[str]) -> list[tuple[str, ...]]:
        return [PurePosixPath(n.replace(os.sep, "/")).parts[:-1] for n in seq]

    udirs = dirs_of(universe)
    if not udirs or not names:
        return np.full(len(names), -1, np.int64), None
    common = 0
    shortest = min(len(d) for d in udirs)
    while common < shortest and len({d[common] for d in udirs}) == 1:
        common += 1
    if any(len(d) <= common for d in udirs):
        return np.full(len(names), -1, np.int64), None
    class_names = sorted({d[common] for d in udirs})
    if len(class_names) < 2:
        return np.full(len(names), -1, np.int64), None
    index = {c: i for i, c in enumerate(class_names)}
    return np.array([index[d[common]] for d in dirs_of(names)], np.int64), class_names


# ----------------------------------------------------------------------------- arrays
def array_to_uint8(x: np.ndarray, value_range: tuple[float, float] | None, what: str) -> np.ndarray:
    """Images of any layout/dtype → uint8 ``[N, H, W, C]`` (C = 1 or 3).

    Layouts: ``[N, H, W]`` (grey), ``[N, H, W, C]`` or ``[N, C, H, W]`` with C ∈ {1, 3, 4}
    (alpha dropped). uint8 as is; other integers must lie in 0..255; floats in ``value_range``
    (inferred as [-1, 1] if any value is negative, else [0, 1], when not given).
    """
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise ValueError(
            f"{what}: expected images [N, H, W], [N, H, W, C] or [N, C, H, W], got shape {x.shape}"
        )
    if x.shape[-1] not in (1, 3, 4):
        if x.shape[1] in (1, 3, 4):
            x = np.moveaxis(x, 1, -1)
        else:
            raise ValueError(
                f"{what}: cannot tell the channel axis of shape {x.shape}; images need 1, 3 or 4 "
                "channels in the last (NHWC) or second (NCHW) axis"
            )
    if x.shape[-1] == 4:
        x = x[..., :3]
    if x.dtype == np.uint8 and value_range is None:
        return np.ascontiguousarray(x)
    if x.dtype == np.bool_:
        raise ValueError(f"{what}: boolean images are not supported; convert to uint8 0/255")
    if np.issubdtype(x.dtype, np.integer) and value_range is None:
        lo, hi = (int(x.min()), int(x.max())) if x.size else (0, 0)
        if lo < 0 or hi > 255:
            raise ValueError(
                f"{what}: integer pixel values span [{lo}, {hi}], outside 0..255; pass value_range=(lo, hi)"
            )
        return np.ascontiguousarray(x.astype(np.uint8))
    xf = x.astype(np.float64)
    if not np.all(np.isfinite(xf)):
        raise ValueError(f"{what}: images contain NaN or inf")
    if value_range is None:
        lo_v, hi_v = (float(xf.min()), float(xf.max())) if xf.size else (0.0, 1.0)
        value_range = (-1.0, 1.0) if lo_v < 0 else (0.0, 1.0)
        if lo_v < -1.0 - 1e-3 or hi_v > 1.0 + 1e-3:
            raise ValueError(
                f"{what}: float pixel values span [{lo_v:.4g}, {hi_v:.4g}], neither [-1, 1] nor "
                "[0, 1]; pass value_range=(lo, hi) (e.g. (0, 255)) or store uint8"
            )
    lo_r, hi_r = float(value_range[0]), float(value_range[1])
    if not hi_r > lo_r:
        raise ValueError(f"value_range must be (lo, hi) with hi > lo, got {value_range}")
    out = np.rint((xf - lo_r) / (hi_r - lo_r) * 255.0)
    return np.ascontiguousarray(np.clip(out, 0, 255).astype(np.uint8))


_IMAGE_KEYS = ("images", "image", "x", "arr_0", "samples", "data", "imgs")
_LABEL_KEYS = ("labels", "label", "y", "arr_1", "targets", "classes")


def read_array_file(
    path: Path, value_range: tuple[float, float] | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """``.npy`` (one image array) or ``.npz`` (images under ``images``/``x``/``arr_0``/…,
    optional labels under ``labels``/``y``/``arr_1``/…)."""
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read {path} as a numpy array file: {e}") from None
    labels = None
    if isinstance(loaded, np.ndarray):
        images = loaded
    else:
        with loaded as z:
            keys = list(z.keys())
            ik = next((k for k in _IMAGE_KEYS if k in keys), keys[0] if len(keys) == 1 else None)
            if ik is None:
                raise ValueError(
                    f"{path}: cannot tell which array holds the images among {keys}; name it "
                    f"one of {list(_IMAGE_KEYS)}"
                )
            images = z[ik]
            lk = next((k for k in _LABEL_KEYS if k in keys and k != ik), None)
            if lk is not None:
                labels = np.asarray(z[lk])
    images = array_to_uint8(images, value_range, str(path))
    if labels is not None:
        labels = labels.reshape(-1)
        if labels.shape[0] != images.shape[0] or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(
                f"{path}: labels must be integers, one per image ({images.shape[0]}), got "
                f"{labels.dtype} of length {labels.shape[0]}"
            )
        labels = labels.astype(np.int64)
    return images, labels


# ----------------------------------------------------------------------------- MNIST IDX
def _open_maybe_gz(path: Path) -> bytes:
    with open(path, "rb") as f:
        head = f.read(2)
    opener = gzip.open if head == b"\x1f\x8b" else open
    try:
        with opener(path, "rb") as f:
            return f.read()
    except (OSError, EOFError) as e:
        raise ValueError(f"cannot read {path}: {e}") from None


def _parse_idx(data: bytes, path: Path) -> np.ndarray:
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path} is not an IDX file (bad magic number)")
    dtype_code, ndim = data[2], data[3]
    if dtype_code != 0x08:
        raise ValueError(
            f"{path}: only unsigned-byte IDX files are supported (type code 0x08), got {dtype_code:#04x}"
        )
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    count = int(np.prod(dims)) if dims else 0
    body = np.frombuffer(data, np.uint8, count=count, offset=4 + 4 * ndim)
    return body.reshape(dims)


def idx_labels_path(images_path: Path) -> Path | None:
    """The labels file named the standard way beside an IDX images file, if it exists.

    ``t10k-images-idx3-ubyte(.gz)`` → ``t10k-labels-idx1-ubyte(.gz)``; also ``train-images.idx3-ubyte``.
    """
    name = images_path.name
    if "images" not in name:
        return None
    cand = name.replace("images", "labels").replace("idx3", "idx1")
    base = cand[:-3] if cand.endswith(".gz") else cand
    for c in (cand, base, base + ".gz"):
        p = images_path.with_name(c)
        if p.is_file():
            return p
    return None


def is_idx_file(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(4)
        if head[:2] == b"\x1f\x8b":
            with gzip.open(path, "rb") as f:
                head = f.read(4)
        return (
            len(head) == 4
            and head[0] == 0
            and head[1] == 0
            and head[2] == 0x08
            and head[3] in (1, 3)
        )
    except (OSError, EOFError):
        return False


def read_idx(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """MNIST-format IDX images (``[N, H, W]`` uint8, gzip or raw) and the labels beside them."""
    arr = _parse_idx(_open_maybe_gz(path), path)
    if arr.ndim == 1:
        raise ValueError(
            f"{path} is an IDX labels file; pass the images file (…-images-idx3-ubyte)"
        )
    if arr.ndim != 3:
        raise ValueError(f"{path}: expected IDX images [N, H, W], got {arr.ndim} dimensions")
    labels = None
    lp = idx_labels_path(path)
    if lp is not None:
        lab = _parse_idx(_open_maybe_gz(lp), lp)
        if lab.ndim != 1 or lab.shape[0] != arr.shape[0]:
            raise ValueError(f"{lp}: expected {arr.shape[0]} labels, got shape {lab.shape}")
        labels = lab.astype(np.int64)
    return arr[..., None].copy(), labels


# ----------------------------------------------------------------------------- digits
def read_digits() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """scikit-learn's ``load_digits()``: 1,797 8×8 digits, values 0..16 → uint8 0..255."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.rint(np.asarray(d.images, np.float64) * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return images, np.asarray(d.target, np.int64), [str(i) for i in range(10)]


# ----------------------------------------------------------------------------- image files
def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def list_image_files(root: Path) -> list[str]:
    """Image files below ``root`` (recursive, hidden files and folders skipped), sorted."""
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out.extend(
            os.path.join(dirpath, f)
            for f in filenames
            if not f.startswith(".") and is_image_name(f)
        )
    out.sort()
    return out


def iter_tar_images(path: Path, all_names: list[str] | None = None) -> Iterator[tuple[str, bytes]]:
    """(member name, bytes) of every image file in a tar archive, in archive order (streamed).

    When the consumer stops early, :func:`tar_image_names` lists the rest; ``all_names``, if
    given, receives the name of every image member read.
    """
    try:
        tf = tarfile.open(path, mode="r:*")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ValueError(f"cannot open {path} as a tar archive: {e}") from None
    with tf:
        try:
            for m in tf:
                if not m.isfile() or not is_image_name(m.name):
                    continue
                base = os.path.basename(m.name)
                if base.startswith(".") or base.startswith("._"):
                    continue
                f = tf.extractfile(m)
                if f is not None:
                    if all_names is not None:
                        all_names.append(m.name)
                    yield m.name, f.read()
        except (tarfile.TarError, OSError, EOFError) as e:
            warnings.warn(
                f"{path}: archive is damaged after some members ({e}); using the images read so far",
                UnreadableImageWarning,
                stacklevel=2,
            )


def tar_image_names(path: Path) -> list[str]:
    """Names of the image members of a tar archive (reads headers only, but a compressed
    archive must still be decompressed to find them)."""
    try:
        with tarfile.open(path, mode="r:*") as tf:
            return [
                m.name
                for m in tf
                if m.isfile()
                and is_image_name(m.name)
                and not os.path.basename(m.name).startswith(".")
            ]
    except (tarfile.TarError, OSError, EOFError):
        return []


def decode_many(
    items: Iterable[tuple[str, bytes | str]],
    resolution: int | None,
    center_crop: bool,
    max_items: int | None,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[str], list[np.ndarray], list[str]]:
    """Decode (and resize) images in a thread pool (PIL releases the GIL while decoding).

    Returns (names, arrays [H, W, C] with C = 1 or 3, skipped "name: error" strings); stops
    after ``max_items`` readable images. Order is the input order.
    """

    def work(item: tuple[str, bytes | str]) -> tuple[str, np.ndarray | None, str | None]:
        name, data = item
        try:
            img = decode_image(data, name)
            if resolution is not None:
                img = resize_pil(img, resolution, center_crop)
            return name, pil_to_array(img), None
        except UnreadableImageError as e:
            return name, None, str(e)

    names: list[str] = []
    arrays: list[np.ndarray] = []
    skipped: list[str] = []
    workers = workers or min(8, os.cpu_count() or 1)
    chunk: list[tuple[str, bytes | str]] = []
    it = iter(items)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        while True:
            chunk = []
            for item in it:
                chunk.append(item)
                if len(chunk) >= 256:
                    break
            if not chunk:
                break
            for name, arr, err in pool.map(work, chunk):
                if err is not None:
                    skipped.append(err)
                    continue
                names.append(name)
                arrays.append(arr)  # type: ignore[arg-type]
                if max_items is not None and len(arrays) >= max_items:
                    return names, arrays, skipped
            if progress is not None:
                progress(len(arrays))
    return names, arrays, skipped


def stack_uniform(arrays: list[np.ndarray], channels: int, what: str) -> np.ndarray:
    """Stack ``[H, W, C]`` arrays converted to ``channels``; all must share H×W."""
    if not arrays:
        return np.zeros((0, 1, 1, channels), np.uint8)
    sizes = {a.shape[:2] for a in arrays}
    if len(sizes) > 1:
        few = sorted(sizes)[:3]
        raise ValueError(
            f"{what}: images have different sizes ({', '.join(f'{h}x{w}' for h, w in few)}, …); "
            "pass resolution=N to resize them"
        )
    return np.stack([set_channels(a, channels) for a in arrays])
