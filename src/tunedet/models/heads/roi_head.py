"""The Fast R-CNN stage of Faster R-CNN with FPN (Girshick, 2015; Lin et al., 2017).

Proposals → RoIAlign from the FPN level of their size (``roi_align.py``) → two fully
connected layers (``mlp_dim`` 1024, ReLU) → class logits (``num_classes`` + background,
last) and box deltas per class (``class_agnostic``: one set), encoded with the ``delta``
coder's weights (10, 10, 5, 5).

Training, for the whole padded batch at once: the GT boxes join the proposals when the
sampler's ``add_gt_as_proposals`` is set; every proposal is assigned (max-IoU 0.5 / 0.5,
without low-quality matches) and the sampler draws 512 per image, a quarter positive.
Losses: cross-entropy over the sampled RoIs and smooth L1 (β = 1) on the positives'
deltas of their GT class, both summed and divided by the number of sampled RoIs
(Detectron's normalisation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn
from torchvision.ops import batched_nms

from tunedet.config.registry import register
from tunedet.losses.rank_mean import mean_count_over_ranks
from tunedet.models.heads.roi_align import (
    MultiLevelRoIAlign,
    PoolerMode,
    RoIAlignImpl,
    pooled_levels,
)
from tunedet.models.heads.rpn import image_limits
from tunedet.models.postprocess import split_per_image

Fraction = Annotated[float, Field(ge=0, le=1)]


@dataclass
class SampledRois:
    """The positive RoIs the box head trained on (a mask head trains on the same ones).

    rois: (P, 5) [batch_index, x1, y1, x2, y2] px; gt_index: (P,) index into the image's
    M GT slots; labels: (P,) their GT class.
    """

    rois: Tensor
    gt_index: Tensor
    labels: Tensor


def rois_from_mask(boxes: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """boxes (B, K, 4), mask (B, K) bool → rois (P, 5) [batch_index, box], image (P,), slot (P,)."""
    image, slot = mask.nonzero(as_tuple=True)
    rois = torch.cat([image[:, None].to(boxes.dtype), boxes[image, slot]], dim=1)
    return rois, image, slot


@register(
    "roi_head",
    "standard",
    injected=(
        "in_channels",
        "strides",
        "num_classes",
        "assigner",
        "sampler",
        "box_coder",
        "cls_loss",
        "box_loss",
    ),
)
class StandardRoIHead(nn.Module):
    """Fast R-CNN box head on FPN: RoIAlign per level, 2-MLP (1024), class-specific deltas.

    RoIs pool from levels ``roi_min_level``–``roi_max_level`` (P2–P5) with ``k0 =
    canonical_level``, ``s0 = canonical_scale``; ``pooler_resolution`` × itself bins,
    ``sampling_ratio`` points per bin side (0: adaptive), ``aligned`` half-pixel shift,
    ``roi_align_impl`` as in ``roi_align.py`` (``auto``: the sparse form on CPU);
    ``pooler: roi_pool`` uses Fast R-CNN's quantised max pooling instead of RoIAlign
    (Detectron's ``RoIPoolF``). ``dropout``: the drop probability after each MLP layer in
    training (Srivastava et al., 2014). ``bg_iou_lo``: proposals whose best IoU is
    below it are not used as background (Detectron's BG_THRESH_LO). Samplers that rank by
    loss (``ohem``) see each candidate RoI's loss from a gradient-free pass of the head
    over all of them. Prediction: softmax scores (sigmoid with a sigmoid ``cls_loss``),
    per-class boxes clipped to the image, scores above ``score_thr``, class-wise NMS at
    ``nms_iou``, the ``max_dets`` best per image.
    """

    # read by models/build.py's combination checks
    passes_predictions_to_assigner = False
    passes_loss_to_sampler = True
    two_stage = True  # samples proposals, so the GT boxes can join them
    background_logit = True
    passes_per_image_boxes = True  # each image's own proposals go to the assigner

    default_components = {
        "assigner": {
            "type": "max_iou",
            "pos_iou_thr": 0.5,
            "neg_iou_thr": 0.5,
            "match_low_quality": False,
        },
        "sampler": {
            "type": "random",
            "num": 512,
            "pos_fraction": 0.25,
            "add_gt_as_proposals": True,
        },
        "box_coder": {"type": "delta", "weights": [10.0, 10.0, 5.0, 5.0]},
        "cls_loss": {"type": "softmax_ce"},
        "box_loss": {"type": "smooth_l1", "beta": 1.0},
    }

    def __init__(
        self,
        in_channels: int,
        strides: list[int],
        num_classes: int,
        assigner,
        sampler,
        box_coder,
        cls_loss: nn.Module,
        box_loss: nn.Module,
        pooler_resolution: Annotated[int, Field(ge=1)] = 7,
        sampling_ratio: Annotated[int, Field(ge=0)] = 2,
        aligned: bool = False,
        canonical_level: Annotated[int, Field(ge=0)] = 4,
        canonical_scale: Annotated[float, Field(gt=0)] = 224.0,
        roi_min_level: Annotated[int, Field(ge=0)] = 2,
        roi_max_level: Annotated[int, Field(ge=0)] = 5,
        roi_align_impl: RoIAlignImpl = "auto",
        pooler: PoolerMode = "roi_align",
        mlp_dim: Annotated[int, Field(ge=1)] = 1024,
        dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0,
        class_agnostic: bool = False,
        bg_iou_lo: Fraction = 0.0,
        box_loss_weight: Annotated[float, Field(ge=0)] = 1.0,
        score_thr: Fraction = 0.05,
        nms_iou: Fraction = 0.5,
        max_dets: Annotated[int, Field(ge=1)] = 100,
    ):
        super().__init__()
        wanted, self.feature_indices = pooled_levels(
            strides, roi_min_level, roi_max_level, "roi_head"
        )
        if roi_align_impl == "sparse" and sampling_ratio < 1:
            raise ValueError(
                "model.roi_head.roi_align_impl: sparse needs sampling_ratio >= 1 "
                f"(model.roi_head.sampling_ratio is {sampling_ratio}; adaptive sampling, 0, "
                "is torchvision's only)"
            )
        self.num_classes = num_classes
        self.assigner = assigner
        self.sampler = sampler
        self.box_coder = box_coder
        self.cls_loss = cls_loss
        self.box_loss = box_loss
        self.class_agnostic = class_agnostic
        self.bg_iou_lo = bg_iou_lo
        self.box_loss_weight = box_loss_weight
        self.score_thr = score_thr
        self.nms_iou = nms_iou
        self.max_dets = max_dets
        self.pooler = MultiLevelRoIAlign(
            pooler_resolution,
            sampling_ratio,
            wanted,
            canonical_level=canonical_level,
            canonical_scale=canonical_scale,
            aligned=aligned,
            impl=roi_align_impl,
            mode=pooler,
        )
        self.fc6 = nn.Linear(in_channels * pooler_resolution**2, mlp_dim)
        self.fc7 = nn.Linear(mlp_dim, mlp_dim)
        # after each fc's ReLU, training only
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.cls_score = nn.Linear(mlp_dim, num_classes + 1)
        self.bbox_pred = nn.Linear(mlp_dim, 4 * (1 if class_agnostic else num_classes))
        for fc in (self.fc6, self.fc7):  # Detectron2's c2_xavier_fill
            nn.init.kaiming_uniform_(fc.weight, a=1)
            nn.init.zeros_(fc.bias)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, feats: list[Tensor], rois: Tensor) -> tuple[Tensor, Tensor]:
        """feats: the neck's maps; rois (P, 5) → class logits (P, C + 1), deltas (P, C or 1, 4)."""
        pooled = self.pooler([feats[i] for i in self.feature_indices], rois)
        hidden = self.dropout(F.relu(self.fc6(pooled.flatten(1))))
        hidden = self.dropout(F.relu(self.fc7(hidden)))
        deltas = self.bbox_pred(hidden)
        return self.cls_score(hidden), deltas.view(len(rois), deltas.shape[1] // 4, 4)

    def loss(
        self,
        feats: list[Tensor],
        proposals: Tensor,
        valid: Tensor,
        image_sizes: Tensor,
        gt_boxes: Tensor,
        gt_labels: Tensor,
    ) -> tuple[dict[str, Tensor], SampledRois]:
        """proposals (B, K, 4) xyxy px with valid (B, K); gt_boxes (B, M, 4), gt_labels
        (B, M) with -1 padding, M ≥ 1 → ``{"rcnn_cls", "rcnn_box"}`` and the sampled
        positives. ``image_sizes`` is part of the interface (the boxes need no clipping)."""
        proposals = proposals.detach().float()
        gt_boxes = gt_boxes.to(proposals)
        if getattr(self.sampler, "add_gt_as_proposals", False):
            proposals = torch.cat([proposals, gt_boxes], dim=1)
            valid = torch.cat([valid, gt_labels >= 0], dim=1)
        with torch.no_grad():
            assigned = self.assigner.assign(proposals, [proposals.shape[1]], gt_boxes, gt_labels)
            matched = assigned.matched.masked_fill(~valid, -1)
            if self.bg_iou_lo > 0:
                matched = matched.masked_fill(
                    (matched == 0) & (assigned.max_iou < self.bg_iou_lo), -1
                )
            assigned = assigned._replace(matched=matched)
            gt_index = (matched - 1).clamp(min=0)
            labels = torch.where(matched > 0, gt_labels.gather(1, gt_index), self.num_classes)
            if getattr(self.sampler, "needs_loss", False):
                candidate_loss = self._candidate_loss(
                    feats, proposals, matched >= 0, labels, gt_boxes, gt_index
                )
                sampled = self.sampler.sample(assigned, candidate_loss)
            else:
                sampled = self.sampler.sample(assigned)
            sampled &= matched >= 0
        rois, image, slot = rois_from_mask(proposals, sampled)
        labels, gt_index = labels[image, slot], gt_index[image, slot]
        cls_logits, deltas = self(feats, rois)
        cls_values, box_values, positive = self._roi_losses(
            cls_logits, deltas, rois[:, 1:], labels, gt_boxes[image, gt_index]
        )
        num_sampled = mean_count_over_ranks(cls_values.new_tensor(float(len(rois))))
        losses = {
            "rcnn_cls": cls_values.sum() / num_sampled,
            "rcnn_box": box_values.sum() / num_sampled * self.box_loss_weight,
        }
        return losses, SampledRois(rois[positive], gt_index[positive], labels[positive])

    def _roi_losses(
        self, cls_logits: Tensor, deltas: Tensor, boxes: Tensor, labels: Tensor, targets: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Per RoI: classification loss (P,), box loss of the positives (P_pos,), positive
        mask (P,); ``labels`` with background = num_classes, ``targets`` their GT boxes."""
        one_hot = F.one_hot(labels, self.num_classes + 1).to(cls_logits.dtype)
        cls_values = self.cls_loss(cls_logits.float(), one_hot).sum(dim=-1)
        positive = labels < self.num_classes
        column = torch.zeros_like(labels) if self.class_agnostic else labels
        pred = deltas.float()[positive, column[positive]]  # (P_pos, 4)
        boxes, targets = boxes[positive], targets[positive]
        if self.box_loss.on_boxes:
            box_values = self.box_loss(self.box_coder.decode(boxes, pred), targets)
        else:
            box_values = self.box_loss(pred, self.box_coder.encode(boxes, targets))
        return cls_values, box_values, positive

    def _candidate_loss(
        self,
        feats: list[Tensor],
        proposals: Tensor,
        candidates: Tensor,
        labels: Tensor,
        gt_boxes: Tensor,
        gt_index: Tensor,
    ) -> Tensor:
        """(B, K) loss of every candidate RoI (classification + weighted box), 0 elsewhere:
        what ``ohem`` ranks by (one gradient-free pass of the head over all candidates)."""
        rois, image, slot = rois_from_mask(proposals, candidates)
        cls_logits, deltas = self(feats, rois)
        roi_labels = labels[image, slot]
        cls_values, box_values, positive = self._roi_losses(
            cls_logits, deltas, rois[:, 1:], roi_labels, gt_boxes[image, gt_index[image, slot]]
        )
        values = cls_values.clone()
        values[positive] += self.box_loss_weight * box_values
        loss = proposals.new_zeros(candidates.shape)
        loss[image, slot] = values
        return loss

    @torch.no_grad()
    def predict(
        self, feats: list[Tensor], proposals: Tensor, valid: Tensor, image_sizes: Tensor
    ) -> list[dict[str, Tensor]]:
        """proposals (B, K, 4) with valid (B, K); image_sizes (B, 2) (h, w) → per image
        ``boxes (K', 4)`` xyxy px, ``scores (K',)``, ``labels (K',)``."""
        num_images = proposals.shape[0]
        rois, image, _ = rois_from_mask(proposals.float(), valid)
        cls_logits, deltas = self(feats, rois)
        cls_logits, deltas = cls_logits.float(), deltas.float()
        if getattr(self.cls_loss, "needs_background_logit", False):
            scores = cls_logits.softmax(dim=-1)[:, : self.num_classes]
        else:
            scores = cls_logits[:, : self.num_classes].sigmoid()
        boxes = self.box_coder.decode(rois[:, None, 1:], deltas)  # (P, C or 1, 4)
        boxes = torch.minimum(boxes.clamp(min=0), image_limits(image_sizes, boxes)[image])
        roi, label = (scores > self.score_thr).nonzero(as_tuple=True)
        boxes = boxes[roi, 0 if self.class_agnostic else label]
        scores, image = scores[roi, label], image[roi]
        keep = batched_nms(boxes, scores, image * self.num_classes + label, self.nms_iou)
        return split_per_image(boxes, scores, label, image, keep, num_images, self.max_dets)
