"""An end-to-end detector graph: one RGB image in, final detections out.

``EndToEndDetector`` wraps a trained dense detector (RetinaNet, ATSS, FCOS, OneNet) with
everything ``Detector.predict`` does around it, written with operations that ONNX can
express, so that the exported file needs ONNX Runtime and numpy only:

1. resize keeping the aspect ratio so the longer side is ``input_size`` px (PIL's
   bilinear filter: a triangle widened by the reduction factor, as `data.transforms.Resize`
   reads images), written as two matrix products ``R_y · image · R_xᵀ`` whose rows past
   the resized size are zero, which is the bottom/right zero padding to the square input;
2. ``(image − mean) / std`` per channel (`Normalize`, before the resize: each row of
   ``R`` sums to one, so the two commute and the padding stays exactly zero);
3. the dense network (backbone, neck, head) and its anchors or points for that input;
4. per level the ``pre_nms_topk`` best (anchor, class) scores above ``score_thr``,
   decoding, clipping to the resized image, class-wise NMS at ``nms_iou``
   (``torchvision.ops.batched_nms``, which exports as ONNX ``NonMaxSuppression``), the
   ``max_dets`` best, and boxes divided by the resize factor.

Inputs and outputs: ``image (H, W, 3) uint8`` RGB of any size → ``boxes (K, 4)`` xyxy
float32 in the image's pixels, ``scores (K,)`` float32 in decreasing order, ``labels (K,)``
int64 0-based. An image whose longer side is ``input_size`` and whose shorter side the size
divisor pads to ``input_size`` too goes through the same arithmetic as the eager detector;
other sizes differ from eager by the resize's 8-bit rounding (PIL rounds) and by the padding
(eager pads to the size divisor, the graph to the square input size), which changes the
features near the padded border and GroupNorm's statistics.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms


def resize_weights(
    source: Tensor, out_size: int, scale: Tensor, valid: Tensor, dtype: torch.dtype
) -> Tensor:
    """``(out_size, n)`` weights of PIL's bilinear resize of ``n`` source pixels to ``valid``
    output pixels (``source`` holds ``0..n−1`` as floats); rows from ``valid`` on are zero.

    Output pixel ``i`` is centred on source coordinate ``c = (i + 0.5) · n / valid``; pixel
    ``j`` weighs ``max(0, 1 − |j + 0.5 − c| / f)``, ``f = max(1, n / valid)``, normalised.
    """
    n = source[-1] + 1.0
    rows = torch.arange(out_size, dtype=dtype, device=source.device)
    ratio = n / valid
    centre = (rows + 0.5) * ratio
    support = torch.clamp(ratio, min=1.0)
    weights = torch.clamp(1.0 - (source[None, :] + 0.5 - centre[:, None]).abs() / support, min=0)
    weights = weights / weights.sum(dim=1, keepdim=True).clamp(min=1e-12)
    return weights * (rows < valid).to(dtype)[:, None]


class EndToEndDetector(nn.Module):
    """``image (H, W, 3) uint8`` → ``boxes (K, 4)``, ``scores (K,)``, ``labels (K,)``
    (see the module docstring). ``detector`` is a RetinaNet- or FCOS-style detector in
    eval mode; ``mean`` / ``std`` are the config's `Normalize` (0..255 units)."""

    def __init__(
        self,
        detector: nn.Module,
        input_size: int,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
    ):
        super().__init__()
        self.kind = dense_kind(detector)
        self.detector = detector
        self.input_size = int(input_size)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(3, 1, 1))

    def preprocess(self, image: Tensor) -> tuple[Tensor, ...]:
        """``image (H, W, 3) uint8`` → ``(input (1, 3, S, S), scale, H, W, resized h, resized
        w)``, the sizes as float tensors."""
        chw = (image.permute(2, 0, 1).float() - self.mean) / self.std  # (3, H, W)
        # Counts as traced values (ONNX Shape), so the graph takes any image size.
        ys = torch.ones_like(chw[0, :, 0]).cumsum(0) - 1.0  # 0..H−1
        xs = torch.ones_like(chw[0, 0, :]).cumsum(0) - 1.0  # 0..W−1
        height, width = ys[-1] + 1.0, xs[-1] + 1.0
        scale = self.input_size / torch.maximum(height, width)
        new_h = torch.clamp(torch.round(height * scale), min=1.0)
        new_w = torch.clamp(torch.round(width * scale), min=1.0)
        rows = resize_weights(ys, self.input_size, scale, new_h, chw.dtype)  # (S, H)
        cols = resize_weights(xs, self.input_size, scale, new_w, chw.dtype)  # (S, W)
        resized = rows[None] @ chw @ cols.t()[None]  # (3, S, S), zero past (new_h, new_w)
        return resized[None], scale, height, width, new_h, new_w

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        images, scale, height, width, new_h, new_w = self.preprocess(image)
        det = self.detector
        if self.kind == "fcos":
            cls_logits, deltas, quality, anchors, per_level = det.dense_outputs(images)
            factors = None if quality is None else quality[0].float().sigmoid()
            nms_iou = det.nms_iou if det.nms else None
        else:
            cls_logits, deltas, anchors, per_level = det(images)
            factors, nms_iou = None, det.nms_iou
        boxes, scores, labels = single_image_detections(
            cls_logits[0].float(),
            deltas[0].float(),
            anchors,
            per_level,
            det.box_coder,
            new_h,
            new_w,
            det.score_thr,
            det.pre_nms_topk,
            nms_iou,
            det.max_dets,
            factors,
        )
        boxes = boxes / scale
        limits = torch.stack([width, height, width, height])
        return torch.minimum(boxes.clamp(min=0), limits), scores, labels


def single_image_detections(
    cls_logits: Tensor,
    deltas: Tensor,
    anchors: Tensor,
    per_level: list[int],
    box_coder: Any,
    height: Tensor,
    width: Tensor,
    score_thr: float,
    pre_nms_topk: int,
    nms_iou: float | None,
    max_dets: int,
    score_factors: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """`models.postprocess.postprocess_detections` for one image, in traceable operations.

    ``cls_logits (A, C)``, ``deltas (A, 4)``, ``anchors (A, 4)``, ``score_factors (A,)`` →
    ``boxes (K, 4)``, ``scores (K,)``, ``labels (K,)`` in decreasing score order."""
    num_classes = cls_logits.shape[1]
    scores, pairs = [], []
    start = 0
    for count in per_level:
        level = cls_logits[start : start + count].sigmoid()
        if score_factors is not None:
            level = (level * score_factors[start : start + count, None]).sqrt()
        level = level.flatten()
        top = level.topk(min(pre_nms_topk, level.shape[0]))
        scores.append(top.values)
        pairs.append(top.indices + start * num_classes)
        start += count
    scores, pairs = torch.cat(scores), torch.cat(pairs)
    keep = torch.where(scores > score_thr)[0]
    scores, pairs = scores[keep], pairs[keep]
    anchor_index = torch.div(pairs, num_classes, rounding_mode="floor")
    labels = pairs - anchor_index * num_classes
    boxes = box_coder.decode(anchors[anchor_index], deltas[anchor_index])
    limits = torch.stack([width, height, width, height])
    boxes = torch.minimum(boxes.clamp(min=0), limits)
    if nms_iou is None:
        order = scores.argsort(descending=True)
    else:
        order = batched_nms(boxes, scores, labels, nms_iou)
    order = order[:max_dets]
    return boxes[order], scores[order], labels[order]


def dense_kind(detector: nn.Module) -> str:
    """ "retinanet" or "fcos" (how to read the detector's dense outputs), or a one-line
    error for detectors whose post-processing the end-to-end graph does not reproduce."""
    from tunedet.models.detectors.fcos import FCOS
    from tunedet.models.detectors.retinanet import RetinaNet

    name = type(detector).__name__
    if type(detector).predict is RetinaNet.predict:
        if getattr(detector, "nms_type", "hard") != "hard":
            raise ValueError(
                f"end-to-end export supports hard NMS only (model.nms_type is "
                f"'{detector.nms_type}'): use --raw for the dense network"
            )
        return "retinanet"
    if type(detector).predict is FCOS.predict:
        return "fcos"
    raise ValueError(
        f"end-to-end export supports RetinaNet-, ATSS-, FCOS- and OneNet-style detectors, "
        f"not {name}: use --raw for the dense network"
    )


def export_end_to_end(
    detector: nn.Module,
    path: str | Path,
    input_size: int,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    metadata: dict[str, Any],
    opset: int = 17,
) -> Path:
    """Write `EndToEndDetector` as ONNX (input ``image``, outputs ``boxes``, ``scores``,
    ``labels``) with ``metadata`` as the model's ``metadata_props`` (values JSON-encoded
    unless strings)."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    module = EndToEndDetector(detector, input_size, mean, std).eval()
    example = torch.zeros(input_size, input_size, 3, dtype=torch.uint8)
    with torch.no_grad(), warnings.catch_warnings():
        # the sizes the trace fixes (anchors, top-k counts) are those of the fixed input
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            module,
            (example,),
            str(partial),
            input_names=["image"],
            output_names=["boxes", "scores", "labels"],
            dynamic_axes={
                "image": {0: "height", 1: "width"},
                "boxes": {0: "detections"},
                "scores": {0: "detections"},
                "labels": {0: "detections"},
            },
            opset_version=opset,
            dynamo=False,
        )
    model = onnx.load(str(partial))
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key = key
        entry.value = value if isinstance(value, str) else json.dumps(value)
    onnx.save(model, str(partial))
    os.replace(partial, path)  # whole or not at all
    return path
