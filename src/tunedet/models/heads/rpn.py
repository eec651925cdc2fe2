"""Region Proposal Network (Ren et al., 2015) on FPN levels (Lin et al., 2017).

One head shared by every level: a 3×3 conv + ReLU, then per anchor an objectness logit
(1×1 conv) and box deltas (1×1 conv), in the anchor generator's (level, y, x, anchor)
order. Training: anchors assigned to GT (max-IoU 0.7 / 0.3, each GT also its best
anchors), a ``sampler`` picks 256 per image at half positives; BCE on the objectness and
smooth L1 (β = 1/9) on the positives' deltas, both summed over the batch and divided by
the number of sampled anchors. Proposals: see ``RPN.proposals``.
"""

from __future__ import annotations

from typing import Annotated, NamedTuple

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn
from torchvision.ops import batched_nms

from tunedet.config.registry import register
from tunedet.losses.rank_mean import mean_count_over_ranks
from tunedet.models.heads.prediction_layout import concat_levels

Fraction = Annotated[float, Field(ge=0, le=1)]
TopK = Annotated[int, Field(ge=1)]


class RPNOutput(NamedTuple):
    """What ``RPN.forward`` returns: objectness (B, A) logits, deltas (B, A, 4), anchors
    (A, 4) xyxy px, and the anchors per level (finest first)."""

    objectness: Tensor
    deltas: Tensor
    anchors: Tensor
    num_anchors_per_level: list[int]


def image_limits(image_sizes: Tensor, like: Tensor) -> Tensor:
    """(B, 2) (h, w) → (B, 1, 4) ``(w, h, w, h)``, the clip limits of xyxy boxes."""
    sizes = image_sizes.to(like)
    return torch.stack([sizes[:, 1], sizes[:, 0], sizes[:, 1], sizes[:, 0]], dim=1)[:, None]


@register(
    "rpn",
    "rpn",
    injected=(
        "in_channels",
        "strides",
        "anchor_generator",
        "assigner",
        "sampler",
        "box_coder",
        "cls_loss",
        "box_loss",
    ),
)
class RPN(nn.Module):
    """Region proposal network: objectness and deltas per anchor, proposals by per-level NMS.

    ``pre_nms_topk_*``: anchors kept per level and image before NMS (Detectron's
    RPN_PRE_NMS_TOP_N with FPN); ``post_nms_topk_*``: proposals kept per image after it
    (Detectron2's per-image rule; Detectron 1 took the post-NMS top-N over the whole batch
    in training). ``min_size``: proposals need width and height above it (input pixels).
    ``straddle_thresh``: anchors reaching more than this many pixels past the image take no
    loss (Detectron's RPN_STRADDLE_THRESH; ``None`` keeps all, as Detectron2 and
    torchvision do). Clipping and straddling use each image's unpadded size, which the
    trainer passes to the detector's ``loss`` (``needs_image_sizes``).
    """

    # read by models/build.py's combination checks (the RPN owns its assigner and sampler)
    passes_predictions_to_assigner = False
    passes_loss_to_sampler = False
    two_stage = False
    background_logit = False

    default_components = {
        "anchor_generator": {
            "type": "grid",
            "strides": [4, 8, 16, 32, 64],
            "sizes": [[32], [64], [128], [256], [512]],
            "ratios": [0.5, 1.0, 2.0],
        },
        # Detectron: positives ≥ 0.7, negatives < 0.3, and every GT its best anchors (ties too)
        "assigner": {"type": "max_iou", "pos_iou_thr": 0.7, "neg_iou_thr": 0.3, "min_pos_iou": 0.0},
        "sampler": {"type": "random", "num": 256, "pos_fraction": 0.5},
        "box_coder": {"type": "delta", "weights": [1.0, 1.0, 1.0, 1.0]},
        "cls_loss": {"type": "bce"},
        "box_loss": {"type": "smooth_l1", "beta": 1.0 / 9},
    }

    def __init__(
        self,
        in_channels: int,
        strides: list[int],
        anchor_generator,
        assigner,
        sampler,
        box_coder,
        cls_loss: nn.Module,
        box_loss: nn.Module,
        pre_nms_topk_train: TopK = 2000,
        post_nms_topk_train: TopK = 1000,
        pre_nms_topk_test: TopK = 1000,
        post_nms_topk_test: TopK = 1000,
        nms_iou: Fraction = 0.7,
        min_size: Annotated[float, Field(ge=0)] = 0.0,
        straddle_thresh: Annotated[float, Field(ge=0)] | None = None,
        box_loss_weight: Annotated[float, Field(ge=0)] = 1.0,
    ):
        super().__init__()
        self.strides = list(strides)
        self.anchor_generator = anchor_generator
        self.assigner = assigner
        self.sampler = sampler
        self.box_coder = box_coder
        self.cls_loss = cls_loss
        self.box_loss = box_loss
        self.pre_nms_topk_train = pre_nms_topk_train
        self.post_nms_topk_train = post_nms_topk_train
        self.pre_nms_topk_test = pre_nms_topk_test
        self.post_nms_topk_test = post_nms_topk_test
        self.nms_iou = nms_iou
        self.min_size = min_size
        self.straddle_thresh = straddle_thresh
        self.box_loss_weight = box_loss_weight

        num_anchors = anchor_generator.num_anchors_per_location
        self.conv = nn.Conv2d(in_channels, in_channels, 3, padding=1)
        self.objectness = nn.Conv2d(in_channels, num_anchors, 1)
        self.box_deltas = nn.Conv2d(in_channels, num_anchors * 4, 1)
        for layer in (self.conv, self.objectness, self.box_deltas):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, feats: list[Tensor]) -> RPNOutput:
        """feats: [(B, C, H_l, W_l)] finest first → ``RPNOutput``."""
        objectness, deltas = [], []
        for feature in feats:
            hidden = F.relu(self.conv(feature))
            objectness.append(self.objectness(hidden))
            deltas.append(self.box_deltas(hidden))
        levels = self.anchor_generator.grid_anchors(
            [tuple(f.shape[-2:]) for f in feats], device=feats[0].device, dtype=torch.float32
        )
        anchors = torch.cat(levels) if len(levels) > 1 else levels[0]
        return RPNOutput(
            concat_levels(objectness, 1)[..., 0],
            concat_levels(deltas, 4),
            anchors,
            [len(a) for a in levels],
        )

    def loss(
        self, out: RPNOutput, image_sizes: Tensor, gt_boxes: Tensor, gt_labels: Tensor
    ) -> dict[str, Tensor]:
        """``{"rpn_cls", "rpn_box"}``: sums over the sampled anchors of the batch divided by
        their number; gt_boxes (B, M, 4) xyxy px, gt_labels (B, M) with -1 padding (M ≥ 1)."""
        objectness, deltas, anchors = out.objectness.float(), out.deltas.float(), out.anchors
        with torch.no_grad():
            assigned = self.assigner.assign(
                anchors, out.num_anchors_per_level, gt_boxes.to(anchors), gt_labels
            )
            matched = assigned.matched
            if self.straddle_thresh is not None:
                matched = matched.masked_fill(self._straddling(anchors, image_sizes), -1)
                assigned = assigned._replace(matched=matched)
            sampled = self.sampler.sample(assigned) & (matched >= 0)
        image, anchor = sampled.nonzero(as_tuple=True)
        code = matched[image, anchor]
        positive = code > 0
        targets = positive.to(objectness.dtype)[:, None]
        cls_values = self.cls_loss(objectness[image, anchor][:, None], targets)

        image, anchor, code = image[positive], anchor[positive], code[positive]
        pred, boxes = deltas[image, anchor], anchors[anchor]
        target_boxes = gt_boxes.to(anchors)[image, code - 1]
        if self.box_loss.on_boxes:
            box_values = self.box_loss(self.box_coder.decode(boxes, pred), target_boxes)
        else:
            box_values = self.box_loss(pred, self.box_coder.encode(boxes, target_boxes))
        num_sampled = mean_count_over_ranks(sampled.sum().to(objectness.dtype))
        return {
            "rpn_cls": cls_values.sum() / num_sampled,
            "rpn_box": box_values.sum() / num_sampled * self.box_loss_weight,
        }

    def _straddling(self, anchors: Tensor, image_sizes: Tensor) -> Tensor:
        """(B, A) anchors reaching more than ``straddle_thresh`` px past their image."""
        limits = image_limits(image_sizes, anchors)[:, 0]  # (B, 4)
        t = self.straddle_thresh
        return (
            (anchors[None, :, 0] < -t)
            | (anchors[None, :, 1] < -t)
            | (anchors[None, :, 2] > limits[:, 2:3] + t)
            | (anchors[None, :, 3] > limits[:, 3:4] + t)
        )

    @torch.no_grad()
    def proposals(self, out: RPNOutput, image_sizes: Tensor) -> tuple[Tensor, Tensor]:
        """Proposals of every image, padded: boxes (B, K, 4) xyxy px, valid (B, K) bool.

        Per image and level the ``pre_nms_topk`` anchors of highest objectness are decoded,
        clipped to the image (``image_sizes (B, 2)`` (h, w)), kept if wider and taller than
        ``min_size``, and suppressed at ``nms_iou`` within their level (one ``batched_nms``
        for the whole batch, grouped by image and level); the ``post_nms_topk`` best of
        each image remain, by decreasing objectness. The ``_train`` or ``_test`` limits
        apply as the module is in training mode or not. No gradient flows into them.
        """
        pre = self.pre_nms_topk_train if self.training else self.pre_nms_topk_test
        post = self.post_nms_topk_train if self.training else self.post_nms_topk_test
        objectness, deltas = out.objectness.detach().float(), out.deltas.detach().float()
        num_images = objectness.shape[0]
        scores, index, level = [], [], []
        start = 0
        for level_index, count in enumerate(out.num_anchors_per_level):
            top = objectness[:, start : start + count].topk(min(pre, count), dim=1)
            scores.append(top.values)
            index.append(top.indices + start)
            level.append(
                torch.full((top.indices.shape[1],), level_index, device=top.indices.device)
            )
            start += count
        scores, index, level = torch.cat(scores, 1), torch.cat(index, 1), torch.cat(level)
        chosen_deltas = deltas.gather(1, index[..., None].expand(-1, -1, 4))
        boxes = self.box_coder.decode(out.anchors[index], chosen_deltas)  # (B, N, 4)
        boxes = torch.minimum(boxes.clamp(min=0), image_limits(image_sizes, boxes))
        width, height = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
        keep = (width > self.min_size) & (height > self.min_size) & scores.isfinite()

        image, slot = keep.nonzero(as_tuple=True)
        groups = image * len(out.num_anchors_per_level) + level[slot]
        kept = batched_nms(boxes[image, slot], scores[image, slot], groups, self.nms_iou)
        return pad_per_image(boxes[image, slot], image, kept, num_images, post)


def pad_per_image(
    boxes: Tensor, image: Tensor, kept: Tensor, num_images: int, limit: int
) -> tuple[Tensor, Tensor]:
    """The ``limit`` first of ``kept`` (indices into ``boxes (N, 4)``, best first) of each
    image (``image (N,)``) → boxes (B, K, 4) and valid (B, K), K ≥ 1 the largest count."""
    kept = kept[image[kept].sort(stable=True).indices]  # grouped by image, best first
    kept_images = image[kept]
    counts = torch.bincount(kept_images, minlength=num_images)
    first = counts.cumsum(0) - counts
    rank = torch.arange(len(kept), device=kept.device) - first[kept_images]
    inside = rank < limit
    kept, kept_images, rank = kept[inside], kept_images[inside], rank[inside]
    width = max(int(counts.clamp(max=limit).max()) if len(counts) else 0, 1)
    padded = boxes.new_zeros(num_images, width, 4)
    valid = torch.zeros(num_images, width, dtype=torch.bool, device=boxes.device)
    padded[kept_images, rank] = boxes[kept]
    valid[kept_images, rank] = True
    return padded, valid
