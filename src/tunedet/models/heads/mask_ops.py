"""Mask R-CNN's two mask resamplings: GT masks into RoIs (training targets) and predicted
RoI masks back into the image (inference). Both are vectorised over RoIs."""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import roi_align


def mask_targets(
    gt_masks: Tensor, rois: Tensor, gt_index: Tensor, size: int, aligned: bool = False
) -> Tensor:
    """RoIAlign of each RoI's GT mask to ``size × size`` (He et al., 2017, the 28×28 targets).

    gt_masks: (B, M, H, W) {0, 1} (uint8 or float), the padded batch's masks;
    rois: (P, 5) ``[batch_index, x1, y1, x2, y2]`` px; gt_index: (P,) long, each RoI's
    GT in ``0..M-1``. Returns (P, size, size) float in [0, 1], the fraction of the mask in
    each cell (adaptive sampling ratio). ``aligned=False`` is torchvision's
    ``project_masks_on_boxes``; ``aligned=True`` shifts the RoI by −0.5 px (pixel ``i``
    covers ``[i, i + 1)``, Detectron2's ``BitMasks.crop_and_resize``).

    Only the masks some RoI uses are converted to float (one ``roi_align`` over them).
    """
    if rois.shape[0] == 0:
        return rois.new_zeros(0, size, size)
    flat_index = rois[:, 0].long() * gt_masks.shape[1] + gt_index.long()
    used, slot = torch.unique(flat_index, return_inverse=True)
    masks = gt_masks.flatten(0, 1)[used][:, None].to(rois.dtype)  # (U, 1, H, W)
    boxes = torch.cat([slot[:, None].to(rois.dtype), rois[:, 1:]], dim=1)
    return roi_align(masks, boxes, (size, size), spatial_scale=1.0, aligned=aligned)[:, 0]


def paste_masks(probs: Tensor, boxes: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Paste each ``S × S`` RoI mask into its box of an ``h × w`` image.

    probs: (K, S, S) in [0, 1]; boxes: (K, 4) xyxy px; image_size: (h, w). Returns (K, h, w)
    float32. The mask covers its box exactly (cell ``j`` spans ``[x1 + j·bw/S, x1 +
    (j+1)·bw/S)``); pixel ``x`` with centre ``c = x + 0.5`` inside ``[x1, x2)`` (and
    likewise in y) gets the bilinear value at mask coordinate ``u = (c − x1)·S/bw − 0.5``
    clamped to ``[0, S − 1]`` (``grid_sample(..., align_corners=False,
    padding_mode="border")``); pixels outside the box get 0. So a mask of ones pastes to
    exactly the pixels whose centres lie in the box.

    Bilinear sampling on a grid that is separable per box is two matrix products:
    ``out_k = Wy_k · probs_k · Wx_kᵀ`` with tent weights ``max(0, 1 − |u − j|)``, so no
    per-pixel sampling grid is built.
    """
    height, width = int(image_size[0]), int(image_size[1])
    probs = probs.float()
    boxes = boxes.to(probs)
    x1, y1, x2, y2 = boxes.unbind(dim=1)
    weights_x = _interpolation_weights(x1, x2, width, probs.shape[2])  # (K, w, S)
    weights_y = _interpolation_weights(y1, y2, height, probs.shape[1])  # (K, h, S)
    return weights_y @ probs @ weights_x.transpose(1, 2)


def _interpolation_weights(start: Tensor, end: Tensor, length: int, cells: int) -> Tensor:
    """(K, length, cells) bilinear weights of each pixel centre on the mask cells of the
    span ``[start, end)`` (K,), clamped at the border cells; rows of pixels whose centre
    is outside the span are zero."""
    centres = torch.arange(length, device=start.device, dtype=start.dtype) + 0.5
    span = (end - start).clamp(min=torch.finfo(start.dtype).eps)
    u = (centres[None] - start[:, None]) * (cells / span[:, None]) - 0.5  # (K, length)
    u = u.clamp(0, cells - 1)
    cell = torch.arange(cells, device=start.device, dtype=start.dtype)
    weights = (1 - (u[..., None] - cell).abs()).clamp(min=0)
    inside = (centres[None] >= start[:, None]) & (centres[None] < end[:, None])
    return weights * inside[..., None]
