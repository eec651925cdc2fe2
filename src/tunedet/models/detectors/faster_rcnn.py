"""Faster R-CNN (Ren et al., 2015) with FPN (Lin et al., 2017): proposals, then a box head."""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field
from torch import Tensor, nn

from tunedet.config.registry import register
from tunedet.models.heads.roi_head import SampledRois


@register("detector", "faster_rcnn", injected=("backbone", "neck", "rpn", "roi_head"))
class FasterRCNN(nn.Module):
    """Faster R-CNN with FPN: RPN proposals, RoIAlign per FPN level, a 2-MLP box head.

    Backbone → neck (FPN P2–P6, ``extra_type: maxpool``) → ``rpn`` (``models/heads/rpn.py``:
    objectness and deltas per anchor, proposals by per-level NMS) → ``roi_head``
    (``models/heads/roi_head.py``: RoIAlign from P2–P5, 2-MLP, class scores and
    class-specific deltas). Trained end to end with the proposals detached (approximate
    joint training): ``loss`` returns ``rpn_cls``, ``rpn_box``, ``rcnn_cls``, ``rcnn_box``.
    Mask R-CNN builds on ``features``, ``box_losses`` and ``detect``.
    """

    # read by models/build.py's combination checks; the rpn and roi_head own the rest
    passes_predictions_to_assigner = False
    passes_loss_to_sampler = False
    passes_strides = False
    background_logit = False
    two_stage = True
    needs_image_sizes = True  # the trainer passes the unpadded sizes to loss

    # sub-specs a config may leave out (the paper's choices; read by config/schema.py)
    default_components = {"rpn": {"type": "rpn"}, "roi_head": {"type": "standard"}}

    def __init__(
        self,
        backbone: nn.Module,
        neck: nn.Module,
        rpn: nn.Module,
        roi_head: nn.Module,
        num_classes: Annotated[int, Field(ge=1)],
    ):
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.rpn = rpn
        self.roi_head = roi_head
        self.num_classes = num_classes

    def features(self, images: Tensor) -> list[Tensor]:
        """images (B, 3, H, W) → the neck's maps, finest first."""
        return self.neck(self.backbone(images))

    def box_losses(
        self,
        images: Tensor,
        gt_boxes: Tensor,
        gt_labels: Tensor,
        image_sizes: Tensor | None = None,
    ) -> tuple[dict[str, Tensor], list[Tensor], SampledRois]:
        """The four losses, the neck's maps and the RoI head's sampled positives.

        Proposals are clipped to each image's unpadded ``image_sizes (B, 2)`` (h, w), and
        the RPN's ``straddle_thresh`` measures against them; without them, the padded
        batch is every image's size.
        """
        feats = self.features(images)
        if image_sizes is None:
            image_sizes = torch.tensor(images.shape[-2:], device=images.device)
            image_sizes = image_sizes.expand(len(images), 2)
        gt_boxes = gt_boxes.float()
        if gt_labels.shape[1] == 0:  # keep gathers valid; a padded slot never matches
            gt_boxes = gt_boxes.new_zeros(gt_boxes.shape[0], 1, 4)
            gt_labels = gt_labels.new_full((gt_labels.shape[0], 1), -1)
        out = self.rpn(feats)
        losses = self.rpn.loss(out, image_sizes, gt_boxes, gt_labels)
        proposals, valid = self.rpn.proposals(out, image_sizes)
        rcnn_losses, sampled = self.roi_head.loss(
            feats, proposals, valid, image_sizes, gt_boxes, gt_labels
        )
        return {**losses, **rcnn_losses}, feats, sampled

    def loss(
        self,
        images: Tensor,
        gt_boxes: Tensor,
        gt_labels: Tensor,
        image_sizes: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """images: (B, 3, H, W); gt_boxes: (B, M, 4) xyxy px; gt_labels: (B, M), -1 padding;
        image_sizes: (B, 2) (h, w) unpadded, or None for the padded size
        → ``{"rpn_cls", "rpn_box", "rcnn_cls", "rcnn_box"}``."""
        return self.box_losses(images, gt_boxes, gt_labels, image_sizes)[0]

    @torch.no_grad()
    def detect(
        self, images: Tensor, image_sizes: Tensor
    ) -> tuple[list[dict[str, Tensor]], list[Tensor]]:
        """``predict``'s detections and the neck's maps they came from."""
        feats = self.features(images)
        proposals, valid = self.rpn.proposals(self.rpn(feats), image_sizes)
        return self.roi_head.predict(feats, proposals, valid, image_sizes), feats

    @torch.no_grad()
    def predict(self, images: Tensor, image_sizes: Tensor) -> list[dict[str, Tensor]]:
        """images: (B, 3, H, W); image_sizes: (B, 2) (h, w) of the unpadded images → per
        image ``boxes (K, 4)`` xyxy px, ``scores (K,)``, ``labels (K,)``."""
        return self.detect(images, image_sizes)[0]
