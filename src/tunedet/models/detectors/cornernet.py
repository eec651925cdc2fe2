"""CornerNet (Law & Deng, 2018): objects as pairs of corners, grouped by embeddings.

Backbone → neck → ``cornernet`` head on the neck's finest map (stride ``s``): per class a
top-left and a bottom-right corner heatmap, a 1-d embedding per corner type and a sub-cell
offset. Training (``losses/corner.py``): the penalty-reduced focal loss on Gaussian
heatmap targets, pull/push losses on the embeddings at the GT corners, smooth L1 on the
offsets ``x/s − ⌊x/s⌋``; each divided by the number of objects. Decoding: 3×3 max-pool
peaks, the ``topk`` best corners of each type per image, every top-left × bottom-right
pair of the same class whose embeddings differ by at most ``embed_thr`` and that form a
box (bottom-right below and right of top-left), score = the mean of the two corner
probabilities, class-wise NMS.
"""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn
from torchvision.ops import batched_nms

from tunedet.config.registry import register
from tunedet.losses.corner import (
    associative_embedding_loss,
    corner_heatmap_targets,
    gaussian_radius,
    penalty_reduced_focal_loss,
)
from tunedet.losses.rank_mean import mean_count_over_ranks
from tunedet.models.heads.cornernet import CornerMaps
from tunedet.models.postprocess import split_per_image

Fraction = Annotated[float, Field(ge=0, le=1)]
Weight = Annotated[float, Field(ge=0)]


def gather_cells(maps: Tensor, cells: Tensor) -> Tensor:
    """maps: (B, K, H, W) or (B, H, W); cells: (B, M) flat indices y·W + x → (B, M, K) or (B, M)."""
    if maps.dim() == 3:
        return maps.flatten(1).gather(1, cells)
    flat = maps.flatten(2)  # (B, K, HW)
    return flat.gather(2, cells[:, None].expand(-1, flat.shape[1], -1)).transpose(1, 2)


def heatmap_peaks(heat: Tensor, topk: int) -> tuple[Tensor, Tensor, Tensor]:
    """heat: (B, C, H, W) probabilities → the ``topk`` 3×3-local maxima over classes and
    cells: scores (B, K), classes (B, K), flat cells (B, K)."""
    num_images, num_classes, height, width = heat.shape
    peaks = heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat)
    scores, index = peaks.flatten(1).topk(min(topk, peaks[0].numel()), dim=1)
    return scores, index // (height * width), index % (height * width)


@register("detector", "cornernet", injected=("backbone", "neck", "head"))
class CornerNet(nn.Module):
    """CornerNet: corner heatmaps with Gaussian penalty reduction, associative embeddings.

    Losses: ``heat`` (penalty-reduced focal loss, ``focal_alpha``/``focal_beta``, both
    corner types), ``pull`` and ``push`` (× ``pull_weight``/``push_weight``, margin
    ``push_margin``), ``offset`` (smooth L1, × ``offset_weight``), each over the number of
    objects. GT corners spread as Gaussians of radius ``gaussian_radius(h, w,
    min_overlap)`` in cells (floored, at least 0).
    """

    passes_predictions_to_assigner = False
    passes_loss_to_sampler = False
    passes_strides = False
    background_logit = False
    two_stage = False

    default_components = {"head": {"type": "cornernet"}}

    def __init__(
        self,
        backbone: nn.Module,
        neck: nn.Module,
        head: nn.Module,
        num_classes: Annotated[int, Field(ge=1)],
        min_overlap: Annotated[float, Field(gt=0, lt=1)] = 0.3,
        focal_alpha: Annotated[float, Field(ge=0)] = 2.0,
        focal_beta: Annotated[float, Field(ge=0)] = 4.0,
        pull_weight: Weight = 0.1,
        push_weight: Weight = 0.1,
        push_margin: Annotated[float, Field(gt=0)] = 1.0,
        offset_weight: Weight = 1.0,
        topk: Annotated[int, Field(ge=1)] = 100,
        embed_thr: Annotated[float, Field(gt=0)] = 0.5,
        score_thr: Fraction = 0.05,
        nms_iou: Fraction = 0.5,
        max_dets: Annotated[int, Field(ge=1)] = 100,
    ):
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.head = head
        self.num_classes = num_classes
        self.min_overlap = min_overlap
        self.focal_alpha = focal_alpha
        self.focal_beta = focal_beta
        self.pull_weight = pull_weight
        self.push_weight = push_weight
        self.push_margin = push_margin
        self.offset_weight = offset_weight
        self.topk = topk
        self.embed_thr = embed_thr
        self.score_thr = score_thr
        self.nms_iou = nms_iou
        self.max_dets = max_dets
        self.stride = int(neck.strides[0]) if hasattr(neck, "strides") else int(backbone.strides[0])

    def forward(self, images: Tensor) -> CornerMaps:
        """images (B, 3, H, W) → the head's six maps (``CornerMaps``), at ``self.stride``."""
        return self.head(self.neck(self.backbone(images)))

    def corner_targets(
        self, gt_boxes: Tensor, gt_labels: Tensor, height: int, width: int
    ) -> dict[str, Tensor]:
        """gt_boxes (B, M, 4) xyxy px, gt_labels (B, M) -1 padding → per corner type the
        heatmap (B, C, H, W), the flat cells (B, M) and the sub-cell offsets (B, M, 2)."""
        valid = gt_labels >= 0
        scaled = gt_boxes / self.stride
        radius = gaussian_radius(
            scaled[..., 3] - scaled[..., 1], scaled[..., 2] - scaled[..., 0], self.min_overlap
        )
        radius = radius.floor().clamp(min=0)
        limits = scaled.new_tensor([width - 1, height - 1])
        targets = {}
        for name, xy in (("tl", scaled[..., :2]), ("br", scaled[..., 2:])):
            cell = torch.minimum(xy.floor().clamp(min=0), limits)
            targets[f"{name}_heat"] = corner_heatmap_targets(
                cell.long(), radius, gt_labels, self.num_classes, height, width
            )
            targets[f"{name}_cell"] = (cell[..., 1] * width + cell[..., 0]).long() * valid
            targets[f"{name}_offset"] = xy - cell
        return targets

    def loss(self, images: Tensor, gt_boxes: Tensor, gt_labels: Tensor) -> dict[str, Tensor]:
        """images: (B, 3, H, W); gt_boxes: (B, M, 4) xyxy px; gt_labels: (B, M), -1 padding.

        Returns ``{"heat", "pull", "push", "offset"}``.
        """
        outputs = {k: v.float() for k, v in self(images)._asdict().items()}
        height, width = outputs["tl_heat"].shape[-2:]
        gt_boxes = gt_boxes.to(outputs["tl_heat"])
        valid = gt_labels >= 0
        targets = self.corner_targets(gt_boxes, gt_labels, height, width)
        num_objects = mean_count_over_ranks(valid.sum().to(gt_boxes.dtype)).clamp(min=1)

        heat = sum(
            penalty_reduced_focal_loss(
                outputs[f"{c}_heat"], targets[f"{c}_heat"], self.focal_alpha, self.focal_beta
            ).sum()
            for c in ("tl", "br")
        )
        tl_embed = gather_cells(outputs["tl_embed"], targets["tl_cell"])
        br_embed = gather_cells(outputs["br_embed"], targets["br_cell"])
        pull, push = associative_embedding_loss(tl_embed, br_embed, valid, self.push_margin)
        offset = sum(
            (
                F.smooth_l1_loss(
                    gather_cells(outputs[f"{c}_offset"], targets[f"{c}_cell"]),
                    targets[f"{c}_offset"],
                    reduction="none",
                    beta=1.0,
                ).sum(dim=-1)
                * valid
            ).sum()
            for c in ("tl", "br")
        )
        num_images = images.shape[0]
        return {
            "heat": heat / num_objects,
            "pull": pull / num_images * self.pull_weight,
            "push": push / num_images * self.push_weight,
            "offset": offset / num_objects * self.offset_weight,
        }

    @torch.no_grad()
    def predict(self, images: Tensor, image_sizes: Tensor) -> list[dict[str, Tensor]]:
        """images: (B, 3, H, W); image_sizes: (B, 2) (h, w) of the unpadded images →
        per image ``boxes (K, 4)`` xyxy px, ``scores (K,)``, ``labels (K,)``."""
        outputs = {k: v.float() for k, v in self(images)._asdict().items()}
        width = outputs["tl_heat"].shape[-1]
        corners = {}
        for c in ("tl", "br"):
            scores, classes, cells = heatmap_peaks(outputs[f"{c}_heat"].sigmoid(), self.topk)
            offset = gather_cells(outputs[f"{c}_offset"], cells)  # (B, K, 2)
            xy = torch.stack([cells % width, cells // width], dim=-1).float() + offset
            embed = gather_cells(outputs[f"{c}_embed"], cells)
            corners[c] = (scores, classes, xy * self.stride, embed)
        tl_score, tl_class, tl_xy, tl_embed = corners["tl"]
        br_score, br_class, br_xy, br_embed = corners["br"]
        # every (top-left, bottom-right) pair: (B, K, K)
        pair_ok = (
            (tl_class[:, :, None] == br_class[:, None, :])
            & ((tl_embed[:, :, None] - br_embed[:, None, :]).abs() <= self.embed_thr)
            & (br_xy[:, None, :, 0] > tl_xy[:, :, None, 0])
            & (br_xy[:, None, :, 1] > tl_xy[:, :, None, 1])
        )
        pair_score = (tl_score[:, :, None] + br_score[:, None, :]) / 2
        pair_score = torch.where(pair_ok, pair_score, -1.0)
        image_index, tl_index, br_index = (pair_score > self.score_thr).nonzero(as_tuple=True)
        scores = pair_score[image_index, tl_index, br_index]
        boxes = torch.cat(
            [tl_xy[image_index, tl_index], br_xy[image_index, br_index]], dim=1
        )  # (N, 4)
        sizes = image_sizes.to(boxes)[image_index]
        limits = torch.stack([sizes[:, 1], sizes[:, 0], sizes[:, 1], sizes[:, 0]], dim=1)
        boxes = torch.minimum(boxes.clamp(min=0), limits)
        labels = tl_class[image_index, tl_index]
        keep = batched_nms(boxes, scores, image_index * self.num_classes + labels, self.nms_iou)
        return split_per_image(
            boxes, scores, labels, image_index, keep, images.shape[0], self.max_dets
        )
