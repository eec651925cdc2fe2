"""Assignment, loss and post-processing: tunedet's batched code vs torchvision's per-image code.

    python benchmarks/bench_components.py [--batch 4] [--size 320] [--repeats 7] [--threads 2]

The same tensors go to both: RetinaNet P3–P7 anchors of a ``--size`` image (9 per cell),
random head outputs for ``--batch`` images (logits ~ N(−3, 1.5²), 10 classes; deltas ~
N(0, 0.2²)), 6 random GT boxes per image. torchvision: its ``Matcher(0.5, 0.4,
allow_low_quality_matches=True)`` on ``box_iou`` per image, ``RetinaNetHead.compute_loss``
(per-image loops inside) and ``RetinaNet.postprocess_detections`` (per image and level);
tunedet: ``max_iou`` assignment on the padded batch, ``RetinaNet.loss`` after the network
(assignment included) and ``postprocess_detections`` on the batch. Checked before
timing: same positive/negative/ignored anchors, same loss values (image by image:
torchvision normalises by each image's positives, tunedet by the batch's), same detections.
Timed in turns; median ms over ``--repeats`` with min–max.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torchvision.models.detection._utils import Matcher
from torchvision.ops import box_iou

sys.path.insert(0, str(Path(__file__).parent))
from bench_train_vs_torchvision import (  # noqa: E402
    NUM_CLASSES,
    random_batch,
    torchvision_model,
    tunedet_model,
)

from tunedet.deploy.export import detections_equal  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    images, boxes, labels = random_batch(args.batch, args.size)
    tv, td = torchvision_model(args.size), tunedet_model()
    td.max_dets = tv.detections_per_img  # 300 both

    sizes = [(args.size // s, args.size // s) for s in (8, 16, 32, 64, 128)]
    sizes[-1] = ((args.size + 127) // 128,) * 2
    levels = td.anchor_generator.grid_anchors(sizes)
    anchors = torch.cat(levels)
    per_level = [len(a) for a in levels]
    g = torch.Generator().manual_seed(1)
    cls_logits = torch.randn(args.batch, len(anchors), NUM_CLASSES, generator=g) * 1.5 - 3
    box_deltas = torch.randn(args.batch, len(anchors), 4, generator=g) * 0.2
    td.forward = lambda _images: (cls_logits, box_deltas, anchors, per_level)
    targets = [{"boxes": b, "labels": lab} for b, lab in zip(boxes, labels, strict=True)]
    anchors_per_image = [anchors] * args.batch
    head_outputs = {"cls_logits": cls_logits, "bbox_regression": box_deltas}
    image_sizes = torch.tensor([[args.size, args.size]] * args.batch)
    matcher = Matcher(0.5, 0.4, allow_low_quality_matches=True)

    def tv_assign():
        return [matcher(box_iou(t["boxes"], anchors)) for t in targets]

    def tv_loss():
        matched = tv_assign()
        return tv.head.compute_loss(targets, head_outputs, anchors_per_image, matched)

    def tv_post():
        split_cls = list(cls_logits.split(per_level, dim=1))
        split_box = list(box_deltas.split(per_level, dim=1))
        split_anchors = [list(anchors.split(per_level)) for _ in range(args.batch)]
        return tv.postprocess_detections(
            {"cls_logits": split_cls, "bbox_regression": split_box},
            split_anchors,
            [(args.size, args.size)] * args.batch,
        )

    def td_assign():
        return td.assigner.assign(anchors, per_level, boxes, labels)

    def td_loss():
        return td.loss(images, boxes, labels)

    def td_post():
        return td.predict(images, image_sizes)

    # equal results before timing
    tv_matched = torch.stack(tv_assign())  # -1 background, -2 ignore, k ≥ 0 GT
    td_matched = td_assign().matched  # 0 background, -1 ignore, k ≥ 1 GT k-1
    tv_codes = torch.where(tv_matched >= 0, tv_matched + 1, torch.where(tv_matched == -1, 0, -1))
    assert torch.equal(tv_codes, td_matched), "assignments differ"
    # loss per image (torchvision normalises per image, tunedet over the batch: equal at B=1)
    for i in range(args.batch):
        one = slice(i, i + 1)
        td.forward = lambda _images, i=one: (cls_logits[i], box_deltas[i], anchors, per_level)
        td_terms = td.loss(images[one], boxes[one], labels[one])
        tv_terms = tv.head.compute_loss(
            targets[one],
            {"cls_logits": cls_logits[one], "bbox_regression": box_deltas[one]},
            [anchors],
            tv_assign()[one],
        )
        for tv_key, td_key in (("classification", "cls"), ("bbox_regression", "box")):
            torch.testing.assert_close(td_terms[td_key], tv_terms[tv_key], rtol=1e-4, atol=1e-5)
    td.forward = lambda _images: (cls_logits, box_deltas, anchors, per_level)
    equal, worst = detections_equal(tv_post(), td_post(), atol=1e-3)
    assert equal, f"detections differ (max diff {worst})"
    num_dets = sum(len(d["scores"]) for d in td_post())

    rows = {
        "assignment (max IoU 0.5/0.4)": (tv_assign, td_assign),
        "assignment + loss": (tv_loss, td_loss),
        "post-processing": (tv_post, td_post),
    }
    times = {name: ([], []) for name in rows}
    for tv_fn, td_fn in rows.values():
        tv_fn(), td_fn()  # warm-up
    for _ in range(args.repeats):
        for name, fns in rows.items():
            for side, fn in enumerate(fns):
                start = time.perf_counter()
                fn()
                times[name][side].append(time.perf_counter() - start)
    load = os.getloadavg()
    print(
        f"batch {args.batch} × {args.size} px, {len(anchors)} anchors, {NUM_CLASSES} classes, "
        f"6 GTs per image, {num_dets} detections; results checked equal; {args.threads} "
        f"threads, torch {torch.__version__}, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    print(f"{'':30s} {'torchvision, per image':>26s} {'tunedet, batched':>26s}  speed-up")
    for name, (tv_t, td_t) in times.items():

        def cell(t):
            ms = [x * 1e3 for x in t]
            return f"{statistics.median(ms):8.1f} ms [{min(ms):.1f}–{max(ms):.1f}]"

        ratio = statistics.median(tv_t) / statistics.median(td_t)
        print(f"{name:30s} {cell(tv_t):>26s} {cell(td_t):>26s}  {ratio:6.2f}×")


if __name__ == "__main__":
    main()
