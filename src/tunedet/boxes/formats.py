"""Box formats and elementary box operations.

Convention (COCO, and tunedet's everywhere): boxes are floats in absolute
pixels with **no "+1"**: the box ``(10, 5, 20, 8)`` in ``xyxy`` is 10 px wide
and 3 px tall, and its area is 30. Formats:

- ``xyxy``: ``(x1, y1, x2, y2)`` top-left and bottom-right corners (the default,
  as in Detectron);
- ``xywh``: ``(x1, y1, w, h)`` top-left corner and size (COCO annotations);
- ``cxcywh``: ``(cx, cy, w, h)`` centre and size (YOLO, DETR).

Every function takes boxes of shape ``(..., 4)`` and works on any leading
dimensions.
"""

from __future__ import annotations

import torch
from torch import Tensor

BOX_FORMATS = ("xyxy", "xywh", "cxcywh")


def xyxy_to_xywh(boxes: Tensor) -> Tensor:
    """``boxes: (..., 4) xyxy`` → ``(..., 4) xywh``."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack((x1, y1, x2 - x1, y2 - y1), dim=-1)


def xywh_to_xyxy(boxes: Tensor) -> Tensor:
    """``boxes: (..., 4) xywh`` → ``(..., 4) xyxy``."""
    x1, y1, w, h = boxes.unbind(-1)
    return torch.stack((x1, y1, x1 + w, y1 + h), dim=-1)


def xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """``boxes: (..., 4) xyxy`` → ``(..., 4) cxcywh``."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack(((x1 + x2) * 0.5, (y1 + y2) * 0.5, x2 - x1, y2 - y1), dim=-1)


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """``boxes: (..., 4) cxcywh`` → ``(..., 4) xyxy``."""
    cx, cy, w, h = boxes.unbind(-1)
    half_w, half_h = w * 0.5, h * 0.5
    return torch.stack((cx - half_w, cy - half_h, cx + half_w, cy + half_h), dim=-1)


_TO_XYXY = {"xyxy": lambda b: b, "xywh": xywh_to_xyxy, "cxcywh": cxcywh_to_xyxy}
_FROM_XYXY = {"xyxy": lambda b: b, "xywh": xyxy_to_xywh, "cxcywh": xyxy_to_cxcywh}


def convert_boxes(boxes: Tensor, src: str, dst: str) -> Tensor:
    """Convert ``boxes: (..., 4)`` from format ``src`` to ``dst`` (``xyxy``, ``xywh``, ``cxcywh``)."""
    for fmt in (src, dst):
        if fmt not in BOX_FORMATS:
            raise ValueError(f"unknown box format '{fmt}' (choices: {', '.join(BOX_FORMATS)})")
    if src == dst:
        return boxes
    return _FROM_XYXY[dst](_TO_XYXY[src](boxes))


def box_area(boxes: Tensor) -> Tensor:
    """Area of ``boxes: (..., 4) xyxy`` → ``(...,)``; ``w * h`` with no +1 (may be negative for
    malformed boxes, zero for degenerate ones)."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def clip_boxes(boxes: Tensor, image_size: tuple[int, int] | Tensor) -> Tensor:
    """Clip ``boxes: (*B, N, 4) xyxy`` to ``[0, w] x [0, h]``.

    ``image_size`` is ``(h, w)`` (ints, shared by all boxes) or a tensor ``(*B, 2)`` of
    ``(h, w)`` per image, e.g. ``DetectionBatch.image_sizes (B, 2)`` for ``boxes (B, N, 4)``;
    it broadcasts over the box dimension ``N``.
    """
    if isinstance(image_size, Tensor):
        size = image_size.to(device=boxes.device, dtype=boxes.dtype)
        h, w = size[..., 0, None], size[..., 1, None]  # (*B, 1): broadcast over N
        x1, y1, x2, y2 = boxes.clamp(min=0).unbind(-1)
        return torch.stack(
            (
                torch.minimum(x1, w),
                torch.minimum(y1, h),
                torch.minimum(x2, w),
                torch.minimum(y2, h),
            ),
            dim=-1,
        )
    h, w = image_size
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack(
        (x1.clamp(0, w), y1.clamp(0, h), x2.clamp(0, w), y2.clamp(0, h)),
        dim=-1,
    )


def scale_boxes(boxes: Tensor, sx: float | Tensor, sy: float | Tensor) -> Tensor:
    """Scale ``boxes: (..., 4) xyxy`` by ``sx`` horizontally and ``sy`` vertically.

    ``sx``, ``sy`` are floats or tensors broadcastable to ``boxes[..., 0]`` (for a per-image
    factor with ``boxes (B, N, 4)`` pass ``(B, 1)``). Resizing an image by ``s`` maps its boxes
    with ``scale_boxes(boxes, s, s)``.
    """
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack((x1 * sx, y1 * sy, x2 * sx, y2 * sy), dim=-1)
