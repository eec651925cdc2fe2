"""``tunedet export CONFIG --checkpoint CKPT --format onnx|torchscript``.

Writes the dense network (backbone, neck, head; post-processing stays in torch: see
``deploy/export.py``), optionally with conv-BN folded first, then runs the exported file
and the eager model on the same random batch and prints the largest absolute difference
of their outputs; fails (exit 2) when it exceeds ``--tolerance``.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_export(args: argparse.Namespace) -> int:
    import torch

    from tunedet.cli.main import _load, _model_from_checkpoint
    from tunedet.deploy import (
        DenseNetwork,
        ExportedDetector,
        export_dense,
        fold_conv_bn,
        max_abs_difference,
    )

    cfg = _load(args.config, args.overrides)
    model, _ = _model_from_checkpoint(cfg, args.checkpoint)
    model = model.cpu().float().eval()
    if args.fold_bn:
        model, folded = fold_conv_bn(model)
        print(f"folded {folded} conv-BN pairs")
    image_size = args.image_size or _config_image_size(cfg)
    suffix = ".onnx" if args.format == "onnx" else ".pt"
    out = Path(args.out or Path(args.checkpoint).with_suffix(suffix))
    export_dense(model, out, args.format, image_size)
    exported = ExportedDetector(model, out, args.format, image_size, threads=cfg.threads)
    images = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        eager = DenseNetwork(model)(images)
    diff = max_abs_difference(eager, exported.dense(images))
    print(f"wrote {out} ({args.format}, {image_size}×{image_size}, dynamic batch)")
    print(f"max abs difference vs eager (cls_logits, box_deltas): {diff:.3g}")
    if diff > args.tolerance:
        raise ValueError(
            f"{out}: exported outputs differ from eager by {diff:.3g} > --tolerance {args.tolerance:g}"
        )
    return 0


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
    p = subparsers.add_parser(
        "export", help="export the dense network to ONNX or TorchScript, checked against eager"
    )
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--format", choices=["onnx", "torchscript"], default="onnx")
    p.add_argument("--out", help="output file (default: the checkpoint's name with .onnx/.pt)")
    p.add_argument("--image-size", type=int, help="square input size (default: from the config)")
    p.add_argument(
        "--tolerance", type=float, default=1e-3, help="largest |exported − eager| (1e-3)"
    )
    p.add_argument("--fold-bn", action="store_true", help="fold conv-BN pairs before exporting")
    p.set_defaults(func=cmd_export)
