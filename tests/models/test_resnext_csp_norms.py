"""ResNet-101/ResNeXt against torchvision, CSP-Darknet against YOLOv5's layer table,
LayerNorm/InstanceNorm against their definitions, DropBlock against a loop, dropout knobs."""

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from tunedet.config.registry import build
from tunedet.models.backbones.csp_darknet import SPPF, CSPBlock
from tunedet.models.layers import make_norm
from tunedet.models.regularization import DropBlock2d, drop_block_gamma, drop_block_mask


def backbone(name, **kwargs):
    return build("backbone", {"type": name, **kwargs})


def tv_state(net):
    return {k: v.shape for k, v in net.state_dict().items() if not k.startswith("fc.")}


@pytest.mark.parametrize(
    "name", ["resnet101", "resnext50_32x4d", "resnext101_32x8d"], ids=lambda n: n
)
def test_resnet_variants_have_torchvisions_tensors(name):
    ours = backbone(name, out_indices=(1, 2, 3, 4))
    reference = getattr(torchvision.models, name)(weights=None)
    assert {k: v.shape for k, v in ours.state_dict().items()} == tv_state(reference)


def test_resnext50_features_equal_torchvision_with_its_weights():
    torch.manual_seed(0)
    reference = torchvision.models.resnext50_32x4d(weights=None).eval()
    ours = backbone("resnext50_32x4d").eval()
    ours.load_state_dict(
        {k: v for k, v in reference.state_dict().items() if k in ours.state_dict()}
    )
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        feats = ours(x)
        y = reference.maxpool(reference.relu(reference.bn1(reference.conv1(x))))
        expected = []
        for layer in (reference.layer1, reference.layer2, reference.layer3, reference.layer4):
            y = layer(y)
            expected.append(y)
    for got, want in zip(feats, expected[1:], strict=True):
        torch.testing.assert_close(got, want)


def test_resnext50_is_resnet50_with_32_groups_of_4_and_about_as_many_parameters():
    resnext, resnet = backbone("resnext50_32x4d"), backbone("resnet50")
    conv = resnext.layer1[0].conv2
    assert (conv.groups, conv.in_channels) == (32, 128)  # 32 groups × 4 channels
    assert resnet.layer1[0].conv2.groups == 1 and resnet.layer1[0].conv2.in_channels == 64
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert resnext.out_channels == resnet.out_channels == [512, 1024, 2048]
    assert count(resnext) == 22_979_904 and count(resnet) == 23_508_032


# YOLOv5-s (v6.0) model summary, backbone rows 0–9: Conv, Conv, C3, Conv, C3, Conv, C3,
# Conv, C3, SPPF parameter counts as printed by its yolo.py
YOLOV5S_BACKBONE_PARAMS = [3520, 18560, 18816, 73984, 115712, 295424, 625152, 1180672, 1182720]
YOLOV5S_SPPF_PARAMS = 656896


def test_csp_darknet_s_has_yolov5s_layer_parameter_counts():
    model = backbone("csp_darknet", width_multiple=0.5, depth_multiple=0.33)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    rows = [count(model.stem)]
    for stage in model.layers:
        rows += [count(stage[0]), count(stage[1])]
    assert rows == YOLOV5S_BACKBONE_PARAMS
    assert count(model.layers[3][2]) == YOLOV5S_SPPF_PARAMS
    assert model.out_channels == [128, 256, 512] and model.strides == [8, 16, 32]
    feats = model.eval()(torch.zeros(1, 3, 64, 96))
    assert [tuple(f.shape[1:]) for f in feats] == [(128, 8, 12), (256, 4, 6), (512, 2, 3)]


def test_csp_block_is_fused_concat_of_the_deep_and_the_bypass_path():
    torch.manual_seed(0)
    block = CSPBlock(6, 8, num_blocks=2, norm="none", act="silu").eval()
    x = torch.randn(2, 6, 5, 5)

    def conv(module, t):
        c = module.conv
        return F.silu(F.conv2d(t, c.weight, c.bias, padding=c.kernel_size[0] // 2))

    deep = conv(block.conv1, x)
    for b in block.blocks:
        deep = deep + conv(b.conv, conv(b.reduce, deep))
    expected = conv(block.conv3, torch.cat([deep, conv(block.conv2, x)], dim=1))
    torch.testing.assert_close(block(x), expected)


def test_sppf_serial_pools_equal_spp_5_9_13():
    torch.manual_seed(0)
    sppf = SPPF(4, norm="none", act="none").eval()
    x = torch.randn(1, 4, 9, 11)
    hidden = sppf.conv1(x)
    pools = [F.max_pool2d(hidden, k, 1, k // 2) for k in (5, 9, 13)]
    expected = sppf.conv2(torch.cat([hidden, *pools], dim=1))
    torch.testing.assert_close(sppf(x), expected)


def test_layer_norm_normalises_each_sample_over_channels_and_space():
    torch.manual_seed(0)
    norm = make_norm("ln", 6)
    nn.init.normal_(norm.weight)
    nn.init.normal_(norm.bias)
    x = torch.randn(3, 6, 4, 5, dtype=torch.float64)
    norm = norm.double()
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    var = x.var(dim=(1, 2, 3), unbiased=False, keepdim=True)
    expected = (x - mean) / (var + 1e-5).sqrt() * norm.weight.view(1, -1, 1, 1)
    expected = expected + norm.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(norm(x), expected)
    torch.testing.assert_close(
        make_norm("ln", 6).double()(x), F.layer_norm(x, x.shape[1:], eps=1e-5)
    )


def test_instance_norm_normalises_each_channel_of_each_sample_over_space():
    torch.manual_seed(0)
    norm = make_norm("in", 6).double()
    nn.init.normal_(norm.weight)
    nn.init.normal_(norm.bias)
    x = torch.randn(3, 6, 4, 5, dtype=torch.float64) * 3 + 1
    mean = x.mean(dim=(2, 3), keepdim=True)
    var = x.var(dim=(2, 3), unbiased=False, keepdim=True)
    expected = (x - mean) / (var + 1e-5).sqrt() * norm.weight.view(1, -1, 1, 1)
    torch.testing.assert_close(norm(x), expected + norm.bias.view(1, -1, 1, 1))
    reference = nn.InstanceNorm2d(6, affine=True).double()
    reference.load_state_dict(norm.state_dict())
    torch.testing.assert_close(norm(x), reference(x))


@pytest.mark.parametrize("norm", ["ln", "in"])
def test_resnet_and_csp_build_with_layer_and_instance_norm(norm):
    for name in ("resnet18", "csp_darknet"):
        model = backbone(name, norm=norm, **({"width_multiple": 0.125} if "csp" in name else {}))
        kinds = {type(m) for m in model.modules()}
        assert nn.BatchNorm2d not in kinds and nn.GroupNorm in kinds
        groups = {m.num_groups == 1 for m in model.modules() if isinstance(m, nn.GroupNorm)}
        assert groups == {norm == "ln"}
        model(torch.randn(1, 3, 64, 64))[-1].sum().backward()


def test_drop_block_gamma_closed_form():
    # feat_size 16, block 5: 0.1 / 25 · 256 / 144
    assert drop_block_gamma(0.1, 5, 16, 16) == pytest.approx(0.1 / 25 * 256 / 144)
    assert drop_block_gamma(0.2, 1, 7, 9) == pytest.approx(0.2)


def test_drop_block_mask_equals_a_loop_over_the_block_corners():
    torch.manual_seed(0)
    size, height, width = 3, 7, 9
    corners = (torch.rand(2, 2, height - size + 1, width - size + 1) < 0.1).float()
    expected = torch.ones(2, 2, height, width)
    for n, c, i, j in corners.nonzero().tolist():
        expected[n, c, i : i + size, j : j + size] = 0
    assert torch.equal(drop_block_mask(corners, size), expected)


def test_drop_block_drops_about_drop_prob_and_rescales_the_kept_units():
    torch.manual_seed(0)
    layer = DropBlock2d(0.1, 3).train()
    x = torch.ones(4, 16, 40, 40)
    y = layer(x)
    dropped = (y == 0).float().mean().item()
    # interior unit: kept unless one of the 9 corners covering it fires; border units have fewer
    gamma = drop_block_gamma(0.1, 3, 40, 40)
    assert 0.07 < dropped <= 1 - (1 - gamma) ** 9 + 0.005
    kept = y[y > 0]
    assert torch.allclose(kept, torch.full_like(kept, 1 / (1 - dropped)), rtol=1e-5)
    assert torch.equal(layer.eval()(x), x)


def test_drop_block_in_resnet_acts_in_training_only():
    torch.manual_seed(0)
    model = backbone("resnet18", drop_block_prob=0.3, drop_block_size=3)
    x = torch.randn(2, 3, 64, 64)
    train_feats = model.train()(x)
    assert (train_feats[-1] == 0).float().mean() > 0.1
    model.eval()
    reference = backbone("resnet18").eval()
    reference.load_state_dict(model.state_dict())
    for got, want in zip(model(x), reference(x), strict=True):
        torch.testing.assert_close(got, want)


def test_roi_head_dropout_drops_in_training_and_is_identity_in_evaluation():
    spec = {"type": "standard", "mlp_dim": 64, "dropout": 0.5}
    feats = [torch.randn(1, 8, 16, 16) for _ in range(4)]
    rois = torch.tensor([[0.0, 4, 4, 40, 40], [0.0, 8, 0, 60, 30]])
    heads = []
    for dropout in (0.5, 0.0):
        torch.manual_seed(0)
        heads.append(
            build(
                "roi_head",
                {**spec, "dropout": dropout},
                in_channels=8,
                strides=[4, 8, 16, 32],
                num_classes=2,
                assigner=None,
                sampler=None,
                box_coder=None,
                cls_loss=None,
                box_loss=None,
            )
        )
    with_dropout, without = heads
    torch.testing.assert_close(with_dropout.eval()(feats, rois), without.eval()(feats, rois))
    logits, _ = with_dropout.train()(feats, rois)
    assert not torch.allclose(logits, without.eval()(feats, rois)[0])


def test_layer_and_instance_norm_reach_the_neck_and_head_from_a_config():
    from tunedet.config.loader import load_config
    from tunedet.models import build_detector

    cfg = load_config("retinanet/demo", ["model.head.norm=ln", "model.neck.norm=in"])
    model = build_detector(cfg.model.model_dump())
    head_norms = [m for m in model.head.modules() if isinstance(m, nn.GroupNorm)]
    neck_norms = [m for m in model.neck.modules() if isinstance(m, nn.GroupNorm)]
    assert head_norms and all(m.num_groups == 1 for m in head_norms)
    assert neck_norms and all(m.num_groups == m.num_channels for m in neck_norms)
    images = torch.randn(2, 3, 64, 64)
    boxes = torch.tensor([[[4.0, 6, 30, 40]], [[10, 10, 40, 30]]])
    losses = model.loss(images, boxes, torch.tensor([[0], [1]]))
    assert all(torch.isfinite(v) for v in losses.values())
