"""SSD (Liu et al., 2016): softmax over classes + background, hard negatives at 3:1, smooth L1.

The RetinaNet pipeline with SSD's parts: priors from ``ssd_priors``, each GT first takes
its best prior then every prior of IoU ≥ 0.5 (``max_iou`` 0.5/0.5), a per-level ``ssd``
head with a background logit, ``softmax_ce`` over the positives and the ``hard_negative``
sampler's negatives (3 per positive, highest loss first), smooth L1 (β = 1) on deltas
encoded with SSD's variances (0.1, 0.1, 0.2, 0.2); both terms divided by the positives.

Test-time candidates: ``candidates="per_level"`` keeps the ``pre_nms_topk`` best
(prior, class) pairs of each level (RetinaNet's rule); ``"per_class"`` keeps, for each
class, its ``pre_nms_topk`` best priors over all levels (torchvision's ``SSD``:
``topk_candidates`` 400 per class), both after ``score > score_thr``.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import Tensor, nn
from torchvision.ops import batched_nms

from tunedet.assigners.base import AssignResult
from tunedet.config.registry import register
from tunedet.losses.cross_entropy import stable_softmax
from tunedet.models.detectors.retinanet import Fraction, RetinaNet
from tunedet.models.detectors.yolov3 import probability_logits
from tunedet.models.postprocess import NMSType, postprocess_detections, split_per_image


@register(
    "detector",
    "ssd",
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
class SSD(RetinaNet):
    """SSD / SSDLite: softmax with a background class over SSD300 priors, 3:1 hard negatives.

    Classification targets are one-hot over ``num_classes + 1`` (background last); at test
    time the score of class ``c`` is its softmax probability.
    """

    background_logit = True
    reads_several_gts_per_anchor = False  # a softmax target has one class

    default_components = {
        "head": {"type": "ssd"},
        "anchor_generator": {"type": "ssd_priors"},
        "assigner": {
            "type": "max_iou",
            "pos_iou_thr": 0.5,
            "neg_iou_thr": 0.5,
            "min_pos_iou": 0.0,
            "gt_max_assign_all": False,
        },
        "sampler": {"type": "hard_negative", "neg_pos_ratio": 3.0},
        "box_coder": {"type": "delta", "stds": [0.1, 0.1, 0.2, 0.2]},
        "cls_loss": {"type": "softmax_ce"},
        "box_loss": {"type": "smooth_l1", "beta": 1.0},
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
        candidates: Literal["per_level", "per_class"] = "per_level",
    ):
        super().__init__(
            backbone,
            neck,
            head,
            anchor_generator,
            assigner,
            sampler,
            box_coder,
            cls_loss,
            box_loss,
            num_classes,
            box_loss_weight=box_loss_weight,
            score_thr=score_thr,
            pre_nms_topk=pre_nms_topk,
            nms_iou=nms_iou,
            max_dets=max_dets,
            nms_type=nms_type,
            soft_nms_sigma=soft_nms_sigma,
        )
        if candidates == "per_class" and nms_type != "hard":
            raise ValueError(
                f"candidates 'per_class' supports nms_type 'hard' only, got '{nms_type}'"
            )
        self.candidates = candidates

    def _cls_targets(self, assigned: AssignResult, gt_labels: Tensor, dtype) -> Tensor:
        """(B, A, C + 1) one-hot targets: the GT class for positives, background (last) else."""
        foreground = super()._cls_targets(assigned, gt_labels, dtype)
        background = (assigned.matched <= 0).to(dtype)[..., None]
        return torch.cat([foreground, background], dim=-1)

    @torch.no_grad()
    def predict(self, images: Tensor, image_sizes: Tensor) -> list[dict[str, Tensor]]:
        """images: (B, 3, H, W); image_sizes: (B, 2) (h, w) → per image ``boxes (K, 4)``,
        ``scores (K,)`` (softmax probability of the class), ``labels (K,)``."""
        cls_logits, box_deltas, anchors, per_level = self(images)
        probs = stable_softmax(cls_logits.float(), dim=-1)[..., : self.num_classes]
        if self.candidates == "per_class":
            return self._per_class_detections(probs, box_deltas.float(), anchors, image_sizes)
        return postprocess_detections(
            probability_logits(probs),
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

    def _per_class_detections(
        self, probs: Tensor, box_deltas: Tensor, anchors: Tensor, image_sizes: Tensor
    ) -> list[dict[str, Tensor]]:
        """probs (B, A, C) → per image and class the ``pre_nms_topk`` best priors with
        probability > ``score_thr``, decoded, clipped to the image, class-wise NMS, the
        ``max_dets`` best kept (torchvision's ``SSD.postprocess_detections``)."""
        num_images, num_anchors, num_classes = probs.shape
        top = probs.transpose(1, 2).topk(min(self.pre_nms_topk, num_anchors), dim=2)
        image_index, labels, slot = (top.values > self.score_thr).nonzero(as_tuple=True)
        scores = top.values[image_index, labels, slot]
        anchor_index = top.indices[image_index, labels, slot]

        boxes = self.box_coder.decode(anchors[anchor_index], box_deltas[image_index, anchor_index])
        sizes = image_sizes.to(boxes)[image_index]  # (N, 2) (h, w)
        limits = torch.stack([sizes[:, 1], sizes[:, 0], sizes[:, 1], sizes[:, 0]], dim=1)
        boxes = torch.minimum(boxes.clamp(min=0), limits)

        keep = batched_nms(boxes, scores, image_index * num_classes + labels, self.nms_iou)
        return split_per_image(boxes, scores, labels, image_index, keep, num_images, self.max_dets)
