"""YOLOv3's box-loss weight ``2 − w·h``: small boxes weigh up to twice as much.

An absolute coordinate error costs a small box far more IoU than a large one; YOLOv3
(Darknet's ``delta_yolo_box``) scales each GT's box-regression loss by
``2 − w·h`` with ``w, h`` the GT's size as fractions of the image, so the weight
runs from 2 (a point) down to 1 (a box covering the whole image).
"""

from __future__ import annotations

from torch import Tensor


def yolo_box_weight(boxes: Tensor, image_size: tuple[float, float] | Tensor) -> Tensor:
    """``boxes (..., 4)`` xyxy px → weights ``(...)`` = ``2 − (w / W)·(h / H)``.

    ``image_size``: ``(H, W)`` for all boxes, or a tensor ``(..., 2)`` of ``(h, w)``
    broadcasting against ``boxes[..., 0]`` (e.g. ``image_sizes[:, None]`` for
    ``boxes (B, M, 4)``). Sizes are clamped to ``[0, 1]`` of the image.
    """
    if isinstance(image_size, Tensor):
        size = image_size.to(boxes.dtype)
        height, width = size[..., 0], size[..., 1]
    else:
        height, width = float(image_size[0]), float(image_size[1])
    w = ((boxes[..., 2] - boxes[..., 0]) / width).clamp(0, 1)
    h = ((boxes[..., 3] - boxes[..., 1]) / height).clamp(0, 1)
    return 2 - w * h
