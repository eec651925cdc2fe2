"""``tunedet fit``'s rules: from a dataset's fingerprint to the recipe's knobs.

Each rule is a pure function that returns a `Rule`: the knob values it sets and one
sentence naming the measurement behind them (written to the report). The detector is
the ``retinanet/demo`` recipe (tiny CNN, FPN, one anchor per location of side
``anchor_scale · stride``, ATSS); the rules move the data onto it rather than the
detector onto the data, as nnU-Net's rules set patch size and spacing from the
dataset's fingerprint (Isensee et al. 2021):

- **scale**: enlarge (or shrink) the images so the median object lands on the
  geometric centre of the anchor range (64 px for anchors 32–128 px);
- **crop**: train on random square crops when the scaled images are larger than
  a crop that holds the large objects (at least 2 × the scaled p95 object, 256–512 px);
- **levels**: a P2 level when over 10 % of the scaled objects are under half the
  smallest anchor, a P6 level when over 10 % are above twice the largest;
- **anchors**: k-means of the scaled boxes with distance 1 − IoU (YOLOv2's dimension
  clusters) gives the aspect ratio(s); a ratio other than 1 only when it raises the
  recall of the anchor shapes at IoU 0.5 by 0.05 or more; sizes stay on the strides;
- **assigner**: ATSS, with the share of boxes that max-IoU at 0.5 would leave without a
  positive anchor shape;
- **augmentations**: horizontal flips; vertical flips and quarter turns only for overhead
  imagery; Mosaic only at native scale on whole images with few objects per image that
  stay above half the smallest anchor when halved;
- **batch size**: a fixed number of input pixels per step for the device;
- **LR**: the LR finder's suggestion (fit.py: the min/10 rule × 2.5), kept within
  [base / 10, 5 · base];
- **schedule**: warmup + cosine sized to the training time left;
- **TTA**: flip test-time augmentation kept only if it raised the held-out metric; with
  no unseen image left to judge it, the flips the final model trained with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from tunedet.analysis.anchors import coverage, kmeans_wh, wh_iou
from tunedet.tuning.fingerprint import Fingerprint

MIN_FACTOR, MAX_FACTOR = 0.125, 4.0
MAX_IMAGE_SIDE = 2048  # the resize cap of the scaled images (training and evaluation)
CROP_MIN, CROP_MAX = 256, 512
LEVEL_SHARE = 0.10  # share of objects outside the anchor range that earns an extra level
RATIO_GAIN = 0.05  # recall gain at IoU 0.5 that earns non-square anchors
PIXELS_PER_STEP = {"cpu": 2**19, "cuda": 2**22}  # 8 × 256² on CPU, 64 × 256² on a GPU
MAX_BATCH = 64
TTA_GAIN = 0.005  # held-out metric gain that keeps flip TTA


@dataclass
class Rule:
    """One rule's outcome: the knobs it sets and the measurement behind them."""

    name: str
    knobs: dict[str, Any]
    reason: str


@dataclass
class DetectorGeometry:
    """What the rules need of the detector: its levels' strides and anchor side / stride.

    Level ``i`` of ``strides`` is the backbone's output ``out_indices[i]``."""

    strides: tuple[int, ...] = (8, 16, 32)
    out_indices: tuple[int, ...] = (2, 3, 4)
    anchor_scale: float = 4.0

    @property
    def anchor_sizes(self) -> tuple[float, ...]:
        return tuple(self.anchor_scale * s for s in self.strides)

    @property
    def target_size(self) -> float:
        """The geometric centre of the anchor range."""
        sizes = self.anchor_sizes
        return math.sqrt(sizes[0] * sizes[-1])


def round_factor(factor: float) -> float:
    """A scale factor on a readable grid: 1 within ±25 %, quarters above 1, the inverse
    of quarters below."""
    factor = min(max(factor, MIN_FACTOR), MAX_FACTOR)
    if 0.8 <= factor <= 1.25:
        return 1.0
    if factor > 1:
        return round(factor * 4) / 4
    return round(1 / (round(4 / factor) / 4), 4)


def scale_rule(fp: Fingerprint, geometry: DetectorGeometry) -> Rule:
    """The resize factor that enlarges the median object to the anchor range's centre, or
    shrinks it to the largest anchor when it is larger: shrinking discards pixels, so
    objects already inside the anchors' range keep them."""
    q = fp.size_quantiles()
    target = geometry.target_size
    wanted = target / q["p50"]
    if wanted < 1:
        wanted = min(1.0, geometry.anchor_sizes[-1] / q["p50"])
    factor = round_factor(wanted)
    long_side = float(np.median(fp.image_wh.max(axis=1)))
    capped = min(factor, MAX_IMAGE_SIDE / long_side)
    note = ""
    if capped < factor:
        note = f"; capped at {capped:.2f}× so the median image stays under {MAX_IMAGE_SIDE} px"
        factor = round(capped, 3)
    anchors = geometry.anchor_sizes
    head = (
        f"median object {q['p50']:g} px (p5 {q['p5']:g}, p95 {q['p95']:g}) against anchors "
        f"{anchors[0]:g}–{anchors[-1]:g} px (strides {_span(geometry.strides)})"
    )
    if factor == 1.0 and q["p50"] > target:
        why = (
            f"{head}: kept at native scale (the median object is inside the anchors' range; "
            "shrinking would only discard pixels)"
        )
    elif factor == 1.0:
        why = f"{head}: kept at native scale (the centre {target:g} px is within 25 %)"
    elif factor > 1:
        why = (
            f"{head}: enlarged {factor:g}× so the median object is "
            f"{q['p50'] * factor:.0f} px, near the range's centre {target:g} px{note}"
        )
    else:
        why = (
            f"{head}: shrunk {factor:g}× so the median object is {q['p50'] * factor:.0f} px, "
            f"inside the largest anchor {anchors[-1]:g} px{note}"
        )
    return Rule("scale", {"scale": factor}, why)


def crop_rule(fp: Fingerprint, scale: float) -> Rule:
    """Random square crops when the scaled images are larger than a crop that holds the
    large objects; else whole images."""
    long_side = float(np.median(fp.image_wh.max(axis=1))) * scale
    p95 = fp.size_quantiles(scale)["p95"]
    crop = int(min(max(32 * math.ceil(2 * p95 / 32), CROP_MIN), CROP_MAX))
    if long_side <= 1.25 * crop:
        why = (
            f"scaled images are {long_side:.0f} px (median longer side), within 1.25× of a "
            f"{crop}-px crop: trained whole"
        )
        return Rule("crop", {"crop": None}, why)
    why = (
        f"scaled images are {long_side:.0f} px (median longer side): trained as random "
        f"{crop}-px crops ({crop} ≥ 2 × the scaled p95 object {p95:.0f} px, "
        f"{CROP_MIN}–{CROP_MAX} px), so a step costs the same whatever the image size; "
        f"evaluated on whole scaled images (capped at {MAX_IMAGE_SIDE} px)"
    )
    return Rule("crop", {"crop": crop}, why)


def levels_rule(fp: Fingerprint, scale: float, geometry: DetectorGeometry) -> Rule:
    """P2 / P6 when over ``LEVEL_SHARE`` of the scaled objects fall outside the anchors."""
    sizes = fp.sizes * scale
    anchors = geometry.anchor_sizes
    small = float((sizes < anchors[0] / 2).mean())
    large = float((sizes > anchors[-1] * 2).mean())
    strides = list(geometry.strides)
    out_indices = list(geometry.out_indices)
    num_outs = len(strides)
    added = []
    if small > LEVEL_SHARE:
        strides.insert(0, strides[0] // 2)
        out_indices.insert(0, out_indices[0] - 1)
        num_outs += 1
        added.append(f"P2 (stride {strides[0]}, anchors {geometry.anchor_scale * strides[0]:g} px)")
    if large > LEVEL_SHARE:
        strides.append(strides[-1] * 2)
        num_outs += 1  # the FPN's extra level above the backbone's last output
        added.append(
            f"P6 (stride {strides[-1]}, anchors {geometry.anchor_scale * strides[-1]:g} px)"
        )
    head = (
        f"{small:.0%} of the scaled objects are under {anchors[0] / 2:g} px and {large:.0%} "
        f"over {anchors[-1] * 2:g} px (half the smallest, twice the largest anchor)"
    )
    if added:
        why = f"{head}: added {' and '.join(added)} (threshold {LEVEL_SHARE:.0%})"
    else:
        why = f"{head}: levels strides {_span(geometry.strides)} kept (threshold {LEVEL_SHARE:.0%})"
    knobs = {"strides": strides, "out_indices": out_indices, "num_outs": num_outs}
    return Rule("levels", knobs, why)


def anchor_shapes(strides: list[int], anchor_scale: float, ratios: list[float]) -> np.ndarray:
    """(L · R, 2) anchor (w, h) of every level and ratio (h / w)."""
    shapes = []
    for stride in strides:
        side = anchor_scale * stride
        for r in ratios:
            shapes.append((side / math.sqrt(r), side * math.sqrt(r)))
    return np.array(shapes, np.float64)


def anchors_rule(fp: Fingerprint, scale: float, strides: list[int], anchor_scale: float) -> Rule:
    """Aspect ratio(s) of the anchors from k-means (1 − IoU) of the scaled boxes."""
    wh = fp.box_wh * scale
    square = coverage(wh, anchor_shapes(strides, anchor_scale, [1.0]))
    k = min(len(strides), len(wh))
    centres = kmeans_wh(wh, k)
    ratio = round(float(np.exp(np.mean(np.log(centres[:, 1] / centres[:, 0])))), 3)
    fitted = coverage(wh, anchor_shapes(strides, anchor_scale, [ratio]))
    log_aspect = np.log(wh[:, 1] / wh[:, 0])
    three = [round(float(r), 3) for r in np.exp(np.quantile(log_aspect, [1 / 6, 0.5, 5 / 6]))]
    spread = coverage(wh, anchor_shapes(strides, anchor_scale, three))
    shown = ", ".join(f"{w:.0f}×{h:.0f}" for w, h in centres)
    head = (
        f"k-means (1 − IoU) centres of the scaled boxes {shown} px; recall at IoU 0.5 of "
        f"square anchors {square['recall']:.2f}, ratio {ratio:g} {fitted['recall']:.2f}, "
        f"ratios {', '.join(f'{r:g}' for r in three)} {spread['recall']:.2f}"
    )
    if spread["recall"] - max(square["recall"], fitted["recall"]) >= RATIO_GAIN:
        return Rule("anchors", {"ratios": three}, f"{head}: three ratios per location")
    if fitted["recall"] - square["recall"] >= RATIO_GAIN:
        return Rule("anchors", {"ratios": [ratio]}, f"{head}: ratio {ratio:g}")
    why = f"{head}: square anchors kept (a gain under {RATIO_GAIN}); sizes stay {anchor_scale:g} × stride"
    return Rule("anchors", {"ratios": [1.0]}, why)


def assigner_rule(
    fp: Fingerprint, scale: float, strides: list[int], anchor_scale: float, ratios: list[float]
) -> Rule:
    """ATSS, with the share of boxes whose best anchor shape has IoU under 0.5."""
    wh = fp.box_wh * scale
    best = wh_iou(wh, anchor_shapes(strides, anchor_scale, ratios)).max(axis=1)
    missed = float((best < 0.5).mean())
    why = (
        f"{missed:.0%} of the scaled boxes have no anchor shape at IoU ≥ 0.5, so max-IoU "
        "at 0.5 would give them only low-quality matches; ATSS (top 9 per level, IoU "
        "threshold mean + std of each object's candidates) gives every object positives"
    )
    return Rule("assigner", {"assigner": {"type": "atss", "topk": 9}}, why)


def augment_rule(fp: Fingerprint, scale: float, crop: int | None, budget_min: float) -> Rule:
    """The training augmentations that are valid for the data, and the flip TTA candidates."""
    transforms: list[dict[str, Any]] = [{"type": "hflip", "p": 0.5}]
    parts = ["horizontal flips (p 0.5)"]
    ov = fp.overhead
    if ov.overhead:
        transforms += [{"type": "vflip", "p": 0.5}, {"type": "rot90", "p": 0.5}]
        parts.append(f"vertical flips and quarter turns, as the imagery is overhead ({ov.basis})")
        tta = ["h", "v", "hv"]
    else:
        parts.append(f"no vertical flips or quarter turns: not overhead ({ov.basis})")
        tta = ["h"]
    per_image = float(np.median(fp.objects_per_image))
    p10 = float(np.quantile(fp.sizes * scale, 0.10)) if fp.num_boxes else 0.0
    sparse = per_image <= 3
    mosaic_ok = sparse and scale == 1.0 and crop is None and p10 / 2 >= 16
    mosaic = None
    if mosaic_ok:
        side = int(32 * round(float(np.median(fp.image_wh.max(axis=1))) / 32))
        mosaic = {"type": "mosaic", "size": max(side, 64), "p": 0.5}
        parts.append(
            f"Mosaic (p 0.5): median {per_image:g} objects per image, and the p10 object "
            f"({p10:.0f} px) stays ≥ 16 px when halved"
        )
    else:
        parts.append(
            f"no Mosaic (needs ≤ 3 objects per image, native scale, whole images and a p10 "
            f"object ≥ 32 px; here {per_image:g} per image, scale {scale:g}×, "
            f"{'crops' if crop else 'whole images'}, p10 {p10:.0f} px)"
        )
    if sparse and budget_min >= 60:
        transforms.append({"type": "mixup", "p": 0.5})
        parts.append("MixUp (p 0.5): few objects per image and a budget of an hour or more")
    else:
        parts.append("no MixUp (it pays on long schedules with few objects per image)")
    knobs = {"flips": transforms, "mosaic": mosaic, "tta_flips": tta}
    return Rule("augment", knobs, "; ".join(parts))


def input_pixels(fp: Fingerprint, scale: float, crop: int | None) -> float:
    """Pixels of one training input: the crop, or the median scaled image."""
    if crop is not None:
        return float(crop * crop)
    area = np.median(fp.image_wh[:, 0] * fp.image_wh[:, 1])
    return float(area * scale * scale)


def batch_rule(pixels: float, device: str, num_train: int) -> Rule:
    """The largest power of two with about ``PIXELS_PER_STEP[device]`` input pixels per step."""
    budget = PIXELS_PER_STEP["cuda" if device.startswith("cuda") else "cpu"]
    batch = 2 ** max(1, int(math.floor(math.log2(max(budget / pixels, 1)))))
    batch = min(batch, MAX_BATCH)
    most = 2 ** int(math.floor(math.log2(max(num_train, 2))))
    capped = min(batch, most)
    side = math.sqrt(pixels)
    why = (
        f"inputs of about {side:.0f}² px on {device}: {capped} per step "
        f"(≈ {budget / 2**20:g} Mpx per step"
        + (f"; capped by the {num_train} training images)" if capped < batch else ")")
    )
    return Rule("batch", {"batch_size": capped}, why)


def lr_rule(suggested: float | None, base_lr: float, detail: str) -> Rule:
    """The LR finder's suggestion, kept within [base / 10, 5 · base]."""
    if suggested is None or not math.isfinite(suggested):
        return Rule("lr", {"lr": base_lr}, f"{detail}: the base recipe's {base_lr:g} kept")
    lr = min(max(suggested, base_lr / 10), base_lr * 5)
    bounded = "" if lr == suggested else f", bounded to {lr:.3g} (base {base_lr:g} / 10 … × 5)"
    return Rule("lr", {"lr": float(f"{lr:.3g}")}, f"{detail}: suggested {suggested:.3g}{bounded}")


def schedule_rule(train_seconds: float, seconds_per_iter: float | None) -> Rule:
    """Warmup + cosine over the training time left, re-planned from the measured speed."""
    if seconds_per_iter:
        iters = max(1, int(train_seconds / seconds_per_iter))
        speed = f"≈ {iters} iterations at the measured {seconds_per_iter:.2f} s per iteration"
    else:
        iters = None
        speed = "the iteration count planned from the first iterations' speed"
    warmup = 100 if iters is None else max(5, min(100, iters // 20))
    why = (
        f"{train_seconds / 60:.1f} min left for the final training: linear warmup "
        f"({warmup} iterations) + cosine, sized to the time ({speed})"
    )
    knobs = {"max_minutes": round(train_seconds / 60, 3), "warmup_iters": warmup}
    return Rule("schedule", knobs, why)


def trained_flips_tta_rule(flips: list[str]) -> Rule:
    """Flip TTA with the flips the final model trained with, when no unseen images are
    left to judge it: the held-out ones trained the final model (on them it scores AP50
    0.90–1.00, so they no longer tell what TTA does on new images), and a search trial's
    short-trained weights misjudge it (on the developers' suite they called for TTA in 1
    of 10 fit runs, while the final models gained test AP from it in 8 of 9)."""
    return Rule(
        "tta",
        {"tta": {"flips": flips, "merge": "vote"}},
        f"flip TTA with the flips the final model trained with ({'/'.join(flips)}): no "
        "unseen images are left to judge it (the held-out ones trained the final model); "
        "on held-out test images it raised the final model's AP in 8 of 9 fit runs of the "
        f"developers' suite. It costs {len(flips) + 1}× the inference time; eval.tta=null "
        "turns it off",
    )


def tta_rule(metric: str, plain: float, with_tta: float, flips: list[str]) -> Rule:
    """Flip TTA only if it raised the held-out metric by ``TTA_GAIN``."""
    gain = with_tta - plain
    head = f"held-out {metric} {plain:.3f} single pass, {with_tta:.3f} with flips {'/'.join(flips)}"
    if gain >= TTA_GAIN:
        return Rule("tta", {"tta": {"flips": flips, "merge": "vote"}}, f"{head}: TTA kept")
    return Rule("tta", {"tta": None}, f"{head}: no TTA (a gain under {TTA_GAIN})")


def data_rules(
    fp: Fingerprint, geometry: DetectorGeometry, device: str, num_train: int, budget_min: float
) -> list[Rule]:
    """The rules that read the fingerprint alone, in order (each may read the ones before)."""
    scale = scale_rule(fp, geometry)
    factor = scale.knobs["scale"]
    crop = crop_rule(fp, factor)
    levels = levels_rule(fp, factor, geometry)
    strides = levels.knobs["strides"]
    anchors = anchors_rule(fp, factor, strides, geometry.anchor_scale)
    assigner = assigner_rule(fp, factor, strides, geometry.anchor_scale, anchors.knobs["ratios"])
    augment = augment_rule(fp, factor, crop.knobs["crop"], budget_min)
    pixels = input_pixels(fp, factor, crop.knobs["crop"])
    batch = batch_rule(pixels, device, num_train)
    return [scale, crop, levels, anchors, assigner, augment, batch]


def _span(values: Any) -> str:
    values = list(values)
    return f"{values[0]}–{values[-1]}" if len(values) > 1 else str(values[0])
