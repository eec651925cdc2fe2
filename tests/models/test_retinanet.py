import math
import time

import pytest
import torch
from torchvision.ops import box_iou, sigmoid_focal_loss

from tunedet.losses import GIoULoss, SmoothL1Loss
from tunedet.models import build_detector
from tunedet.models.detectors.retinanet import RetinaNet

COLOURS = torch.tensor([[1.0, 0.2, 0.2], [0.2, 1.0, 0.2], [0.2, 0.4, 1.0]])
# per image: boxes (xyxy px) and labels (colour index) of filled rectangles on black 64×64
SCENES = [
    ([[8, 10, 30, 40]], [0]),
    ([[30, 6, 58, 26], [6, 36, 26, 58]], [1, 2]),
    ([[14, 14, 50, 46]], [2]),
    ([[4, 4, 22, 22], [36, 30, 60, 60]], [0, 1]),
]


def rectangle_batch():
    images = torch.zeros(len(SCENES), 3, 64, 64)
    boxes = torch.zeros(len(SCENES), 2, 4)
    labels = torch.full((len(SCENES), 2), -1)
    for i, (scene_boxes, scene_labels) in enumerate(SCENES):
        for j, (box, label) in enumerate(zip(scene_boxes, scene_labels, strict=True)):
            x1, y1, x2, y2 = box
            images[i, :, y1:y2, x1:x2] = COLOURS[label][:, None, None]
            boxes[i, j] = torch.tensor(box, dtype=torch.float32)
            labels[i, j] = label
    return images, boxes, labels


def tiny_spec(box_loss="giou", **overrides):
    spec = {
        "type": "retinanet",
        "num_classes": 3,
        "backbone": {"type": "tiny_cnn", "widths": [8, 16, 32, 64, 64], "norm": "gn"},
        "neck": {"type": "fpn", "out_channels": 32, "num_outs": 3},
        "head": {"type": "retina", "feat_channels": 32, "stacked_convs": 2, "norm": "gn"},
        "anchor_generator": {"type": "grid", "strides": [8, 16, 32], "octave_base_scale": 3.0},
        "assigner": {"type": "max_iou"},
        "box_coder": {"type": "delta"},
        "cls_loss": {"type": "focal"},
        "box_loss": {"type": box_loss},
    }
    spec.update(overrides)
    return spec


@pytest.mark.parametrize("box_loss", ["giou", "smooth_l1"])
def test_tiny_retinanet_overfits_rectangles_and_recovers_every_box(box_loss):
    torch.manual_seed(0)
    # No ignore band (neg = pos = 0.5): ignored anchors take no classification loss, so on
    # four memorised images they may keep high scores on boxes of IoU < 0.5 with the GT,
    # which survive NMS and would make "the top detections are the GTs" seed-dependent.
    assigner = {"type": "max_iou", "pos_iou_thr": 0.5, "neg_iou_thr": 0.5}
    model = build_detector(tiny_spec(box_loss, assigner=assigner))
    images, boxes, labels = rectangle_batch()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    start = time.perf_counter()
    for _ in range(100):
        losses = model.loss(images, boxes, labels)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    print(f"overfit ({box_loss}): 100 iterations in {time.perf_counter() - start:.1f} s")

    model.eval()
    detections = model.predict(images, torch.tensor([[64, 64]] * len(SCENES)))
    for (scene_boxes, scene_labels), det in zip(SCENES, detections, strict=True):
        n = len(scene_boxes)
        top_boxes, top_labels, top_scores = det["boxes"][:n], det["labels"][:n], det["scores"][:n]
        assert (top_scores > 0.5).all()
        ious = box_iou(torch.tensor(scene_boxes, dtype=torch.float32), top_boxes)  # (n, n)
        best = ious.argmax(dim=1)
        assert sorted(best.tolist()) == list(range(n))  # each GT its own top detection
        assert (ious.max(dim=1).values > 0.5).all()
        assert top_labels[best].tolist() == scene_labels


def test_encoding_gt_on_assigned_anchors_then_decoding_gives_gt_back():
    model = build_detector(tiny_spec())
    images, boxes, labels = rectangle_batch()
    _, _, anchors, per_level = model(images)
    matched = model.assigner.assign(anchors, per_level, boxes, labels).matched
    image_index, anchor_index = (matched > 0).nonzero(as_tuple=True)
    assert len(image_index) >= (labels >= 0).sum()  # every GT has at least one anchor
    gt = boxes[image_index, matched[image_index, anchor_index] - 1]
    deltas = model.box_coder.encode(anchors[anchor_index], gt)
    torch.testing.assert_close(model.box_coder.decode(anchors[anchor_index], deltas), gt)


def reference_loss(model, images, boxes, labels):
    """The same loss one image and one positive anchor at a time."""
    cls_logits, box_deltas, anchors, per_level = model(images)
    matched = model.assigner.assign(anchors, per_level, boxes, labels).matched
    assert (matched == -1).any()  # the ignore band is exercised
    num_pos = max(1, int((matched > 0).sum()))
    cls_sum, box_sum = 0.0, 0.0
    for i in range(len(images)):
        targets = torch.zeros_like(cls_logits[i])
        for a in (matched[i] > 0).nonzero()[:, 0].tolist():
            gt = matched[i, a] - 1
            targets[a, labels[i, gt]] = 1.0
            if model.box_loss.on_boxes:
                pred = model.box_coder.decode(anchors[a], box_deltas[i, a])
                box_sum = box_sum + model.box_loss(pred[None], boxes[i, gt][None]).sum()
            else:
                target = model.box_coder.encode(anchors[a], boxes[i, gt])
                box_sum = box_sum + model.box_loss(box_deltas[i, a][None], target[None]).sum()
        keep = matched[i] >= 0
        cls_sum = cls_sum + sigmoid_focal_loss(cls_logits[i][keep], targets[keep], 0.25, 2.0, "sum")
    return cls_sum / num_pos, box_sum / num_pos * model.box_loss_weight


@pytest.mark.parametrize("box_loss", ["giou", "smooth_l1"])
def test_batched_loss_equals_per_image_reference(box_loss):
    torch.manual_seed(1)
    model = build_detector(tiny_spec(box_loss, box_loss_weight=2.0))
    assert isinstance(model.box_loss, GIoULoss if box_loss == "giou" else SmoothL1Loss)
    images, boxes, labels = rectangle_batch()
    images = images + 0.1 * torch.randn_like(images)
    losses = model.loss(images, boxes, labels)
    cls_ref, box_ref = reference_loss(model, images, boxes, labels)
    torch.testing.assert_close(losses["cls"], cls_ref, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(losses["box"], box_ref, rtol=1e-4, atol=1e-6)
    assert losses["box"] > 0


def test_loss_is_finite_for_images_without_gt():
    torch.manual_seed(2)
    model = build_detector(tiny_spec())
    images, boxes, labels = rectangle_batch()
    labels[2] = -1  # one image in the batch has no GT
    losses = model.loss(images, boxes, labels)
    assert all(torch.isfinite(v) for v in losses.values())
    # no GT at all (M = 0): pure background loss, zero box loss, gradients still flow
    losses = model.loss(images, torch.zeros(4, 0, 4), torch.zeros(4, 0, dtype=torch.long))
    assert torch.isfinite(losses["cls"]) and losses["cls"] > 0
    assert losses["box"] == 0
    sum(losses.values()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_forward_returns_flat_predictions_aligned_with_anchors():
    model = build_detector(tiny_spec())
    cls_logits, box_deltas, anchors, per_level = model(torch.zeros(2, 3, 64, 96))
    assert per_level == [8 * 12 * 9, 4 * 6 * 9, 2 * 3 * 9]
    assert cls_logits.shape == (2, sum(per_level), 3)
    assert box_deltas.shape == (2, sum(per_level), 4)
    assert anchors.shape == (sum(per_level), 4)
    # prior probability 0.01 at init
    torch.testing.assert_close(cls_logits.sigmoid().mean(), torch.tensor(0.01), atol=2e-3, rtol=0)


def test_predict_returns_clipped_detections_per_image():
    torch.manual_seed(3)
    model = build_detector(tiny_spec(score_thr=0.0, max_dets=20)).eval()
    images, _, _ = rectangle_batch()
    sizes = torch.tensor([[64, 64], [40, 50], [64, 30], [20, 20]])
    detections = model.predict(images, sizes)
    assert len(detections) == 4
    for det, (h, w) in zip(detections, sizes.tolist(), strict=True):
        assert 0 < len(det["boxes"]) <= 20
        assert det["scores"].shape == det["labels"].shape == (len(det["boxes"]),)
        assert (det["boxes"] >= 0).all()
        assert (det["boxes"][:, 0::2] <= w).all() and (det["boxes"][:, 1::2] <= h).all()
        assert (det["scores"][:-1] >= det["scores"][1:]).all()


def test_build_detector_builds_parts_from_dict_spec():
    model = build_detector(tiny_spec(box_loss_weight=0.5, nms_iou=0.6))
    assert isinstance(model, RetinaNet)
    assert model.neck.in_channels == model.backbone.out_channels
    assert model.neck.strides == [8, 16, 32]
    assert model.head.num_anchors == model.anchor_generator.num_anchors_per_location == 9
    assert model.head.num_classes == 3
    assert (model.box_loss_weight, model.nms_iou, model.num_classes) == (0.5, 0.6, 3)
    assert model.assigner.pos_iou_thr == 0.5


def test_build_detector_rejects_anchor_strides_that_differ_from_the_neck():
    spec = tiny_spec(anchor_generator={"type": "grid", "strides": [8, 16, 32, 64, 128]})
    with pytest.raises(ValueError, match=r"\(8, 16, 32, 64, 128\).*\(8, 16, 32\)"):
        build_detector(spec)


def test_build_detector_uses_the_assigner_named_in_the_spec():
    model = build_detector(tiny_spec(assigner={"type": "atss", "topk": 4}))
    assert model.assigner.topk == 4
    images, boxes, labels = rectangle_batch()
    losses = model.loss(images, boxes, labels)
    assert all(torch.isfinite(v) for v in losses.values())


def test_build_detector_accepts_a_validated_spec_with_default_components():
    from tunedet.config.schema import component_model

    spec = component_model("detector", "retinanet").model_validate(
        {
            "type": "retinanet",
            "num_classes": 2,
            "backbone": {"type": "tiny_cnn", "widths": [8, 16, 32, 64, 64]},
            "neck": {"type": "fpn", "out_channels": 16, "num_outs": 3},
            "head": {"type": "retina", "feat_channels": 16, "stacked_convs": 1},
            "anchor_generator": {"type": "grid", "strides": [8, 16, 32]},
        }
    )
    model = build_detector(spec)
    assert (model.assigner.pos_iou_thr, model.assigner.neg_iou_thr) == (0.5, 0.4)
    assert (model.cls_loss.alpha, model.cls_loss.gamma) == (0.25, 2.0)
    assert model.score_thr == 0.05 and model.nms_iou == 0.5 and model.max_dets == 100
    cls_logits, _, anchors, _ = model.eval()(torch.zeros(1, 3, 64, 64))
    assert cls_logits.shape == (1, len(anchors), 2)


def test_build_detector_fills_left_out_components_with_the_detector_defaults():
    spec = tiny_spec()
    del spec["assigner"], spec["box_loss"], spec["cls_loss"]
    model = build_detector(spec)
    assert type(model.assigner).__name__ == "MaxIoUAssigner"
    assert isinstance(model.box_loss, SmoothL1Loss)
    assert model.cls_loss.gamma == 2.0


TRAINABLE_ASSIGNERS = {
    "max_iou": {"type": "max_iou"},
    "max_iou_topk": {"type": "max_iou_topk", "k": 2},
    "grid": {"type": "grid"},
    "grid_yolov3": {"type": "grid", "mode": "yolov3"},
    "atss": {"type": "atss"},
    "fcos": {"type": "fcos", "scale_ranges": [0, 16, 32, 1e8]},
    "hungarian": {"type": "hungarian"},
}
TRAINABLE_SAMPLERS = {
    "pseudo": {"type": "pseudo"},
    "random": {"type": "random", "num": 64, "pos_fraction": 0.25},
    "ohem": {"type": "ohem", "num": 64},
    "iou_balanced_neg": {"type": "iou_balanced_neg", "num": 64},
    "hard_negative": {"type": "hard_negative"},
}


def train_a_few_steps(spec, steps=2):
    torch.manual_seed(0)
    model = build_detector(spec)
    images, boxes, labels = rectangle_batch()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    history = []
    for _ in range(steps):
        losses = model.loss(images, boxes, labels)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        history.append({k: v.detach().item() for k, v in losses.items()})
    return model, history


@pytest.mark.parametrize("name", list(TRAINABLE_ASSIGNERS))
def test_tiny_retinanet_trains_with_each_assigner(name):
    model, history = train_a_few_steps(tiny_spec(assigner=TRAINABLE_ASSIGNERS[name]))
    images, boxes, labels = rectangle_batch()
    cls_logits, box_deltas, anchors, per_level = model(images)
    assigned = model.assign_targets(cls_logits, box_deltas, anchors, per_level, boxes, labels)
    assert assigned.num_positive > 0
    for losses in history:
        assert all(math.isfinite(v) for v in losses.values())
        assert losses["box"] > 0  # positives were found and regressed


@pytest.mark.parametrize("name", list(TRAINABLE_SAMPLERS))
def test_tiny_retinanet_trains_with_each_sampler(name):
    _, history = train_a_few_steps(tiny_spec(sampler=TRAINABLE_SAMPLERS[name]))
    for losses in history:
        assert all(math.isfinite(v) for v in losses.values())
        assert losses["box"] > 0 and losses["cls"] > 0


def test_sampled_loss_sums_over_sampled_anchors_divided_by_sampled_positives():
    torch.manual_seed(4)
    model = build_detector(tiny_spec(sampler={"type": "hard_negative", "neg_pos_ratio": 2}))
    images, boxes, labels = rectangle_batch()
    losses = model.loss(images, boxes, labels)
    cls_logits, box_deltas, anchors, per_level = model(images)
    assigned = model.assign_targets(cls_logits, box_deltas, anchors, per_level, boxes, labels)
    matched = assigned.matched
    targets = torch.zeros_like(cls_logits)
    pos = matched > 0
    targets[pos] = torch.nn.functional.one_hot(
        labels.gather(1, (matched - 1).clamp(min=0))[pos], 3
    ).float()
    per_anchor = sigmoid_focal_loss(cls_logits, targets, 0.25, 2.0, "none").sum(-1)
    num_pos = int(pos.sum())
    expected = 0.0
    for i in range(len(images)):  # all positives + the 2·#pos negatives of highest loss
        neg_loss = per_anchor[i][matched[i] == 0].sort(descending=True).values
        expected += per_anchor[i][pos[i]].sum() + neg_loss[: 2 * int(pos[i].sum())].sum()
    torch.testing.assert_close(losses["cls"], expected / num_pos, rtol=1e-4, atol=1e-6)


def test_hungarian_gets_the_detached_predictions():
    model = build_detector(tiny_spec(assigner={"type": "hungarian"}))
    seen = {}
    assign = model.assigner.assign

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return assign(*args, **kwargs)

    model.assigner.assign = spy
    images, boxes, labels = rectangle_batch()
    model.loss(images, boxes, labels)
    scores, pred_boxes = seen["pred_scores"], seen["pred_boxes"]
    assert scores.shape[:2] == pred_boxes.shape[:2] and scores.shape[-1] == 3
    assert not scores.requires_grad and ((scores >= 0) & (scores <= 1)).all()


def test_topk_assignment_trains_the_union_of_the_anchor_gt_classes():
    model = build_detector(tiny_spec(assigner={"type": "max_iou_topk", "k": 2}))
    matched_topk = torch.tensor([[[2, 1], [1, 0], [0, 0]]])
    from tunedet.assigners import AssignResult

    result = AssignResult(matched_topk[..., 0], torch.zeros(1, 3), matched_topk)
    targets = model._cls_targets(result, torch.tensor([[0, 2]]), torch.float32)
    assert targets.tolist() == [[[1.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]]


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"sampler": {"type": "random", "add_gt_as_proposals": True}}, "add_gt_as_proposals"),
        ({"cls_loss": {"type": "softmax_ce"}}, r"model\.cls_loss: softmax_ce needs a background"),
        ({"box_coder": {"type": "yolo"}}, r"model\.box_coder: yolo"),
        (
            {
                "assigner": {"type": "grid"},
                "anchor_generator": {"type": "grid", "strides": [8, 16, 32], "center_offset": 0},
            },
            r"model\.assigner: grid .*center_offset is 0\.0",
        ),
        ({"assigner": {"type": "fcos"}}, r"model\.assigner\.scale_ranges: 6 boundaries .* has 3"),
    ],
)
def test_build_detector_rejects_combinations_that_cannot_train(overrides, message):
    with pytest.raises(ValueError, match=message) as error:
        build_detector(tiny_spec(**overrides))
    assert "\n" not in str(error.value)


def test_build_detector_rejects_a_prediction_assigner_for_a_detector_without_predictions(
    monkeypatch,
):
    monkeypatch.setattr(RetinaNet, "passes_predictions_to_assigner", False)
    with pytest.raises(ValueError, match=r"model\.assigner: hungarian"):
        build_detector(tiny_spec(assigner={"type": "hungarian"}))
