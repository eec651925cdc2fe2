"""FSAF (Zhu, He & Savvides, 2019): anchor-free branches on every FPN level, and each
instance trained on the level where those branches do best (online feature selection).

The anchor-free branch of each level (a RetinaNet head with one point per location)
predicts per class a sigmoid score and, per point, the distances ``(l, t, r, b)`` to the
box edges divided by ``box_normalizer · stride`` (S = 4 in the paper), ReLU'd. For a GT
box, a level's *effective region* is the box shrunk around its centre to
``effective_ratio`` (ε_e = 0.2) of its width and height (at least the point whose cell
holds the centre), its *ignoring region* the box shrunk to ``ignore_ratio`` (ε_i = 0.5).

Online feature selection: for every instance and level, the focal loss of the level's
effective-region points (all classes, the GT's class as target) plus their IoU loss,
each averaged over those points; the instance is assigned to the level with the smallest
sum. There its effective-region points are positives (a point in several effective
regions takes the smallest box), its ignoring region is ignored by the classifier, and so
is the ignoring region on the two adjacent levels; every other point is a negative.

Losses: ``cls_loss`` (focal) summed over non-ignored points, ``box_loss`` (IoU) over the
positives, both divided by the positives (× ``box_loss_weight``). This is the
anchor-free-only FSAF (the paper's 35.9 AP row; mmdetection's FSAF); the anchor-based
branches of the combined model are RetinaNet's.
"""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field
from torch import Tensor, nn

from tunedet.config.registry import register
from tunedet.losses.rank_mean import mean_count_over_ranks
from tunedet.models.detectors.yolov3 import DecodedBoxes
from tunedet.models.layers import output_conv
from tunedet.models.postprocess import postprocess_detections

Fraction = Annotated[float, Field(ge=0, le=1)]


def region_masks(points: Tensor, gt_boxes: Tensor, ratio: float, strides: Tensor) -> Tensor:
    """points (A, 2) (x, y); gt_boxes (B, M, 4) xyxy; strides (A,) → (B, M, A): the point
    lies in the box shrunk around its centre to ``ratio`` of its size, or is the point of
    its level whose cell (side ``stride``, centred on the point) holds the box centre."""
    cx = (gt_boxes[..., 0] + gt_boxes[..., 2]) / 2
    cy = (gt_boxes[..., 1] + gt_boxes[..., 3]) / 2
    half_w = (gt_boxes[..., 2] - gt_boxes[..., 0]) * ratio / 2
    half_h = (gt_boxes[..., 3] - gt_boxes[..., 1]) * ratio / 2
    dx = (points[:, 0] - cx[..., None]).abs()  # (B, M, A)
    dy = (points[:, 1] - cy[..., None]).abs()
    inside = (dx <= half_w[..., None]) & (dy <= half_h[..., None])
    half_cell = strides / 2
    centre_cell = (dx < half_cell) | ((dx == half_cell) & (points[:, 0] > cx[..., None]))
    centre_cell &= (dy < half_cell) | ((dy == half_cell) & (points[:, 1] > cy[..., None]))
    return inside | centre_cell


@register(
    "detector",
    "fsaf",
    injected=("backbone", "neck", "head", "anchor_generator", "cls_loss", "box_loss"),
)
class FSAF(nn.Module):
    """FSAF: per-level anchor-free branches, each instance on its lowest-loss level.

    ``effective_ratio``/``ignore_ratio``: ε_e, ε_i; ``box_normalizer``: S. The
    ``anchor_generator`` gives the points (one square anchor per location, its centre).
    ``predict``: per-level top-k by class probability, threshold, class-wise NMS.
    """

    passes_predictions_to_assigner = False
    passes_loss_to_sampler = False
    passes_strides = False
    background_logit = False
    two_stage = False

    default_components = {
        "head": {"type": "retina"},
        "anchor_generator": {
            "type": "grid",
            "octave_base_scale": 1.0,
            "scales_per_octave": 1,
            "ratios": [1.0],
        },
        "cls_loss": {"type": "focal", "alpha": 0.25, "gamma": 2.0},
        "box_loss": {"type": "iou"},
    }

    def __init__(
        self,
        backbone: nn.Module,
        neck: nn.Module,
        head: nn.Module,
        anchor_generator,
        cls_loss: nn.Module,
        box_loss: nn.Module,
        num_classes: Annotated[int, Field(ge=1)],
        effective_ratio: Annotated[float, Field(gt=0, le=1)] = 0.2,
        ignore_ratio: Annotated[float, Field(gt=0, le=1)] = 0.5,
        box_normalizer: Annotated[float, Field(gt=0)] = 4.0,
        box_loss_weight: Annotated[float, Field(ge=0)] = 1.0,
        score_thr: Fraction = 0.05,
        pre_nms_topk: Annotated[int, Field(ge=1)] = 1000,
        nms_iou: Fraction = 0.5,
        max_dets: Annotated[int, Field(ge=1)] = 100,
    ):
        super().__init__()
        if ignore_ratio < effective_ratio:
            raise ValueError(
                f"model.ignore_ratio {ignore_ratio} is below model.effective_ratio "
                f"{effective_ratio}: the ignoring region must contain the effective region"
            )
        if anchor_generator.num_anchors_per_location != 1:
            raise ValueError(
                "model.anchor_generator: fsaf needs one point per location (one scale, ratio 1)"
            )
        if hasattr(head, "box_deltas"):  # no box starts with zero area (mmdetection's FSAF)
            nn.init.constant_(output_conv(head.box_deltas).bias, 0.25)
        self.backbone = backbone
        self.neck = neck
        self.head = head
        self.anchor_generator = anchor_generator
        self.cls_loss = cls_loss
        self.box_loss = box_loss
        self.num_classes = num_classes
        self.effective_ratio = effective_ratio
        self.ignore_ratio = ignore_ratio
        self.box_normalizer = box_normalizer
        self.box_loss_weight = box_loss_weight
        self.score_thr = score_thr
        self.pre_nms_topk = pre_nms_topk
        self.nms_iou = nms_iou
        self.max_dets = max_dets

    def dense_outputs(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, list[int]]:
        """images (B, 3, H, W) → cls_logits (B, A, C), boxes (B, A, 4) xyxy px decoded from
        the ReLU'd distances, points (A, 2), strides (A,), points per level."""
        feats = self.neck(self.backbone(images))
        cls_logits, regression = self.head(feats)
        levels = self.anchor_generator.grid_anchors(
            [tuple(f.shape[-2:]) for f in feats], device=images.device, dtype=torch.float32
        )
        per_level = [len(a) for a in levels]
        anchors = torch.cat(levels)
        points = (anchors[:, :2] + anchors[:, 2:]) / 2
        strides = torch.tensor(
            self.anchor_generator.strides, dtype=points.dtype, device=points.device
        ).repeat_interleave(torch.tensor(per_level, device=points.device))
        distances = regression.float().relu() * (self.box_normalizer * strides[:, None])
        boxes = torch.cat([points - distances[..., :2], points + distances[..., 2:]], dim=-1)
        return cls_logits, boxes, points, strides, per_level

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, list[int]]:
        """Dense outputs: cls_logits (B, A, C), boxes (B, A, 4) xyxy px, points (A, 2),
        points per level."""
        cls_logits, boxes, points, _, per_level = self.dense_outputs(images)
        return cls_logits, boxes, points, per_level

    @torch.no_grad()
    def select_levels(
        self,
        cls_logits: Tensor,
        boxes: Tensor,
        points: Tensor,
        strides: Tensor,
        per_level: list[int],
        gt_boxes: Tensor,
        gt_labels: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Online feature selection. Returns ``matched (B, A)`` (GT index + 1, 0 background,
        -1 ignored), ``level (B, M)`` each GT's selected level and ``costs (B, M, L)`` the
        per-level mean focal + mean IoU loss of its effective region."""
        num_images, num_gt = gt_labels.shape
        num_levels = len(per_level)
        level_of = torch.arange(num_levels, device=points.device).repeat_interleave(
            torch.tensor(per_level, device=points.device)
        )  # (A,)
        valid = gt_labels >= 0
        effective = region_masks(points, gt_boxes, self.effective_ratio, strides)
        effective &= valid[..., None]
        ignoring = region_masks(points, gt_boxes, self.ignore_ratio, strides) & valid[..., None]

        # focal loss of each point against each GT's one-hot class: Σ_c FL(z_c, 0) with the
        # GT class's term replaced by FL(z_label, 1)
        logits = cls_logits.float()
        negative_all = self.cls_loss(logits, torch.zeros_like(logits)).sum(dim=-1)  # (B, A)
        labels = gt_labels.clamp(min=0)
        label_logits = logits.transpose(1, 2).gather(
            1, labels[..., None].expand(-1, -1, logits.shape[1])
        )  # (B, M, A)
        focal = (
            negative_all[:, None]
            - self.cls_loss(label_logits, torch.zeros_like(label_logits))
            + self.cls_loss(label_logits, torch.ones_like(label_logits))
        )
        iou_loss = self.box_loss(
            boxes[:, None].expand(-1, num_gt, -1, -1).reshape(-1, 4),
            gt_boxes[:, :, None].expand(-1, -1, boxes.shape[1], -1).reshape(-1, 4),
        ).view(num_images, num_gt, -1)
        weights = effective.float()
        index = level_of.expand(num_images, num_gt, -1)
        count = weights.new_zeros(num_images, num_gt, num_levels).scatter_add_(2, index, weights)
        total = weights.new_zeros(num_images, num_gt, num_levels).scatter_add_(
            2, index, (focal + iou_loss) * weights
        )
        costs = torch.where(count > 0, total / count.clamp(min=1), float("inf"))
        level = costs.argmin(dim=2)  # (B, M)

        on_level = level_of == level[..., None]  # (B, M, A)
        positive = effective & on_level
        near_level = (level_of - level[..., None]).abs() <= 1
        ignored = (ignoring & near_level).any(dim=1)  # (B, A)
        area = (gt_boxes[..., 2] - gt_boxes[..., 0]) * (gt_boxes[..., 3] - gt_boxes[..., 1])
        area_cost = torch.where(positive, area[..., None], float("inf"))
        smallest, gt_index = area_cost.min(dim=1)  # (B, A)
        is_positive = torch.isfinite(smallest)
        matched = torch.where(is_positive, gt_index + 1, torch.where(ignored, -1, 0))
        return matched, level, costs

    def loss(self, images: Tensor, gt_boxes: Tensor, gt_labels: Tensor) -> dict[str, Tensor]:
        """images: (B, 3, H, W); gt_boxes: (B, M, 4) xyxy px; gt_labels: (B, M), -1 padding.

        Returns ``{"cls", "box"}``.
        """
        cls_logits, boxes, points, strides, per_level = self.dense_outputs(images)
        cls_logits = cls_logits.float()
        gt_boxes = gt_boxes.to(boxes)
        if gt_labels.shape[1] == 0:
            gt_boxes = gt_boxes.new_zeros(gt_boxes.shape[0], 1, 4)
            gt_labels = gt_labels.new_full((gt_labels.shape[0], 1), -1)
        matched, _, _ = self.select_levels(
            cls_logits.detach(), boxes.detach(), points, strides, per_level, gt_boxes, gt_labels
        )
        positive = matched > 0
        gt_index = (matched - 1).clamp(min=0)
        num_pos = mean_count_over_ranks(positive.sum().to(cls_logits.dtype)).clamp(min=1)
        labels = gt_labels.gather(1, gt_index).clamp(min=0)
        cls_targets = torch.nn.functional.one_hot(labels, self.num_classes).to(cls_logits.dtype)
        cls_targets *= positive[..., None]
        cls_values = self.cls_loss(cls_logits, cls_targets).sum(dim=-1)
        cls_term = torch.where(matched >= 0, cls_values, 0.0).sum() / num_pos
        target_boxes = gt_boxes.gather(1, gt_index[..., None].expand(-1, -1, 4))[positive]
        box_term = self.box_loss(boxes[positive], target_boxes).sum() / num_pos
        return {"cls": cls_term, "box": box_term * self.box_loss_weight}

    @torch.no_grad()
    def predict(self, images: Tensor, image_sizes: Tensor) -> list[dict[str, Tensor]]:
        """images: (B, 3, H, W); image_sizes: (B, 2) (h, w) → per image ``boxes (K, 4)`` xyxy
        px, ``scores (K,)`` (class probability), ``labels (K,)``."""
        cls_logits, boxes, points, _, per_level = self.dense_outputs(images)
        anchors = torch.cat([points, points], dim=-1)
        return postprocess_detections(
            cls_logits.float(),
            boxes,
            anchors,
            per_level,
            DecodedBoxes,
            image_sizes,
            score_thr=self.score_thr,
            pre_nms_topk=self.pre_nms_topk,
            nms_iou=self.nms_iou,
            max_dets=self.max_dets,
        )
