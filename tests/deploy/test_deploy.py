"""Conv-BN folding, channels_last and ONNX / TorchScript export against eager outputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tunedet.config.loader import load_config
from tunedet.deploy import (
    DenseNetwork,
    ExportedDetector,
    detections_equal,
    export_dense,
    fold_bn_into_conv,
    fold_conv_bn,
    max_abs_difference,
    to_channels_last,
)
from tunedet.models import build_detector

TINY = (
    "model.backbone.widths=[8, 8, 16, 16, 16]",
    "model.neck.out_channels=16",
    "model.head.feat_channels=16",
    "model.head.stacked_convs=1",
    "model.score_thr=0.0",
)


def randomise_batch_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running statistics and affine parameters, so folding has work to do."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.2)
    return model


def tiny_detector(overrides=()) -> nn.Module:
    torch.manual_seed(0)
    cfg = load_config("retinanet/demo", [*TINY, *overrides])
    return randomise_batch_norms(build_detector(cfg.model.model_dump())).eval()


def images(batch: int = 2, size: int = 64) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


def test_fold_bn_into_conv_matches_closed_form_in_float64():
    g = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(3, 5, 3, padding=1, bias=True).double()
    bn = randomise_batch_norms(nn.Sequential(nn.BatchNorm2d(5))).double().eval()[0]
    x = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64)
    expected = bn(conv(x))
    fold_bn_into_conv(conv, bn)
    torch.testing.assert_close(conv(x), expected, rtol=1e-12, atol=1e-12)


def test_folded_detector_equals_unfolded_and_has_no_batch_norm_left():
    detector = tiny_detector()
    x = images()
    folded, count = fold_conv_bn(detector)
    assert count == sum(isinstance(m, nn.BatchNorm2d) for m in detector.modules()) > 0
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    with torch.no_grad():
        assert max_abs_difference(detector(x)[:2], folded(x)[:2]) < 1e-4
    ok, worst = detections_equal(
        detector.predict(x, torch.tensor([[64, 64]] * 2)),
        folded.predict(x, torch.tensor([[64, 64]] * 2)),
    )
    assert ok, worst


def test_fold_covers_torchvision_resnet_blocks():
    detector = tiny_detector(["model.backbone={type: resnet18}"])
    x = images()
    folded, count = fold_conv_bn(detector)
    assert count == 20  # stem + 8 blocks × 2 + 3 downsample convs of ResNet-18
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    with torch.no_grad():
        assert max_abs_difference(detector(x)[:2], folded(x)[:2]) < 1e-4


def test_channels_last_gives_the_same_outputs():
    detector = tiny_detector()
    x = images()
    fast = to_channels_last(fold_conv_bn(detector)[0])
    with torch.no_grad():
        out = fast(x.contiguous(memory_format=torch.channels_last))
        assert max_abs_difference(detector(x)[:2], out[:2]) < 1e-4


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_exported_dense_network_and_detections_equal_eager(fmt, tmp_path):
    detector = tiny_detector()
    x = images(batch=3)
    path = export_dense(detector, tmp_path / f"model.{fmt}", fmt, image_size=64)
    exported = ExportedDetector(detector, path, fmt, image_size=64, threads=1)
    with torch.no_grad():
        eager = DenseNetwork(detector)(x)
    assert max_abs_difference(eager, exported.dense(x)) < 1e-4
    sizes = torch.tensor([[64, 64], [60, 50], [64, 40]])
    ok, worst = detections_equal(detector.predict(x, sizes), exported.predict(x, sizes))
    assert ok, worst


def test_export_rejects_unknown_format(tmp_path):
    with pytest.raises(ValueError, match="unknown export format"):
        export_dense(tiny_detector(), tmp_path / "m.bin", "tflite", image_size=64)
