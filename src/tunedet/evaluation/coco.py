"""COCO-style box and mask (segm) evaluation through faster-coco-eval.

`coco_evaluate` returns the 12 standard COCO statistics, equal to
pycocotools' `COCOeval` on the same input (faster-coco-eval reimplements its
matching and accumulation in C++, several times faster).

Input normalisation done here, before the evaluator sees the data:
- GT may omit `info` / `licenses`; annotations may omit `area` (taken as the
  box area `w * h`) and `iscrowd` (taken as 0).
- Annotation ids are renumbered 1..N: both pycocotools and faster-coco-eval
  use the id 0 as "unmatched", so a GT with id 0 could be matched twice.
- A GT annotation flagged `"ignore": 1` is evaluated as `iscrowd = 1`.
  pycocotools (and faster-coco-eval, which copies it) *overwrite* any
  dataset `ignore` flag with `iscrowd` in `COCOeval._prepare`, so a bare
  `ignore` would silently count as a normal object. As a crowd region it
  becomes an ignore region: a detection matched to it is neither TP nor FP,
  it may absorb any number of detections, it is not counted among the
  positives, and its IoU is `intersection / detection area` (pycocotools'
  crowd IoU), so a detection lying inside the region is ignored.
- A VOC `difficult` flag has no meaning in COCO evaluation (pycocotools
  counts such objects as normal GT); mark them `"ignore": 1` to exclude them.
- Inputs are copied; the caller's dicts are never modified.

For ``iou_type="segm"`` GT and results carry ``segmentation`` (polygons or RLE); a
result's ``area`` stays its box's ``w * h``, as pycocotools' ``loadRes`` sets it for
results with a ``bbox``. `detections_to_coco_results` turns a mask detector's
probabilities into compressed RLE in original pixels.

Stats are -1 where nothing can be measured (no GT in that area range), as in
pycocotools.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from faster_coco_eval import COCO, COCOeval_faster
from faster_coco_eval.core import mask as mask_api

COCO_STAT_NAMES: tuple[str, ...] = (
    "AP",
    "AP50",
    "AP75",
    "APs",
    "APm",
    "APl",
    "AR1",
    "AR10",
    "AR100",
    "ARs",
    "ARm",
    "ARl",
)

_RESULT_KEYS = ("image_id", "category_id", "bbox", "score")


class EvaluationInputError(ValueError):
    """Ground truth or detections that cannot be evaluated; the message says why."""


# --------------------------------------------------------------------- inputs


def _bbox4(value: Any, where: str) -> list[float]:
    """Return `value` as 4 floats `[x, y, w, h]` or raise naming `where`."""
    try:
        box = [float(v) for v in value]
    except (TypeError, ValueError):
        raise EvaluationInputError(f"{where}: bbox must be 4 numbers, got {value!r}") from None
    if len(box) != 4:
        raise EvaluationInputError(f"{where}: bbox must be 4 numbers [x, y, w, h], got {value!r}")
    return box


def normalize_coco_gt(gt: dict) -> dict:
    """Return a checked copy of a COCO GT dict ready for pycocotools-style evaluation.

    Adds `area` (`w * h`) and `iscrowd` (0) where missing, folds `ignore` into
    `iscrowd`, renumbers annotation ids 1..N and checks that every annotation
    refers to a listed image and category.
    """
    if not isinstance(gt, dict):
        raise EvaluationInputError(f"ground truth must be a COCO dict, got {type(gt).__name__}")
    for key in ("images", "categories"):
        if not isinstance(gt.get(key), list):
            raise EvaluationInputError(f"ground truth lacks a '{key}' list")
    try:
        images = [dict(img, id=int(img["id"])) for img in gt["images"]]
        categories = [dict(cat, id=int(cat["id"])) for cat in gt["categories"]]
    except (KeyError, TypeError, ValueError):
        raise EvaluationInputError(
            "ground truth images and categories need an integer 'id'"
        ) from None
    image_ids = {img["id"] for img in images}
    category_ids = {cat["id"] for cat in categories}

    annotations = []
    for i, ann in enumerate(gt.get("annotations", [])):
        where = f"ground-truth annotation {i}"
        try:
            image_id, category_id = int(ann["image_id"]), int(ann["category_id"])
            raw_box = ann["bbox"]
        except KeyError as err:
            raise EvaluationInputError(f"{where} lacks {err.args[0]!r}") from None
        except (TypeError, ValueError):
            raise EvaluationInputError(
                f"{where} needs integer image_id and category_id: {ann!r}"
            ) from None
        if image_id not in image_ids:
            raise EvaluationInputError(f"{where}: image_id {image_id} is not in 'images'")
        if category_id not in category_ids:
            raise EvaluationInputError(f"{where}: category_id {category_id} is not in 'categories'")
        box = _bbox4(raw_box, where)
        area = ann.get("area")
        crowd = bool(ann.get("iscrowd", 0)) or bool(ann.get("ignore", 0))
        out = {
            "id": i + 1,
            "image_id": image_id,
            "category_id": category_id,
            "bbox": box,
            "area": float(box[2] * box[3] if area is None else area),
            "iscrowd": int(crowd),
        }
        if "segmentation" in ann:
            out["segmentation"] = ann["segmentation"]
        if ann.get("difficult"):  # a VOC flag: kept for voc_evaluate, unused by COCO
            out["difficult"] = 1
        annotations.append(out)

    return {
        "info": dict(gt.get("info", {})),
        "licenses": list(gt.get("licenses", [])),
        "images": images,
        "categories": categories,
        "annotations": annotations,
    }


def normalize_coco_results(results: Sequence[dict], gt: dict) -> list[dict]:
    """Return checked copies of COCO results `{image_id, category_id, bbox, score}`.

    `gt` is a normalised GT dict. A result whose image or category is not in
    the GT raises (pycocotools asserts on the first and silently drops the
    second, which usually hides a label-mapping bug).
    """
    num = len(results)
    try:  # columns at C speed; on failure the loop below names the first bad result
        image_id = np.array([d["image_id"] for d in results], dtype=np.int64).reshape(num)
        category_id = np.array([d["category_id"] for d in results], dtype=np.int64).reshape(num)
        boxes = np.array([d["bbox"] for d in results], dtype=np.float64).reshape(num, 4)
        score = np.array([d["score"] for d in results], dtype=np.float64).reshape(num)
    except (KeyError, TypeError, ValueError, IndexError):
        for i, det in enumerate(results):
            try:
                int(det["image_id"]), int(det["category_id"]), float(det["score"])
                if len([float(v) for v in det["bbox"]]) != 4:
                    raise ValueError
            except (KeyError, TypeError, ValueError):
                raise _bad_result(det, i) from None
        raise
    for ids, known, what in (
        (image_id, gt["images"], "image_id"),
        (category_id, gt["categories"], "category_id"),
    ):
        unknown = np.flatnonzero(~np.isin(ids, [item["id"] for item in known]))
        if len(unknown):
            i = int(unknown[0])
            where = "images" if what == "image_id" else "categories"
            raise EvaluationInputError(
                f"detection {i}: {what} {int(ids[i])} is not in the ground truth's {where}"
                + (f" ({len(unknown)} such detections)" if len(unknown) > 1 else "")
            )
    area = (boxes[:, 2] * boxes[:, 3]).tolist()
    out = [
        {
            "id": i + 1,
            "image_id": img,
            "category_id": cat,
            "bbox": box,
            "score": sc,
            "area": ar,
            "iscrowd": 0,
        }
        for i, (img, cat, box, sc, ar) in enumerate(
            zip(
                image_id.tolist(),
                category_id.tolist(),
                boxes.tolist(),
                score.tolist(),
                area,
                strict=True,
            )
        )
    ]
    for item, det in zip(out, results, strict=True):
        if "segmentation" in det:
            item["segmentation"] = det["segmentation"]
    return out


def _bad_result(det: Any, i: int) -> EvaluationInputError:
    """The error describing why result `i` cannot be read."""
    where = f"detection {i}"
    if not isinstance(det, dict):
        return EvaluationInputError(f"{where} is not a dict: {det!r}")
    missing = [k for k in _RESULT_KEYS if k not in det]
    if missing:
        return EvaluationInputError(f"{where} lacks {', '.join(map(repr, missing))}")
    try:
        _bbox4(det["bbox"], where)
    except EvaluationInputError as err:
        return err
    return EvaluationInputError(
        f"{where}: image_id, category_id and score must be numbers, got "
        f"{det['image_id']!r}, {det['category_id']!r}, {det['score']!r}"
    )


# ----------------------------------------------------------------- evaluation


def run_coco_eval(
    gt: dict,
    results: Sequence[dict],
    iou_type: Literal["bbox", "segm"] = "bbox",
    verbose: bool = False,
) -> COCOeval_faster:
    """Normalise the inputs, run faster-coco-eval and return the finished evaluator.

    The evaluator's `eval["precision"]` is `(T, R, K, A, M)`: IoU thresholds
    0.50:0.05:0.95, 101 recall points, categories (sorted ids), area ranges
    (all, small, medium, large), max detections (1, 10, 100).
    """
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    gt_norm = normalize_coco_gt(gt)
    dets = normalize_coco_results(results, gt_norm)
    if iou_type == "segm":
        for what, items in (
            ("ground-truth annotation", gt_norm["annotations"]),
            ("detection", dets),
        ):
            for i, item in enumerate(items):
                if "segmentation" not in item:
                    raise EvaluationInputError(f"{what} {i} lacks 'segmentation' (iou_type='segm')")

    def say(*args: Any) -> None:
        if verbose:
            print(*args)

    coco_gt = COCO(gt_norm, print_function=say)
    # Built directly rather than through `loadRes`, which adds a polygon to
    # every box; the fields are those `loadRes` sets for results with a bbox
    # (area = w * h, iscrowd = 0), so the evaluation is the same.
    coco_dt = COCO(print_function=say)
    coco_dt.dataset = {
        "images": gt_norm["images"],
        "categories": gt_norm["categories"],
        "annotations": dets,
    }
    coco_dt.createIndex()
    evaluator = COCOeval_faster(coco_gt, coco_dt, iouType=iou_type, print_function=say)
    evaluator.run()
    return evaluator


def stats_from_eval(evaluator: COCOeval_faster) -> dict[str, float]:
    """The 12 COCO statistics of a finished evaluator, by name."""
    stats = np.asarray(evaluator.stats, dtype=np.float64)[: len(COCO_STAT_NAMES)]
    return {name: float(v) for name, v in zip(COCO_STAT_NAMES, stats, strict=True)}


def per_class_ap_from_eval(
    evaluator: COCOeval_faster, iou_thr: float | None = None
) -> dict[str, float]:
    """AP per category name (area all, 100 dets) from a finished evaluator.

    `iou_thr=None` averages over IoU 0.50:0.95; otherwise one threshold (e.g.
    0.5). NaN for a category without GT.
    """
    params = evaluator.params
    precision = np.asarray(evaluator.eval["precision"])  # (T, R, K, A, M)
    if iou_thr is not None:
        hits = np.flatnonzero(np.isclose(params.iouThrs, iou_thr))
        if len(hits) == 0:
            raise ValueError(f"iou_thr {iou_thr} is not one of {params.iouThrs.tolist()}")
        precision = precision[hits]
    names = {
        cat["id"]: cat.get("name", str(cat["id"])) for cat in evaluator.cocoGt.dataset["categories"]
    }
    out = {}
    for k, cat_id in enumerate(params.catIds):
        p = precision[:, :, k, 0, -1]
        valid = p > -1
        out[names[int(cat_id)]] = float(p[valid].mean()) if valid.any() else float("nan")
    return out


def coco_evaluate(
    gt: dict,
    results: list[dict],
    iou_type: Literal["bbox", "segm"] = "bbox",
    verbose: bool = False,
) -> dict[str, float]:
    """COCO statistics of `results` against `gt`, equal to pycocotools.

    Args:
        gt: COCO GT dict (`images`, `categories`, `annotations` with `bbox`
            `[x, y, w, h]` in original pixels). See the module docstring for
            `area` / `iscrowd` / `ignore` handling.
        results: COCO results, `{image_id, category_id, bbox [x, y, w, h],
            score}` per detection; may be empty.
        iou_type: "bbox" or "segm" (GT and results then carry `segmentation`,
            polygons or RLE, and GT images `height` / `width`).
        verbose: print faster-coco-eval's progress and the summary table.

    Returns:
        `{AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl}`;
        -1 where no GT falls in the range.
    """
    return stats_from_eval(run_coco_eval(gt, results, iou_type, verbose))


def per_class_ap(
    gt: dict,
    results: list[dict],
    iou_thr: float | None = None,
    iou_type: Literal["bbox", "segm"] = "bbox",
) -> dict[str, float]:
    """AP per category name (IoU 0.50:0.95 or one `iou_thr`), NaN for a category without GT."""
    return per_class_ap_from_eval(run_coco_eval(gt, results, iou_type), iou_thr)


def format_coco_table(stats: dict[str, float]) -> str:
    """Format the 12 COCO stats as pycocotools prints them, one per line."""
    rows = (
        # name, AP or AR, IoU, area, maxDets
        ("AP", "Average Precision  (AP)", "0.50:0.95", "all", 100),
        ("AP50", "Average Precision  (AP)", "0.50", "all", 100),
        ("AP75", "Average Precision  (AP)", "0.75", "all", 100),
        ("APs", "Average Precision  (AP)", "0.50:0.95", "small", 100),
        ("APm", "Average Precision  (AP)", "0.50:0.95", "medium", 100),
        ("APl", "Average Precision  (AP)", "0.50:0.95", "large", 100),
        ("AR1", "Average Recall     (AR)", "0.50:0.95", "all", 1),
        ("AR10", "Average Recall     (AR)", "0.50:0.95", "all", 10),
        ("AR100", "Average Recall     (AR)", "0.50:0.95", "all", 100),
        ("ARs", "Average Recall     (AR)", "0.50:0.95", "small", 100),
        ("ARm", "Average Recall     (AR)", "0.50:0.95", "medium", 100),
        ("ARl", "Average Recall     (AR)", "0.50:0.95", "large", 100),
    )
    return "\n".join(
        f" {title} @[ IoU={iou:<9} | area={area:>6} | maxDets={dets:>3d} ] = {stats[name]:0.3f}"
        for name, title, iou, area, dets in rows
    )


# ---------------------------------------------------------------- predictions


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch here
        x = x.detach().cpu().numpy()
    return np.asarray(x)


MASK_THRESHOLD = 0.5
MASK_CHUNK = 16  # masks resized at once: K full-size float masks may not fit in memory


def masks_to_rles(masks: Any, orig_size: tuple[int, int]) -> list[dict]:
    """Compressed RLEs (``counts`` str) of mask probabilities ``(K, h, w)`` resized to
    ``orig_size = (H, W)`` (bilinear, ``align_corners=False``) and binarised at
    ``>= MASK_THRESHOLD``."""
    import torch
    import torch.nn.functional as F

    probs = masks if isinstance(masks, torch.Tensor) else torch.as_tensor(np.asarray(masks))
    height, width = (int(v) for v in orig_size)
    rles: list[dict] = []
    for start in range(0, probs.shape[0], MASK_CHUNK):
        part = probs[start : start + MASK_CHUNK].float()[:, None]
        if tuple(part.shape[-2:]) != (height, width):
            part = F.interpolate(part, size=(height, width), mode="bilinear", align_corners=False)
        binary = (part[:, 0] >= MASK_THRESHOLD).to(torch.uint8).cpu().numpy()
        encoded = mask_api.encode(np.asfortranarray(binary.transpose(1, 2, 0)))
        for rle in encoded:
            counts = rle["counts"]
            rles.append(
                {
                    "size": [height, width],
                    "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts,
                }
            )
    return rles


def detections_to_coco_results(
    predictions: list[dict],
    image_ids: list[int],
    scales: list[float] | list[tuple[float, float]],
    label_to_category: list[int],
    orig_sizes: list[tuple[int, int]] | None = None,
) -> list[dict]:
    """Turn a detector's per-image predictions into COCO results in original pixels.

    Args:
        predictions: per image `{"boxes": (K, 4) xyxy in the resized input
            image, "scores": (K,), "labels": (K,) 0-based}`, torch tensors or
            numpy arrays; a mask detector's also `"masks": (K, h, w)`
            probabilities in the unpadded resized image.
        image_ids: COCO image id of each prediction.
        scales: resize factor of each image (resized = original * scale); a
            float, or `(scale_x, scale_y)` for a non-uniform resize.
        label_to_category: COCO category id of each 0-based label.
        orig_sizes: `(height, width)` of each original image; needed when the
            predictions carry masks (`masks_to_rles`).

    Returns:
        `[{image_id, category_id, bbox [x, y, w, h], score}]` with plain floats,
        plus `segmentation` (compressed RLE in original pixels) with masks.
    """
    if not len(predictions) == len(image_ids) == len(scales):
        raise ValueError(
            f"predictions, image_ids and scales differ in length: "
            f"{len(predictions)}, {len(image_ids)}, {len(scales)}"
        )
    if orig_sizes is not None and len(orig_sizes) != len(predictions):
        raise ValueError(
            f"orig_sizes has {len(orig_sizes)} entries for {len(predictions)} predictions"
        )
    categories = np.asarray(label_to_category, dtype=np.int64)
    results: list[dict] = []
    for i, (pred, image_id, scale) in enumerate(zip(predictions, image_ids, scales, strict=True)):
        boxes = _to_numpy(pred["boxes"]).astype(np.float64).reshape(-1, 4)
        scores = _to_numpy(pred["scores"]).astype(np.float64).reshape(-1)
        labels = _to_numpy(pred["labels"]).astype(np.int64).reshape(-1)
        outside = labels[(labels < 0) | (labels >= len(categories))]
        if len(outside):
            raise ValueError(
                f"image {image_id}: label {int(outside[0])} outside "
                f"label_to_category (length {len(categories)})"
            )
        sx, sy = (scale, scale) if np.ndim(scale) == 0 else scale
        xywh = boxes / np.array([sx, sy, sx, sy], dtype=np.float64)
        xywh[:, 2:] -= xywh[:, :2]
        cats = categories[labels]
        image_results = [
            {"image_id": int(image_id), "category_id": int(c), "bbox": b, "score": s}
            for b, s, c in zip(xywh.tolist(), scores.tolist(), cats.tolist(), strict=True)
        ]
        if "masks" in pred:
            if orig_sizes is None:
                raise ValueError(f"image {image_id}: predictions carry masks: pass orig_sizes")
            rles = masks_to_rles(pred["masks"], orig_sizes[i])
            if len(rles) != len(image_results):
                raise ValueError(
                    f"image {image_id}: {len(rles)} masks for {len(image_results)} boxes"
                )
            for result, rle in zip(image_results, rles, strict=True):
                result["segmentation"] = rle
        results.extend(image_results)
    return results
