"""Faster R-CNN: the RPN against torchvision's and a float64 reference, the R-CNN stage's
targets and samplers, config errors, and overfitting 8 synthetic images from the demo."""

import io
from contextlib import redirect_stdout

import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.ops import nms
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from tunedet.assigners.max_iou import MaxIoUAssigner
from tunedet.cli.main import main as cli_main
from tunedet.config.loader import ConfigError, load_config
from tunedet.data.build import build_dataset, build_loader
from tunedet.models import build_detector
from tunedet.models.necks.fpn import FPN


def demo(*overrides, size=64, num_images=8):
    return load_config(
        "faster_rcnn/demo",
        [f"data.train.num_images={num_images}", f"data.train.image_size={size}", *overrides],
    )


def synthetic_batch(cfg, num_images=8):
    dataset = build_dataset(cfg.data.train)
    loader = build_loader(dataset, cfg.data.val_transforms, seed=0, batch_size=num_images)
    return dataset, next(iter(loader))


# --- FPN P6 and the per-image assigner ----------------------------------------------------


def test_fpn_maxpool_p6_is_torchvision_last_level_max_pool_of_p5():
    neck = FPN([8, 16, 32, 64], [4, 8, 16, 32], out_channels=8, num_outs=5, extra_type="maxpool")
    feats = [
        torch.randn(2, c, 65 // s + 1, 47 // s + 1)
        for c, s in zip([8, 16, 32, 64], [4, 8, 16, 32], strict=True)
    ]
    outs = neck(feats)
    assert neck.strides == [4, 8, 16, 32, 64] and len(neck.extra_convs) == 0
    extended, _ = LastLevelMaxPool()(list(outs[:4]), [], ["p2", "p3", "p4", "p5"])
    torch.testing.assert_close(outs[4], extended[4], rtol=0, atol=0)
    torch.testing.assert_close(outs[4], outs[3][..., ::2, ::2], rtol=0, atol=0)


@pytest.mark.parametrize("low_quality", [True, False])
def test_max_iou_assigns_per_image_boxes_as_each_image_alone(low_quality):
    g = torch.Generator().manual_seed(0)
    corner = torch.rand(3, 300, 2, generator=g) * 80
    boxes = torch.cat([corner, corner + 4 + torch.rand(3, 300, 2, generator=g) * 40], -1)
    gt_corner = torch.rand(3, 5, 2, generator=g) * 80
    gt = torch.cat([gt_corner, gt_corner + 8 + torch.rand(3, 5, 2, generator=g) * 30], -1)
    labels = torch.tensor([[0, 1, 2, -1, -1], [2, 2, 0, 1, 0], [-1, -1, -1, -1, -1]])
    assigner = MaxIoUAssigner(0.5, 0.4, match_low_quality=low_quality)
    batched = assigner.assign(boxes, [300], gt, labels)
    for b in range(3):
        alone = assigner.assign(boxes[b], [300], gt[b : b + 1], labels[b : b + 1])
        assert torch.equal(batched.matched[b], alone.matched[0])
        torch.testing.assert_close(batched.max_iou[b], alone.max_iou[0], rtol=0, atol=0)
    assert (batched.matched[2] <= 0).all() and (batched.matched[:2] > 0).any()


# --- RPN ----------------------------------------------------------------------------------


def tiny_spec(**roi_head):
    return {
        "type": "faster_rcnn",
        "num_classes": 3,
        "backbone": {"type": "tiny_cnn", "widths": [8, 8, 16, 16, 16], "out_indices": [1, 2, 3, 4]},
        "neck": {"type": "fpn", "out_channels": 16, "num_outs": 5, "extra_type": "maxpool"},
        "rpn": {
            "type": "rpn",
            "anchor_generator": {
                "type": "grid",
                "strides": [4, 8, 16, 32, 64],
                "sizes": [[8], [16], [32], [64], [128]],
                "ratios": [0.5, 1.0, 2.0],
                "center_offset": 0.0,
                "round_base_anchors": True,
            },
            "pre_nms_topk_test": 50,
            "post_nms_topk_test": 70,
            "min_size": 0.5,
        },
        "roi_head": {"type": "standard", "mlp_dim": 32, "canonical_scale": 64, **roi_head},
    }


def test_rpn_proposals_equal_torchvision_region_proposal_network():
    torch.manual_seed(0)
    model = build_detector(tiny_spec()).eval()
    rpn = model.rpn
    with torch.no_grad():  # larger weights, so the boxes move and NMS removes some
        for layer in (rpn.conv, rpn.objectness, rpn.box_deltas):
            layer.weight.normal_(std=0.3)
            layer.bias.normal_(std=0.3)
    head = RPNHead(16, 3)
    head.conv[0][0].load_state_dict(rpn.conv.state_dict())
    head.cls_logits.load_state_dict(rpn.objectness.state_dict())
    head.bbox_pred.load_state_dict(rpn.box_deltas.state_dict())
    tv_rpn = RegionProposalNetwork(
        AnchorGenerator(((8,), (16,), (32,), (64,), (128,)), ((0.5, 1.0, 2.0),) * 5),
        head,
        0.7,
        0.3,
        256,
        0.5,
        {"training": 2000, "testing": 50},
        {"training": 1000, "testing": 70},
        0.7,
    ).eval()
    tv_rpn.min_size = 0.5
    images = torch.randn(2, 3, 128, 192)  # multiples of 64: torchvision infers the strides
    image_sizes = torch.tensor([[128, 192], [70, 101]])
    with torch.no_grad():
        feats = model.features(images)
        boxes, valid = rpn.proposals(rpn(feats), image_sizes)
        tv_boxes, _ = tv_rpn(
            ImageList(images, [tuple(s) for s in image_sizes.tolist()]),
            {str(i): f for i, f in enumerate(feats)},
        )
    for b in range(2):
        assert len(tv_boxes[b]) > 10
        assert valid[b].sum() == len(tv_boxes[b]) and valid[b, : len(tv_boxes[b])].all()
        torch.testing.assert_close(boxes[b, valid[b]], tv_boxes[b], rtol=0, atol=1e-4)


def reference_proposals(out, image_sizes, coder, pre, post, nms_iou, min_size):
    """One image and one level at a time, in float64: the plain algorithm."""
    result = []
    for b, (h, w) in enumerate(image_sizes.tolist()):
        boxes, scores = [], []
        start = 0
        for count in out.num_anchors_per_level:
            s = out.objectness[b, start : start + count].double()
            top = s.argsort(descending=True)[: min(pre, count)]
            box = coder.decode(
                out.anchors[start + top].double(), out.deltas[b, start + top].double()
            )
            box[:, 0::2] = box[:, 0::2].clamp(0, w)
            box[:, 1::2] = box[:, 1::2].clamp(0, h)
            big = ((box[:, 2] - box[:, 0]) > min_size) & ((box[:, 3] - box[:, 1]) > min_size)
            box, s = box[big], s[top][big]
            keep = nms(box, s, nms_iou)
            boxes.append(box[keep])
            scores.append(s[keep])
            start += count
        boxes, scores = torch.cat(boxes), torch.cat(scores)
        result.append(boxes[scores.argsort(descending=True)[:post]])
    return result


@pytest.mark.parametrize("training", [True, False])
def test_rpn_proposal_filtering_matches_a_float64_per_image_reference(training):
    torch.manual_seed(1)
    spec = tiny_spec()
    spec["rpn"].update(pre_nms_topk_train=40, post_nms_topk_train=30, min_size=3.0, nms_iou=0.6)
    model = build_detector(spec).train(training)
    feats = [torch.randn(3, 16, 96 // s, 96 // s) for s in (4, 8, 16, 32, 64)]
    out = model.rpn(feats)
    out = out._replace(deltas=torch.randn_like(out.deltas) * 0.5)
    image_sizes = torch.tensor([[96, 96], [80, 61], [33, 90]])
    boxes, valid = model.rpn.proposals(out, image_sizes)
    pre, post = (40, 30) if training else (50, 70)
    expected = reference_proposals(out, image_sizes, model.rpn.box_coder, pre, post, 0.6, 3.0)
    for b in range(3):
        assert valid[b].sum() == len(expected[b]) and valid[b, : len(expected[b])].all()
        torch.testing.assert_close(boxes[b, valid[b]].double(), expected[b], rtol=0, atol=1e-4)
    assert not boxes.requires_grad
    assert valid.shape[1] == max(len(e) for e in expected) <= post


def test_rpn_straddle_thresh_ignores_anchors_past_the_image():
    spec = tiny_spec()
    spec["rpn"]["straddle_thresh"] = 0.0
    model = build_detector(spec)
    anchors = torch.tensor([[-1.0, 0, 10, 10], [0, 0, 64, 48], [0, 0, 64.5, 10], [5, 5, 6, 49]])
    outside = model.rpn._straddling(anchors, torch.tensor([[48, 64], [49, 100]]))
    assert outside.tolist() == [[True, False, True, True], [True, False, False, False]]


# --- R-CNN stage --------------------------------------------------------------------------


def gt_batch():
    gt_boxes = torch.tensor(
        [
            [[10.0, 12.0, 40.0, 50.0], [60.0, 5.0, 90.0, 30.0]],
            [[20.0, 20.0, 70.0, 60.0], [0, 0, 0, 0]],
        ]
    )
    gt_labels = torch.tensor([[0, 2], [1, -1]])
    return gt_boxes, gt_labels


def jittered_proposals(gt_boxes, num=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = gt_boxes.repeat_interleave(num // gt_boxes.shape[1], dim=1)
    return (base + torch.randn(base.shape, generator=g) * 4).clamp(0, 96)


def test_rcnn_box_targets_decode_back_to_the_gt_boxes_with_weights_10_10_5_5():
    torch.manual_seed(0)
    model = build_detector(tiny_spec())
    head = model.roi_head
    assert head.box_coder.weights == (10.0, 10.0, 5.0, 5.0)
    seen = {}
    head.box_loss.register_forward_hook(lambda module, args, out: seen.update(target=args[1]))
    gt_boxes, gt_labels = gt_batch()
    proposals = jittered_proposals(gt_boxes)
    feats = model.features(torch.randn(2, 3, 96, 96))
    valid = torch.ones(proposals.shape[:2], dtype=torch.bool)
    _, sampled = head.loss(feats, proposals, valid, None, gt_boxes, gt_labels)
    rois, targets = sampled.rois[:, 1:], seen["target"]
    assert len(rois) == len(targets) > 3
    expected = gt_boxes[sampled.rois[:, 0].long(), sampled.gt_index]
    torch.testing.assert_close(head.box_coder.decode(rois, targets), expected, rtol=0, atol=1e-4)
    # the closed form of the first coordinate: dx = 10 · (g_cx − p_cx) / p_w
    p_cx, g_cx = (rois[:, 0] + rois[:, 2]) / 2, (expected[:, 0] + expected[:, 2]) / 2
    torch.testing.assert_close(targets[:, 0], 10 * (g_cx - p_cx) / (rois[:, 2] - rois[:, 0]))
    assert torch.equal(sampled.labels, gt_labels[sampled.rois[:, 0].long(), sampled.gt_index])


def test_add_gt_as_proposals_makes_each_gt_a_positive_without_any_proposal():
    model = build_detector(tiny_spec())
    feats = model.features(torch.randn(2, 3, 96, 96))
    gt_boxes, gt_labels = gt_batch()
    no_proposals = torch.zeros(2, 1, 4), torch.zeros(2, 1, dtype=torch.bool)
    losses, sampled = model.roi_head.loss(feats, *no_proposals, None, gt_boxes, gt_labels)
    assert len(sampled.rois) == 3  # the three real GT boxes, as their own RoIs
    torch.testing.assert_close(sampled.rois[:, 1:], gt_boxes[gt_labels >= 0])
    assert losses["rcnn_cls"] > 0 and torch.isfinite(losses["rcnn_box"])

    without = build_detector(
        tiny_spec(sampler={"type": "random", "num": 512, "pos_fraction": 0.25})
    )
    _, sampled = without.roi_head.loss(feats, *no_proposals, None, gt_boxes, gt_labels)
    assert len(sampled.rois) == 0


def test_ohem_in_the_rcnn_stage_keeps_the_negatives_of_highest_loss():
    torch.manual_seed(0)
    model = build_detector(tiny_spec(sampler={"type": "ohem", "num": 16, "pos_fraction": 0.25}))
    head = model.roi_head
    seen = {}
    sample = head.sampler.sample

    def spy(assigned, anchor_loss=None):
        chosen = sample(assigned, anchor_loss)
        seen.update(assigned=assigned, loss=anchor_loss, chosen=chosen)
        return chosen

    head.sampler.sample = spy
    gt_boxes, gt_labels = gt_batch()
    proposals = torch.cat(
        [
            jittered_proposals(gt_boxes),
            torch.rand(2, 60, 2).mul(50).repeat(1, 1, 2) + torch.tensor([0, 0, 8, 8]),
        ],
        1,
    )
    valid = torch.ones(proposals.shape[:2], dtype=torch.bool)
    valid[1, -5:] = False
    feats = model.features(torch.randn(2, 3, 96, 96))
    losses, _ = head.loss(feats, proposals, valid, None, gt_boxes, gt_labels)
    loss, chosen, matched = seen["loss"], seen["chosen"], seen["assigned"].matched
    assert loss.shape == matched.shape and (loss[matched < 0] == 0).all()
    assert (loss[matched >= 0] > 0).all()
    for b in range(2):
        negative = matched[b] == 0
        kept, dropped = loss[b][chosen[b] & negative], loss[b][~chosen[b] & negative]
        assert len(kept) > 0 and len(dropped) > 0 and kept.min() >= dropped.max()
    assert (chosen.sum(1) == 16).all()
    sum(losses.values()).backward()


def test_iou_balanced_negative_sampler_trains_the_rcnn_stage():
    model = build_detector(tiny_spec(sampler={"type": "iou_balanced_neg", "num": 32}))
    images = torch.randn(2, 3, 96, 96)
    losses = model.loss(images, *gt_batch())
    assert set(losses) == {"rpn_cls", "rpn_box", "rcnn_cls", "rcnn_box"}
    assert all(torch.isfinite(v) for v in losses.values()) and losses["rcnn_cls"] > 0


def test_loss_works_without_any_gt_in_the_batch():
    model = build_detector(tiny_spec())
    losses = model.loss(
        torch.randn(2, 3, 64, 64), torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.long)
    )
    assert losses["rpn_box"] == 0 and losses["rcnn_box"] == 0 and losses["rcnn_cls"] > 0


def test_training_proposals_are_clipped_to_each_unpadded_image(monkeypatch):
    """Image 1 is 48 x 40 px padded into a 96 x 96 batch: with ``image_sizes`` its training
    proposals stay inside 48 x 40 (the RoI head sees them so); without, inside the batch."""
    torch.manual_seed(0)
    model = build_detector(tiny_spec())
    with torch.no_grad():  # large deltas, so that unclipped proposals would leave the image
        for p in model.rpn.parameters():
            p.mul_(20)
    seen = []
    original = model.roi_head.loss

    def recording_loss(feats, proposals, valid, image_sizes, gt_boxes, gt_labels):
        seen.append((proposals.clone(), valid.clone(), image_sizes.clone()))
        return original(feats, proposals, valid, image_sizes, gt_boxes, gt_labels)

    monkeypatch.setattr(model.roi_head, "loss", recording_loss)
    images = torch.randn(2, 3, 96, 96)
    images[1, :, 48:] = 0
    images[1, :, :, 40:] = 0
    gt_boxes, gt_labels = gt_batch()
    gt_boxes[1, 0] = torch.tensor([5.0, 6.0, 35.0, 40.0])
    sizes = torch.tensor([[96, 96], [48, 40]])
    model.loss(images, gt_boxes, gt_labels, image_sizes=sizes)
    model.loss(images, gt_boxes, gt_labels)
    (clipped, valid, passed), (padded, padded_valid, full) = seen
    assert torch.equal(passed, sizes) and torch.equal(full, torch.tensor([[96, 96], [96, 96]]))
    inside = clipped[1][valid[1]]
    assert len(inside) > 0 and inside[:, 2].max() <= 40 and inside[:, 3].max() <= 48
    assert clipped[0][valid[0]][:, 2:].max() > 48  # image 0 keeps its whole 96 px
    outside = padded[1][padded_valid[1]]
    assert (outside[:, 2] > 40).any() or (outside[:, 3] > 48).any()
    assert outside[:, 2:].max() <= 96


# --- config -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "model.rpn.nms_thresh=0.5",
            r"model\.rpn\.nms_thresh: unknown key",
        ),
        ("model.roi_head.sampler.type=ohemm", r"unknown sampler 'ohemm'; did you mean 'ohem'"),
        ("model.roi_head.sampler.pos_fraction=1.5", r"model\.roi_head\.sampler\.pos_fraction"),
        ("model.rpn.pre_nms_topk_train=0", r"model\.rpn\.pre_nms_topk_train"),
    ],
)
def test_config_errors_in_the_two_stage_sections_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message) as error:
        demo(override)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "part, change, message",
    [
        (
            "rpn",
            {"anchor_generator": {"type": "grid", "strides": [8, 16, 32, 64, 128]}},
            r"model\.rpn\.anchor_generator strides",
        ),
        (
            "rpn",
            {"sampler": {"type": "random", "add_gt_as_proposals": True}},
            r"model\.rpn\.sampler\.add_gt_as_proposals",
        ),
        (
            "rpn",
            {"cls_loss": {"type": "softmax_ce"}},
            r"model\.rpn\.cls_loss: softmax_ce needs a background logit",
        ),
        (
            "rpn",
            {"sampler": {"type": "ohem"}},
            r"model\.rpn\.sampler: ohem ranks anchors by their loss",
        ),
        (
            "roi_head",
            {"assigner": {"type": "atss"}},
            r"model\.roi_head\.assigner: atss .* \(use max_iou\)",
        ),
        ("roi_head", {"roi_max_level": 7}, r"roi_head\.roi_min_level/roi_max_level: levels 2–7"),
        (
            "roi_head",
            {"roi_align_impl": "sparse", "sampling_ratio": 0},
            r"model\.roi_head\.roi_align_impl: sparse needs sampling_ratio >= 1",
        ),
    ],
)
def test_build_rejects_two_stage_parts_that_cannot_work_naming_the_key(part, change, message):
    spec = tiny_spec()
    spec[part] = {**spec[part], **change}
    with pytest.raises(ValueError, match=message) as error:
        build_detector(spec)
    assert "\n" not in str(error.value)


def test_list_detectors_describes_faster_rcnn():
    out = io.StringIO()
    with redirect_stdout(out):
        assert cli_main(["list", "detectors"]) == 0
    line = next(x for x in out.getvalue().splitlines() if x.startswith("faster_rcnn "))
    assert "RPN proposals" in line


def test_the_1x_recipe_keeps_detectrons_reference_values():
    cfg = load_config("faster_rcnn/faster_rcnn_r50_fpn_1x")
    rpn, roi = cfg.model.rpn, cfg.model.roi_head
    assert rpn.anchor_generator.sizes == ((32.0,), (64.0,), (128.0,), (256.0,), (512.0,))
    assert (rpn.assigner.pos_iou_thr, rpn.assigner.neg_iou_thr) == (0.7, 0.3)
    assert (rpn.sampler.num, rpn.sampler.pos_fraction, rpn.nms_iou) == (256, 0.5, 0.7)
    assert (roi.sampler.num, roi.sampler.pos_fraction, roi.sampler.add_gt_as_proposals) == (
        512,
        0.25,
        True,
    )
    assert tuple(roi.box_coder.weights) == (10.0, 10.0, 5.0, 5.0)
    assert (roi.canonical_level, roi.canonical_scale, roi.roi_min_level, roi.roi_max_level) == (
        4,
        224,
        2,
        5,
    )
    assert (roi.mlp_dim, roi.pooler_resolution, roi.sampling_ratio) == (1024, 7, 2)


# --- end to end ---------------------------------------------------------------------------


def test_faster_rcnn_demo_overfits_eight_synthetic_images_to_ap50_above_0_9(overfit_stats):
    torch.manual_seed(0)
    # the demo at 64 px, fewer proposals and one RoIAlign sample per bin side: seconds
    cfg = demo(
        "model.roi_head.sampling_ratio=1",
        "model.rpn.pre_nms_topk_train=300",
        "model.rpn.post_nms_topk_train=100",
    )
    model = build_detector(cfg.model)
    dataset, batch = synthetic_batch(cfg)
    stats = overfit_stats(model, batch, dataset.coco_ground_truth(), iters=90, lr=2e-3)
    print(f"faster_rcnn demo overfit: AP {stats['AP']:.3f}, AP50 {stats['AP50']:.3f}")
    assert stats["AP50"] >= 0.9
    predictions = model.predict(batch.images, batch.image_sizes)
    for p, (h, w) in zip(predictions, batch.image_sizes.tolist(), strict=True):
        assert (p["boxes"][:, 2] <= w).all() and (p["boxes"][:, 3] <= h).all()
        assert ((p["labels"] >= 0) & (p["labels"] < 3)).all()
