import pytest
import torch

from tunedet.config.registry import build
from tunedet.models.backbones import TinyCNN
from tunedet.models.necks import FPN


def _inputs(sizes, channels=(8, 16, 32)):
    return [torch.randn(2, c, h, w) for c, (h, w) in zip(channels, sizes, strict=True)]


def test_fpn_p3_to_p7_shapes_and_strides_for_odd_input():
    backbone = TinyCNN(widths=(4, 8, 8, 16, 32)).eval()
    neck = build(
        "neck",
        {"type": "fpn", "out_channels": 16},
        in_channels=backbone.out_channels,
        in_strides=backbone.strides,
    )
    with torch.no_grad():
        outs = neck(backbone(torch.randn(1, 3, 100, 76)))
    assert neck.strides == [8, 16, 32, 64, 128]
    assert neck.out_channels == 16
    # 100 → 50 → 25 → 13 → 7 → 4 (stride 32), then 2, 1; 76 → 38 → 19 → 10 → 5 → 3, then 2, 1
    assert [tuple(o.shape) for o in outs] == [
        (1, 16, 13, 10),
        (1, 16, 7, 5),
        (1, 16, 4, 3),
        (1, 16, 2, 2),
        (1, 16, 1, 1),
    ]


def test_fpn_without_extra_levels_when_num_outs_equals_inputs():
    neck = FPN([8, 16, 32], [8, 16, 32], out_channels=16, num_outs=3)
    outs = neck(_inputs([(12, 9), (6, 5), (3, 3)]))
    assert len(neck.extra_convs) == 0 and neck.strides == [8, 16, 32]
    assert [tuple(o.shape[-2:]) for o in outs] == [(12, 9), (6, 5), (3, 3)]


@pytest.mark.parametrize("source", ["input", "output"])
def test_fpn_extra_source_sets_p6_input_channels(source):
    neck = FPN([8, 16, 32], [8, 16, 32], out_channels=16, num_outs=5, extra_source=source)
    assert neck.extra_convs[0].conv.in_channels == (32 if source == "input" else 16)
    assert neck.extra_convs[1].conv.in_channels == 16
    outs = neck(_inputs([(8, 8), (4, 4), (2, 2)]))
    assert [o.shape[-1] for o in outs] == [8, 4, 2, 1, 1]


def test_fpn_relu_before_p7():
    torch.manual_seed(0)
    neck = FPN([8], [32], out_channels=4, num_outs=3, relu_before_extra=True)
    feats = [torch.randn(1, 8, 8, 8)]
    outs = neck(feats)
    expected_p7 = neck.extra_convs[1](torch.relu(outs[1]))
    assert torch.allclose(outs[2], expected_p7)
    neck.relu_before_extra = False
    assert torch.allclose(neck(feats)[2], neck.extra_convs[1](outs[1]))


def test_fpn_rejects_fewer_outputs_than_inputs():
    with pytest.raises(ValueError, match="num_outs"):
        FPN([8, 16, 32], [8, 16, 32], num_outs=2)


def test_fpn_with_group_norm_has_norm_layers_and_no_conv_bias():
    neck = FPN([8, 16], [8, 16], out_channels=16, num_outs=2, norm="gn")
    assert isinstance(neck.output_convs[0].norm, torch.nn.GroupNorm)
    assert neck.output_convs[0].conv.bias is None


def test_zero_init_lateral_starts_every_level_as_the_upsampled_top():
    torch.manual_seed(0)
    fpn = FPN([4, 8, 16], [8, 16, 32], out_channels=6, num_outs=3, zero_init_lateral=True)
    assert all((p == 0).all() for m in fpn.lateral_convs[:-1] for p in m.parameters())
    assert fpn.lateral_convs[-1][0].weight.abs().sum() > 0  # Detectron zeroes all but the top
    feats = [torch.randn(1, c, 32 // s * 4, 32 // s * 4) for c, s in ((4, 1), (8, 2), (16, 4))]
    outs = fpn(feats)
    top = fpn.lateral_convs[-1](feats[-1])
    for level in range(3):
        up = torch.nn.functional.interpolate(top, size=feats[level].shape[-2:], mode="nearest")
        torch.testing.assert_close(outs[level], fpn.output_convs[level](up))
    default = FPN([4, 8, 16], [8, 16, 32], out_channels=6, num_outs=3)
    assert default.lateral_convs[0][0].weight.abs().sum() > 0
