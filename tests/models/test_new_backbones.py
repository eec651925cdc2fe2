"""Darknet-53, tiny Darknet, MobileNetV2 and VGG backbones; the YOLOv3, SPP and SSD necks."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tunedet.config.registry import REGISTRIES, build
from tunedet.models.layers import is_batch_norm
from tunedet.models.necks.spp import SPPBlock
from tunedet.models.necks.ssd import L2Norm

# name, constructor args (small where the layout allows), expected (channels, strides)
BACKBONES = {
    "darknet53": ({}, [256, 512, 1024], [8, 16, 32]),
    "tiny_darknet": ({"widths": [4, 8, 8, 16, 16, 32, 32]}, [16, 16, 32], [8, 16, 32]),
    "mobilenet_v2": ({"width_mult": 0.25}, [24, 1280], [16, 32]),
    "vgg": ({"widths": [4, 8, 8, 16, 16, 32], "depths": [1, 1, 2, 2, 2]}, [16, 32], [8, 16]),
}


def make(name, **kwargs):
    args = {**BACKBONES[name][0], **kwargs}
    return build("backbone", {"type": name, **args})


@pytest.mark.parametrize("name", list(BACKBONES))
def test_backbone_outputs_have_the_declared_channels_and_strides(name):
    _, channels, strides = BACKBONES[name]
    model = make(name).eval()
    assert model.out_channels == channels and model.strides == strides
    with torch.no_grad():
        feats = model(torch.zeros(1, 3, 32, 64))
    assert [f.shape[1] for f in feats] == channels
    assert [(32 // f.shape[2], 64 // f.shape[3]) for f in feats] == [(s, s) for s in strides]


def test_backbones_are_registered_with_a_description():
    for name in BACKBONES:
        assert REGISTRIES["backbone"].get(name).description


def test_backbone_out_indices_select_stages():
    model = make("tiny_darknet", out_indices=[1, 4]).eval()
    assert model.strides == [4, 32] and model.out_channels == [8, 32]
    assert [tuple(f.shape[-2:]) for f in model(torch.zeros(1, 3, 64, 64))] == [(16, 16), (2, 2)]


@pytest.mark.parametrize("name", list(BACKBONES))
def test_frozen_stages_stop_gradients_and_statistics_of_those_stages(name):
    model = make(name, frozen_stages=1)
    model.train()
    stages = model.stages()
    frozen, trained = stages[:2], stages[2:]
    assert all(not p.requires_grad for s in frozen for p in s.parameters())
    assert all(p.requires_grad for s in trained for p in s.parameters())
    assert all(not m.training for s in frozen for m in s.modules())
    before = [{k: v.clone() for k, v in s.state_dict().items()} for s in frozen]
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    out = model(torch.randn(2, 3, 32, 32))
    sum(o.mean() for o in out).backward()
    optimizer.step()
    for stage, state in zip(frozen, before, strict=True):
        for key, value in stage.state_dict().items():
            assert torch.equal(value, state[key]), key


@pytest.mark.parametrize("name", ["darknet53", "tiny_darknet", "mobilenet_v2"])
def test_norm_eval_keeps_every_batch_norm_in_eval_mode(name):
    model = make(name, norm_eval=True)
    model.train()
    bns = [m for m in model.modules() if is_batch_norm(m)]
    assert bns and all(not bn.training for bn in bns)
    stats = [bn.running_mean.clone() for bn in bns]
    model(torch.randn(2, 3, 32, 32))
    assert all(torch.equal(bn.running_mean, s) for bn, s in zip(bns, stats, strict=True))
    assert all(p.requires_grad for p in model.parameters())


def test_vgg_with_batch_norm_honours_norm_eval():
    model = make("vgg", norm="bn", norm_eval=True).train()
    bns = [m for m in model.modules() if is_batch_norm(m)]
    assert bns and all(not bn.training for bn in bns)


def test_yolov3_neck_concatenates_top_down_and_keeps_the_strides():
    neck = build(
        "neck",
        {"type": "yolov3", "out_channels": [8, 16, 32]},
        in_channels=[16, 32, 64],
        in_strides=[8, 16, 32],
    )
    assert neck.strides == [8, 16, 32] and neck.out_channels == [8, 16, 32]
    feats = [torch.randn(1, 16, 8, 10), torch.randn(1, 32, 4, 5), torch.randn(1, 64, 2, 3)]
    outs = neck(feats)
    assert [tuple(o.shape) for o in outs] == [(1, 8, 8, 10), (1, 16, 4, 5), (1, 32, 2, 3)]
    # the finer block sees the coarser level: its input width is 16 + 16/2
    assert neck.blocks[1][0].conv.in_channels == 32 + 32 // 2
    with pytest.raises(ValueError, match="one entry per input level"):
        build(
            "neck",
            {"type": "yolov3", "out_channels": [8, 16]},
            in_channels=[16, 32, 64],
            in_strides=[8, 16, 32],
        )


def test_spp_block_concatenates_same_size_max_pools():
    block = SPPBlock(4, 4, norm="none", act="relu")
    x = torch.randn(1, 4, 9, 7)
    captured = {}
    block.fuse.register_forward_hook(lambda m, inputs, out: captured.update(x=inputs[0]))
    block(x)
    expected = [x] + [F.max_pool2d(x, k, 1, k // 2) for k in (5, 9, 13)]
    torch.testing.assert_close(captured["x"], torch.cat(expected, dim=1))
    # a pool's output at a position is the max over the window around it (closed form)
    torch.testing.assert_close(captured["x"][0, 4:8, 4, 3], x[0, :, 2:7, 1:6].amax(dim=(1, 2)))
    neck = build(
        "neck", {"type": "yolov3", "spp": True}, in_channels=[8, 8, 8], in_strides=[8, 16, 32]
    )
    assert any(isinstance(m, SPPBlock) for m in neck.blocks[-1].modules())


def test_pan_adds_a_bottom_up_path_to_fpn():
    torch.manual_seed(0)
    neck = build(
        "neck", {"type": "pan", "out_channels": 8}, in_channels=[4, 8, 16], in_strides=[8, 16, 32]
    )
    assert neck.strides == [8, 16, 32] and neck.out_channels == 8
    feats = [torch.randn(1, 4, 8, 8), torch.randn(1, 8, 4, 4), torch.randn(1, 16, 2, 2)]
    outs = neck(feats)
    pyramid = neck.fpn(feats)
    torch.testing.assert_close(outs[0], pyramid[0])
    expected = neck.output_convs[0](pyramid[1] + neck.downsample_convs[0](outs[0]))
    torch.testing.assert_close(outs[1], expected)
    # the coarsest output now sees the finest input (FPN's top-down path alone does not)
    changed = [feats[0] + 1.0, *feats[1:]]
    assert not torch.allclose(neck(changed)[2], outs[2])
    torch.testing.assert_close(neck.fpn(changed)[2], pyramid[2])


def test_l2_norm_scales_each_position_to_unit_length_times_gamma():
    norm = L2Norm(3, 20.0)
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    expected = x / x.pow(2).sum(dim=1, keepdim=True).sqrt() * 20.0
    torch.testing.assert_close(norm(x), expected)


def test_ssd_neck_adds_padded_and_valid_levels_with_their_strides():
    neck = build(
        "neck",
        {"type": "ssd", "extra_channels": [8, 8, 8, 8], "valid_levels": 2, "input_size": 300},
        in_channels=[4, 8],
        in_strides=[8, 16],
    )
    assert neck.strides == [8, 16, 32, 64, 100, 300]
    feats = [torch.randn(1, 4, 38, 38), torch.randn(1, 8, 19, 19)]
    sides = [o.shape[-1] for o in neck(feats)]
    assert sides == [38, 19, 10, 5, 3, 1]
    assert [300 / s for s in sides[4:]] == [100, 300]
    with pytest.raises(ValueError, match="too small"):
        build(
            "neck",
            {"type": "ssd", "extra_channels": [8, 8, 8, 8], "valid_levels": 2, "input_size": 64},
            in_channels=[4, 8],
            in_strides=[8, 16],
        )


def test_separable_ssd_neck_uses_depthwise_convs():
    neck = build(
        "neck",
        {
            "type": "ssd",
            "extra_channels": [8, 8],
            "valid_levels": 1,
            "separable": True,
            "input_size": 256,
        },
        in_channels=[4, 8],
        in_strides=[16, 32],
    )
    depthwise = [m for m in neck.extras.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert len(depthwise) == 2 and all(m.groups == m.in_channels for m in depthwise)
