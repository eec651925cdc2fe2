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
    colour: tuple[int, int, int] | None = None,
) -> Image.Image:
    """Return a copy of ``image`` with xyxy ``boxes`` drawn, coloured by label.

    With ``colour`` every box takes that colour and no text is written (e.g.
    ground truth under predictions); otherwise each box is labelled with its
    class name (or label) and score.
    """
    canvas = (
        Image.fromarray(np.asarray(image)).convert("RGB")
        if not isinstance(image, Image.Image)
        else image.convert("RGB")
    )
    draw = ImageDraw.Draw(canvas)
    for i, box in enumerate(boxes):
        label = int(labels[i]) if labels is not None else 0
        x0, y0, x1, y1 = (float(v) for v in box)
        if colour is not None:
            draw.rectangle([x0, y0, x1, y1], outline=colour, width=width)
            continue
        box_colour = PALETTE[label % len(PALETTE)]
        draw.rectangle([x0, y0, x1, y1], outline=box_colour, width=width)
        name = classes[label] if classes is not None and label < len(classes) else str(label)
        text = name if scores is None else f"{name} {float(scores[i]):.2f}"
        left, top, right, bottom = draw.textbbox((x0 + 2, max(0.0, y0 - 11)), text)
        draw.rectangle([left - 1, top - 1, right + 1, bottom + 1], fill=(0, 0, 0))
        draw.text((x0 + 2, max(0.0, y0 - 11)), text, fill=box_colour)
    return canvas


def overlay_masks(
    image: Image.Image,
    masks: np.ndarray,
    labels: Sequence[int],
    alpha: float = 0.45,
) -> Image.Image:
    """Return a copy of ``image`` with each boolean ``masks[k] (H, W)`` (the image's size)
    blended in its label's colour: ``pixel ← (1 − alpha)·pixel + alpha·colour``."""
    pixels = np.asarray(image.convert("RGB")).astype(np.float32)
    for mask, label in zip(masks, labels, strict=True):
        colour = np.asarray(PALETTE[int(label) % len(PALETTE)], np.float32)
        pixels[mask] = (1 - alpha) * pixels[mask] + alpha * colour
    return Image.fromarray(pixels.round().astype(np.uint8))
