"""Draw boxes on images (PIL), for inference outputs and reports."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

PALETTE = [
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
]  # fmt: skip


def draw_detections(
    image: np.ndarray | Image.Image,
    boxes: Sequence[Sequence[float]],
    scores: Sequence[float] | None = None,
    labels: Sequence[int] | None = None,
    classes: Sequence[str] | None = None,
    width: int = 2,
) -> Image.Image:
    """Return a copy of ``image`` with xyxy ``boxes`` drawn, coloured by label."""
    canvas = (
        Image.fromarray(np.asarray(image)).convert("RGB")
        if not isinstance(image, Image.Image)
        else image.convert("RGB")
    )
    draw = ImageDraw.Draw(canvas)
    for i, box in enumerate(boxes):
        label = int(labels[i]) if labels is not None else 0
        colour = PALETTE[label % len(PALETTE)]
        x0, y0, x1, y1 = (float(v) for v in box)
        draw.rectangle([x0, y0, x1, y1], outline=colour, width=width)
        name = classes[label] if classes is not None and label < len(classes) else str(label)
        text = name if scores is None else f"{name} {float(scores[i]):.2f}"
        draw.text((x0 + 2, max(0.0, y0 - 10)), text, fill=colour)
    return canvas
