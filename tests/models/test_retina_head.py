import math

import torch

from tunedet.config.registry import build
from tunedet.models.heads import RetinaHead, flatten_level


def _count(module):
    return sum(p.numel() for p in module.parameters())


def test_cls_bias_starts_at_prior_and_sigmoid_mean_is_prior():
    torch.manual_seed(0)
    head = build(
        "head",
        {"type": "retina", "feat_channels": 32, "stacked_convs": 2},
        in_channels=16,
        num_classes=3,
        num_anchors=9,
    )
    expected = -math.log((1 - 0.01) / 0.01)
    assert torch.allclose(head.cls_logits.bias, torch.full_like(head.cls_logits.bias, expected))
    with torch.no_grad():
        cls, box = head([torch.randn(2, 16, 8, 8), torch.randn(2, 16, 4, 4)])
    assert abs(cls.sigmoid().mean().item() - 0.01) < 1e-3
    assert box.abs().max() < 1.0


def test_outputs_are_flattened_over_levels_cells_and_anchors():
    head = RetinaHead(16, num_classes=5, num_anchors=3, feat_channels=16, stacked_convs=1)
    feats = [torch.randn(2, 16, 6, 5), torch.randn(2, 16, 3, 3)]
    cls, box = head(feats)
    n = (6 * 5 + 3 * 3) * 3
    assert cls.shape == (2, n, 5) and box.shape == (2, n, 4)


def test_flatten_order_is_level_y_x_anchor():
    torch.manual_seed(0)
    num_classes, num_anchors = 4, 3
    head = RetinaHead(8, num_classes, num_anchors, feat_channels=8, stacked_convs=1, norm="gn")
    feats = [torch.randn(2, 8, 5, 7), torch.randn(2, 8, 3, 4)]
    with torch.no_grad():
        cls, box = head(feats)
        raw_cls, raw_box = head.forward_levels(feats)
    w = 4  # width of level 1 (3×4)
    offset = 5 * 7 * num_anchors  # level 1 starts after level 0's anchors
    for b, y, x, a, c in [(0, 0, 0, 0, 0), (1, 2, 3, 2, 3), (0, 1, 2, 1, 2), (1, 0, 3, 2, 1)]:
        row = offset + (y * w + x) * num_anchors + a
        assert cls[b, row, c] == raw_cls[1][b, a * num_classes + c, y, x]
        assert box[b, row, c] == raw_box[1][b, a * 4 + c, y, x]
    assert torch.equal(flatten_level(raw_box[0], 4), box[:, :offset])


def test_separable_head_has_fewer_params_and_same_output_shape():
    full = RetinaHead(64, 10, 9, feat_channels=64, stacked_convs=4)
    light = RetinaHead(64, 10, 9, feat_channels=64, stacked_convs=4, separable=True)
    assert _count(light) < _count(full) / 4
    feats = [torch.randn(1, 64, 4, 4)]
    with torch.no_grad():
        assert [t.shape for t in light(feats)] == [t.shape for t in full(feats)]
        assert abs(light(feats)[0].sigmoid().mean().item() - 0.01) < 2e-3


def test_head_weights_are_shared_across_levels():
    head = RetinaHead(8, 2, 1, feat_channels=8, stacked_convs=2)
    single = _count(head)
    feats = [torch.randn(1, 8, 4, 4)] * 3
    cls, _ = head(feats)
    assert _count(head) == single
    assert torch.equal(cls[:, :16], cls[:, 16:32])


def test_norm_variants_build_and_run():
    for norm in ("none", "gn", "bn"):
        head = RetinaHead(8, 2, 2, feat_channels=16, stacked_convs=2, norm=norm, act="silu")
        cls, box = head([torch.randn(2, 8, 4, 4)])
        assert cls.shape == (2, 32, 2) and box.shape == (2, 32, 4)
