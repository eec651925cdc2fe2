"""``tunedet export CKPT [--format onnx|torchscript] [--raw]`` (or ``CONFIG --checkpoint CKPT``).

ONNX (default) is the end-to-end graph, ``image (H, W, 3) uint8 → boxes, scores, labels``
(resize, normalisation, network, decoding, NMS: ``deploy/end_to_end.py``) with the class
names, input size and preprocessing in the model's ``metadata_props``; it is run on an
image of the input size and its detections compared with the eager detector's. ``--raw``
(and TorchScript) writes the dense network only (``images → cls_logits, box_deltas``, the
post-processing stays in torch: ``deploy/export.py``), compared with eager on a random
batch. Either way the command fails (exit 2) when the largest difference exceeds
``--tolerance``. It never writes over the checkpoint, nor over an existing file without
``--force``.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_export(args: argparse.Namespace) -> int:
    from tunedet.cli.main import checkpoint_and_config, refuse_existing
    from tunedet.deploy import fold_conv_bn
    from tunedet.engine.build import config_for_checkpoint, model_on_device

    checkpoint, config = checkpoint_and_config(args)
    end_to_end = args.format == "onnx" and not args.raw
    suffix = {True: ".onnx", False: ".dense.onnx" if args.format == "onnx" else ".torchscript.pt"}
    out = Path(args.out or Path(checkpoint).with_suffix(suffix[end_to_end]))
    refuse_existing(out, args.force, checkpoint)
    cfg = config_for_checkpoint(checkpoint, config, args.overrides)
    model, _ = model_on_device(cfg, checkpoint)
    model = model.cpu().float().eval()
    image_size = args.image_size or _config_image_size(cfg)
    if args.reparam:
        from tunedet.models.reparam import reparameterization_difference

        folded, diff = reparameterization_difference(model, image_size)
        print(f"re-parameterised {folded} multi-branch blocks into 3x3 convs")
        print(f"max abs difference of the features, folded vs multi-branch network: {diff:.3g}")
    if args.fold_bn:
        model, folded = fold_conv_bn(model)
        print(f"folded {folded} conv-BN pairs")
    if end_to_end:
        diff = _export_end_to_end(model, cfg, out, image_size)
        what = "detections (boxes, scores)"
    else:
        diff = _export_dense(model, cfg, out, args.format, image_size)
        what = "cls_logits, box_deltas"
    print(f"max abs difference vs eager ({what}): {diff:.3g}")
    if diff > args.tolerance:
        raise ValueError(
            f"{out}: exported outputs differ from eager by {diff:.3g} > --tolerance {args.tolerance:g}"
        )
    return 0


def _export_dense(model, cfg, out: Path, fmt: str, image_size: int) -> float:
    import torch

    from tunedet.deploy import DenseNetwork, ExportedDetector, export_dense, max_abs_difference

    partial = out.with_name(f".{out.name}.partial{out.suffix}")
    export_dense(model, partial, fmt, image_size)
    partial.replace(out)
    exported = ExportedDetector(model, out, fmt, image_size, threads=cfg.threads)
    images = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        eager = DenseNetwork(model)(images)
    print(f"wrote {out} ({fmt} dense network, {image_size}×{image_size}, dynamic batch)")
    return max_abs_difference(eager, exported.dense(images))


def _export_end_to_end(model, cfg, out: Path, image_size: int) -> float:
    """Write the end-to-end ONNX graph and return the largest difference of its boxes and
    scores from the eager detector's on a smooth random image of the input size (inf when
    the detections differ in number or labels)."""
    import numpy as np
    import onnxruntime
    import torch
    from PIL import Image

    import tunedet
    from tunedet.api import Detector
    from tunedet.deploy.end_to_end import dense_kind, export_end_to_end

    dense_kind(model)  # a detector the graph supports, before any work
    mean, std = _normalisation(cfg)
    class_names = list(getattr(model, "classes", None) or [])
    metadata = {
        "class_names": class_names,
        "input_size": image_size,
        "input": "image: (H, W, 3) uint8 RGB, any size",
        "outputs": "boxes (K, 4) xyxy px of the image, scores (K,), labels (K,) int64 0-based",
        "preprocess": f"resize longer side to {image_size} (bilinear), pad bottom/right, "
        "(x - mean) / std",
        "mean": list(mean),
        "std": list(std),
        "score_thr": model.score_thr,
        "nms_iou": getattr(model, "nms_iou", None),
        "max_dets": model.max_dets,
        "model": type(model).__name__,
        "tunedet_version": tunedet.__version__,
    }
    export_end_to_end(model, out, image_size, mean, std, metadata)
    print(f"wrote {out} (onnx end to end: image → boxes, scores, labels; {image_size} px input)")

    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, (image_size // 8 + 1, image_size // 8 + 1, 3), dtype=np.uint8)
    image = np.asarray(Image.fromarray(coarse).resize((image_size, image_size)))
    plain = cfg.model_copy(
        update={"eval": cfg.eval.model_copy(update={"tta": None, "sliced": None})}
    )
    with torch.no_grad():
        eager = Detector(model, plain, torch.device("cpu")).predict(image)[0]
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    boxes, scores, labels = session.run(None, {"image": image})
    if len(scores) != len(eager) or not np.array_equal(labels, eager.labels):
        print(f"detections: exported {len(scores)}, eager {len(eager)}")
        return float("inf")
    if not len(scores):
        return 0.0
    return float(max(np.abs(boxes - eager.boxes).max(), np.abs(scores - eager.scores).max()))


def _normalisation(cfg) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The (mean, std) of the config's validation `normalize` transform."""
    for spec in cfg.data.val_transforms:
        if spec.type == "normalize":
            return tuple(spec.mean), tuple(spec.std)
    raise ValueError("data.val_transforms has no normalize: the end-to-end graph needs one")


def _config_image_size(cfg) -> int:
    """The square input size the config's validation data produce (image_size or resize)."""
    for spec in cfg.data.val_transforms:
        size = getattr(spec, "size", None)
        if isinstance(size, int):
            return size
    val = cfg.data.val
    size = getattr(val, "image_size", None) if val is not None else None
    if isinstance(size, int):
        return size
    raise ValueError("cannot tell the input size from the config's data.val: pass --image-size")


def add_command(subparsers: argparse._SubParsersAction) -> None:
    from tunedet.cli.main import add_checkpoint_target

    p = subparsers.add_parser(
        "export",
        help="export to ONNX (end to end: image → detections) or TorchScript, checked against eager",
    )
    add_checkpoint_target(p)
    p.add_argument("overrides", nargs="*")
    p.add_argument("--format", choices=["onnx", "torchscript"], default="onnx")
    p.add_argument(
        "--raw",
        action="store_true",
        help="ONNX of the dense network only (images → cls_logits, box_deltas)",
    )
    p.add_argument(
        "--out",
        help="output file (default: the checkpoint's name with .onnx, .dense.onnx "
        "or .torchscript.pt)",
    )
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")
    p.add_argument("--image-size", type=int, help="square input size (default: from the config)")
    p.add_argument(
        "--tolerance", type=float, default=1e-3, help="largest |exported − eager| (1e-3)"
    )
    p.add_argument("--fold-bn", action="store_true", help="fold conv-BN pairs before exporting")
    p.add_argument(
        "--reparam",
        action="store_true",
        help="fold each RepVGG block's branches into one 3x3 conv before exporting",
    )
    p.set_defaults(func=cmd_export)
