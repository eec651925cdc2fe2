"""``tunedet analyze errors CONFIG --checkpoint C``: missed objects and confident false positives.

Detections of the checkpoint on the config's validation set are matched to
the GT as in COCO evaluation at IoU 0.5 (``evaluation.matching``). With the
detections scoring >= ``score_thr``:
- a *missed* GT is a non-crowd GT that no such detection matched;
- a *confident false positive* is such a detection left unmatched, typed by
  what it overlaps most (in this order): ``duplicate`` (IoU >= 0.5 with a GT
  of its class already taken by a better detection), ``wrong class``
  (IoU >= 0.5 with a GT of another class), ``localisation`` (0.1 <= IoU < 0.5
  with a GT of its class), else ``background``.
Both are counted per COCO size bucket of the box area in original pixels
(small < 32², medium < 96², large; box area, where COCO uses the mask area).
The images with the most errors are drawn; ``--export-fp DIR`` writes each
confident false positive's crop (with context) and a manifest, to reuse as
hard negatives.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from PIL import Image

from tunedet.analysis.inputs import (
    add_config_arguments,
    build_model,
    image_grid,
    load_config,
    save_figure,
    split_dataset,
)
from tunedet.evaluation.matching import (
    DetectionSet,
    box_iou_with_crowd,
    detection_set,
    match_detections,
)

SIZE_BUCKETS = ("small", "medium", "large")
FP_TYPES = ("duplicate", "wrong class", "localisation", "background")
LOCALISATION_IOU = 0.1


def size_bucket(boxes: np.ndarray) -> np.ndarray:
    """(N, 4) xyxy -> (N,) index into SIZE_BUCKETS by COCO's area ranges (32², 96²)."""
    area = np.prod(np.clip(boxes[:, 2:] - boxes[:, :2], 0, None), axis=1)
    return np.searchsorted([32.0**2, 96.0**2], area, side="right")


def find_errors(data: DetectionSet, score_thr: float = 0.5, iou_thr: float = 0.5) -> dict[str, Any]:
    """Missed GT and confident false positives (module docstring).

    Returns ``{"missed": [GT row], "false_positives": [detection row], "fp_type":
    [type per false positive], "tp": [detection row], "counts": {"missed": {bucket: n,
    "total": n}, "false_positives": {bucket: n, "total": n, type: n}, "num_gt",
    "num_confident"}}``; rows index `data`'s arrays.
    """
    match = match_detections(data, iou_thr=iou_thr)
    confident = match.det_score >= score_thr
    rows = match.det_index
    tp_rows = rows[confident & match.det_tp]
    fp_rows = rows[confident & match.det_fp]
    found = np.zeros(len(data.gt_class), dtype=bool)
    found[match.det_gt[confident & match.det_tp]] = True
    missed = np.flatnonzero(~data.gt_crowd & ~found)

    fp_type = []
    regular = ~data.gt_crowd
    gt_order = np.flatnonzero(regular)
    gt_order = gt_order[np.argsort(data.gt_image[gt_order], kind="stable")]
    bounds = np.searchsorted(data.gt_image[gt_order], np.arange(data.num_images + 1))
    for d in fp_rows:
        image = data.det_image[d]
        gts = gt_order[bounds[image] : bounds[image + 1]]
        iou = box_iou_with_crowd(data.det_boxes[d : d + 1], data.gt_boxes[gts], data.gt_crowd[gts])[
            0
        ]
        same = data.gt_class[gts] == data.det_class[d]
        best_same = iou[same].max(initial=0.0)
        if best_same >= iou_thr:
            fp_type.append("duplicate")
        elif iou[~same].max(initial=0.0) >= iou_thr:
            fp_type.append("wrong class")
        elif best_same >= LOCALISATION_IOU:
            fp_type.append("localisation")
        else:
            fp_type.append("background")

    def by_size(boxes: np.ndarray) -> dict[str, int]:
        buckets = np.bincount(size_bucket(boxes), minlength=3) if len(boxes) else np.zeros(3, int)
        return {name: int(n) for name, n in zip(SIZE_BUCKETS, buckets, strict=True)}

    fp_counts = {**by_size(data.det_boxes[fp_rows]), "total": len(fp_rows)}
    fp_counts.update({t: fp_type.count(t) for t in FP_TYPES})
    return {
        "missed": missed.tolist(),
        "false_positives": fp_rows.tolist(),
        "fp_type": fp_type,
        "tp": tp_rows.tolist(),
        "counts": {
            "missed": {**by_size(data.gt_boxes[missed]), "total": len(missed)},
            "false_positives": fp_counts,
            "num_gt": int(regular.sum()),
            "num_confident": int(confident.sum()),
        },
    }


def worst_images(data: DetectionSet, errors: dict[str, Any], count: int) -> list[int]:
    """Image indices (into `data.image_ids`) with the most missed GT + false positives."""
    tally = np.bincount(data.gt_image[errors["missed"]], minlength=data.num_images)
    tally += np.bincount(data.det_image[errors["false_positives"]], minlength=data.num_images)
    order = np.argsort(-tally, kind="stable")
    return [int(i) for i in order[:count] if tally[i] > 0]


def plot_errors(
    data: DetectionSet,
    errors: dict[str, Any],
    images: dict[int, np.ndarray],
    out: str | Path,
    title: str,
) -> Path:
    """Drawn images: found GT (green), missed GT (red, dashed), confident FPs (orange)."""
    chosen = list(images)
    fig, axes = image_grid(max(len(chosen), 1))
    if not chosen:
        axes[0].text(0.5, 0.5, "no errors at this score threshold", ha="center", va="center")
    fp_type = dict(zip(errors["false_positives"], errors["fp_type"], strict=True))
    missed = set(errors["missed"])
    for ax, image_index in zip(axes, chosen, strict=False):
        ax.imshow(images[image_index])
        n_miss = n_fp = 0
        for g in np.flatnonzero((data.gt_image == image_index) & ~data.gt_crowd):
            x0, y0, x1, y1 = data.gt_boxes[g]
            lost = g in missed
            n_miss += lost
            ax.add_patch(
                Rectangle(
                    (x0, y0), x1 - x0, y1 - y0, fill=False,
                    ec="red" if lost else "lime", lw=2 if lost else 1, ls="--" if lost else "-",
                )
            )  # fmt: skip
            if lost:
                ax.text(x0, y1, data.class_names[data.gt_class[g]], color="red", fontsize=7,
                        va="top", bbox=dict(fc="white", ec="none", alpha=0.7, pad=0.5))  # fmt: skip
        for d in np.flatnonzero(data.det_image == image_index):
            if d not in fp_type:
                continue
            n_fp += 1
            x0, y0, x1, y1 = data.det_boxes[d]
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="orange", lw=2))
            label = f"{data.class_names[data.det_class[d]]} {data.det_score[d]:.2f} ({fp_type[d]})"
            ax.text(x0, y0, label, color="black", fontsize=7, va="bottom",
                    bbox=dict(fc="orange", ec="none", alpha=0.8, pad=0.5))  # fmt: skip
        ax.set_title(f"image {data.image_ids[image_index]}: {n_miss} missed, {n_fp} FP", fontsize=9)
        ax.set_xlim(0, images[image_index].shape[1])
        ax.set_ylim(images[image_index].shape[0], 0)
    handles = [
        Line2D([], [], color="lime", lw=1, label="found GT"),
        Line2D([], [], color="red", lw=2, ls="--", label="missed GT"),
        Line2D([], [], color="orange", lw=2, label="confident false positive (class score type)"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=3, fontsize=9)
    fig.suptitle(title, fontsize=11)
    return save_figure(fig, out)


def format_counts(counts: dict[str, Any], score_thr: float) -> str:
    missed, fps = counts["missed"], counts["false_positives"]
    return "\n".join(
        [
            f"score >= {score_thr:g}: {counts['num_confident']} confident detections, "
            f"{counts['num_gt']} GT objects",
            f"{'':<16}{'small':>8}{'medium':>8}{'large':>8}{'total':>8}",
            "missed GT       " + "".join(f"{missed[k]:>8}" for k in (*SIZE_BUCKETS, "total")),
            "false positives " + "".join(f"{fps[k]:>8}" for k in (*SIZE_BUCKETS, "total")),
            "false positives by type: " + ", ".join(f"{t} {fps[t]}" for t in FP_TYPES),
        ]
    )


def export_false_positives(
    data: DetectionSet,
    errors: dict[str, Any],
    load_image: Any,
    out_dir: str | Path,
    context: float = 0.2,
) -> Path:
    """Crop each confident FP (box grown by `context` of its size on each side) to PNG and
    write ``false_positives.json`` (crop file, image id and file, box xyxy, score, class, type)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = []
    cache: dict[int, tuple[np.ndarray, str]] = {}
    for n, (d, kind) in enumerate(zip(errors["false_positives"], errors["fp_type"], strict=True)):
        image_index = int(data.det_image[d])
        if image_index not in cache:
            cache = {image_index: load_image(image_index)}
        image, file = cache[image_index]
        x0, y0, x1, y1 = data.det_boxes[d]
        gx, gy = context * (x1 - x0), context * (y1 - y0)
        h, w = image.shape[:2]
        box = [
            int(max(0, x0 - gx)),
            int(max(0, y0 - gy)),
            int(min(w, x1 + gx)),
            int(min(h, y1 + gy)),
        ]
        if box[2] <= box[0] or box[3] <= box[1]:
            continue
        name = f"fp_{n:05d}.png"
        Image.fromarray(image[box[1] : box[3], box[0] : box[2]]).save(out_dir / name)
        manifest.append(
            {
                "crop": name,
                "image_id": data.image_ids[image_index],
                "file": file,
                "box": [float(v) for v in data.det_boxes[d]],
                "score": float(data.det_score[d]),
                "class": data.class_names[data.det_class[d]],
                "type": kind,
            }
        )
    path = out_dir / "false_positives.json"
    path.write_text(json.dumps(manifest, indent=1))
    return path


def run(args: argparse.Namespace) -> int:
    from tunedet.engine.build import eval_settings
    from tunedet.engine.evaluator import predict_dataset

    cfg = load_config(args.config, args.overrides)
    model, device = build_model(cfg, args.checkpoint)
    dataset = split_dataset(cfg, "val")
    results = predict_dataset(model, dataset, eval_settings(cfg), device)
    data = detection_set(dataset.coco_ground_truth(), results)
    errors = find_errors(data, score_thr=args.score_thr)
    print(format_counts(errors["counts"], args.score_thr))

    gt_images = [img["id"] for img in dataset.coco_ground_truth()["images"]]
    position = {image_id: i for i, image_id in enumerate(gt_images)}

    def load_image(image_index: int) -> tuple[np.ndarray, str]:
        """The dataset's sample of an image: datasets list their GT images in item order;
        otherwise search the dataset."""
        image_id = data.image_ids[image_index]
        guess = position.get(image_id, 0)
        sample = dataset[guess] if guess < len(dataset) else None
        if sample is None or sample["image_id"] != image_id:
            sample = next(s for s in map(dataset.__getitem__, range(len(dataset)))
                          if s["image_id"] == image_id)  # fmt: skip
        return np.asarray(sample["image"]), str(sample.get("file", ""))

    out_dir = Path(args.out)
    chosen = worst_images(data, errors, args.num_images)
    images = {i: load_image(i)[0] for i in chosen}
    title = (
        f"Errors of {Path(args.checkpoint).name} at score >= {args.score_thr:g}, IoU 0.5 "
        f"({errors['counts']['missed']['total']} missed, "
        f"{errors['counts']['false_positives']['total']} false positives)"
    )
    png = plot_errors(data, errors, images, out_dir / "errors.png", title)
    (out_dir / "errors.json").write_text(json.dumps(errors["counts"], indent=1))
    print(f"wrote {png} and {out_dir / 'errors.json'}")
    if args.export_fp:
        manifest = export_false_positives(data, errors, load_image, args.export_fp)
        print(f"wrote {len(errors['false_positives'])} false-positive crops and {manifest}")
    return 0


def add_analyze_command(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "errors", help="missed GT and confident false positives of a checkpoint, drawn"
    )
    add_config_arguments(p)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--score-thr", type=float, default=0.5)
    p.add_argument("--num-images", type=int, default=8, help="images with most errors drawn")
    p.add_argument("--out", default="runs/analyze", help="folder for errors.png / errors.json")
    p.add_argument("--export-fp", metavar="DIR", help="write false-positive crops + manifest")
    p.set_defaults(func=run)
