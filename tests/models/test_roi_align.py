"""MultiLevelRoIAlign against torchvision's MultiScaleRoIAlign and LevelMapper, and the
sparse-matrix formulation of RoIAlign against torchvision.ops.roi_align."""

import math

import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign, roi_align
from torchvision.ops.poolers import LevelMapper

from tunedet.models.heads.roi_align import (
    MultiLevelRoIAlign,
    fpn_levels,
    roi_align_sparse,
)

STRIDES = [4, 8, 16, 32]


def random_boxes(generator, num, height, width, dtype=torch.float32, margin=0.0):
    """``num`` boxes of random size (4 px to the whole image) inside ``[margin, size - margin]``."""
    size = torch.rand(num, 2, generator=generator, dtype=dtype)
    size = 4 + size * (torch.tensor([width, height], dtype=dtype) - 4 - 2 * margin)
    corner = torch.rand(num, 2, generator=generator, dtype=dtype)
    corner = margin + corner * (torch.tensor([width, height], dtype=dtype) - 2 * margin - size)
    return torch.cat([corner, corner + size], dim=1)


def random_feats(generator, num_images, height, width, channels=5, dtype=torch.float32):
    return [
        torch.randn(num_images, channels, height // s, width // s, generator=generator, dtype=dtype)
        for s in STRIDES
    ]


def test_fpn_levels_follow_equation_1_at_exact_boundaries():
    # k = floor(4 + log2(sqrt(wh) / 224)), clamped to 2..5
    sides = torch.tensor([224.0, 223.0, 112.0, 111.0, 448.0, 447.0, 56.0, 20.0, 2000.0])
    boxes = torch.stack([torch.zeros_like(sides), torch.zeros_like(sides), sides, sides], dim=1)
    assert fpn_levels(boxes, 4, 224, 2, 5).tolist() == [4, 3, 3, 2, 5, 4, 2, 2, 5]


def test_fpn_levels_equal_torchvision_level_mapper_on_random_boxes():
    g = torch.Generator().manual_seed(0)
    boxes = random_boxes(g, 2000, 800, 1000)
    mapper = LevelMapper(k_min=2, k_max=5, canonical_scale=224, canonical_level=4)
    assert torch.equal(fpn_levels(boxes, 4, 224, 2, 5) - 2, mapper([boxes]))


@pytest.mark.parametrize("sampling_ratio", [2, 0])
def test_multi_level_roi_align_equals_torchvision_multi_scale_roi_align(sampling_ratio):
    g = torch.Generator().manual_seed(1)
    num_images, height, width = 2, 128, 96
    feats = random_feats(g, num_images, height, width)
    boxes = [random_boxes(g, n, height, width) for n in (37, 23)]
    rois = torch.cat(
        [torch.cat([torch.full((len(b), 1), float(i)), b], 1) for i, b in enumerate(boxes)]
    )

    # s0 = 32 spreads these boxes (4–128 px) over all four levels
    # exactly torchvision's op per level (the sparse form's rounding differs; tested below)
    ours = MultiLevelRoIAlign(7, sampling_ratio, STRIDES, canonical_scale=32, impl="torchvision")
    ours = ours(feats, rois)
    pooler = MultiScaleRoIAlign(["p2", "p3", "p4", "p5"], 7, sampling_ratio, canonical_scale=32)
    reference = pooler(
        dict(zip(["p2", "p3", "p4", "p5"], feats, strict=True)), boxes, [(height, width)] * 2
    )
    assert ours.shape == (60, 5, 7, 7)
    torch.testing.assert_close(ours, reference, rtol=0, atol=0)
    # every level is used by these boxes, so the test covers the per-level scatter back
    assert len(set(fpn_levels(rois[:, 1:], 4, 32, 2, 5).tolist())) == 4


def forward_backward(fn, feature, rois, weights, sampling_ratio, aligned):
    x = feature.clone().requires_grad_(True)
    out = fn(x, rois, 7, 0.5, sampling_ratio, aligned)
    (out * weights).sum().backward()
    return out.detach(), x.grad


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [1, 2, 3])
def test_sparse_roi_align_equals_torchvision_roi_align_forward_and_backward(
    aligned, sampling_ratio
):
    g = torch.Generator().manual_seed(4)
    feature = torch.randn(3, 4, 20, 28, generator=g, dtype=torch.float64)
    # anywhere, also partly or wholly outside the image, and under a pixel wide
    corner = torch.rand(60, 2, generator=g, dtype=torch.float64) * 80 - 15
    size = torch.rand(60, 2, generator=g, dtype=torch.float64) ** 2 * 50
    boxes = torch.cat([corner, corner + size], 1)
    image = torch.randint(0, 3, (60, 1), generator=g).to(torch.float64)
    rois = torch.cat([image, boxes], 1)
    weights = torch.randn(60, 4, 7, 7, generator=g, dtype=torch.float64)
    expected = forward_backward(roi_align, feature, rois, weights, sampling_ratio, aligned)
    result = forward_backward(roi_align_sparse, feature, rois, weights, sampling_ratio, aligned)
    torch.testing.assert_close(result[0], expected[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(result[1], expected[1], rtol=1e-12, atol=1e-12)


def test_sparse_roi_align_runs_in_bf16_and_under_autocast_with_float32_products():
    # MKL's sparse kernels have no bf16: the products run in float32, the result (and the
    # feature's gradient) in the feature's dtype.
    g = torch.Generator().manual_seed(5)
    feature = torch.randn(2, 8, 16, 16, generator=g)
    rois = torch.cat([torch.tensor([[0.0], [1.0], [1.0]]), random_boxes(g, 3, 64, 64)], 1)
    expected = roi_align(feature, rois, 7, 0.25, 2, True)
    half = feature.to(torch.bfloat16).requires_grad_()
    out = roi_align_sparse(half, rois, 7, 0.25, 2, True)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, rtol=2e-2, atol=2e-2)
    out.float().sum().backward()
    assert half.grad.dtype == torch.bfloat16 and torch.isfinite(half.grad.float()).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = roi_align_sparse(feature, rois, 7, 0.25, 2, True)
    assert inside.dtype == torch.float32
    torch.testing.assert_close(inside, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("impl", ["sparse", "auto"])
def test_multi_level_roi_align_impls_equal_the_torchvision_impl(impl):
    g = torch.Generator().manual_seed(3)
    feats = random_feats(g, 2, 128, 128, dtype=torch.float64)
    boxes = random_boxes(g, 50, 128, 128, torch.float64, margin=2.0)
    rois = torch.cat([torch.randint(0, 2, (50, 1), generator=g).to(torch.float64), boxes], 1)
    pooled = [
        MultiLevelRoIAlign(7, 2, STRIDES, canonical_scale=32, aligned=True, impl=name)(feats, rois)
        for name in ("torchvision", impl)
    ]
    torch.testing.assert_close(pooled[1], pooled[0], rtol=1e-10, atol=1e-10)


def test_sparse_rejects_adaptive_sampling_and_auto_falls_back_to_torchvision():
    with pytest.raises(ValueError, match="sparse needs sampling_ratio >= 1"):
        MultiLevelRoIAlign(7, 0, STRIDES, impl="sparse")
    feature = torch.zeros(1, 2, 8, 8)
    assert not MultiLevelRoIAlign(7, 0, STRIDES)._sparse(feature)  # adaptive: torchvision's
    assert MultiLevelRoIAlign(7, 2, STRIDES)._sparse(feature)  # CPU: the sparse form
    assert not MultiLevelRoIAlign(7, 2, STRIDES)._sparse(feature.to("meta"))  # not CPU


def test_multi_level_roi_align_rejects_strides_that_are_not_consecutive_levels():
    with pytest.raises(ValueError, match="consecutive powers of two"):
        MultiLevelRoIAlign(7, 2, [4, 16])


def roi_pool_reference(feature, roi, size, scale):
    """Fast R-CNN's RoIPool (roi_pooling_layer.cpp) in Python: the RoI rounded to the
    feature grid, split into ``size`` × ``size`` bins of floor/ceil extent, max per bin
    (0 for an empty bin)."""
    _, channels, height, width = feature.shape
    batch, x1, y1, x2, y2 = roi.tolist()
    x1, y1, x2, y2 = (round(v * scale) for v in (x1, y1, x2, y2))
    roi_h, roi_w = max(y2 - y1 + 1, 1), max(x2 - x1 + 1, 1)
    out = torch.zeros(channels, size, size, dtype=feature.dtype)
    for ph in range(size):
        for pw in range(size):
            hs = min(max(math.floor(ph * roi_h / size) + y1, 0), height)
            he = min(max(math.ceil((ph + 1) * roi_h / size) + y1, 0), height)
            ws = min(max(math.floor(pw * roi_w / size) + x1, 0), width)
            we = min(max(math.ceil((pw + 1) * roi_w / size) + x1, 0), width)
            if he > hs and we > ws:
                out[:, ph, pw] = feature[int(batch), :, hs:he, ws:we].amax(dim=(1, 2))
    return out


def test_multi_level_roi_pool_equals_fast_rcnn_roi_pooling_on_each_rois_level():
    g = torch.Generator().manual_seed(5)
    num_images, height, width = 2, 128, 96
    feats = random_feats(g, num_images, height, width, dtype=torch.float64)
    boxes = [random_boxes(g, n, height, width, dtype=torch.float64) for n in (9, 7)]
    rois = torch.cat(
        [torch.cat([torch.full((len(b), 1), float(i), dtype=torch.float64), b], 1)
         for i, b in enumerate(boxes)]
    )  # fmt: skip
    pooler = MultiLevelRoIAlign(7, 2, STRIDES, canonical_scale=32, mode="roi_pool")
    ours = pooler(feats, rois)
    levels = fpn_levels(rois[:, 1:], 4, 32, 2, 5) - 2
    assert len(set(levels.tolist())) > 2
    for k, level in enumerate(levels.tolist()):
        want = roi_pool_reference(feats[level], rois[k], 7, 1 / STRIDES[level])
        torch.testing.assert_close(ours[k], want, rtol=0, atol=0)


def test_roi_head_pooler_key_selects_roi_pool():
    from tunedet.config.loader import load_config
    from tunedet.models import build_detector

    cfg = load_config("faster_rcnn/demo", ["model.roi_head.pooler=roi_pool"])
    assert build_detector(cfg.model.model_dump()).roi_head.pooler.mode == "roi_pool"
