"""FCOS, its ATSS preset and the NMS-free (OneNet-style) variant: head layout, per-level
scales, losses against a per-positive reference, target round trip, decoding against
torchvision's FCOS, and overfitting 8 synthetic images from each demo config."""

import math
import time

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection import FCOS as TorchvisionFCOS
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.fcos import FCOSHead as TorchvisionFCOSHead
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from tunedet.anchors.grid import GridAnchorGenerator
from tunedet.boxes.coders import DistanceBoxCoder
from tunedet.cli.main import main
from tunedet.config.loader import load_config
from tunedet.data.build import build_dataset, build_loader
from tunedet.models import build_detector
from tunedet.models.heads.fcos import FCOSHead
from tunedet.models.postprocess import postprocess_detections

PRESETS = ["fcos/demo", "atss/demo", "onenet/demo"]
# the demo recipes shrunk to seconds on one thread
TINY = [
    "model.backbone.widths=[8, 16, 32, 32, 32]",
    "model.neck.out_channels=32",
    "model.head.feat_channels=32",
    "model.head.stacked_convs=1",
    "threads=1",
]


def tiny_model(preset, *overrides, seed=0):
    torch.manual_seed(seed)
    return build_detector(load_config(preset, [*TINY, *overrides]).model)


def synthetic_batch(size=64, num_images=8, min_size=12):
    """One batch of the demo's synthetic shapes (normalised), and its COCO GT.

    Objects are at least 12 px so that each holds a stride-8 point strictly inside
    (FCOS cannot learn an object without one; the data's 8-px default may have none).
    """
    cfg = load_config(
        "fcos/demo",
        [
            f"data.train.num_images={num_images}",
            f"data.train.image_size={size}",
            f"data.train.min_size={min_size}",
        ],
    )
    dataset = build_dataset(cfg.data.train)
    loader = build_loader(dataset, cfg.data.val_transforms, seed=0, batch_size=num_images)
    return next(iter(loader)), dataset.coco_ground_truth()


@pytest.mark.parametrize("preset", PRESETS)
def test_each_preset_overfits_eight_synthetic_images(preset, overfit_stats):
    batch, gt = synthetic_batch()
    model = tiny_model(preset)
    start = time.perf_counter()
    stats = overfit_stats(model, batch, gt, iters=150, lr=4e-3)
    print(f"{preset}: AP {stats['AP']:.3f} AP50 {stats['AP50']:.3f}")
    print(f"150 iterations in {time.perf_counter() - start:.1f} s")
    assert stats["AP50"] >= 0.9


@pytest.mark.parametrize("preset", PRESETS)
def test_encoding_assigned_gt_then_decoding_gives_gt_back(preset):
    batch, _ = synthetic_batch(num_images=4)
    model = tiny_model(preset)
    cls_logits, box_regression, anchors, per_level = model(batch.images)
    matched = model.assign_targets(
        cls_logits, box_regression, anchors, per_level, batch.gt_boxes, batch.gt_labels
    ).matched
    image, point = (matched > 0).nonzero(as_tuple=True)
    gt_index = matched[image, point] - 1
    covered = torch.zeros_like(batch.gt_labels, dtype=torch.bool)
    covered[image, gt_index] = True
    assert covered.equal(batch.gt_labels >= 0)  # every GT has a positive
    gt = batch.gt_boxes[image, gt_index]
    codes = model.box_coder.encode(anchors[point], gt)
    torch.testing.assert_close(model.box_coder.decode(anchors[point], codes), gt)


@pytest.mark.parametrize(
    ("preset", "overrides"),
    [("fcos/demo", []), ("atss/demo", ["model.box_loss={type: smooth_l1}"]), ("onenet/demo", [])],
)
def test_loss_is_finite_and_trains_with_images_without_gt(preset, overrides):
    model = tiny_model(preset, *overrides)
    images = torch.randn(2, 3, 64, 64)
    boxes = torch.tensor([[[8.0, 8, 40, 30]], [[0, 0, 0, 0]]])
    for gt_boxes, gt_labels in (
        (boxes, torch.tensor([[1], [-1]])),
        (boxes[:, :0], torch.zeros(2, 0, dtype=torch.long)),
    ):
        losses = model.loss(images, gt_boxes, gt_labels)
        assert all(torch.isfinite(v) for v in losses.values())
        sum(losses.values()).backward()


def test_head_outputs_are_the_per_level_maps_in_level_y_x_order():
    torch.manual_seed(0)
    head = FCOSHead(16, num_classes=3, num_anchors=1, strides=(8, 16), feat_channels=16)
    feats = [torch.randn(2, 16, 6, 5), torch.randn(2, 16, 3, 3)]
    cls_logits, boxes, quality = head(feats)
    cls_maps, box_maps, quality_maps = head.forward_levels(feats)

    def flat(maps):  # (B, K, H, W) per level → (B, Σ H·W, K), row = offset + y·W + x
        return torch.cat(
            [m.permute(0, 2, 3, 1).reshape(m.shape[0], -1, m.shape[1]) for m in maps], 1
        )

    assert cls_logits.shape == (2, 6 * 5 + 3 * 3, 3)
    assert cls_logits.equal(flat(cls_maps))
    assert boxes.equal(flat(box_maps))
    assert quality.equal(flat(quality_maps)[..., 0])
    # point (y=4, x=2) of level 0 and (y=1, x=2) of level 1
    assert cls_logits[1, 4 * 5 + 2].equal(cls_maps[0][1, :, 4, 2])
    assert boxes[0, 30 + 1 * 3 + 2].equal(box_maps[1][0, :, 1, 2])


@pytest.mark.parametrize("activation", ["exp", "relu_stride", "none"])
def test_box_outputs_are_the_scaled_activation_of_the_regression_conv(activation):
    torch.manual_seed(0)
    head = FCOSHead(8, 2, 1, strides=(8, 16), feat_channels=8, box_activation=activation)
    with torch.no_grad():
        head.scales.copy_(torch.tensor([0.5, 2.0]))
    feats = [torch.randn(1, 8, 4, 4), torch.randn(1, 8, 2, 2)]
    _, box_maps, _ = head.forward_levels(feats)
    for level, (feat, stride) in enumerate(zip(feats, (8, 16), strict=True)):
        raw = head.bbox_pred(head.box_tower(feat)).double() * head.scales[level].double()
        expected = {"exp": raw.exp(), "relu_stride": raw.clamp(min=0) * stride, "none": raw}
        torch.testing.assert_close(box_maps[level].double(), expected[activation])


def test_per_level_scales_are_learned():
    model = tiny_model("fcos/demo")
    batch, _ = synthetic_batch(num_images=2)
    assert "head.scales" in dict(model.named_parameters())
    assert model.head.scales.shape == (3,)
    sum(model.loss(batch.images, batch.gt_boxes, batch.gt_labels).values()).backward()
    assert model.head.scales.grad is not None and (model.head.scales.grad != 0).any()
    no_scales = tiny_model("fcos/demo", "model.head.learnable_scales=false")
    assert "head.scales" not in dict(no_scales.named_parameters())


@pytest.mark.parametrize("weighting", ["centerness", "mean"])
def test_loss_equals_per_positive_reference(weighting):
    batch, _ = synthetic_batch(num_images=2)
    model = tiny_model(
        "fcos/demo", f"model.box_loss_weighting={weighting}", "model.box_loss_weight=1.5", seed=3
    )
    losses = model.loss(batch.images, batch.gt_boxes, batch.gt_labels)
    cls_logits, boxes, quality, anchors, per_level = model.dense_outputs(batch.images)
    matched = model.assigner.assign(anchors, per_level, batch.gt_boxes, batch.gt_labels).matched
    num_pos = int((matched > 0).sum())
    targets = torch.zeros_like(cls_logits)
    box_terms, ctr_terms, weights = [], [], []
    for i, a in (matched > 0).nonzero().tolist():
        gt = batch.gt_boxes[i, matched[i, a] - 1].double()
        targets[i, a, batch.gt_labels[i, matched[i, a] - 1]] = 1.0
        px, py = ((anchors[a, :2] + anchors[a, 2:]) / 2).double().tolist()
        left, top, right, bottom = px - gt[0], py - gt[1], gt[2] - px, gt[3] - py
        centerness = math.sqrt(
            min(left, right) / max(left, right) * min(top, bottom) / max(top, bottom)
        )
        pred = torch.stack(
            [px - boxes[i, a, 0], py - boxes[i, a, 1], px + boxes[i, a, 2], py + boxes[i, a, 3]]
        )
        box_terms.append(generalized_box_iou_loss(pred.double(), gt))
        ctr = torch.tensor(centerness, dtype=torch.float64)
        ctr_terms.append(F.binary_cross_entropy_with_logits(quality[i, a].double(), ctr))
        weights.append(centerness)
    cls_ref = sigmoid_focal_loss(cls_logits, targets, 0.25, 2.0, "sum") / num_pos
    box_terms, weights = torch.stack(box_terms), torch.tensor(weights, dtype=torch.float64)
    if weighting == "centerness":
        box_ref = (box_terms * weights).sum() / weights.sum() * 1.5
    else:
        box_ref = box_terms.sum() / num_pos * 1.5
    torch.testing.assert_close(losses["cls"], cls_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(losses["box"].double(), box_ref, rtol=1e-5, atol=1e-6)
    quality_ref = torch.stack(ctr_terms).sum() / num_pos
    torch.testing.assert_close(losses["quality"].double(), quality_ref, rtol=1e-5, atol=1e-6)


def test_iou_quality_target_trains_the_quality_logit_towards_the_box_iou():
    batch, _ = synthetic_batch(num_images=2)
    model = tiny_model("fcos/demo", "model.quality_target=iou")
    losses = model.loss(batch.images, batch.gt_boxes, batch.gt_labels)
    centerness_model = tiny_model("fcos/demo")
    reference = centerness_model.loss(batch.images, batch.gt_boxes, batch.gt_labels)
    assert losses["cls"].equal(reference["cls"]) and losses["box"].equal(reference["box"])
    assert not torch.isclose(losses["quality"], reference["quality"])


@pytest.mark.parametrize("preset", ["fcos/demo", "onenet/demo"])
def test_predict_scores_are_sqrt_of_cls_times_centerness_top_k(preset):
    model = tiny_model(preset, "model.max_dets=30", "model.score_thr=0.0", seed=1)
    model.eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():  # spread the scores so the top 30 are well separated
        model.head.cls_logits.bias.normal_(0, 2)
    detections = model.predict(images, torch.tensor([[64, 64], [64, 48]]))
    cls_logits, boxes, quality, anchors, _ = model.dense_outputs(images)
    scores = cls_logits.double().sigmoid()
    if quality is not None:
        scores = (scores * quality.double().sigmoid()[..., None]).sqrt()
    for i, det in enumerate(detections):
        if model.nms:  # NMS removes some, but every kept score is one of the candidates
            flat = scores[i].flatten()
            index = (flat[:, None] - det["scores"].double()[None]).abs().argmin(dim=0)
            torch.testing.assert_close(flat[index], det["scores"].double())
            assert (index % model.num_classes).equal(det["labels"])
        else:  # no NMS: exactly the 30 best (point, class) pairs
            top = scores[i].flatten().topk(30)
            torch.testing.assert_close(det["scores"].double(), top.values)
            assert det["labels"].equal(top.indices % model.num_classes)
            point = top.indices // model.num_classes
            decoded = model.box_coder.decode(anchors[point], boxes[i, point])
            limit = torch.tensor([64, 64, 64, 64] if i == 0 else [48, 64, 48, 64])
            torch.testing.assert_close(det["boxes"], torch.minimum(decoded.clamp(min=0), limit))


def test_postprocess_without_nms_keeps_overlapping_duplicates():
    boxes = torch.tensor([[[0.0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30]]])
    logits = torch.tensor([[[3.0], [2.0], [1.0]]])
    anchors = torch.zeros(3, 4)

    class Identity:
        def decode(self, anchors, deltas):
            return deltas

    common = dict(score_thr=0.05, image_sizes=torch.tensor([[64, 64]]))
    kept = postprocess_detections(logits, boxes, anchors, [3], Identity(), nms_iou=None, **common)
    nms = postprocess_detections(logits, boxes, anchors, [3], Identity(), nms_iou=0.5, **common)
    assert len(kept[0]["boxes"]) == 3 and len(nms[0]["boxes"]) == 2
    factors = torch.tensor([[0.25, 1.0, 0.5]])
    scored = postprocess_detections(
        logits, boxes, anchors, [3], Identity(), nms_iou=None, score_factors=factors, **common
    )
    expected = (logits[0, :, 0].sigmoid() * factors[0]).sqrt().sort(descending=True).values
    torch.testing.assert_close(scored[0]["scores"], expected)


def torchvision_head_state(head: TorchvisionFCOSHead) -> dict[str, torch.Tensor]:
    """torchvision's FCOSHead weights under tunedet's names (the map in heads/fcos.py)."""
    renamed = {}
    for key, value in head.state_dict().items():
        key = key.replace("classification_head.cls_logits", "cls_logits")
        key = key.replace("regression_head.bbox_reg", "bbox_pred")
        key = key.replace("regression_head.bbox_ctrness", "centerness")
        for old, new in (
            ("classification_head.conv", "cls_tower"),
            ("regression_head.conv", "box_tower"),
        ):
            if key.startswith(old):
                index, rest = key[len(old) + 1 :].split(".", 1)
                layer, part = divmod(int(index), 3)
                key = f"{new}.{layer}.{('conv', 'norm')[part]}.{rest}"
        renamed[key] = value
    return renamed


def test_tv_config_head_and_decoding_equal_torchvision_fcos():
    torch.manual_seed(0)
    strides, sizes = (8, 16, 32), ((8,), (16,), (32,))
    tv_backbone = torch.nn.Conv2d(3, 32, 1)
    tv_backbone.out_channels = 32
    tv_anchor_generator = AnchorGenerator(sizes, ((1.0,),) * 3)
    tv_model = TorchvisionFCOS(tv_backbone, 5, anchor_generator=tv_anchor_generator)
    tv_head = TorchvisionFCOSHead(32, 1, 5, num_convs=2)
    for p in tv_head.parameters():  # away from the init so that every weight matters
        p.data.normal_(0, 0.1)
    head = FCOSHead(
        32, 5, 1, strides=strides, feat_channels=32, stacked_convs=2, norm="gn",
        conv_bias=True, box_activation="relu_stride", learnable_scales=False,
    )  # fmt: skip
    head.load_state_dict(torchvision_head_state(tv_head))

    images = ImageList(torch.zeros(2, 3, 96, 96), [(96, 90), (80, 96)])
    feats = [torch.randn(2, 32, 96 // s, 96 // s) for s in strides]
    tv_out = tv_head(feats)
    cls_logits, boxes, quality = head(feats)
    per_level = [f.shape[-1] * f.shape[-2] for f in feats]
    level_stride = torch.tensor(strides, dtype=torch.float32).repeat_interleave(
        torch.tensor(per_level)
    )
    torch.testing.assert_close(cls_logits, tv_out["cls_logits"])
    torch.testing.assert_close(boxes, tv_out["bbox_regression"] * level_stride[:, None])
    torch.testing.assert_close(quality, tv_out["bbox_ctrness"][..., 0])

    tv_anchors = tv_anchor_generator(images, feats)
    generator = GridAnchorGenerator(
        strides, base_sizes=(8, 16, 32), scales_per_octave=1, ratios=(1.0,), center_offset=0.0
    )
    anchors = torch.cat(generator.grid_anchors([tuple(f.shape[-2:]) for f in feats]))
    torch.testing.assert_close(anchors, tv_anchors[0])

    tv_model.score_thresh = 0.2  # torchvision's defaults, which the tv config sets
    split = {k: list(v.split(per_level, dim=1)) for k, v in tv_out.items()}
    tv_dets = tv_model.postprocess_detections(
        split, [list(a.split(per_level)) for a in tv_anchors], images.image_sizes
    )
    ours = postprocess_detections(
        cls_logits, boxes, anchors, per_level, DistanceBoxCoder(), torch.tensor(images.image_sizes),
        score_thr=0.2, pre_nms_topk=1000, nms_iou=0.6, max_dets=100, score_factors=quality.sigmoid(),
    )  # fmt: skip
    for tv_det, det in zip(tv_dets, ours, strict=True):
        assert len(det["boxes"]) == len(tv_det["boxes"]) > 0
        torch.testing.assert_close(det["scores"], tv_det["scores"])
        assert det["labels"].equal(tv_det["labels"])
        torch.testing.assert_close(det["boxes"], tv_det["boxes"])


def test_tv_config_has_torchvision_fcos_resnet50_fpn_tensor_count():
    from torchvision.models.detection import fcos_resnet50_fpn

    cfg = load_config("fcos/tv_fcos_resnet50_fpn", ["model.backbone.init=none"])
    ours = build_detector(cfg.model).state_dict()
    theirs = fcos_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91).state_dict()

    def sizes(state, prefix):
        return sorted(v.numel() for k, v in state.items() if "num_batches" not in k and prefix(k))

    assert sizes(ours, lambda k: True) == sizes(theirs, lambda k: True)
    head = sizes(ours, lambda k: k.startswith("head."))
    assert head == sizes(theirs, lambda k: k.startswith("head."))
    renamed = torchvision_head_state(TorchvisionFCOSHead(256, 1, 91, num_convs=4))
    assert {f"head.{k}": v.shape for k, v in renamed.items()} == {
        k: v.shape for k, v in ours.items() if k.startswith("head.")
    }


@pytest.mark.parametrize(
    "config", ["fcos/fcos_r50_fpn_1x", "atss/atss_r50_fpn_1x", "fcos/tv_fcos_resnet50_fpn"]
)
def test_literature_configs_build(config):
    model = build_detector(load_config(config, ["model.backbone.init=none"]).model)
    assert model.head.strides == (8, 16, 32, 64, 128)


def test_build_rejects_several_anchors_per_location_and_stride_normalised_coder():
    with pytest.raises(ValueError, match="one box per location"):
        tiny_model("fcos/demo", "model.anchor_generator.ratios=[0.5, 1.0, 2.0]")
    with pytest.raises(ValueError, match="normalize_by_stride"):
        tiny_model("fcos/demo", "model.box_coder.normalize_by_stride=true")


def test_list_detectors_describes_fcos(capsys):
    assert main(["list", "detectors"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("fcos "))
    assert "FCOS" in line and "ATSS" in line
