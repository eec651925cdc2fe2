"""FCOS (Tian et al., 2019): points inside a GT (or near its centre) learn it, one level each."""

from __future__ import annotations

import math
from typing import Annotated

import torch
from pydantic import Field
from torch import Tensor

from tunedet.assigners.anchor_grid import anchor_strides
from tunedet.assigners.base import AssignResult, all_background, check_levels
from tunedet.assigners.overlaps import aligned_anchor_iou, chunk_size, summarise_iou
from tunedet.config.registry import register


@register("assigner", "fcos")
class FCOSAssigner:
    """Point assignment: the points are the anchors' centres (anchor shapes are unused).

    A point is a candidate for a GT when
    1. it lies strictly inside the GT or, with ``center_sampling``, strictly inside the
       square of half-side ``center_radius`` · stride around the GT centre, clipped to
       the GT (FCOS's improved version); and
    2. its level's scale range holds ``max(l, t, r, b)``, the largest distance from the
       point to the GT's edges: level i takes ``scale_ranges[i] ≤ max ≤ scale_ranges[i+1]``
       (paper: 0, 64, 128, 256, 512, ∞ for P3–P7; one more boundary than levels).
    A point that is a candidate for several GTs takes the one of smallest area (first on
    ties). Everything else is background; FCOS ignores nothing. Strides are read back
    from the anchor grid (``anchor_grid``).
    """

    def __init__(
        self,
        scale_ranges: tuple[float, ...] = (0.0, 64.0, 128.0, 256.0, 512.0, math.inf),
        center_sampling: bool = True,
        center_radius: Annotated[float, Field(gt=0)] = 1.5,
    ):
        if len(scale_ranges) < 2 or any(
            lo > hi for lo, hi in zip(scale_ranges, scale_ranges[1:], strict=False)
        ):
            raise ValueError(
                f"scale_ranges must be at least two non-decreasing boundaries, got {scale_ranges}"
            )
        self.scale_ranges = tuple(float(v) for v in scale_ranges)
        self.center_sampling = center_sampling
        self.center_radius = center_radius

    @property
    def num_levels(self) -> int:
        return len(self.scale_ranges) - 1

    def assign(
        self,
        anchors: Tensor,
        num_anchors_per_level: list[int],
        gt_boxes: Tensor,
        gt_labels: Tensor,
    ) -> AssignResult:
        """anchors: (A, 4) xyxy on per-level grids (their centres are the points);
        gt_boxes: (B, M, 4) xyxy; gt_labels: (B, M), -1 = padding."""
        check_levels(anchors, num_anchors_per_level)
        if len(num_anchors_per_level) != self.num_levels:
            raise ValueError(
                f"fcos scale_ranges {self.scale_ranges} define {self.num_levels} levels, "
                f"the anchors have {len(num_anchors_per_level)}"
            )
        num_images, num_gt = gt_labels.shape
        num_anchors = anchors.shape[0]
        if num_gt == 0:
            return all_background(num_images, num_anchors, anchors)
        gt_boxes = gt_boxes.to(anchors)
        valid = gt_labels >= 0
        points = (anchors[:, :2] + anchors[:, 2:]) / 2  # (A, 2)
        strides = anchor_strides(anchors, num_anchors_per_level)
        bounds = torch.tensor(self.scale_ranges, dtype=anchors.dtype, device=anchors.device)
        level = torch.arange(self.num_levels, device=anchors.device)
        level = level.repeat_interleave(torch.tensor(num_anchors_per_level, device=level.device))
        low, high = bounds[level], bounds[level + 1]

        # with the GT's centre (cx, cy) and half-size (hw, hh), and dx = |px − cx|:
        # inside ⟺ dx < hw and dy < hh; max(l, t, r, b) = max(dx + hw, dy + hh); the
        # centre region clipped to the GT ⟺ dx < min(hw, radius) and dy < min(hh, radius)
        x1, y1, x2, y2 = (t[..., None] for t in gt_boxes.unbind(-1))  # (B, M, 1)
        centre_x, centre_y = (x1 + x2) / 2, (y1 + y2) / 2
        half_w, half_h = (x2 - x1) / 2, (y2 - y1) / 2
        area = ((x2 - x1) * (y2 - y1)).masked_fill(~valid[..., None], math.inf)
        chunk = chunk_size(num_images, num_gt, num_anchors, anchors.device)
        best_area, best_gt = [], []
        for start in range(0, num_anchors, chunk):
            end = start + chunk
            dx = (points[start:end, 0] - centre_x).abs_()  # (B, M, c)
            dy = (points[start:end, 1] - centre_y).abs_()
            reach = torch.maximum(dx + half_w, dy + half_h)
            candidate = (reach >= low[start:end]) & (reach <= high[start:end])
            if self.center_sampling:
                radius = self.center_radius * strides[start:end]
                candidate &= dx < torch.minimum(half_w, radius)
                candidate &= dy < torch.minimum(half_h, radius)
            else:
                candidate &= (dx < half_w) & (dy < half_h)
            value, index = torch.where(candidate, area, math.inf).min(dim=1)  # (B, c)
            best_area.append(value)
            best_gt.append(index)
        best_area, best_gt = torch.cat(best_area, dim=1), torch.cat(best_gt, dim=1)
        matched = torch.where(torch.isfinite(best_area), best_gt + 1, 0)

        matched_boxes = gt_boxes.gather(1, best_gt[..., None].expand(-1, -1, 4))
        matched_iou = aligned_anchor_iou(matched_boxes, anchors.expand_as(matched_boxes))
        best_iou = summarise_iou(anchors, gt_boxes, valid).best_iou.clamp(min=0)
        return AssignResult(matched, torch.where(matched > 0, matched_iou, best_iou))
