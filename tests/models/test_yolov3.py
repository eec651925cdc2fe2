import math

import pytest
import torch
from torchvision.ops import generalized_box_iou

from tunedet.config.loader import load_config
from tunedet.data.build import build_dataset, build_loader
from tunedet.models import build_detector
from tunedet.models.detectors.yolov3 import YOLOv3

SEED_ANCHORS = [
    [(10, 13), (16, 30), (33, 23)],
    [(30, 61), (62, 45), (59, 119)],
    [(116, 90), (156, 198), (373, 326)],
]


def synthetic_batch(cfg, num_images=8):
    dataset = build_dataset(cfg.data.train)
    loader = build_loader(dataset, cfg.data.val_transforms, seed=0, batch_size=num_images)
    return dataset, next(iter(loader))


def demo(*overrides, size=96):
    return load_config(
        "yolov3/demo", ["data.train.num_images=8", f"data.train.image_size={size}", *overrides]
    )


def test_yolov3_demo_overfits_eight_synthetic_images_to_ap50_above_0_9(overfit_stats):
    torch.manual_seed(0)
    cfg = demo()
    model = build_detector(cfg.model)
    dataset, batch = synthetic_batch(cfg)
    stats = overfit_stats(model, batch, dataset.coco_ground_truth(), iters=60, lr=5e-3)
    print(f"yolov3 demo overfit: AP {stats['AP']:.3f}, AP50 {stats['AP50']:.3f}")
    assert stats["AP50"] >= 0.9


@pytest.mark.parametrize("mode", ["max_iou", "yolov3"])
def test_encoding_assigned_gt_then_decoding_gives_the_gt_back(mode):
    cfg = demo(f"model.assigner.mode={mode}")
    model = build_detector(cfg.model)
    _, batch = synthetic_batch(cfg)
    _, _, _, anchors, per_level = model(batch.images)
    matched = model.assign_targets(anchors, per_level, batch.gt_boxes, batch.gt_labels).matched
    image_index, anchor_index = (matched > 0).nonzero(as_tuple=True)
    gt = batch.gt_boxes[image_index, matched[image_index, anchor_index] - 1]
    assert len(gt) >= (batch.gt_labels >= 0).sum()  # every GT has an anchor
    strides = model.anchor_strides(anchors, per_level)[anchor_index]
    coder, pos_anchors = model.box_coder, anchors[anchor_index]
    offsets = coder.encode(pos_anchors, gt, strides, logits=False)
    assert ((offsets[:, :2] >= 0) & (offsets[:, :2] < 1)).all()  # centres in their cells
    torch.testing.assert_close(coder.decode(pos_anchors, offsets, strides, logits=False), gt)
    inside = ((offsets[:, :2] > 1e-3) & (offsets[:, :2] < 1 - 1e-3)).all(dim=1)
    logits = coder.encode(pos_anchors[inside], gt[inside], strides[inside], logits=True)
    decoded = coder.decode(pos_anchors[inside], logits, strides[inside], logits=True)
    torch.testing.assert_close(decoded, gt[inside], atol=1e-3, rtol=0)


def test_anchors_are_the_seed_anchors_centred_on_each_cell():
    cfg = load_config("yolov3/yolov3_d53_608")
    generator = build_detector(
        {**cfg.model.model_dump(), "backbone": {"type": "tiny_darknet"}, "neck": {"type": "yolov3"}}
    ).anchor_generator
    assert generator.strides == (8, 16, 32) and generator.num_anchors_per_location == 3
    levels = generator.grid_anchors([(4, 5), (2, 3), (1, 2)], device="cpu", dtype=torch.float64)
    for level, (stride, (h, w)) in enumerate(
        zip((8, 16, 32), [(4, 5), (2, 3), (1, 2)], strict=True)
    ):
        assert levels[level].shape == (h * w * 3, 4)
        for y in range(h):
            for x in range(w):
                for a, (aw, ah) in enumerate(SEED_ANCHORS[level]):
                    cx, cy = (x + 0.5) * stride, (y + 0.5) * stride
                    expected = torch.tensor([cx - aw / 2, cy - ah / 2, cx + aw / 2, cy + ah / 2])
                    torch.testing.assert_close(
                        levels[level][(y * w + x) * 3 + a], expected.double()
                    )
    # the largest anchors sit on the coarsest map
    areas = [torch.tensor(level).prod(dim=1) for level in SEED_ANCHORS]
    assert areas[2].min() > areas[1].max() >= areas[0].max()


def bce(logit, target):
    """Binary cross-entropy from its definition, float64."""
    p = 1 / (1 + math.exp(-logit))
    return -(target * math.log(p) + (1 - target) * math.log(1 - p))


def reference_loss(model, images, boxes, labels):
    """The YOLOv3 loss one image and one anchor at a time (float64 Python arithmetic)."""
    with torch.no_grad():
        cls_logits, box_deltas, obj_logits, anchors, per_level = model(images)
    matched = model.assign_targets(anchors, per_level, boxes, labels).matched
    strides = model.anchor_strides(anchors, per_level)
    height, width = images.shape[-2:]
    cls_sum = obj_sum = box_sum = 0.0
    for i in range(len(images)):
        for a in range(len(anchors)):
            code = int(matched[i, a])
            if code < 0:
                continue
            obj_target = 0.0
            if code > 0:
                gt, label = boxes[i, code - 1], int(labels[i, code - 1])
                for c in range(model.num_classes):
                    cls_sum += bce(float(cls_logits[i, a, c]), float(c == label))
                gw, gh = float(gt[2] - gt[0]), float(gt[3] - gt[1])
                weight = 2 - gw * gh / (width * height) if model.box_weight_2_minus_wh else 1.0
                ax, ay = (
                    float(anchors[a, 0] + anchors[a, 2]) / 2,
                    float(anchors[a, 1] + anchors[a, 3]) / 2,
                )
                aw, ah = float(anchors[a, 2] - anchors[a, 0]), float(anchors[a, 3] - anchors[a, 1])
                s = float(strides[a])
                decoded = model.box_coder.decode(anchors[a], box_deltas[i, a].detach(), strides[a])
                if model.box_regression == "giou":
                    value = 1 - float(generalized_box_iou(decoded[None], gt[None])[0, 0])
                else:
                    gx, gy = float(gt[0] + gt[2]) / 2, float(gt[1] + gt[3]) / 2
                    tx, ty = (gx - ax) / s + 0.5, (gy - ay) / s + 0.5
                    tw, th = math.log(gw / aw), math.log(gh / ah)
                    d = [float(v) for v in box_deltas[i, a]]
                    value = bce(d[0], tx) + bce(d[1], ty) + (d[2] - tw) ** 2 + (d[3] - th) ** 2
                box_sum += weight * value
                obj_target = 1.0
                if model.objectness_target == "iou":
                    x1, y1 = max(decoded[0], gt[0]), max(decoded[1], gt[1])
                    x2, y2 = min(decoded[2], gt[2]), min(decoded[3], gt[3])
                    inter = float((x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0))
                    area = float((decoded[2] - decoded[0]) * (decoded[3] - decoded[1]))
                    obj_target = inter / (area + gw * gh - inter)
            obj_sum += bce(float(obj_logits[i, a]), obj_target)
    n = len(images)
    return cls_sum / n, obj_sum / n, box_sum / n * model.box_loss_weight


@pytest.mark.parametrize(
    "regression, two_minus_wh, objectness",
    [("xy_bce_wh_l2", True, "one"), ("xy_bce_wh_l2", False, "iou"), ("giou", True, "one")],
)
def test_batched_loss_equals_the_per_anchor_reference(regression, two_minus_wh, objectness):
    torch.manual_seed(1)
    cfg = demo(
        f"model.box_regression={regression}",
        f"model.box_weight_2_minus_wh={str(two_minus_wh).lower()}",
        f"model.objectness_target={objectness}",
        "model.assigner.neg_iou_thr=0.3",  # a wider ignore band
        "data.train.num_images=2",
        size=64,
    )
    model = build_detector(cfg.model)
    _, batch = synthetic_batch(cfg, num_images=2)
    losses = model.loss(batch.images, batch.gt_boxes, batch.gt_labels)
    matched = model.assign_targets(
        *model(batch.images)[3:], batch.gt_boxes, batch.gt_labels
    ).matched
    assert (matched == -1).any() and (matched > 0).any()  # ignore band and positives exercised
    cls_ref, obj_ref, box_ref = reference_loss(model, batch.images, batch.gt_boxes, batch.gt_labels)
    assert losses["cls"].item() == pytest.approx(cls_ref, rel=1e-4)
    assert losses["obj"].item() == pytest.approx(obj_ref, rel=1e-4)
    assert losses["box"].item() == pytest.approx(box_ref, rel=1e-4)


def test_the_2_minus_wh_switch_scales_each_positive_box_loss():
    torch.manual_seed(2)
    images = torch.zeros(1, 3, 64, 64)
    small = torch.tensor([[[4.0, 4.0, 12.0, 12.0]]])  # 8×8 of 64×64: weight 2 − 1/64
    large = torch.tensor([[[0.0, 0.0, 64.0, 64.0]]])  # the whole image: weight 1
    labels = torch.tensor([[0]])
    on = build_detector(demo(size=64).model)
    off = build_detector(demo("model.box_weight_2_minus_wh=false", size=64).model)
    off.load_state_dict(on.state_dict())
    for boxes, weight in ((small, 2 - 1 / 64), (large, 1.0)):
        ratio = on.loss(images, boxes, labels)["box"] / off.loss(images, boxes, labels)["box"]
        assert ratio.item() == pytest.approx(weight, rel=1e-5)


def test_predict_scores_are_objectness_times_class_probability():
    torch.manual_seed(3)
    cfg = demo("model.score_thr=0.0", "model.obj_thr=0.0", "model.nms_iou=1.0", size=64)
    model = build_detector(cfg.model).eval()
    images = torch.randn(2, 3, 64, 64)
    sizes = torch.tensor([[64, 64], [40, 50]])
    detections = model.predict(images, sizes)
    cls_logits, _, obj_logits, _, _ = model(images)
    products = obj_logits.sigmoid()[..., None] * cls_logits.sigmoid()
    for i, (det, (h, w)) in enumerate(zip(detections, sizes.tolist(), strict=True)):
        torch.testing.assert_close(det["scores"][0], products[i].max())
        assert (det["boxes"][:, 0::2] <= w).all() and (det["boxes"][:, 1::2] <= h).all()
        assert (det["boxes"] >= 0).all()


def test_loss_is_finite_without_gt_and_the_yolov3_assigner_trains():
    torch.manual_seed(4)
    model = build_detector(demo("model.assigner.mode=yolov3", size=64).model)
    assert isinstance(model, YOLOv3)
    images = torch.randn(2, 3, 64, 64)
    losses = model.loss(images, torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.long))
    assert losses["obj"] > 0 and losses["box"] == 0 and losses["cls"] == 0
    boxes = torch.tensor([[[4.0, 6.0, 30.0, 40.0]], [[20.0, 20.0, 60.0, 50.0]]])
    losses = model.loss(images, boxes, torch.tensor([[1], [2]]))
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()


def test_literature_config_builds_darknet53_yolov3_with_the_published_size():
    model = build_detector(load_config("yolov3/yolov3_d53_608").model)
    # 61.95 M parameters for 80 classes, as mmdetection reports for YOLOv3-D53
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(61.95, abs=0.01)
    assert model.neck.strides == [8, 16, 32] and model.backbone.out_channels == [256, 512, 1024]
