"""Softmax label smoothing from configs (SSD, the R-CNN box head, YOLOv3's class loss slot)
and assigners a detector cannot use refused when it is built."""

import pytest
import torch
import torch.nn.functional as F

from tunedet.config.loader import load_config
from tunedet.losses.cross_entropy import SoftmaxCrossEntropyLoss
from tunedet.losses.label_smoothing import LabelSmoothingCrossEntropy
from tunedet.models.build import build_detector


def test_softmax_ce_label_smoothing_equals_the_closed_form():
    torch.manual_seed(0)
    logits = torch.randn(7, 5, dtype=torch.float64) * 3
    labels = torch.randint(0, 5, (7,))
    eps = 0.2
    got = SoftmaxCrossEntropyLoss(label_smoothing=eps)(logits, F.one_hot(labels, 5).double())
    log_p = torch.log_softmax(logits, dim=-1)
    on_target = log_p.gather(1, labels[:, None])[:, 0]
    expected = -(1 - eps) * on_target - eps / 4 * (log_p.sum(dim=1) - on_target)
    torch.testing.assert_close(got.sum(dim=1), expected)
    torch.testing.assert_close(got.sum(dim=1), LabelSmoothingCrossEntropy(eps)(logits, labels))
    plain = SoftmaxCrossEntropyLoss()(logits, F.one_hot(labels, 5).double()).sum(dim=1)
    torch.testing.assert_close(plain, -on_target)


def batch(num_classes=3):
    torch.manual_seed(0)
    images = torch.randn(2, 3, 64, 64)
    boxes = torch.tensor([[[4.0, 6, 30, 40], [30, 20, 60, 50]], [[10, 10, 40, 30], [0, 0, 0, 0]]])
    labels = torch.tensor([[0, num_classes - 1], [1, -1]])
    return images, boxes, labels


def losses_with(config, overrides):
    torch.manual_seed(0)
    model = build_detector(load_config(config, overrides).model).train()
    torch.manual_seed(1)
    return model, model.loss(*batch())


@pytest.mark.parametrize(
    "config, override",
    [
        ("ssd/demo", "model.cls_loss.label_smoothing=0.2"),
        ("faster_rcnn/demo", "model.roi_head.cls_loss={type: softmax_ce, label_smoothing: 0.2}"),
    ],
)
def test_softmax_heads_reach_label_smoothing_from_the_config(config, override):
    torch.manual_seed(0)
    key = override.split("=")[0]
    model = build_detector(load_config(config, [override]).model).train()
    loss = model.roi_head.cls_loss if "roi_head" in key else model.cls_loss
    assert loss.label_smoothing == 0.2
    calls = []
    original = loss.forward
    loss.forward = lambda logits, targets: (
        calls.append((logits, targets)) or original(logits, targets)
    )
    model.loss(*batch())
    logits, targets = calls[-1]
    num_logits = logits.shape[-1]  # the classes and the background
    assert num_logits == 4 and targets.sum(-1).eq(1).all()
    log_p = torch.log_softmax(logits.double(), dim=-1)
    on_target = (log_p * targets).sum(dim=-1)
    expected = -0.8 * on_target - 0.2 / (num_logits - 1) * (log_p.sum(dim=-1) - on_target)
    got = original(logits, targets).sum(dim=-1).double()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_yolov3_class_loss_slot_defaults_to_bce_and_takes_softmax_with_smoothing():
    model, default = losses_with("yolov3/demo", [])
    assert type(model.cls_loss).__name__ == "BCEWithLogitsLoss"
    images, boxes, labels = batch()
    # the default slot gives the paper's per-class BCE on the positives, as before
    model, smoothed = losses_with(
        "yolov3/demo", ["model.cls_loss={type: softmax_ce, label_smoothing: 0.1}"]
    )
    assert model.cls_loss.label_smoothing == 0.1
    assert smoothed["obj"] == default["obj"] and smoothed["box"] == default["box"]
    assert smoothed["cls"] != default["cls"]
    model.eval()
    with torch.no_grad():
        cls_logits, _, obj_logits, _, _ = model(images)
    # softmax classes: the class scores of an anchor sum to its objectness
    detections = model.predict(images, torch.tensor([[64, 64], [64, 64]]))
    assert all(d["scores"].le(1).all() for d in detections)
    probs = cls_logits.softmax(dim=-1) * obj_logits.sigmoid()[..., None]
    torch.testing.assert_close(probs.sum(dim=-1), obj_logits.sigmoid())


def test_yolov3_default_class_loss_equals_per_class_bce_sum():
    model, losses = losses_with("yolov3/demo", [])
    images, boxes, labels = batch()
    cls_logits, *_ = model(images)
    captured = {}
    original = model.cls_loss.forward

    def spy(logits, targets):
        captured["args"] = (logits, targets)
        return original(logits, targets)

    model.cls_loss.forward = spy
    torch.manual_seed(1)
    again = model.loss(images, boxes, labels)
    logits, targets = captured["args"]
    expected = F.binary_cross_entropy_with_logits(logits, targets, reduction="sum") / 2
    torch.testing.assert_close(again["cls"], expected)
    assert targets.sum(dim=1).eq(1).all()


@pytest.mark.parametrize("config", ["fcos/demo", "ssd/demo", "yolov3/demo"])
def test_several_gts_per_anchor_assigner_is_refused_in_one_line(config):
    with pytest.raises(ValueError) as error:
        build_detector(load_config(config, ["model.assigner={type: max_iou_topk, k: 2}"]).model)
    message = str(error.value)
    assert "\n" not in message and message.startswith("model.assigner: max_iou_topk")
    if config == "ssd/demo":
        assert "multi-hot" in message


def test_retinanet_keeps_max_iou_topk():
    model = build_detector(
        load_config("retinanet/demo", ["model.assigner={type: max_iou_topk, k: 2}"]).model
    )
    assert type(model.assigner).__name__ == "MaxIoUTopKAssigner"
