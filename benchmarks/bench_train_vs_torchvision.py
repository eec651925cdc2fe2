"""Training img/s of tunedet vs torchvision at equal architecture and input (RetinaNet-R18-FPN).

    python benchmarks/bench_train_vs_torchvision.py [--repeats 7] [--batch 4] [--size 320]
        [--threads 2] [--profile]

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
of each into convolutions (forward + backward) and everything else.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torchvision
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from tunedet.models import build_detector

REQUIRED_SPEEDUP = 1.0
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    images, boxes, labels = random_batch(args.batch, args.size)
    tv, td = torchvision_model(args.size), tunedet_model()
    tv.train()
    td.train()

    # equal inputs and architecture, checked before timing
    transformed, _ = tv.transform(list(images), None)
    assert torch.equal(transformed.tensors, images), "torchvision's transform changed the images"
    assert count(tv) == count(td), f"parameter counts differ: {count(tv)} vs {count(td)}"
    with torch.no_grad():
        feats = list(tv.backbone(images).values())
        tv_anchors = sum(f.shape[-2] * f.shape[-1] for f in feats) * 9
        td_anchors = td(images)[2].shape[0]
    assert tv_anchors == td_anchors, f"anchor counts differ: {tv_anchors} vs {td_anchors}"

    targets = [{"boxes": b, "labels": lab} for b, lab in zip(boxes, labels, strict=True)]
    tv_opt = torch.optim.SGD(tv.parameters(), lr=1e-4, momentum=0.9)
    td_opt = torch.optim.SGD(td.parameters(), lr=1e-4, momentum=0.9)

    def tv_step():
        tv_opt.zero_grad(set_to_none=True)
        sum(tv(list(images), targets).values()).backward()
        tv_opt.step()

    def td_step():
        td_opt.zero_grad(set_to_none=True)
        sum(td.loss(images, boxes, labels).values()).backward()
        td_opt.step()

    load = os.getloadavg()
    print(
        f"RetinaNet-R18-FPN (P3–P7, 9 anchors, {td_anchors} anchors per image), "
        f"{count(td) / 1e6:.2f} M parameters both, batch {args.batch} × {args.size} px, "
        f"{args.threads} threads, torch {torch.__version__}, torchvision "
        f"{torchvision.__version__}, load average before {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    steps = {"torchvision": tv_step, "tunedet": td_step}
    for step in steps.values():  # warm-up (oneDNN kernels, allocator)
        step()
    times = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    print(f"{'':12s} {'train img/s median [min–max]':>32s}  {'s/step':>7s}  vs torchvision")
    rate = {}
    for name, t in times.items():
        rates = sorted(args.batch / x for x in t)
        rate[name] = statistics.median(rates)
        print(
            f"{name:12s} {rate[name]:15.2f} [{rates[0]:.2f}–{rates[-1]:.2f}]       "
            f"{statistics.median(t):7.2f}  {rate[name] / rate['torchvision']:6.2f}×"
        )
    if args.profile:
        for name, step in steps.items():
            print(profile_split(step, name))
    ratio = rate["tunedet"] / rate["torchvision"]
    load = os.getloadavg()
    verdict = "ok" if ratio >= REQUIRED_SPEEDUP else "BELOW TARGET"
    print(
        f"tunedet / torchvision: {ratio:.2f}× (target ≥ {REQUIRED_SPEEDUP}×: {verdict}); "
        f"load average after {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )


if __name__ == "__main__":
    main()
