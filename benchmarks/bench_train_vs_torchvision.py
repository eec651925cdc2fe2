"""Training img/s of tunedet vs torchvision at equal architecture and input (RetinaNet-R18-FPN,
Faster R-CNN-R18-FPN, SSDlite320-MobileNetV3-Large).

    python benchmarks/bench_train_vs_torchvision.py [--repeats 7] [--batch 4] [--size 320]
        [--threads 2] [--profile] [--models retinanet faster_rcnn ssdlite] [--channels-last]

Both models: ResNet-18 (torchvision's, random init, BatchNorm, all stages trained), FPN 256
on C3–C5 + P6/P7 from P5 (ReLU before P7), RetinaNet head 4 × 256 convs per branch, no
norm, 9 anchors per cell (sizes 32–512 × 2^(0, 1/3, 2/3), ratios 0.5/1/2), 10 classes,
focal loss, max-IoU 0.5/0.4 matching. torchvision: ``RetinaNet`` on
``backbone_utils._resnet_fpn_extractor(resnet18(), 5, [2, 3, 4], LastLevelP6P7(256, 256))``
with ``min_size = max_size = size`` and mean 0 / std 1 (so its transform hands the
network the same tensor); tunedet: the equivalent config (below). One SGD step = loss,
backward, ``optimizer.step`` on the same batch (random images, 6 random GT boxes per
image). Checked before timing: both networks see the same image tensor, have the same
number of parameters and anchors. Steps are timed in turns (round-robin); median img/s
over ``--repeats`` with min–max. ``--profile`` adds torch.profiler's split of one step
of each into convolutions (forward + backward) and everything else. ``--channels-last``
adds both models in NHWC memory order (what ``train.channels_last: true`` does in
tunedet's trainer): the verdict then compares tunedet NHWC with torchvision as it ships,
and the "torchvision NHWC" row shows what the same switch would do for torchvision.

Faster R-CNN-R18-FPN, both: ResNet-18 (BatchNorm, all stages trained) C2–C5, FPN 256 on
P2–P5 + P6 max-pooled from P5; RPN (one 3×3 conv 256 + objectness and deltas, anchors
32–512 one size per level × ratios 0.5/1/2 at the cell corner, max-IoU 0.7/0.3 with
low-quality matches, 256 sampled at 0.5, pre-NMS top 2000 per level, NMS 0.7, post-NMS
top 2000 per image, smooth L1 β = 1/9); RoIAlign 7×7, sampling ratio 2, levels P2–P5 by
k0 = 4, s0 = 224; GT boxes added to the proposals, max-IoU 0.5 without low-quality
matches, 512 sampled at 0.25; 2-MLP 1024; softmax over 10 classes + background; smooth L1
β = 1/9 on deltas with weights (10, 10, 5, 5). torchvision: ``FasterRCNN`` on
``_resnet_fpn_extractor(resnet18(), 5, [1, 2, 3, 4], LastLevelMaxPool())``, its defaults
otherwise. The one difference: torchvision's box regressor also has outputs for the
background class (4 · 1024 + 4 parameters more), which no loss reaches.

SSDlite320-MobileNetV3-Large, both: torchvision's ``ssdlite320_mobilenet_v3_large``
(random init, 10 classes + background, mean 0 / std 1) and tunedet's
``ssd/tv_ssdlite320_mobilenet_v3_large`` config with 10 classes, which
``tests/models/test_torchvision_equivalence.py`` checks gives the same detections and
losses as torchvision's on converted weights: reduced-tail MobileNetV3-Large C4/C5, four
separable extra levels, 6 priors per location on 6 levels (3 234 priors), max-IoU 0.5,
3:1 hard negatives, smooth L1 on deltas with weights (10, 10, 5, 5). Always 320 px.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

import torch
import torchvision
from torchvision.models.detection import FasterRCNN, RetinaNet, ssdlite320_mobilenet_v3_large
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.models.detection.ssd import SSD
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from tunedet.config.loader import load_config
from tunedet.models import build_detector

# issue #10: RetinaNet at least as fast as torchvision, Faster R-CNN and SSD-lite 1.3x
REQUIRED_SPEEDUP = {"retinanet": 1.0, "faster_rcnn": 1.3, "ssdlite": 1.3}
NUM_CLASSES = 10

TUNEDET_SPEC = {
    "type": "retinanet",
    "num_classes": NUM_CLASSES,
    "backbone": {"type": "resnet18", "out_indices": [2, 3, 4], "norm": "bn"},
    "neck": {
        "type": "fpn",
        "out_channels": 256,
        "num_outs": 5,
        "extra_source": "output",
        "relu_before_extra": True,
    },
    "head": {"type": "retina", "feat_channels": 256, "stacked_convs": 4, "norm": "none"},
    "anchor_generator": {
        "type": "grid",
        "strides": [8, 16, 32, 64, 128],
        "octave_base_scale": 4.0,
        "scales_per_octave": 3,
        "ratios": [0.5, 1.0, 2.0],
    },
    "assigner": {"type": "max_iou", "pos_iou_thr": 0.5, "neg_iou_thr": 0.4},
    "box_coder": {"type": "delta", "weights": [1.0, 1.0, 1.0, 1.0]},
    "cls_loss": {"type": "focal", "alpha": 0.25, "gamma": 2.0},
    "box_loss": {"type": "l1"},
}


FASTER_RCNN_SPEC = {
    "type": "faster_rcnn",
    "num_classes": NUM_CLASSES,
    "backbone": {"type": "resnet18", "out_indices": [1, 2, 3, 4], "norm": "bn"},
    "neck": {"type": "fpn", "out_channels": 256, "num_outs": 5, "extra_type": "maxpool"},
    "rpn": {
        "type": "rpn",
        "anchor_generator": {
            "type": "grid",
            "strides": [4, 8, 16, 32, 64],
            "sizes": [[32], [64], [128], [256], [512]],
            "ratios": [0.5, 1.0, 2.0],
            "center_offset": 0.0,
            "round_base_anchors": True,
        },
        "assigner": {"type": "max_iou", "pos_iou_thr": 0.7, "neg_iou_thr": 0.3},
        "sampler": {"type": "random", "num": 256, "pos_fraction": 0.5},
        "box_loss": {"type": "smooth_l1", "beta": 1.0 / 9},
        "pre_nms_topk_train": 2000,
        "post_nms_topk_train": 2000,
        "nms_iou": 0.7,
    },
    "roi_head": {
        "type": "standard",
        "assigner": {
            "type": "max_iou",
            "pos_iou_thr": 0.5,
            "neg_iou_thr": 0.5,
            "match_low_quality": False,
        },
        "sampler": {
            "type": "random",
            "num": 512,
            "pos_fraction": 0.25,
            "add_gt_as_proposals": True,
        },
        "box_loss": {"type": "smooth_l1", "beta": 1.0 / 9},
        "pooler_resolution": 7,
        "sampling_ratio": 2,
        "mlp_dim": 1024,
    },
}
# torchvision's FastRCNNPredictor regresses boxes for the background class too
BACKGROUND_REGRESSOR_PARAMETERS = 4 * 1024 + 4


def torchvision_model(size: int) -> RetinaNet:
    backbone = _resnet_fpn_extractor(
        torchvision.models.resnet18(weights=None), 5, [2, 3, 4], LastLevelP6P7(256, 256)
    )
    return RetinaNet(
        backbone,
        NUM_CLASSES,
        min_size=size,
        max_size=size,
        image_mean=[0.0, 0.0, 0.0],
        image_std=[1.0, 1.0, 1.0],
    )


def tunedet_model():
    try:
        return build_detector(TUNEDET_SPEC)
    except (KeyError, ValueError):  # no "l1" box loss registered: smooth L1 with β → 0
        spec = dict(TUNEDET_SPEC, box_loss={"type": "smooth_l1", "beta": 1e-6})
        return build_detector(spec)


def torchvision_faster_rcnn(size: int) -> FasterRCNN:
    backbone = _resnet_fpn_extractor(
        torchvision.models.resnet18(weights=None), 5, [1, 2, 3, 4], LastLevelMaxPool()
    )
    return FasterRCNN(
        backbone,
        NUM_CLASSES + 1,  # torchvision counts the background
        min_size=size,
        max_size=size,
        image_mean=[0.0, 0.0, 0.0],
        image_std=[1.0, 1.0, 1.0],
    )


ROI_ALIGN_IMPL = ["auto"]  # set from --roi-align-impl


def tunedet_faster_rcnn():
    spec = {**FASTER_RCNN_SPEC}
    spec["roi_head"] = {**spec["roi_head"], "roi_align_impl": ROI_ALIGN_IMPL[0]}
    return build_detector(spec)


def random_batch(batch: int, size: int, boxes_per_image: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, size, size, generator=g)
    xy = torch.rand(batch, boxes_per_image, 2, generator=g) * (size - 64)
    wh = torch.rand(batch, boxes_per_image, 2, generator=g) * (size / 2) + 16
    boxes = torch.cat([xy, (xy + wh).clamp(max=size)], dim=-1)
    labels = torch.randint(0, NUM_CLASSES, (batch, boxes_per_image), generator=g)
    return images, boxes, labels


def count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def profile_split(step, label: str) -> str:
    """Share of one step's self CPU time in convolution kernels (forward + backward)."""
    from torch.profiler import ProfilerActivity, profile

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    conv = sum(
        e.self_cpu_time_total
        for e in events
        if "conv" in e.key.lower() or "mkldnn" in e.key.lower()
    )
    others = sorted(
        (e for e in events if not ("conv" in e.key.lower() or "mkldnn" in e.key.lower())),
        key=lambda e: -e.self_cpu_time_total,
    )[:6]
    top = ", ".join(f"{e.key} {e.self_cpu_time_total / 1e3:.0f} ms" for e in others)
    return (
        f"{label:12s} step {total / 1e6:.2f} s self CPU: convolutions {conv / total:.0%}, "
        f"other {1 - conv / total:.0%} (largest other: {top})"
    )


def checked_dense_pair(tv, td, images, per_location: list[int]) -> int:
    """Check that a dense pair has equal parameter counts and anchors per image (torchvision:
    ``per_location`` anchors on each backbone level); returns that anchor count."""
    assert count(tv) == count(td), f"parameter counts differ: {count(tv)} vs {count(td)}"
    with torch.no_grad():
        feats = list(tv.backbone(images).values())
        tv_anchors = sum(
            f.shape[-2] * f.shape[-1] * k for f, k in zip(feats, per_location, strict=True)
        )
        td_anchors = td(images)[2].shape[0]
    assert tv_anchors == td_anchors, f"anchor counts differ: {tv_anchors} vs {td_anchors}"
    return td_anchors


def retinanet_pair(args, images):
    """The RetinaNet pair, checked equal (image tensor, parameters, anchors)."""
    tv, td = torchvision_model(args.size), tunedet_model()
    td_anchors = checked_dense_pair(tv, td, images, [9] * 5)
    title = (
        f"RetinaNet-R18-FPN (P3–P7, 9 anchors, {td_anchors} anchors per image), "
        f"{count(td) / 1e6:.2f} M parameters both"
    )
    return tv, td, title


def faster_rcnn_pair(args, images):
    """The Faster R-CNN pair, checked equal (image tensor, parameters but the background
    box regressor, anchors)."""
    tv, td = torchvision_faster_rcnn(args.size), tunedet_faster_rcnn()
    difference = count(tv) - count(td)
    assert difference == BACKGROUND_REGRESSOR_PARAMETERS, f"parameter counts differ by {difference}"
    with torch.no_grad():
        feats = list(tv.backbone(images).values())
        tv_anchors = sum(f.shape[-2] * f.shape[-1] for f in feats) * 3
        td_anchors = td.rpn(td.features(images)).anchors.shape[0]
    assert tv_anchors == td_anchors, f"anchor counts differ: {tv_anchors} vs {td_anchors}"
    title = (
        f"Faster R-CNN-R18-FPN (P2–P6, 3 anchors, {td_anchors} anchors per image, 512 RoIs "
        f"per image), tunedet {count(td) / 1e6:.2f} M parameters, torchvision "
        f"{BACKGROUND_REGRESSOR_PARAMETERS} more (its background box regressor)"
    )
    return tv, td, title


def ssdlite_pair(args, images):
    """The SSDlite320 pair, checked equal (image tensor, parameters, priors)."""
    if args.size != 320:
        raise SystemExit("the ssdlite pair is SSDlite320: run it with --size 320")
    tv = ssdlite320_mobilenet_v3_large(
        weights=None,
        weights_backbone=None,
        num_classes=NUM_CLASSES + 1,  # torchvision counts the background
        image_mean=[0.0] * 3,
        image_std=[1.0] * 3,
    )
    spec = load_config("ssd/tv_ssdlite320_mobilenet_v3_large", []).model.model_dump()
    td = build_detector({**spec, "num_classes": NUM_CLASSES})
    td_priors = checked_dense_pair(tv, td, images, tv.anchor_generator.num_anchors_per_location())
    title = (
        f"SSDlite320-MobileNetV3-Large ({td_priors} priors per image), "
        f"{count(td) / 1e6:.2f} M parameters both"
    )
    return tv, td, title


PAIRS = {"retinanet": retinanet_pair, "faster_rcnn": faster_rcnn_pair, "ssdlite": ssdlite_pair}


def sgd_step(model, forward):
    """One SGD step of ``model`` whose loss terms ``forward()`` returns."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def step():
        optimizer.zero_grad(set_to_none=True)
        sum(forward().values()).backward()
        optimizer.step()

    return step


def compare(args, pair, images, boxes, labels) -> float:
    """Time one pair's SGD steps in turns; print the table; return tunedet / torchvision
    (tunedet in NHWC memory order with ``--channels-last``, torchvision as it ships)."""
    tv, td, title = pair(args, images)
    tv.train()
    td.train()
    transformed, _ = tv.transform(list(images), None)
    assert torch.equal(transformed.tensors, images), "torchvision's transform changed the images"

    # torchvision's R-CNN and SSD: label 0 is the background
    first_label = 1 if isinstance(tv, FasterRCNN | SSD) else 0
    targets = [
        {"boxes": b, "labels": lab + first_label} for b, lab in zip(boxes, labels, strict=True)
    ]
    steps = {
        "torchvision": sgd_step(tv, lambda: tv(list(images), targets)),
        "tunedet": sgd_step(td, lambda: td.loss(images, boxes, labels)),
    }
    if args.channels_last:  # what train.channels_last does: NHWC weights and batches
        nhwc = images.contiguous(memory_format=torch.channels_last)
        tv_nhwc = copy.deepcopy(tv).to(memory_format=torch.channels_last)
        td_nhwc = copy.deepcopy(td).to(memory_format=torch.channels_last)
        steps["torchvision NHWC"] = sgd_step(tv_nhwc, lambda: tv_nhwc(list(nhwc), targets))
        steps["tunedet NHWC"] = sgd_step(td_nhwc, lambda: td_nhwc.loss(nhwc, boxes, labels))

    load = os.getloadavg()
    print(
        f"{title}, batch {args.batch} × {args.size} px, {args.threads} threads, torch "
        f"{torch.__version__}, torchvision {torchvision.__version__}, load average before "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    for step in steps.values():  # warm-up (oneDNN kernels, allocator)
        step()
    times = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    print(f"{'':16s} {'train img/s median [min–max]':>32s}  {'s/step':>7s}  vs torchvision")
    rate = {}
    for name, t in times.items():
        rates = sorted(args.batch / x for x in t)
        rate[name] = statistics.median(rates)
        print(
            f"{name:16s} {rate[name]:15.2f} [{rates[0]:.2f}–{rates[-1]:.2f}]       "
            f"{statistics.median(t):7.2f}  {rate[name] / rate['torchvision']:6.2f}×"
        )
    if args.profile:
        for name, step in steps.items():
            print(profile_split(step, name))
    best = "tunedet NHWC" if args.channels_last else "tunedet"
    return rate[best] / rate["torchvision"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--channels-last",
        action="store_true",
        help="also time both in NHWC memory order (tunedet's train.channels_last)",
    )
    parser.add_argument("--models", nargs="+", choices=sorted(PAIRS), default=list(PAIRS))
    parser.add_argument(
        "--roi-align-impl", default="auto", choices=["auto", "torchvision", "sparse"]
    )
    args = parser.parse_args()
    ROI_ALIGN_IMPL[0] = args.roi_align_impl
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    images, boxes, labels = random_batch(args.batch, args.size)
    ratios = {name: compare(args, PAIRS[name], images, boxes, labels) for name in args.models}
    load = os.getloadavg()
    for name, ratio in ratios.items():
        target = REQUIRED_SPEEDUP[name]
        verdict = "ok" if ratio >= target else "BELOW TARGET"
        mode = " (tunedet NHWC, torchvision as shipped)" if args.channels_last else ""
        print(f"{name}: tunedet / torchvision{mode}: {ratio:.2f}× (target ≥ {target}×: {verdict})")
    print(f"load average after {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
