"""antdiff.data: every format, preprocessing, corrupt-image skipping, seeded flips, the
resumable sampler."""

from __future__ import annotations

import gzip
import io
import struct
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from antdiff.data import (
    ImageDataset,
    ResumableSampler,
    UnreadableImageWarning,
    clear_cache,
    flip_bit,
    load_images_uint8,
    open_dataset,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MNIST = SHARED / "mnist-test" / "t10k-images-idx3-ubyte.gz"
CIFAR_TEST = SHARED / "cifar10" / "cifar10-test-jpeg.tar.xz"


def png_bytes(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def make_images(n: int, size: int = 8, seed: int = 0, rgb: bool = True) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (n, size, size, 3) if rgb else (n, size, size)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def corrupt_jpeg() -> bytes:
    good = png_bytes(make_images(1, 16)[0], "JPEG")
    return good[: len(good) // 2]  # truncated: header fine, data cut


@pytest.fixture
def class_folder(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """root/{cat,dog}/NN.png (lossless) + one corrupt .jpg + a non-image file."""
    imgs = make_images(6, 8)
    root = tmp_path / "imgs"
    for i, a in enumerate(imgs):
        d = root / ("cat" if i < 3 else "dog")
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{i:02d}.png").write_bytes(png_bytes(a))
    (root / "dog" / "99.jpg").write_bytes(corrupt_jpeg())
    (root / "dog" / "notes.txt").write_text("not an image")
    return root, imgs


def one_warning(record) -> list:
    return [w for w in record if issubclass(w.category, UnreadableImageWarning)]


# ----------------------------------------------------------------------------- digits
def test_digits_embedded_dataset():
    ds = open_dataset("digits")
    assert len(ds) == 1797 and ds.resolution == 8 and ds.channels == 1
    assert ds.num_classes == 10 and ds.class_names == [str(i) for i in range(10)]
    imgs = ds.images_uint8()
    assert imgs.dtype == np.uint8 and imgs.max() == 255 and imgs.min() == 0
    from sklearn.datasets import load_digits

    raw = load_digits()
    np.testing.assert_array_equal(imgs[..., 0], np.rint(raw.images * 255 / 16).astype(np.uint8))
    np.testing.assert_array_equal(ds.labels, raw.target)
    x, y = ds[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32 and y == raw.target[0]
    assert x.min() >= -1 and x.max() <= 1
    torch.testing.assert_close(x, torch.from_numpy(imgs[0]).permute(2, 0, 1).float() / 127.5 - 1)


def test_digits_resized_and_rgb():
    ds = open_dataset("digits", resolution=16, grey_to_rgb=True, max_items=10)
    assert len(ds) == 10 and ds.resolution == 16 and ds.channels == 3
    img = ds.images_uint8()[0]
    np.testing.assert_array_equal(img[..., 0], img[..., 2])


# ----------------------------------------------------------------------------- folders
def test_image_folder_labels_and_corrupt_image_skipped_once(class_folder):
    root, imgs = class_folder
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        ds = open_dataset(str(root))
    assert len(one_warning(rec)) == 1 and "99.jpg" in str(one_warning(rec)[0].message)
    assert len(ds) == 6 and ds.num_skipped == 1
    assert ds.class_names == ["cat", "dog"] and ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
    np.testing.assert_array_equal(ds.images_uint8(), imgs)
    for i in range(len(ds)):  # every item loads: nothing crashes mid-run
        ds[i]


def test_lazy_folder_equals_in_memory_and_substitutes_corrupt_files(class_folder):
    root, imgs = class_folder
    # Lazily read, the corrupt file is only met on access.
    lazy = open_dataset(str(root), in_memory=False)
    assert len(lazy) == 7  # the lazy store lists the corrupt jpg too
    np.testing.assert_array_equal(lazy.image_uint8(0), imgs[0])
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        items = [lazy[i] for i in range(len(lazy))] + [lazy[6], lazy[6]]
    assert len(one_warning(rec)) == 1 and lazy.num_skipped == 1
    # The corrupt 7th file (dog/99.jpg sorts last) is replaced by the next readable one (item 0).
    torch.testing.assert_close(items[6][0], items[0][0])


def test_folder_resize_and_center_crop(tmp_path):
    # 20 wide x 10 high: left half black, centre white band, right half black.
    arr = np.zeros((10, 20, 3), np.uint8)
    arr[:, 5:15] = 255
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(png_bytes(arr))
    crop = open_dataset(str(tmp_path / "a"), resolution=10).images_uint8()[0]
    np.testing.assert_array_equal(crop, np.full((10, 10, 3), 255, np.uint8))  # centre square
    squash = open_dataset(str(tmp_path / "a"), resolution=10, center_crop=False).images_uint8()[0]
    assert squash[:, 0].max() < 60 and squash[:, 5].min() > 200  # whole image squeezed in


def test_mixed_sizes_need_a_resolution(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "a.png").write_bytes(png_bytes(make_images(1, 8)[0]))
    (tmp_path / "m" / "b.png").write_bytes(png_bytes(make_images(1, 12)[0]))
    with pytest.raises(ValueError, match="different sizes.*resolution="):
        open_dataset(str(tmp_path / "m"))
    assert open_dataset(str(tmp_path / "m"), resolution=8).images_uint8().shape == (2, 8, 8, 3)


def test_grey_and_colour_channels(tmp_path):
    (tmp_path / "g").mkdir()
    grey = make_images(2, 8, rgb=False)
    for i, a in enumerate(grey):
        (tmp_path / "g" / f"{i}.png").write_bytes(png_bytes(a))
    ds = open_dataset(str(tmp_path / "g"))
    assert ds.channels == 1 and ds.num_classes is None and ds[0][1] == -1
    rgb = open_dataset(str(tmp_path / "g"), channels=3)
    np.testing.assert_array_equal(rgb.images_uint8()[..., 1], grey)
    colour = make_images(1, 8)[0]
    (tmp_path / "g" / "c.png").write_bytes(png_bytes(colour))
    mixed = open_dataset(str(tmp_path / "g"))
    assert mixed.channels == 3  # any colour image makes the dataset RGB
    as_grey = open_dataset(str(tmp_path / "g"), channels=1).images_uint8()
    expect = np.asarray(Image.fromarray(colour).convert("L"))
    assert np.abs(as_grey[2, ..., 0].astype(int) - expect).max() <= 1  # PIL's luma
    with pytest.raises(ValueError, match="contradicts"):
        open_dataset(str(tmp_path / "g"), channels=1, grey_to_rgb=True)


# ----------------------------------------------------------------------------- tar archives
@pytest.mark.parametrize("suffix,mode", [(".tar", "w"), (".tar.gz", "w:gz"), (".tar.xz", "w:xz")])
def test_tar_archive_with_corrupt_member(tmp_path, suffix, mode):
    imgs = make_images(4, 8, seed=1)
    path = tmp_path / f"data{suffix}"
    with tarfile.open(path, mode) as tf:
        members = [
            ("train/a/0.png", png_bytes(imgs[0])),
            ("train/a/1.png", png_bytes(imgs[1])),
            ("train/b/bad.jpg", corrupt_jpeg()),
            ("train/b/2.png", png_bytes(imgs[2])),
            ("train/b/3.png", png_bytes(imgs[3])),
            ("train/README", b"text"),
        ]
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    clear_cache()
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        ds = open_dataset(str(path))
    assert len(one_warning(rec)) == 1
    assert len(ds) == 4 and ds.num_skipped == 1
    assert ds.class_names == ["a", "b"] and ds.labels.tolist() == [0, 0, 1, 1]
    np.testing.assert_array_equal(ds.images_uint8(), imgs)
    # Decoded once: a second open is served from the memory cache (same array, no warning).
    with warnings.catch_warnings(record=True) as rec2:
        warnings.simplefilter("always")
        again = open_dataset(str(path))
    assert again.store.images is ds.store.images and not one_warning(rec2)
    # max_items keeps the labels of the whole archive.
    first = open_dataset(str(path), max_items=2)
    assert first.class_names == ["a", "b"] and first.labels.tolist() == [0, 0]


def test_disk_cache_round_trip(tmp_path, monkeypatch):
    import os

    import antdiff.data.dataset as dataset_mod

    imgs = make_images(3, 8)
    path = tmp_path / "x.tar"
    with tarfile.open(path, "w") as tf:
        for i, a in enumerate(imgs):
            data = png_bytes(a)
            info = tarfile.TarInfo(f"{i}.png")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    clear_cache()
    open_dataset(str(path), cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
    clear_cache()

    def no_decoding(*a, **k):
        raise AssertionError("decoded again instead of reading the cache file")

    monkeypatch.setattr(dataset_mod, "decode_many", no_decoding)
    ds = open_dataset(str(path), cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(ds.images_uint8(), imgs)
    # A changed file (new mtime) is a new key: decoded again, not served stale.
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    clear_cache()
    with pytest.raises(AssertionError, match="decoded again"):
        open_dataset(str(path), cache_dir=tmp_path / "cache")


@pytest.mark.skipif(not CIFAR_TEST.exists(), reason="shared CIFAR-10 archive not present")
def test_real_cifar_archive_first_members():
    ds = open_dataset(str(CIFAR_TEST), max_items=50)
    assert len(ds) == 50 and ds.resolution == 32 and ds.channels == 3
    assert ds.class_names[:3] == ["airplane", "automobile", "bird"] and ds.num_classes == 10
    assert set(ds.labels.tolist()) == {0}  # sorted by class: the first images are airplanes


# ----------------------------------------------------------------------------- arrays
def test_npz_and_npy_layouts_and_ranges(tmp_path):
    u8 = make_images(5, 8, seed=2)
    np.savez(tmp_path / "a.npz", images=u8, labels=np.arange(5) % 2)
    ds = open_dataset(str(tmp_path / "a.npz"))
    np.testing.assert_array_equal(ds.images_uint8(), u8)
    assert ds.labels.tolist() == [0, 1, 0, 1, 0] and ds.num_classes == 2
    np.save(tmp_path / "nchw.npy", u8.transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(open_dataset(str(tmp_path / "nchw.npy")).images_uint8(), u8)
    np.save(tmp_path / "m11.npy", u8.astype(np.float32) / 127.5 - 1)
    np.testing.assert_array_equal(open_dataset(str(tmp_path / "m11.npy")).images_uint8(), u8)
    np.save(tmp_path / "z1.npy", u8.astype(np.float64) / 255)
    np.testing.assert_array_equal(open_dataset(str(tmp_path / "z1.npy")).images_uint8(), u8)
    np.save(tmp_path / "f255.npy", u8.astype(np.float32))
    with pytest.raises(ValueError, match="value_range"):
        open_dataset(str(tmp_path / "f255.npy"))
    stated = open_dataset(str(tmp_path / "f255.npy"), value_range=(0, 255))
    np.testing.assert_array_equal(stated.images_uint8(), u8)
    np.save(tmp_path / "grey.npy", u8[..., 0])
    assert open_dataset(str(tmp_path / "grey.npy")).channels == 1
    np.save(tmp_path / "bad.npy", np.zeros((2, 5, 7, 9), np.uint8))
    with pytest.raises(ValueError, match="channel axis"):
        open_dataset(str(tmp_path / "bad.npy"))


# ----------------------------------------------------------------------------- MNIST IDX
def write_idx(path: Path, arr: np.ndarray, gz: bool) -> None:
    head = struct.pack(">BBBB", 0, 0, 8, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    data = head + arr.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_files_with_labels_beside(tmp_path, gz):
    ext = ".gz" if gz else ""
    imgs = make_images(4, 6, rgb=False)
    write_idx(tmp_path / f"train-images-idx3-ubyte{ext}", imgs, gz)
    write_idx(tmp_path / f"train-labels-idx1-ubyte{ext}", np.array([3, 1, 4, 1]), gz)
    ds = open_dataset(str(tmp_path / f"train-images-idx3-ubyte{ext}"))
    np.testing.assert_array_equal(ds.images_uint8()[..., 0], imgs)
    assert ds.labels.tolist() == [3, 1, 4, 1]
    with pytest.raises(ValueError, match="labels file"):
        open_dataset(str(tmp_path / f"train-labels-idx1-ubyte{ext}"))


@pytest.mark.skipif(not MNIST.exists(), reason="shared MNIST files not present")
def test_real_mnist_test_set():
    ds = open_dataset(str(MNIST))
    assert len(ds) == 10000 and ds.resolution == 28 and ds.channels == 1
    np.testing.assert_array_equal(
        np.bincount(ds.labels), [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    )
    assert ds.images_uint8().mean() == pytest.approx(33.79, abs=0.01)


# ----------------------------------------------------------------------------- errors
def test_clear_errors_for_missing_and_unknown(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found.*'digits'"):
        open_dataset(str(tmp_path / "nope"))
    (tmp_path / "x.csv").write_text("1,2,3")
    with pytest.raises(ValueError, match="unknown dataset format"):
        open_dataset(str(tmp_path / "x.csv"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        open_dataset(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="channels must be 1, 3"):
        open_dataset("digits", channels=2)
    (tmp_path / "broken.tar.gz").write_bytes(b"not a tar")
    with pytest.raises(ValueError, match="tar archive"):
        open_dataset(str(tmp_path / "broken.tar.gz"))


# ----------------------------------------------------------------------------- flips
def test_random_flip_is_a_pure_function_of_seed_epoch_item():
    ds = open_dataset("digits", random_flip=True, seed=7, max_items=64)
    plain = ds.images_uint8()
    n = len(ds)
    flips = []
    for epoch in range(3):
        for i in range(n):
            x, _ = ds[epoch * n + i]
            img = ((x.permute(1, 2, 0) + 1) * 127.5).round().to(torch.uint8).numpy()
            f = flip_bit(7, epoch, i)
            np.testing.assert_array_equal(img, plain[i][:, ::-1] if f else plain[i])
            flips.append(f)
    assert 0.35 < np.mean(flips) < 0.65
    per_epoch = np.array(flips).reshape(3, n)
    assert (per_epoch[0] != per_epoch[1]).any()  # flips change with the epoch
    assert [flip_bit(8, 0, i) for i in range(n)] != list(per_epoch[0])  # and with the seed


# ----------------------------------------------------------------------------- evaluation subset
def test_load_images_uint8_is_a_seeded_shuffle(tmp_path):
    u8 = np.repeat(np.arange(20, dtype=np.uint8), 8 * 8 * 3).reshape(
        20, 8, 8, 3
    )  # sorted "classes"
    np.save(tmp_path / "sorted.npy", u8)
    a = load_images_uint8(str(tmp_path / "sorted.npy"), 10, seed=0)
    b = load_images_uint8(str(tmp_path / "sorted.npy"), 10, seed=0)
    c = load_images_uint8(str(tmp_path / "sorted.npy"), 10, seed=1)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (10, 8, 8, 3) and a.dtype == np.uint8
    ids = a[:, 0, 0, 0].tolist()
    assert len(set(ids)) == 10 and ids != list(range(10))  # distinct and not the first ten
    assert ids != c[:, 0, 0, 0].tolist()
    full = load_images_uint8(str(tmp_path / "sorted.npy"))
    assert sorted(full[:, 0, 0, 0].tolist()) == list(range(20))
    assert load_images_uint8("digits", 4, channels=3).shape == (4, 8, 8, 3)
    with pytest.raises(ValueError, match="asked for 21 images"):
        load_images_uint8(str(tmp_path / "sorted.npy"), 21)


# ----------------------------------------------------------------------------- sampler
def stream(sampler, k):
    it = iter(sampler)
    return [next(it) for _ in range(k)]


def test_sampler_epochs_are_seeded_permutations():
    s = ResumableSampler(10, seed=3)
    xs = stream(s, 30)
    for e in range(3):
        assert sorted(xs[10 * e : 10 * e + 10]) == list(range(10))
    assert xs[:10] != xs[10:20]
    assert stream(ResumableSampler(10, seed=3), 30) == xs
    assert stream(ResumableSampler(10, seed=4), 10) != xs[:10]
    assert s.epoch == 3 and s.position == 0
    assert stream(ResumableSampler(5, shuffle=False), 7) == [0, 1, 2, 3, 4, 0, 1]


@pytest.mark.parametrize("k", [0, 1, 9, 10, 11, 25])
def test_sampler_resume_is_exact(k):
    ref = stream(ResumableSampler(10, seed=1), 40)
    s = ResumableSampler(10, seed=1)
    stream(s, k)
    state = s.state_dict()
    assert (state["epoch"], state["position"]) == divmod(k, 10)
    t = ResumableSampler(10, seed=99)  # seed comes from the state
    t.load_state_dict(state)
    assert stream(t, 40 - k) == ref[k:]


def test_sampler_state_for_consumed_count_despite_prefetch():
    s = ResumableSampler(10, seed=2)
    ref = stream(ResumableSampler(10, seed=2), 20)
    stream(s, 17)  # a DataLoader prefetched 17 but the model consumed 12
    t = ResumableSampler(10)
    t.load_state_dict(s.state_dict(consumed=12))
    assert stream(t, 8) == ref[12:20]


@pytest.mark.parametrize("n,world,drop_last", [(10, 3, False), (10, 3, True), (12, 4, False)])
def test_sampler_ddp_shards(n, world, drop_last):
    shards = [
        stream(
            ResumableSampler(n, seed=5, rank=r, world_size=world, drop_last=drop_last),
            -(-n // world) if not drop_last else n // world,
        )
        for r in range(world)
    ]
    lengths = {len(s) for s in shards}
    assert len(lengths) == 1
    flat = [i for s in shards for i in s]
    if drop_last:
        assert len(set(flat)) == len(flat) == (n // world) * world
    else:
        assert set(flat) == set(range(n))  # padded by repeats to a multiple of world
    # The shards interleave one shared permutation.
    perm = stream(ResumableSampler(n, seed=5), n)
    assert shards[0][0] == perm[0] and shards[1][0] == perm[1]


def test_sampler_tags_epochs_for_image_datasets_and_feeds_a_dataloader():
    ds = open_dataset("digits", max_items=20, random_flip=True)
    s = ResumableSampler(ds, seed=0)
    assert s.epoch_tags
    idx = stream(s, 40)
    assert sorted(i % 20 for i in idx[20:]) == list(range(20)) and min(idx[20:]) >= 20
    assert not ResumableSampler(ds, epoch_tags=False).epoch_tags
    s2 = ResumableSampler(ds, seed=0, infinite=False)
    loader = torch.utils.data.DataLoader(ds, batch_size=8, sampler=s2)
    batches = list(loader)
    assert [b[0].shape[0] for b in batches] == [8, 8, 4]
    assert isinstance(ds, ImageDataset)


def test_sampler_state_errors():
    s = ResumableSampler(10)
    with pytest.raises(ValueError, match="dataset of 10 items"):
        ResumableSampler(11).load_state_dict(s.state_dict())
    with pytest.raises(ValueError, match="rank"):
        ResumableSampler(10, rank=2, world_size=2)
    with pytest.warns(UserWarning, match="world_size"):
        ResumableSampler(10, world_size=2).load_state_dict(s.state_dict(consumed=4))
