"""Export a detector's dense network to ONNX or TorchScript and run it like the detector.

What is exported is the dense network only, ``images (B, 3, H, W) → cls_logits (B, A, C),
box_deltas (B, A, 4)`` (backbone, neck, head: the convolutions). Post-processing (anchors,
top-k, decoding, clipping, NMS: ``models/postprocess.py``) always runs after it in torch,
for eager, folded and exported models alike, so every path returns the same kind of
detections from the same code. The exported graph has a fixed image size and a dynamic
batch axis.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from tunedet.models.postprocess import postprocess_detections

ExportFormat = Literal["onnx", "torchscript"]


class DenseNetwork(nn.Module):
    """``detector``'s backbone → neck → head: ``images → (cls_logits, box_deltas)``."""

    def __init__(self, detector: nn.Module):
        super().__init__()
        for part in ("backbone", "neck", "head"):
            if not hasattr(detector, part):
                raise ValueError(
                    f"{type(detector).__name__} has no {part}: export supports dense "
                    "detectors built from backbone, neck and head (RetinaNet)"
                )
        self.backbone, self.neck, self.head = detector.backbone, detector.neck, detector.head

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        return self.head(self.neck(self.backbone(images)))


def feature_sizes(detector: nn.Module, image_size: int) -> list[tuple[int, int]]:
    """(H, W) of each pyramid level for a square input of ``image_size`` px."""
    param = next(detector.parameters())
    probe = torch.zeros(1, 3, image_size, image_size, device=param.device, dtype=param.dtype)
    with torch.no_grad():
        return [tuple(f.shape[-2:]) for f in detector.neck(detector.backbone(probe))]


def raw_export_unsupported(detector: nn.Module) -> str | None:
    """Why ``ExportedDetector.predict`` (the dense graph + ``detections_from_dense``)
    would not reproduce ``detector.predict``, or None. It decodes as RetinaNet does:
    sigmoid scores per anchor, anchor deltas, class-wise NMS; SSD (softmax over priors)
    and the anchor-free or two-stage detectors decode otherwise."""
    from tunedet.models.detectors.retinanet import RetinaNet

    if type(detector) is RetinaNet:
        return None
    return (
        f"{type(detector).__name__}: the dense graph's torch post-processing is RetinaNet's "
        "(tunedet export without --raw writes the end-to-end graph)"
    )


def detections_from_dense(
    detector: nn.Module,
    cls_logits: Tensor,
    box_deltas: Tensor,
    sizes: list[tuple[int, int]],
    image_sizes: Tensor,
) -> list[dict[str, Tensor]]:
    """The detector's post-processing on dense outputs computed elsewhere (an exported
    graph): same anchors, thresholds and NMS as ``detector.predict``."""
    levels = detector.anchor_generator.grid_anchors(
        sizes, device=cls_logits.device, dtype=torch.float32
    )
    return postprocess_detections(
        cls_logits.float(),
        box_deltas.float(),
        torch.cat(levels),
        [len(a) for a in levels],
        detector.box_coder,
        image_sizes,
        score_thr=detector.score_thr,
        pre_nms_topk=detector.pre_nms_topk,
        nms_iou=detector.nms_iou,
        max_dets=detector.max_dets,
        nms_type=getattr(detector, "nms_type", "hard"),
        soft_nms_sigma=getattr(detector, "soft_nms_sigma", 0.5),
    )


def export_dense(
    detector: nn.Module, path: str | Path, fmt: ExportFormat, image_size: int, opset: int = 17
) -> Path:
    """Write ``detector``'s dense network (eval mode, float32, CPU) to ``path`` as ONNX
    (inputs ``images``, outputs ``cls_logits``, ``box_deltas``) or TorchScript (traced)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dense = DenseNetwork(detector).eval()
    example = torch.zeros(1, 3, image_size, image_size, device=next(dense.parameters()).device)
    with torch.no_grad():
        if fmt == "onnx":
            torch.onnx.export(
                dense,
                (example,),
                str(path),
                input_names=["images"],
                output_names=["cls_logits", "box_deltas"],
                dynamic_axes={
                    "images": {0: "batch"},
                    "cls_logits": {0: "batch"},
                    "box_deltas": {0: "batch"},
                },
                opset_version=opset,
                dynamo=False,
            )
        elif fmt == "torchscript":
            torch.jit.trace(dense, (example,), check_trace=False).save(str(path))
        else:
            raise ValueError(f"unknown export format '{fmt}' (choices: onnx, torchscript)")
    return path


class ExportedDetector:
    """An exported dense network + the detector's post-processing: ``dense(images)`` and
    ``predict(images, image_sizes)`` like the eager detector (CPU for ONNX Runtime)."""

    def __init__(
        self,
        detector: nn.Module,
        path: str | Path,
        fmt: ExportFormat,
        image_size: int,
        threads: int | None = None,
    ):
        self.detector = detector
        self.fmt = fmt
        self.sizes = feature_sizes(detector, image_size)
        if fmt == "onnx":
            import onnxruntime

            options = onnxruntime.SessionOptions()
            if threads:
                options.intra_op_num_threads = threads
                options.inter_op_num_threads = 1
            self.session = onnxruntime.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        elif fmt == "torchscript":
            self.module = torch.jit.load(str(path), map_location="cpu").eval()
        else:
            raise ValueError(f"unknown export format '{fmt}' (choices: onnx, torchscript)")

    def dense(self, images: Tensor) -> tuple[Tensor, Tensor]:
        if self.fmt == "onnx":
            cls_logits, box_deltas = self.session.run(
                None, {"images": images.detach().cpu().float().contiguous().numpy()}
            )
            return torch.from_numpy(cls_logits), torch.from_numpy(box_deltas)
        with torch.no_grad():
            return self.module(images.cpu())

    def predict(self, images: Tensor, image_sizes: Tensor) -> list[dict[str, Tensor]]:
        cls_logits, box_deltas = self.dense(images)
        return detections_from_dense(
            self.detector, cls_logits, box_deltas, self.sizes, image_sizes.cpu()
        )


def max_abs_difference(a: tuple[Tensor, ...], b: tuple[Tensor, ...]) -> float:
    """Largest |a − b| over matching output tensors (shapes must agree)."""
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        if x.shape != y.shape:
            raise ValueError(f"output shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
        worst = max(worst, float((x.detach().cpu().float() - y.detach().cpu().float()).abs().max()))
    return worst


def detections_equal(
    a: list[dict[str, Tensor]], b: list[dict[str, Tensor]], atol: float = 1e-3
) -> tuple[bool, float]:
    """Same number of detections per image, same labels, boxes and scores within ``atol``;
    returns (equal, largest difference of boxes or scores)."""
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        if len(x["scores"]) != len(y["scores"]) or not torch.equal(
            x["labels"].cpu(), y["labels"].cpu()
        ):
            return False, float("inf")
        if len(x["scores"]):
            worst = max(
                worst, max_abs_difference((x["boxes"], x["scores"]), (y["boxes"], y["scores"]))
            )
    return worst <= atol, worst
