"""Loading the Inception network offline: format detection, errors, preprocessing, architecture.

The real 87 MB network is exercised by the opt-in slow test (test_eval_slow.py); here tiny
TorchScript stand-ins and randomly initialised pytorch-fid weights test the plumbing.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from antdiff.evaluation import FIDInceptionV3, InceptionFeatures, export_fp16_inception
from antdiff.evaluation import inception as I
from antdiff.evaluation.pytorch_fid_net import nvidia_to_pytorch_fid_state_dict

# The standard network ships as TorchScript; torch 2.13 marks torch.jit as deprecated.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.:DeprecationWarning")


class TinyFeatureNet(nn.Module):
    """Stand-in with the Inception interface: [N, 3, 299, 299] -> [N, 8]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, kernel_size=13, stride=13)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x)).mean(dim=(2, 3))


def save_tiny_torchscript(path, seed=0, half=False):
    torch.manual_seed(seed)
    module = torch.jit.script(TinyFeatureNet().eval())
    if half:
        module = module.half()
    torch.jit.save(module, str(path))
    return path


@pytest.fixture(scope="module")
def pytorch_fid_sd(tmp_path_factory):
    """A random state dict with pytorch-fid's keys (plus the fc layer its checkpoint carries)."""
    torch.manual_seed(0)
    sd = FIDInceptionV3().state_dict()
    sd = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in sd.items()}
    sd["fc.weight"], sd["fc.bias"] = torch.randn(1008, 2048), torch.randn(1008)
    return sd


# ---------------------------------------------------------------------------------------------
# preprocessing


def _tf_legacy_resize_numpy(img: np.ndarray, size: int) -> np.ndarray:
    """TF1 ResizeBilinear(align_corners=False, half_pixel_centers=False), written directly."""
    c, h, w = img.shape
    ys, xs = np.arange(size) * (h / size), np.arange(size) * (w / size)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    fy, fx = (ys - y0)[None, :, None], (xs - x0)[None, None, :]
    top = img[:, y0][:, :, x0] * (1 - fx) + img[:, y0][:, :, x1] * fx
    bottom = img[:, y1][:, :, x0] * (1 - fx) + img[:, y1][:, :, x1] * fx
    return top * (1 - fy) + bottom * fy


@pytest.mark.parametrize(("h", "w", "size"), [(5, 7, 13), (32, 32, 299), (28, 28, 299), (9, 4, 3)])
def test_resize_is_tf1_legacy_bilinear(h, w, size):
    rng = np.random.default_rng(h * w)
    img = rng.uniform(0, 255, size=(2, h, w)).astype(np.float32)
    ours = I.tf_bilinear_resize(torch.from_numpy(img)[None], size)[0].numpy()
    np.testing.assert_allclose(
        ours, _tf_legacy_resize_numpy(img.astype(np.float64), size), atol=2e-3
    )


def test_network_input_layouts_and_scaling():
    rng = np.random.default_rng(0)
    nhwc = rng.integers(0, 256, size=(2, 6, 6, 3), dtype=np.uint8)
    ref = I.to_network_input(I._as_nchw_uint8(nhwc), torch.device("cpu"))
    assert ref.shape == (2, 3, 299, 299) and ref.dtype == torch.float32
    nchw = I._as_nchw_uint8(np.ascontiguousarray(nhwc.transpose(0, 3, 1, 2)))
    torch.testing.assert_close(I.to_network_input(nchw, torch.device("cpu")), ref)
    # (x - 128) / 128: 0 -> -1, 128 -> 0, 255 -> 127/128
    flat = torch.tensor([0, 128, 255], dtype=torch.uint8).view(1, 1, 1, 3).expand(1, 299, 299, 3)
    out = I.to_network_input(I._as_nchw_uint8(flat.contiguous()), torch.device("cpu"))
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor([-1.0, 0.0, 127 / 128]))
    grey = rng.integers(0, 256, size=(2, 6, 6), dtype=np.uint8)  # NHW: repeated to RGB
    g = I.to_network_input(I._as_nchw_uint8(grey), torch.device("cpu"))
    rgb = I.to_network_input(
        I._as_nchw_uint8(np.repeat(grey[..., None], 3, -1)), torch.device("cpu")
    )
    torch.testing.assert_close(g, rgb)


def test_bad_image_batches_are_explained():
    with pytest.raises(ValueError, match="uint8"):
        I._as_nchw_uint8(np.zeros((2, 8, 8, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="alpha"):
        I._as_nchw_uint8(np.zeros((2, 8, 8, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="expected images"):
        I._as_nchw_uint8(np.zeros((8, 8), dtype=np.uint8))


# ---------------------------------------------------------------------------------------------
# formats


def test_torchscript_and_fp16_copy(tmp_path):
    fp32 = InceptionFeatures.from_path(save_tiny_torchscript(tmp_path / "a.pt"), device="cpu")
    assert fp32.format == "torchscript" and fp32.compute_dtype == torch.float32
    images = np.random.default_rng(1).integers(0, 256, size=(5, 10, 10, 3), dtype=np.uint8)
    feats = fp32(images)
    assert feats.shape == (5, 8) and feats.dtype == np.float64 and fp32.dim == 8
    np.testing.assert_array_equal(feats, fp32(images))  # deterministic
    fp32.batch_size = 2  # batching does not change features
    np.testing.assert_allclose(fp32(images), feats, rtol=1e-6, atol=1e-7)

    info = export_fp16_inception(tmp_path / "a16.pt", src=tmp_path / "a.pt")
    assert info["format"] == "torchscript-fp16" and info["compute_dtype"] == "float32"  # on CPU
    fp16 = InceptionFeatures.from_path(tmp_path / "a16.pt", device="cpu")
    assert fp16.checksum != fp32.checksum  # rounded weights: a different extractor identity
    np.testing.assert_allclose(fp16(images), feats, rtol=2e-2, atol=2e-3)
    desc = fp32.describe()
    assert desc["preprocessing"] == I.PREPROCESSING and desc["file_sha256"] == I.sha256_file(
        tmp_path / "a.pt"
    )
    assert "unrecognised" in desc["name"] and not fp32.is_standard


def test_weights_checksum_survives_resaving(tmp_path):
    a = InceptionFeatures.from_path(save_tiny_torchscript(tmp_path / "a.pt"), device="cpu")
    torch.jit.save(torch.jit.load(str(tmp_path / "a.pt")), str(tmp_path / "b.pt"))
    b = InceptionFeatures.from_path(tmp_path / "b.pt", device="cpu")
    assert a.checksum == b.checksum
    c = InceptionFeatures.from_path(save_tiny_torchscript(tmp_path / "c.pt", seed=1), device="cpu")
    assert c.checksum != a.checksum


@pytest.mark.parametrize("legacy", [False, True])
def test_pytorch_fid_state_dict_is_detected_and_loaded(tmp_path, pytorch_fid_sd, legacy):
    path = tmp_path / "pt_inception.pth"
    torch.save(pytorch_fid_sd, path, _use_new_zipfile_serialization=not legacy)
    net = InceptionFeatures.from_path(path, device="cpu")
    assert net.format == "pytorch-fid-state-dict" and isinstance(net.network, FIDInceptionV3)
    torch.testing.assert_close(
        net.network.Mixed_7c.branch3x3dbl_3b.conv.weight,
        pytorch_fid_sd["Mixed_7c.branch3x3dbl_3b.conv.weight"],
    )


def test_architecture_has_pytorch_fid_keys_and_shapes(pytorch_fid_sd):
    net = FIDInceptionV3()
    sd = net.state_dict()
    # Spot checks written from torchvision's Inception3 / pytorch-fid's patched blocks.
    expected = {
        "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
        "Conv2d_4a_3x3.bn.running_var": (192,),
        "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
        "Mixed_5d.branch5x5_2.conv.weight": (64, 48, 5, 5),
        "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
        "Mixed_6b.branch7x7_2.conv.weight": (128, 128, 1, 7),
        "Mixed_6e.branch7x7dbl_4.conv.weight": (192, 192, 7, 1),
        "Mixed_7a.branch3x3_2.conv.weight": (320, 192, 3, 3),
        "Mixed_7b.branch3x3dbl_1.conv.weight": (448, 1280, 1, 1),
        "Mixed_7c.branch3x3_2b.conv.weight": (384, 384, 3, 1),
        "Mixed_7c.branch_pool.bn.bias": (192,),
    }
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    assert sum(k.endswith("conv.weight") for k in sd) == 94
    # torchvision's inception_v3 has 27,161,264 parameters; minus AuxLogits (3,326,696) and the
    # 1000-class fc (2,049,000) leaves the 21,785,568 of the trunk.
    assert sum(p.numel() for p in net.parameters()) == 21_785_568
    loaded = FIDInceptionV3.from_state_dict(pytorch_fid_sd)  # fc dropped, strict otherwise
    x = torch.randn(2, 3, 75, 75)  # smallest input the stride pattern allows
    with torch.inference_mode():
        assert loaded(x).shape == (2, 2048)


def test_state_dict_mismatches_are_named(pytorch_fid_sd):
    broken = dict(pytorch_fid_sd)
    del broken["Mixed_6c.branch1x1.conv.weight"]
    broken["Mixed_9z.conv.weight"] = torch.zeros(1)
    broken["Mixed_7c.branch_pool.conv.weight"] = torch.zeros(192, 2048, 3, 3)
    with pytest.raises(ValueError) as e:
        FIDInceptionV3.from_state_dict(broken)
    msg = str(e.value)
    assert (
        "Mixed_6c.branch1x1.conv.weight" in msg and "Mixed_9z" in msg and "(192, 2048, 3, 3)" in msg
    )
    prefixed = {f"module.{k}": v for k, v in pytorch_fid_sd.items()}
    FIDInceptionV3.from_state_dict(prefixed)  # DataParallel prefix is accepted


def test_nvidia_key_conversion_renames_layers():
    # Keys as in NVIDIA's TorchScript (net.layers.<layer>.<weight|beta|mean|var>); the full
    # conversion of the real file is checked against the TorchScript's outputs in the slow test.
    net = FIDInceptionV3()
    with pytest.raises(ValueError, match="not NVIDIA"):
        nvidia_to_pytorch_fid_state_dict({"net.layers.conv.gamma": torch.zeros(3)})
    with pytest.raises(ValueError, match="not NVIDIA"):
        nvidia_to_pytorch_fid_state_dict({"layers.conv.weight": torch.zeros(3)})
    nv = {
        "net.layers.conv.weight": torch.randn(32, 3, 3, 3),
        "net.layers.conv.beta": torch.randn(32),
        "net.layers.mixed_9.tower_1_mixed_conv_1.var": torch.rand(384),
    }
    out = nvidia_to_pytorch_fid_state_dict(nv)
    torch.testing.assert_close(out["Conv2d_1a_3x3.conv.weight"], nv["net.layers.conv.weight"])
    torch.testing.assert_close(out["Conv2d_1a_3x3.bn.weight"], torch.ones(32))
    assert out["Mixed_7b.branch3x3dbl_3b.bn.running_var"].shape == (384,)
    assert set(out) <= set(net.state_dict())


def test_wrong_files_give_one_clear_error(tmp_path, monkeypatch):
    cases = {
        "random.pt": np.random.default_rng(0).bytes(1000),
        "text.pt": b"hello, this is not a network\n",
        "empty.pt": b"",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    good = save_tiny_torchscript(tmp_path / "good.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(good[: len(good) // 2])
    torch.save({"weight": torch.zeros(3)}, tmp_path / "other_sd.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    for name in [*cases, "truncated.pt", "other_sd.pth", "list.pth", "missing.pt"]:
        with pytest.raises(ValueError, match="expected the TorchScript default_1.pt") as e:
            InceptionFeatures.from_path(tmp_path / name, device="cpu")
        assert "\n" not in str(e.value), name
    monkeypatch.setenv(I.ENV_VAR, str(tmp_path / "nowhere.pt"))
    with pytest.raises(ValueError, match=I.ENV_VAR):
        InceptionFeatures.resolve(device="cpu")


def test_environment_variable_and_explicit_path_take_precedence(tmp_path, monkeypatch):
    env = save_tiny_torchscript(tmp_path / "env.pt", seed=1)
    explicit = save_tiny_torchscript(tmp_path / "explicit.pt", seed=2)
    monkeypatch.setenv(I.ENV_VAR, str(env))
    assert InceptionFeatures.resolve(device="cpu").path == str(env)
    assert InceptionFeatures.resolve(explicit, device="cpu").path == str(explicit)


def test_missing_package_is_explained(monkeypatch):
    monkeypatch.setattr(I, "_DEFAULT_PACKAGE", "no_such_package_for_antdiff")
    with pytest.raises(ValueError, match=r"antdiff\[eval\].*never downloads"):
        I.default_inception_path()


def test_output_shape_is_checked(tmp_path):
    class Bad(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, 0]  # [N, 299, 299]

    torch.jit.save(torch.jit.script(Bad()), str(tmp_path / "bad.pt"))
    net = InceptionFeatures.from_path(tmp_path / "bad.pt", device="cpu")
    with pytest.raises(ValueError, match=r"expected \[N, D\] features"):
        net(np.zeros((2, 4, 4, 3), dtype=np.uint8))
