"""Properties every registered transform keeps (hypothesis), and p = 0 is the identity.

Samples carry masks whose pixel value is ``label + 1`` (inside the box), so one
check proves boxes, labels and masks stay aligned: every non-empty mask lies
inside its box and holds only its own label's value.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunedet.config.registry import REGISTRIES, build
from tunedet.config.schema import component_model
from tunedet.data import (
    RICAP,
    CopyPaste,
    CutMix,
    Cutout,
    Expand,
    MinBoxArea,
    MinIoURandomCrop,
    MixUp,
    Mosaic,
    MultiScaleResize,
    Pad,
    PhotometricDistortion,
    RandomCrop,
    RandomErasing,
    RandomHorizontalFlip,
    RandomRotate90,
    RandomVerticalFlip,
    Resize,
)


def random_sample(seed: int, masks: bool, image_id: int = 1, label_base: int = 0) -> dict:
    """An image of 16..64 px per side with 0..5 boxes of >= 2 px (labels are unique ids)."""
    rng = np.random.default_rng(seed)
    height, width = (int(v) for v in rng.integers(16, 65, 2))
    n = int(rng.integers(0, 6))
    x0 = rng.integers(0, width - 2, n)
    y0 = rng.integers(0, height - 2, n)
    x1 = x0 + 2 + rng.integers(0, width - x0 - 1, n)
    y1 = y0 + 2 + rng.integers(0, height - y0 - 1, n)
    boxes = np.stack([x0, y0, np.minimum(x1, width), np.minimum(y1, height)], 1).astype(np.float32)
    labels = np.arange(label_base, label_base + n, dtype=np.int64)
    sample = {
        "image": rng.integers(0, 256, (height, width, 3), dtype=np.uint8),
        "boxes": boxes.reshape(-1, 4),
        "labels": labels,
        "image_id": image_id,
        "file": f"{image_id}.png",
        "orig_size": (height, width),
        "scale": 1.0,
    }
    if masks:
        m = np.zeros((n, height, width), np.uint8)
        for k, (a, b, c, d) in enumerate(boxes.astype(int)):
            m[k, b:d, a:c] = labels[k] + 1
        sample["masks"] = m
    return sample


def with_context(sample: dict, seed: int, masks: bool) -> dict:
    pool = [random_sample(seed + 1 + k, masks, 100 + k, 10 * (k + 1)) for k in range(3)]
    return {**sample, "_fetch": lambda i: dict(pool[i]), "_num_samples": len(pool)}


SPECS = [
    (RandomHorizontalFlip, {"p": 1.0}),
    (RandomVerticalFlip, {"p": 1.0}),
    (RandomRotate90, {"p": 1.0}),
    (RandomCrop, {"p": 1.0, "size": 24}),
    (Resize, {"size": 40}),
    (Resize, {"size": 24, "mode": "shorter", "max_size": 50}),
    (MultiScaleResize, {"sizes": (24, 48)}),
    (MinIoURandomCrop, {"p": 1.0, "min_ious": (0.1, 0.3, 0.5), "min_size": 1.0}),
    (Expand, {"p": 1.0, "ratio_range": (1.0, 2.5)}),
    (PhotometricDistortion, {"p": 1.0}),
    (Cutout, {"p": 1.0, "n_holes": 2}),
    (RandomErasing, {"p": 1.0}),
    (Mosaic, {"p": 1.0, "size": 64}),
    (MixUp, {"p": 1.0}),
    (CopyPaste, {"p": 1.0, "max_objects": 3}),
    (RICAP, {"p": 1.0, "size": 48}),
    (CutMix, {"p": 1.0}),
    (MinBoxArea, {"min_area": 30.0}),
    (Pad, {"size_divisor": 32}),
]
TRANSFORMS = [cls(**kwargs) for cls, kwargs in SPECS]
IDS = [f"{cls.__name__}{i}" for i, (cls, _) in enumerate(SPECS)]
OFF = [cls(**{**kwargs, "p": 0.0}) for cls, kwargs in SPECS if "p" in kwargs]


def test_every_registered_transform_is_covered_here():
    covered = {type(t) for t in TRANSFORMS}
    registered = {REGISTRIES["transform"].get(n).target for n in REGISTRIES["transform"].names()}
    assert registered - covered == {REGISTRIES["transform"].get("normalize").target}


def check_sample(out: dict, masks: bool, unique_ids: bool = True) -> None:
    image = out["image"]
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    height, width = image.shape[:2]
    boxes, labels = out["boxes"], out["labels"]
    assert boxes.dtype == np.float32 and boxes.shape == (len(labels), 4)
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    if unique_ids:  # (mosaic may draw the same other image twice)
        assert len(np.unique(labels)) == len(labels)
    if masks:
        m = out["masks"]
        assert m.shape == (len(labels), height, width) and m.dtype == np.uint8
        for k in range(len(labels)):
            on = m[k] > 0
            if not on.any():
                continue
            assert set(np.unique(m[k][on]).tolist()) == {int(labels[k]) + 1}
            rows, cols = np.flatnonzero(on.any(1)), np.flatnonzero(on.any(0))
            x0, y0, x1, y1 = boxes[k]
            assert cols[0] >= x0 - 1 and cols[-1] + 1 <= x1 + 1
            assert rows[0] >= y0 - 1 and rows[-1] + 1 <= y1 + 1
    else:
        assert "masks" not in out


@pytest.mark.parametrize("transform", TRANSFORMS, ids=IDS)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1), masks=st.booleans())
def test_boxes_stay_inside_with_positive_area_and_aligned_labels_and_masks(transform, seed, masks):
    sample = with_context(random_sample(seed, masks), seed, masks)
    out = transform(sample, np.random.default_rng(seed))
    check_sample(out, masks, unique_ids=not isinstance(transform, (Mosaic, RICAP)))
    for key in ("image", "boxes", "labels"):  # the input is not modified
        assert np.array_equal(sample[key], random_sample(seed, masks)[key])


@pytest.mark.parametrize("transform", TRANSFORMS, ids=IDS)
@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), masks=st.booleans())
def test_seeded_runs_are_reproducible(transform, seed, masks):
    sample = with_context(random_sample(seed, masks), seed, masks)
    a = transform(sample, np.random.default_rng(seed))
    b = transform(sample, np.random.default_rng(seed))
    assert a.keys() == b.keys()
    for key in ("image", "boxes", "labels", "masks"):
        if key in a:
            assert np.array_equal(a[key], b[key])


@pytest.mark.parametrize("transform", OFF, ids=lambda t: type(t).__name__)
@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), masks=st.booleans())
def test_probability_zero_is_the_identity(transform, seed, masks):
    sample = with_context(random_sample(seed, masks), seed, masks)
    assert transform(sample, np.random.default_rng(seed)) is sample


@pytest.mark.parametrize(
    "spec",
    [
        {"type": "min_iou_crop", "p": 0.3},
        {"type": "rot90", "p": 0.7},
        {"type": "random_crop", "size": 20, "min_visible": 0.3},
        {"type": "expand", "ratio_range": [1.0, 2.0]},
        {"type": "photometric", "hue": 0.0},
        {"type": "cutout", "n_holes": 3, "size": 0.1},
        {"type": "random_erasing", "value": 0},
        {"type": "mosaic", "size": 96},
        {"type": "mixup", "alpha": 8.0},
        {"type": "copy_paste", "max_objects": 2},
        {"type": "ricap", "size": 64},
        {"type": "cutmix", "alpha": 2.0},
        {"type": "pad", "size_divisor": 16},
        {"type": "multi_scale", "size_range": [32, 96], "step": 32},
        {"type": "resize", "size": 64, "mode": "shorter", "max_size": 100},
        {"type": "resize", "factor": 1.5},
    ],
)
def test_transforms_build_from_config_specs(spec):
    transform = build("transform", component_model("transform", spec["type"])(**spec))
    out = transform(with_context(random_sample(3, True), 3, True), np.random.default_rng(0))
    check_sample(out, True, unique_ids=spec["type"] not in ("mosaic", "ricap"))
