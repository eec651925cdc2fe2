"""tunedet's tv_* configs reproduce torchvision's RetinaNet v1/v2 and FCOS exactly.

torchvision's model is built with seeded random weights (its norm layers and predictors
randomised so that features and scores vary), its state dict is converted, and both
models see the same images: same detections in eval mode, same loss terms in train mode.
torchvision's transform is set to leave images as they are (no resize, mean 0, std 1).

Rules that differ, and how the tests line them up (see the README):
- torchvision normalises each image's loss by its own positives and averages images;
  tunedet divides the batch's sum by the batch's positives: equal for one image.
- torchvision's ``trainable_backbone_layers`` only switches gradients off; tunedet's
  ``frozen_stages`` also keeps those stages in eval mode. With BatchNorm (v2) the train-
  mode forward differs, so v2's loss is compared with all stages trainable on both sides.
- torchvision's low-quality matches keep an anchor's own best GT; tunedet's give it to
  the GT it is best for: the same when GTs do not compete for an anchor (as here).
"""

import numpy as np
import pytest
import torch
from torchvision.models import resnet50
from torchvision.models.detection import (
    retinanet_resnet50_fpn_v2,
    ssd300_vgg16,
    ssdlite320_mobilenet_v3_large,
)
from torchvision.models.detection._utils import overwrite_eps
from torchvision.models.detection.anchor_utils import AnchorGenerator, DefaultBoxGenerator
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.models.detection.fcos import FCOS as TorchvisionFCOS
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.retinanet import RetinaNet as TorchvisionRetinaNet
from torchvision.models.detection.retinanet import _default_anchorgen
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from tunedet.config.loader import load_config
from tunedet.models import build_detector
from tunedet.models.convert import coco80_indices, convert_torchvision_detector, select_classes

SIZE = 128
CONFIGS = {
    "retinanet_resnet50_fpn": "retinanet/tv_retinanet_resnet50_fpn",
    "retinanet_resnet50_fpn_v2": "retinanet/tv_retinanet_resnet50_fpn_v2",
    "fcos_resnet50_fpn": "fcos/tv_fcos_resnet50_fpn",
}
# torchvision's loss names → tunedet's
LOSS_NAMES = {"classification": "cls", "bbox_regression": "box", "bbox_ctrness": "quality"}


def torchvision_detector(arch: str) -> torch.nn.Module:
    """torchvision's detector as its builder makes it from ImageNet weights (frozen BN,
    ``trainable_backbone_layers=3``; RetinaNet v1 with its COCO checkpoint's eps 0; v2 has
    plain BN), with random weights."""
    torch.manual_seed(0)
    no_transform = dict(min_size=SIZE, max_size=SIZE, image_mean=[0.0] * 3, image_std=[1.0] * 3)
    if arch == "retinanet_resnet50_fpn_v2":
        model = retinanet_resnet50_fpn_v2(weights=None, weights_backbone=None, **no_transform)
    else:
        body = resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
        backbone = _resnet_fpn_extractor(
            body, 3, returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256)
        )
        if arch == "fcos_resnet50_fpn":
            model = TorchvisionFCOS(backbone, 91, **no_transform)
        else:
            model = TorchvisionRetinaNet(backbone, 91, **no_transform)
            overwrite_eps(model, 0.0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, FrozenBatchNorm2d | torch.nn.BatchNorm2d | torch.nn.GroupNorm):
                n = module.weight.numel()
                module.weight.copy_(0.2 + 0.3 * torch.rand(n, generator=g))
                module.bias.copy_(0.1 * torch.randn(n, generator=g))
                if getattr(module, "running_mean", None) is not None:
                    module.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                    module.running_var.copy_(0.5 + torch.rand(n, generator=g))
        head = model.head
        predictors = [head.classification_head.cls_logits, head.regression_head.bbox_reg]
        if arch == "fcos_resnet50_fpn":
            predictors.append(head.regression_head.bbox_ctrness)
        for conv in predictors:
            conv.weight.normal_(0, 0.05, generator=g)
        bias = head.classification_head.cls_logits.bias
        bias.copy_(-2.0 + torch.randn(bias.shape, generator=g))
    return model


def tunedet_twin(tv_model: torch.nn.Module, arch: str, overrides=()) -> torch.nn.Module:
    cfg = load_config(CONFIGS[arch], ["model.backbone.init=none", *overrides])
    model = build_detector(cfg.model.model_dump())
    state, detected = convert_torchvision_detector(tv_model.state_dict())
    assert detected == arch
    model.load_state_dict(state, strict=True)
    return model


def canonical(det: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Detections sorted by score, ties (exactly equal scores) broken by label and box."""
    boxes, scores, labels = (det[k].detach().numpy() for k in ("boxes", "scores", "labels"))
    rounded = np.round(boxes, 3)
    order = np.lexsort((rounded[:, 1], rounded[:, 0], labels, -scores))
    return boxes[order], scores[order], labels[order]


@pytest.mark.parametrize("arch", list(CONFIGS))
def test_tv_config_matches_torchvision_detections_and_losses(arch):
    torch.set_num_threads(1)
    tv_model = torchvision_detector(arch)
    # v2: torchvision keeps BN of its frozen stages in train mode; compare with none frozen
    overrides = ["model.backbone.frozen_stages=-1"] if arch.endswith("_v2") else []
    model = tunedet_twin(tv_model, arch, overrides)
    images = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))

    tv_model.eval()
    model.eval()
    with torch.no_grad():
        expected = tv_model(list(images))
    got = model.predict(images, torch.tensor([[SIZE, SIZE]] * 2))
    for want, have in zip(expected, got, strict=True):
        assert len(want["boxes"]) >= 50 and len(have["boxes"]) == len(want["boxes"])
        (wb, ws, wl), (hb, hs, hl) = canonical(want), canonical(have)
        np.testing.assert_allclose(hs, ws, atol=1e-4)
        np.testing.assert_array_equal(hl, wl)
        np.testing.assert_allclose(hb, wb, atol=1e-4)

    tv_model.train()
    model.train()
    gt_boxes = torch.tensor(
        [[[10.0, 12.0, 60.0, 50.0], [70.0, 64.0, 120.0, 126.0], [30, 80, 60, 100]]]
    )
    gt_labels = torch.tensor([[3, 17, 5]])
    target = {"boxes": gt_boxes[0].clone(), "labels": gt_labels[0].clone()}
    tv_losses = tv_model([images[0]], [target])
    losses = model.loss(images[:1], gt_boxes, gt_labels)
    assert set(losses) == {LOSS_NAMES[k] for k in tv_losses}
    for name, value in tv_losses.items():
        torch.testing.assert_close(losses[LOSS_NAMES[name]], value, rtol=1e-4, atol=1e-5)
    assert losses["box"] > 0  # the boxes matched anchors: the box term was compared too


def test_tv_anchor_options_reproduce_torchvision_anchor_generator():
    cfg = load_config(CONFIGS["retinanet_resnet50_fpn"], ["model.backbone.init=none"])
    spec = cfg.model.anchor_generator.model_dump()
    from tunedet.config.registry import build

    ours = build("anchor_generator", spec)
    theirs: AnchorGenerator = _default_anchorgen()
    height, width = 256, 128  # multiples of 128: torchvision's strides are image // feature
    sizes = [(height // s, width // s) for s in ours.strides]
    feats = [torch.zeros(1, 1, h, w) for h, w in sizes]
    expected = theirs(ImageList(torch.zeros(1, 3, height, width), [(height, width)]), feats)[0]
    got = torch.cat(ours.grid_anchors(sizes))
    assert ours.num_anchors_per_location == theirs.num_anchors_per_location()[0] == 9
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("init", ["kaiming_uniform", "xavier_uniform"])
def test_fpn_init_draws_from_torchvision_or_mmdetection_bounds(init):
    from torchvision.ops import FeaturePyramidNetwork

    from tunedet.models.necks import FPN

    torch.manual_seed(0)
    ours = FPN([512, 1024, 2048], [8, 16, 32], init=init)
    theirs = FeaturePyramidNetwork([512, 1024, 2048], 256, LastLevelP6P7(256, 256))
    pairs = [
        (ours.lateral_convs[2].conv, theirs.inner_blocks[2][0]),  # 1×1, 2048 → 256
        (ours.output_convs[0].conv, theirs.layer_blocks[0][0]),  # 3×3, 256 → 256
        (ours.extra_convs[1].conv, theirs.extra_blocks.p7),
    ]
    for conv, reference in pairs:
        fan_in = conv.weight[0].numel()
        fan_out = conv.weight.shape[0] * conv.weight[0, 0].numel()
        bound = (
            (3 / fan_in) ** 0.5 if init == "kaiming_uniform" else (6 / (fan_in + fan_out)) ** 0.5
        )
        limit = conv.weight.abs().max().item()
        assert 0.99 * bound < limit <= bound
        assert torch.all(conv.bias == 0)
        if init == "kaiming_uniform":  # torchvision's bound, measured on its own layer
            assert 0.99 * bound < reference.weight.abs().max().item() <= bound


# torchvision's SSDs: config, fixed input side (their transform resizes it to itself,
# an identity), detections_per_img
SSD_MODELS = {
    "ssd300_vgg16": ("ssd/tv_ssd300_vgg16", 300, 200),
    "ssdlite320_mobilenet_v3_large": ("ssd/tv_ssdlite320_mobilenet_v3_large", 320, 300),
}


def torchvision_ssd(arch: str) -> torch.nn.Module:
    """torchvision's SSD with random weights, normalisation switched off (mean 0, std 1).

    SSD300 keeps its own init. SSDLite's N(0, 0.03) init leaves its outputs nearly
    independent of the image, so its backbone convs are redrawn (Kaiming), its BN
    statistics set from one batch and its BN affine and predictors randomised.
    """
    torch.manual_seed(0)
    no_norm = dict(weights=None, weights_backbone=None, image_mean=[0.0] * 3, image_std=[1.0] * 3)
    if arch == "ssd300_vgg16":
        return ssd300_vgg16(**no_norm)
    model = ssdlite320_mobilenet_v3_large(**no_norm)
    g = torch.Generator().manual_seed(1)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for module in model.backbone.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, mode="fan_out", generator=g)
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # cumulative: the statistics of the one batch below
        model.train()
        model.head(list(model.backbone(torch.rand(2, 3, 320, 320, generator=g)).values()))
        for norm in norms:
            norm.momentum = 0.03
            norm.weight.copy_(0.5 + 0.5 * torch.rand(norm.weight.shape, generator=g))
            norm.bias.copy_(0.1 * torch.randn(norm.bias.shape, generator=g))
        head = model.head
        for predictor in [*head.classification_head.module_list, *head.regression_head.module_list]:
            predictor[1].weight.normal_(0, 0.1, generator=g)
            predictor[1].bias.normal_(0, 1.0, generator=g)
    return model


@pytest.mark.parametrize("arch", list(SSD_MODELS))
def test_tv_ssd_config_matches_torchvision_detections_and_losses(arch):
    """Same boxes/scores/labels (tunedet label + 1 = torchvision label: background moves
    from class 0 to last) and the same loss terms over a batch of two images (both sides
    divide the batch's summed terms by the batch's positives; 3:1 negatives per image)."""
    torch.set_num_threads(1)
    config, size, max_dets = SSD_MODELS[arch]
    tv_model = torchvision_ssd(arch)
    cfg = load_config(config, [])
    model = build_detector(cfg.model.model_dump())
    state, detected = convert_torchvision_detector(tv_model.state_dict())
    assert detected == arch
    model.load_state_dict(state, strict=True)
    images = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(2))

    tv_model.eval()
    model.eval()
    with torch.no_grad():
        expected = tv_model(list(images))
    got = model.predict(images, torch.tensor([[size, size]] * 2))
    for want, have in zip(expected, got, strict=True):
        assert len(want["boxes"]) == max_dets and len(have["boxes"]) == max_dets
        (wb, ws, wl), (hb, hs, hl) = canonical(want), canonical(have)
        # scores equal to float rounding may swap neighbours: pair each of torchvision's
        # detections with tunedet's nearest one of the same label (one to one)
        cost = np.abs(wb[:, None] - hb[None]).sum(-1) + np.abs(ws[:, None] - hs[None])
        cost[wl[:, None] != hl[None] + 1] = np.inf
        pair = cost.argmin(1)
        assert len(np.unique(pair)) == len(pair) and np.isfinite(cost.min(1)).all()
        np.testing.assert_allclose(hs[pair], ws, atol=1e-4)
        np.testing.assert_allclose(hb[pair], wb, atol=1e-4)
        assert len(np.unique(wl)) > 3  # several classes survive: the per-class top-k mattered
    assert not torch.equal(expected[0]["scores"], expected[1]["scores"])  # image-dependent

    tv_model.train()
    model.train()
    gt_boxes = torch.tensor(
        [
            [[20.0, 30.0, 140.0, 120.0], [160.0, 150.0, 290.0, 280.0], [60, 200, 100, 260]],
            [[5.0, 5.0, 295.0, 290.0], [100.0, 40.0, 180.0, 90.0], [0, 0, 0, 0]],
        ]
    )
    gt_labels = torch.tensor([[2, 16, 4], [61, 0, -1]])
    targets = [
        {"boxes": gt_boxes[i][gt_labels[i] >= 0], "labels": gt_labels[i][gt_labels[i] >= 0] + 1}
        for i in range(2)
    ]
    tv_losses = tv_model(list(images), targets)
    losses = model.loss(images, gt_boxes, gt_labels)
    assert set(losses) == {"cls", "box"}
    torch.testing.assert_close(losses["cls"], tv_losses["classification"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(losses["box"], tv_losses["bbox_regression"], rtol=1e-4, atol=1e-5)
    assert losses["box"] > 0

    # --coco80: each prior's 80 COCO rows in category-id order, then background
    coco80 = select_classes(state, coco80_indices(), num_classes=91)
    ours_key = (
        "head.cls_convs.{}.weight" if arch == "ssd300_vgg16" else "head.cls_convs.{}.3.weight"
    )
    for level, priors in enumerate(tv_model.anchor_generator.num_anchors_per_location()):
        predictor = tv_model.head.classification_head.module_list[level]
        weight = predictor.weight if arch == "ssd300_vgg16" else predictor[1].weight
        theirs = weight.view(priors, 91, -1)
        ours = coco80[ours_key.format(level)].view(priors, 81, -1)
        torch.testing.assert_close(ours, theirs[:, [*coco80_indices(), 0]], rtol=0, atol=0)


@pytest.mark.parametrize("arch", list(SSD_MODELS))
def test_tv_ssd_priors_reproduce_torchvision_default_box_generator(arch):
    from tunedet.config.registry import build

    config, size, _ = SSD_MODELS[arch]
    cfg = load_config(config, [])
    ours = build("anchor_generator", cfg.model.anchor_generator.model_dump())
    if arch == "ssd300_vgg16":  # as torchvision's builders make them
        sides = [38, 19, 10, 5, 3, 1]
        theirs = DefaultBoxGenerator(
            [[2], [2, 3], [2, 3], [2, 3], [2], [2]],
            scales=[0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05],
            steps=[8, 16, 32, 64, 100, 300],
        )
    else:  # no steps: centres from each map's own cells
        sides = [20, 10, 5, 3, 2, 1]
        theirs = DefaultBoxGenerator([[2, 3] for _ in range(6)], min_ratio=0.2, max_ratio=0.95)
    feats = [torch.zeros(1, 1, s, s) for s in sides]
    expected = theirs(ImageList(torch.zeros(1, 3, size, size), [(size, size)]), feats)[0]
    got = torch.cat(ours.grid_anchors([(s, s) for s in sides]))
    assert ours.num_anchors_per_location == theirs.num_anchors_per_location()
    assert len(got) == (8732 if arch == "ssd300_vgg16" else 3234)
    # torchvision computes in fractions of the image in float32: equal to float32 rounding
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)
    assert got[:, 2:].sub(got[:, :2]).max() == size  # clip: the widest priors exceed the image


@pytest.mark.parametrize("fc_init", ["kaiming_normal", "xavier_uniform"])
def test_vgg_fc_init_draws_from_torchvision_ssd_bounds(fc_init):
    from tunedet.models.backbones.vgg import VGG

    torch.manual_seed(0)
    widths = (8, 8, 16, 32, 32, 256)
    fc = VGG(widths, dilation=6, fc_init=fc_init).layers[4]
    fc6, fc7 = fc[1], fc[3].conv
    for conv in (fc6, fc7):
        fan_in = conv.weight[0].numel()
        fan_out = conv.weight.shape[0] * conv.weight[0, 0].numel()
        xavier_bound = (6 / (fan_in + fan_out)) ** 0.5
        limit = conv.weight.abs().max().item()
        if fc_init == "xavier_uniform":  # ssd300_vgg16's _xavier_init: U(−b, b)
            assert 0.99 * xavier_bound < limit <= xavier_bound
        else:  # N(0, 2 / fan_out): tails beyond the Xavier bound
            assert limit > xavier_bound
            std = conv.weight.std().item()
            assert abs(std / (2 / fan_out) ** 0.5 - 1) < 0.05
        assert torch.all(conv.bias == 0)
