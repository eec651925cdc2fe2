"""YOLO assignment: only the anchors of the grid cell holding a GT's centre may learn it."""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import Tensor

from tunedet.assigners.anchor_grid import cell_anchor_indices, level_grids
from tunedet.assigners.base import AssignResult, all_background, check_levels
from tunedet.assigners.overlaps import aligned_anchor_iou, summarise_iou
from tunedet.config.registry import register

Fraction = Annotated[float, Field(ge=0, le=1)]


@register("assigner", "grid")
class GridAssigner:
    """The cell holding the GT centre (on every level) is *responsible* for the GT.

    Cells are read back from the anchors (``anchor_grid``): cell (i, j) of a level covers
    ``[x0 + j·s, x0 + (j + 1)·s)`` (half-open: a centre on a border belongs to the cell to
    its right / below). Anchors must be centred on their cells (anchor generator
    ``center_offset: 0.5``). Two modes:

    ``max_iou`` (YOLOv2 / mmdetection's grid assigner): max-IoU restricted to responsible
    anchors. Anchors whose best IoU with any GT is below ``neg_iou_thr`` are background,
    the rest ignored (-1); a responsible anchor with IoU ≥ ``pos_iou_thr`` takes the GT
    (several GTs: the highest IoU, then the lower index); each GT then takes its best
    responsible anchor(s) (all ties with ``gt_max_assign_all``) if that IoU is ≥
    ``min_pos_iou`` and > 0, the last GT winning a shared one.

    ``yolov3`` (Redmon & Farhadi, 2018): each GT gets exactly one anchor, the responsible
    anchor (over all levels) whose shape best matches the GT's, compared by IoU with the
    centres aligned (first on ties); a later GT takes over an anchor an earlier GT chose.
    Every other anchor whose IoU with some GT is ≥ ``neg_iou_thr`` is ignored (-1): it
    gets no objectness loss. Darknet applies that threshold to the predicted boxes; here
    it applies to the anchors, so it does not change during training.
    ``pos_iou_thr``, ``min_pos_iou`` and ``gt_max_assign_all`` do not apply to it.

    A GT whose centre lies outside every level's grid gets no anchor.
    """

    def __init__(
        self,
        mode: Literal["max_iou", "yolov3"] = "max_iou",
        pos_iou_thr: Fraction = 0.5,
        neg_iou_thr: Fraction = 0.5,
        min_pos_iou: Fraction = 0.0,
        gt_max_assign_all: bool = True,
    ):
        if neg_iou_thr > pos_iou_thr:
            raise ValueError(f"neg_iou_thr {neg_iou_thr} is above pos_iou_thr {pos_iou_thr}")
        self.mode = mode
        self.pos_iou_thr = pos_iou_thr
        self.neg_iou_thr = neg_iou_thr
        self.min_pos_iou = min_pos_iou
        self.gt_max_assign_all = gt_max_assign_all

    def assign(
        self,
        anchors: Tensor,
        num_anchors_per_level: list[int],
        gt_boxes: Tensor,
        gt_labels: Tensor,
    ) -> AssignResult:
        """anchors: (A, 4) xyxy on per-level grids in (y, x, anchor) order, levels in the
        order of ``num_anchors_per_level``; gt_boxes: (B, M, 4) xyxy; gt_labels: (B, M)."""
        check_levels(anchors, num_anchors_per_level)
        num_images, num_gt = gt_labels.shape
        num_anchors = anchors.shape[0]
        if num_gt == 0:
            return all_background(num_images, num_anchors, anchors)
        gt_boxes = gt_boxes.to(anchors)
        valid = gt_labels >= 0
        summary = summarise_iou(anchors, gt_boxes, valid)
        best_iou = summary.best_iou

        grids = level_grids(anchors, num_anchors_per_level)
        centres = (gt_boxes[..., :2] + gt_boxes[..., 2:]) / 2
        candidates, responsible = cell_anchor_indices(grids, centres)  # (B, M, Q)
        responsible &= valid[..., None]
        candidate_iou = aligned_anchor_iou(gt_boxes[:, :, None, :], anchors[candidates])
        candidate_iou = candidate_iou.masked_fill(~responsible, -1.0)
        image = torch.arange(num_images, device=anchors.device)[:, None, None]
        slot = (image * num_anchors + candidates).flatten()  # (B·M·Q,) into (B·A,)
        gt_code = torch.arange(1, num_gt + 1, device=anchors.device)[None, :, None]
        gt_code = gt_code.expand_as(candidates).flatten()

        if self.mode == "yolov3":
            matched = torch.where(best_iou >= self.neg_iou_thr, -1, 0)
            shape_iou = _centred_iou(gt_boxes[:, :, None, :], anchors[candidates])
            shape_iou = shape_iou.masked_fill(~responsible, -1.0)
            best_shape, chosen = shape_iou.max(dim=2)  # (B, M)
            has_anchor = best_shape >= 0
            chosen_slot = slot.view(num_images, num_gt, -1).gather(2, chosen[..., None])[..., 0]
            codes = torch.zeros(num_images * num_anchors, dtype=torch.long, device=anchors.device)
            gt_numbers = gt_code.view(num_images, num_gt, -1)[..., 0]
            codes.scatter_reduce_(0, chosen_slot[has_anchor], gt_numbers[has_anchor], reduce="amax")
            claimer = codes.view(num_images, num_anchors)
        else:
            matched = torch.where(best_iou < self.neg_iou_thr, 0, -1)
            flat_iou = candidate_iou.flatten()
            positive = flat_iou >= self.pos_iou_thr
            top = torch.full((num_images * num_anchors,), -1.0, device=anchors.device)
            top = top.to(flat_iou.dtype).scatter_reduce(
                0, slot[positive], flat_iou[positive], reduce="amax"
            )
            winner = positive & (flat_iou == top[slot])
            first_gt = torch.full_like(top, num_gt + 1, dtype=torch.long)
            first_gt.scatter_reduce_(0, slot[winner], gt_code[winner], reduce="amin")
            first_gt = first_gt.view(num_images, num_anchors)
            matched = torch.where(first_gt <= num_gt, first_gt, matched)

            gt_best, gt_first = candidate_iou.max(dim=2)  # (B, M) over responsible anchors
            eligible = (gt_best >= self.min_pos_iou) & (gt_best > 0)
            if self.gt_max_assign_all:
                claims = candidate_iou == gt_best[..., None]
            else:
                claims = torch.zeros_like(candidate_iou, dtype=torch.bool)
                claims.scatter_(2, gt_first[..., None], True)
            claims = (claims & eligible[..., None] & responsible).flatten()
            codes = torch.zeros(num_images * num_anchors, dtype=torch.long, device=anchors.device)
            codes.scatter_reduce_(0, slot[claims], gt_code[claims], reduce="amax")
            claimer = codes.view(num_images, num_anchors)

        matched = torch.where(claimer > 0, claimer, matched)
        gt_index = (matched - 1).clamp(min=0)
        matched_boxes = gt_boxes.gather(1, gt_index[..., None].expand(-1, -1, 4))
        matched_iou = aligned_anchor_iou(matched_boxes, anchors.expand_as(matched_boxes))
        max_iou = torch.where(matched > 0, matched_iou, best_iou.clamp(min=0))
        return AssignResult(matched, max_iou)


def _centred_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of the boxes' shapes with their centres aligned: ``(..., 4), (..., 4) -> (...)``."""
    wa, ha = a[..., 2] - a[..., 0], a[..., 3] - a[..., 1]
    wb, hb = b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]
    inter = torch.minimum(wa, wb).clamp(min=0) * torch.minimum(ha, hb).clamp(min=0)
    return inter / (wa * ha + wb * hb - inter).clamp(min=1e-7)
