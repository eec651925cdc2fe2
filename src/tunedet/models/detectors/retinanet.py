"""RetinaNet (Lin et al., 2017): dense anchors, sigmoid focal loss, one shared head."""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field
from torch import Tensor, nn

from tunedet.assigners.base import AssignResult
from tunedet.config.registry import register
from tunedet.losses.rank_mean import mean_count_over_ranks
from tunedet.models.postprocess import NMSType, postprocess_detections

Fraction = Annotated[float, Field(ge=0, le=1)]


@register(
    "detector",
    "retinanet",
    injected=(
        "backbone",
        "neck",
        "head",
        "anchor_generator",
        "assigner",
        "sampler",
        "box_coder",
        "cls_loss",
        "box_loss",
    ),
)
class RetinaNet(nn.Module):
    """Backbone → neck → dense head over a grid of anchors, trained with assigned targets.

    The parts are passed in built: ``head(feats) -> (cls_logits (B, A, C), box_deltas
    (B, A, 4))`` in the anchor generator's (level, y, x, anchor) order. Losses:
    ``cls_loss`` (element-wise, e.g. focal) over the anchors the ``sampler`` keeps (by
    default, ``pseudo``, every non-ignored anchor) and ``box_loss`` over the sampled
    positives, both summed and divided by the number of sampled positives in the batch;
    ``box_loss_weight`` scales the box term.

    Assigners with ``needs_predictions`` (``hungarian``) get the detached class
    probabilities and decoded boxes; samplers with ``needs_loss`` (``ohem``,
    ``hard_negative``) rank by each anchor's detached loss (classification summed over
    classes + weighted box loss on positives). With ``max_iou_topk`` an anchor's
    classification target is the union of its GTs' classes and its box target the
    first GT's box.
    """

    # read by models/build.py's combination checks
    passes_predictions_to_assigner = True
    passes_loss_to_sampler = True
    passes_strides = False
    background_logit = False
    two_stage = False
    reads_several_gts_per_anchor = True  # multi-hot sigmoid targets (max_iou_topk)

    # sub-specs a config may leave out (the paper's choices; read by config/schema.py)
    default_components = {
        "head": {"type": "retina"},
        "anchor_generator": {"type": "grid"},
        "assigner": {"type": "max_iou", "pos_iou_thr": 0.5, "neg_iou_thr": 0.4},
        "sampler": {"type": "pseudo"},
        "box_coder": {"type": "delta"},
        "cls_loss": {"type": "focal", "alpha": 0.25, "gamma": 2.0},
        "box_loss": {"type": "smooth_l1"},
    }

    def __init__(
        self,
        backbone: nn.Module,
        neck: nn.Module,
        head: nn.Module,
        anchor_generator,
        assigner,
        sampler,
        box_coder,
        cls_loss: nn.Module,
        box_loss: nn.Module,
        num_classes: Annotated[int, Field(ge=1)],
        box_loss_weight: Annotated[float, Field(ge=0)] = 1.0,
        score_thr: Fraction = 0.05,
        pre_nms_topk: Annotated[int, Field(ge=1)] = 1000,
        nms_iou: Fraction = 0.5,
        max_dets: Annotated[int, Field(ge=1)] = 100,
        nms_type: NMSType = "hard",
        soft_nms_sigma: Annotated[float, Field(gt=0)] = 0.5,
    ):
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.head = head
        self.anchor_generator = anchor_generator
        self.assigner = assigner
        self.sampler = sampler
        self.box_coder = box_coder
        self.cls_loss = cls_loss
        self.box_loss = box_loss
        self.num_classes = num_classes
        self.box_loss_weight = box_loss_weight
        self.score_thr = score_thr
        self.pre_nms_topk = pre_nms_topk
        self.nms_iou = nms_iou
        self.max_dets = max_dets
        self.nms_type = nms_type
        self.soft_nms_sigma = soft_nms_sigma

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, list[int]]:
        """images: (B, 3, H, W) → cls_logits (B, A, C), box_deltas (B, A, 4),
        anchors (A, 4) xyxy px, num_anchors_per_level."""
        feats = self.neck(self.backbone(images))
        cls_logits, box_deltas = self.head(feats)
        levels = self.anchor_generator.grid_anchors(
            [tuple(f.shape[-2:]) for f in feats], device=images.device, dtype=torch.float32
        )
        anchors = torch.cat(levels) if len(levels) > 1 else levels[0]
        return cls_logits, box_deltas, anchors, [len(a) for a in levels]

    def assign_targets(
        self,
        cls_logits: Tensor,
        box_deltas: Tensor,
        anchors: Tensor,
        num_anchors_per_level: list[int],
        gt_boxes: Tensor,
        gt_labels: Tensor,
    ) -> AssignResult:
        """Run the assigner on ``forward``'s outputs (predictions passed only when the
        assigner needs them); ``gt_boxes (B, M, 4)``, ``gt_labels (B, M)`` with M ≥ 1."""
        with torch.no_grad():
            predictions = {}
            if getattr(self.assigner, "needs_predictions", False):
                predictions = {
                    "pred_scores": cls_logits.detach().float().sigmoid(),
                    "pred_boxes": self.box_coder.decode(anchors, box_deltas.detach().float()),
                }
            return self.assigner.assign(
                anchors, num_anchors_per_level, gt_boxes, gt_labels, **predictions
            )

    def loss(self, images: Tensor, gt_boxes: Tensor, gt_labels: Tensor) -> dict[str, Tensor]:
        """images: (B, 3, H, W); gt_boxes: (B, M, 4) xyxy px; gt_labels: (B, M), -1 padding.

        Returns ``{"cls": cls sum over sampled / num_pos, "box": box sum / num_pos ·
        box_loss_weight}``, ``num_pos`` the sampled positives of the batch (at least 1).
        """
        cls_logits, box_deltas, anchors, per_level = self(images)
        cls_logits, box_deltas = cls_logits.float(), box_deltas.float()
        gt_boxes = gt_boxes.to(anchors)
        if gt_labels.shape[1] == 0:  # keep gathers valid; a padded slot never matches
            gt_boxes = gt_boxes.new_zeros(gt_boxes.shape[0], 1, 4)
            gt_labels = gt_labels.new_full((gt_labels.shape[0], 1), -1)

        assigned = self.assign_targets(
            cls_logits, box_deltas, anchors, per_level, gt_boxes, gt_labels
        )
        matched = assigned.matched
        positive = matched > 0  # (B, A)
        gt_index = (matched - 1).clamp(min=0)  # (B, A)
        target_boxes = gt_boxes.gather(1, gt_index[..., None].expand(-1, -1, 4))  # (B, A, 4)
        cls_targets = self._cls_targets(assigned, gt_labels, cls_logits.dtype)
        cls_values = self.cls_loss(cls_logits, cls_targets).sum(dim=-1)  # (B, A)

        pos_anchors = anchors.expand_as(box_deltas)[positive]
        pos_deltas = box_deltas[positive]
        pos_boxes = target_boxes[positive]
        if self.box_loss.on_boxes:
            box_values = self.box_loss(self.box_coder.decode(pos_anchors, pos_deltas), pos_boxes)
        else:
            box_values = self.box_loss(pos_deltas, self.box_coder.encode(pos_anchors, pos_boxes))

        with torch.no_grad():
            if getattr(self.sampler, "needs_loss", False):
                anchor_loss = cls_values.detach().clone()
                anchor_loss[positive] += self.box_loss_weight * box_values.detach()
                sampled = self.sampler.sample(assigned, anchor_loss)
            else:
                sampled = self.sampler.sample(assigned)
            sampled &= matched >= 0  # ignored anchors (-1) take no loss
        sampled_positive = positive & sampled
        num_pos = mean_count_over_ranks(sampled_positive.sum().to(cls_logits.dtype))
        cls_term = torch.where(sampled, cls_values, 0.0).sum() / num_pos
        box_values = box_values[sampled_positive[positive]]
        box_term = box_values.sum() / num_pos * self.box_loss_weight
        return {"cls": cls_term, "box": box_term}

    def _cls_targets(self, assigned: AssignResult, gt_labels: Tensor, dtype) -> Tensor:
        """(B, A, C) one-hot targets of each anchor's GT classes (zeros for background)."""
        codes = assigned.matched[..., None]
        if assigned.matched_topk is not None:  # one anchor, several GTs: all their classes
            codes = assigned.matched_topk
        num_images, num_anchors, k = codes.shape
        index = (codes - 1).clamp(min=0).view(num_images, -1)
        labels = gt_labels.gather(1, index).clamp(min=0).view(num_images, num_anchors, k)
        targets = torch.zeros(
            num_images, num_anchors, self.num_classes, dtype=dtype, device=labels.device
        )
        return targets.scatter_reduce_(2, labels, (codes > 0).to(dtype), reduce="amax")

    @torch.no_grad()
    def predict(self, images: Tensor, image_sizes: Tensor) -> list[dict[str, Tensor]]:
        """images: (B, 3, H, W); image_sizes: (B, 2) (h, w) of the unpadded images →
        per image ``boxes (K, 4)`` xyxy px, ``scores (K,)``, ``labels (K,)``."""
        cls_logits, box_deltas, anchors, per_level = self(images)
        return postprocess_detections(
            cls_logits.float(),
            box_deltas.float(),
            anchors,
            per_level,
            self.box_coder,
            image_sizes,
            score_thr=self.score_thr,
            pre_nms_topk=self.pre_nms_topk,
            nms_iou=self.nms_iou,
            max_dets=self.max_dets,
            nms_type=self.nms_type,
            soft_nms_sigma=self.soft_nms_sigma,
        )
