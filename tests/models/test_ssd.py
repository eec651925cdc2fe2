import math

import torch
import torch.nn.functional as F

from tunedet.anchors.ssd_priors import SSDPriorGenerator, ssd_sizes
from tunedet.config.loader import load_config
from tunedet.data.build import build_dataset, build_loader
from tunedet.models import build_detector
from tunedet.models.detectors.ssd import SSD
from tunedet.models.layers import SeparableConv2d


def demo(*overrides, size=96, num_images=8):
    return load_config(
        "ssd/demo",
        [f"data.train.num_images={num_images}", f"data.train.image_size={size}", *overrides],
    )


def synthetic_batch(cfg, num_images=8):
    dataset = build_dataset(cfg.data.train)
    loader = build_loader(dataset, cfg.data.val_transforms, seed=0, batch_size=num_images)
    return dataset, next(iter(loader))


def test_ssd_demo_overfits_eight_synthetic_images_to_ap50_above_0_9(overfit_stats):
    torch.manual_seed(0)
    cfg = demo()
    model = build_detector(cfg.model)
    dataset, batch = synthetic_batch(cfg)
    stats = overfit_stats(model, batch, dataset.coco_ground_truth(), iters=60, lr=5e-3)
    print(f"ssd demo overfit: AP {stats['AP']:.3f}, AP50 {stats['AP50']:.3f}")
    assert stats["AP50"] >= 0.9


def test_encoding_assigned_gt_then_decoding_gives_the_gt_back():
    cfg = demo()
    model = build_detector(cfg.model)
    _, batch = synthetic_batch(cfg)
    _, _, anchors, per_level = model(batch.images)
    matched = model.assigner.assign(anchors, per_level, batch.gt_boxes, batch.gt_labels).matched
    image_index, anchor_index = (matched > 0).nonzero(as_tuple=True)
    assert len(image_index) >= (batch.gt_labels >= 0).sum()  # each GT its best prior at least
    gt = batch.gt_boxes[image_index, matched[image_index, anchor_index] - 1]
    deltas = model.box_coder.encode(anchors[anchor_index], gt)
    torch.testing.assert_close(model.box_coder.decode(anchors[anchor_index], deltas), gt)
    # SSD's variances: the encoded centre offset is (g − a) / a_w / 0.1
    a, g = anchors[anchor_index], gt
    expected_dx = ((g[:, 0] + g[:, 2]) - (a[:, 0] + a[:, 2])) / 2 / (a[:, 2] - a[:, 0]) / 0.1
    torch.testing.assert_close(deltas[:, 0], expected_dx)


def test_ssd300_prior_sizes_follow_the_closed_form():
    min_sizes, max_sizes = ssd_sizes(300, 6, (0.2, 0.9), 0.1)
    assert min_sizes == [30, 60, 111, 162, 213, 264]
    assert max_sizes == [60, 111, 162, 213, 264, 315]
    generator = SSDPriorGenerator()
    assert generator.num_anchors_per_location == [4, 6, 6, 6, 4, 4]
    feature_sizes = [(38, 38), (19, 19), (10, 10), (5, 5), (3, 3), (1, 1)]
    levels = generator.grid_anchors(feature_sizes, device="cpu", dtype=torch.float64)
    assert sum(len(p) for p in levels) == 8732  # SSD300's famous prior count
    for level, (stride, s, s_next) in enumerate(
        zip((8, 16, 32, 64, 100, 300), min_sizes, max_sizes, strict=True)
    ):
        ratios = (2,) if level in (0, 4, 5) else (2, 3)
        wh = [(s, s), (math.sqrt(s * s_next),) * 2]
        for r in ratios:
            wh += [(s * math.sqrt(r), s / math.sqrt(r)), (s / math.sqrt(r), s * math.sqrt(r))]
        h, w = feature_sizes[level]
        y, x = h - 1, w // 2  # one cell per level: bottom row, middle column
        cx, cy = (x + 0.5) * stride, (y + 0.5) * stride
        expected = torch.tensor(
            [[cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2] for bw, bh in wh],
            dtype=torch.float64,
        )
        first = (y * w + x) * len(wh)
        torch.testing.assert_close(levels[level][first : first + len(wh)], expected)


def test_ssd300_vgg16_config_gives_the_paper_maps_and_priors():
    narrow = [  # the layout of the literature config with narrow layers (fast on CPU)
        "model.backbone.widths=[8, 8, 8, 16, 16, 16]",
        "model.neck.extra_channels=[16, 8, 8, 8]",
        "model.neck.mid_channels=[8, 4, 4, 4]",
    ]
    model = build_detector(load_config("ssd/ssd300_vgg16", narrow).model).eval()
    assert model.neck.strides == [8, 16, 32, 64, 100, 300]
    with torch.no_grad():
        feats = model.neck(model.backbone(torch.zeros(1, 3, 300, 300)))
    assert [tuple(f.shape[-2:]) for f in feats] == [
        (38, 38),
        (19, 19),
        (10, 10),
        (5, 5),
        (3, 3),
        (1, 1),
    ]
    assert [f.shape[1] for f in feats] == [16, 16, 16, 8, 8, 8]
    assert model.head.num_anchors == [4, 6, 6, 6, 4, 4]


def test_ssdlite_uses_separable_convs_on_mobilenet_v2():
    model = build_detector(load_config("ssd/ssdlite_mobilenetv2").model)
    assert all(
        isinstance(c, SeparableConv2d) for c in [*model.head.cls_convs, *model.head.box_convs]
    )
    assert model.backbone.out_channels == [96, 1280] and model.backbone.strides == [16, 32]
    params = sum(p.numel() for p in model.parameters()) / 1e6
    assert 3.5 < params < 5.0  # the paper: 4.3 M parameters for SSDLite-MobileNetV2


def test_batched_loss_equals_softmax_ce_with_3_to_1_hard_negatives_and_smooth_l1():
    torch.manual_seed(1)
    cfg = demo(num_images=2, size=64)
    model = build_detector(cfg.model)
    assert isinstance(model, SSD)
    _, batch = synthetic_batch(cfg, num_images=2)
    images = batch.images + 0.1 * torch.randn_like(batch.images)
    losses = model.loss(images, batch.gt_boxes, batch.gt_labels)
    with torch.no_grad():
        cls_logits, box_deltas, anchors, per_level = model(images)
    matched = model.assigner.assign(anchors, per_level, batch.gt_boxes, batch.gt_labels).matched
    num_pos = int((matched > 0).sum())
    cls_sum, box_sum = 0.0, 0.0
    for i in range(len(images)):
        pos = (matched[i] > 0).nonzero()[:, 0]
        gt_index = matched[i, pos] - 1
        targets = torch.full((len(anchors),), model.num_classes)  # background = last class
        targets[pos] = batch.gt_labels[i, gt_index]
        ce = F.cross_entropy(cls_logits[i], targets, reduction="none")
        negatives = ce[matched[i] == 0].sort(descending=True).values[: 3 * len(pos)]
        cls_sum += ce[pos].sum() + negatives.sum()
        encoded = model.box_coder.encode(anchors[pos], batch.gt_boxes[i, gt_index])
        box_sum += F.smooth_l1_loss(box_deltas[i, pos], encoded, beta=1.0, reduction="sum")
    torch.testing.assert_close(losses["cls"], cls_sum / num_pos, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(losses["box"], box_sum / num_pos, rtol=1e-4, atol=1e-6)


def test_predict_scores_are_softmax_probabilities_of_the_classes():
    torch.manual_seed(2)
    model = build_detector(demo("model.score_thr=0.0", "model.nms_iou=1.0", size=64).model).eval()
    images = torch.randn(2, 3, 64, 64)
    sizes = torch.tensor([[64, 64], [48, 40]])
    detections = model.predict(images, sizes)
    cls_logits, _, _, _ = model(images)
    probs = cls_logits.softmax(dim=-1)[..., : model.num_classes]
    for i, (det, (h, w)) in enumerate(zip(detections, sizes.tolist(), strict=True)):
        torch.testing.assert_close(det["scores"][0], probs[i].max())
        assert (det["labels"] < model.num_classes).all()
        assert (det["boxes"][:, 0::2] <= w).all() and (det["boxes"][:, 1::2] <= h).all()


def test_loss_is_finite_for_images_without_gt():
    torch.manual_seed(3)
    model = build_detector(demo(size=64).model)
    losses = model.loss(
        torch.randn(2, 3, 64, 64), torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.long)
    )
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["box"] == 0  # no positives: no box loss, and 3:1 mining takes no negatives
