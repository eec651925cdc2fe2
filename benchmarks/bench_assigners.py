"""Batched assigners against torchvision's per-image Matcher loop, on RetinaNet's anchors.

    python benchmarks/bench_assigners.py [--images 16] [--gts 100] [--repeats 5] [--threads 1]

The batch: ``--images`` images of 640 × 640 px with ``--gts`` random GTs each (sizes
8–208 px), the RetinaNet anchors of that image (P3–P7, 9 per location: 76 725). The
reference is what torchvision's detectors do, one image at a time:
``Matcher(0.5, 0.4, allow_low_quality_matches=True)(box_iou(gt, anchors))``. Every
assigner runs on the whole padded batch in one call (``hungarian`` loops over images
to solve). Prints the median time over ``--repeats`` (min–max in brackets), the
speed-up of ``max_iou`` over the loop, and the load average before and after.
"""

from __future__ import annotations

import argparse
import os
import statistics

import torch
from torchvision.models.detection._utils import Matcher
from torchvision.ops import box_iou

import tunedet.assigners  # noqa: F401  (registers the assigners)
from tunedet.anchors.grid import GridAnchorGenerator
from tunedet.config.registry import build
from tunedet.deploy.speed import time_calls

REQUIRED_SPEEDUP = 3.0
ASSIGNERS = {
    "max_iou (RetinaNet 0.5/0.4)": {"type": "max_iou", "pos_iou_thr": 0.5, "neg_iou_thr": 0.4},
    "max_iou_topk (k=2)": {"type": "max_iou_topk", "k": 2},
    "grid (max_iou)": {"type": "grid"},
    "grid (yolov3)": {"type": "grid", "mode": "yolov3"},
    "atss (topk 9)": {"type": "atss"},
    "fcos (centre sampling)": {"type": "fcos"},
    "hungarian (per-image solve)": {"type": "hungarian"},
}


def retinanet_anchors(image_size: int = 640) -> tuple[torch.Tensor, list[int]]:
    generator = GridAnchorGenerator()  # P3–P7, sizes 32–512, 3 scales × 3 ratios
    sizes = [(image_size // s, image_size // s) for s in generator.strides]
    levels = generator.grid_anchors(sizes)
    return torch.cat(levels), [len(level) for level in levels]


def random_batch(num_images: int, num_gts: int, image_size: int = 640, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(num_images, num_gts, 2, generator=g) * (image_size - 8)
    wh = torch.rand(num_images, num_gts, 2, generator=g) * 200 + 8
    boxes = torch.cat([xy, (xy + wh).clamp(max=image_size)], dim=-1)
    labels = torch.randint(0, 80, (num_images, num_gts), generator=g)
    return boxes, labels


def describe(times: list[float]) -> str:
    return (
        f"{statistics.median(times) * 1e3:9.0f} ms  [{min(times) * 1e3:.0f}–{max(times) * 1e3:.0f}]"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--gts", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--hungarian-repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()

    anchors, per_level = retinanet_anchors()
    boxes, labels = random_batch(args.images, args.gts)
    g = torch.Generator().manual_seed(1)
    pred_scores = torch.rand(args.images, len(anchors), 80, generator=g)
    pred_boxes = anchors + torch.randn(args.images, len(anchors), 4, generator=g) * 8

    matcher = Matcher(0.5, 0.4, allow_low_quality_matches=True)

    def torchvision_loop():
        return [matcher(box_iou(boxes[i], anchors)) for i in range(args.images)]

    print(
        f"{args.images} images × {args.gts} GTs, {len(anchors)} anchors (RetinaNet P3–P7, "
        f"640 px), torch {torch.__version__}, {args.threads} thread(s), "
        f"load average before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}"
    )
    print(f"{'assigner':34s} {'median':>12s}  [min–max]        vs loop")
    rows = {
        "torchvision Matcher + box_iou, loop": time_calls(torchvision_loop, args.repeats, warmup=1)
    }
    loop_median = statistics.median(rows["torchvision Matcher + box_iou, loop"])
    print(
        f"{'torchvision Matcher + box_iou, loop':34s} {describe(rows['torchvision Matcher + box_iou, loop'])}   1.0×"
    )
    for name, spec in ASSIGNERS.items():
        assigner = build("assigner", spec)
        extra = {}
        repeats = args.repeats
        if getattr(assigner, "needs_predictions", False):
            extra = {"pred_scores": pred_scores, "pred_boxes": pred_boxes}
            repeats = args.hungarian_repeats

        def run(assigner=assigner, extra=extra):
            return assigner.assign(anchors, per_level, boxes, labels, **extra)

        times = time_calls(run, repeats, warmup=1)
        speedup = loop_median / statistics.median(times)
        print(f"{name:34s} {describe(times)}   {speedup:.1f}×")
        rows[name] = times

    max_iou = statistics.median(rows["max_iou (RetinaNet 0.5/0.4)"])
    speedup = loop_median / max_iou
    verdict = "ok" if speedup >= REQUIRED_SPEEDUP else "BELOW TARGET"
    load_after = os.getloadavg()
    print(
        f"max_iou speed-up over the per-image loop: {speedup:.1f}× "
        f"(target ≥ {REQUIRED_SPEEDUP:.0f}×: {verdict}); load average after "
        f"{load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}"
    )


if __name__ == "__main__":
    main()
