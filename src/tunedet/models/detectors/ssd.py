"""SSD (Liu et al., 2016): softmax over classes + background, hard negatives at 3:1, smooth L1.

The RetinaNet pipeline with SSD's parts: priors from ``ssd_priors``, each GT first takes
its best prior then every prior of IoU ≥ 0.5 (``max_iou`` 0.5/0.5), a per-level ``ssd``
head with a background logit, ``softmax_ce`` over the positives and the ``hard_negative``
sampler's negatives (3 per positive, highest loss first), smooth L1 (β = 1) on deltas
encoded with SSD's variances (0.1, 0.1, 0.2, 0.2); both terms divided by the positives.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tunedet.assigners.base import AssignResult
from tunedet.config.registry import register
from tunedet.losses.cross_entropy import stable_softmax
from tunedet.models.detectors.retinanet import RetinaNet
from tunedet.models.detectors.yolov3 import probability_logits
from tunedet.models.postprocess import postprocess_detections


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
        )
