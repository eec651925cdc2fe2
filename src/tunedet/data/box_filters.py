"""Transforms that drop boxes by a rule on the boxes alone."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from pydantic import Field

from tunedet.config.registry import register
from tunedet.data.transforms import keep_boxes


@register("transform", "min_box_area")
class MinBoxArea:
    """Drop the boxes whose area ``(x2 − x1)·(y2 − y1)`` is below ``min_area`` px², with
    their labels and masks: Detectron's ``TRAIN.GT_MIN_AREA`` when first in
    ``data.train_transforms`` (areas in the original image's pixels)."""

    def __init__(self, min_area: Annotated[float, Field(ge=0)]) -> None:
        self.min_area = min_area

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        boxes = np.asarray(sample["boxes"], np.float32).reshape(-1, 4)
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        return keep_boxes({**sample, "boxes": boxes}, area >= self.min_area)
