"""``tunedet convert torchvision IN.pth OUT.pt --config CFG``: a torchvision detection
checkpoint as a tunedet one.

The keys are renamed (``models/convert``), the result is loaded into the model that
``CFG`` builds (so a wrong config fails here, in one line) and saved as a tunedet
checkpoint: ``{"model": state_dict, "source": IN, "architecture": ...}``, usable with
``load_from``, ``tunedet eval --checkpoint`` and ``tunedet infer --checkpoint``.
``--coco80`` keeps the 80 real COCO classes of torchvision's 91 outputs, so the model
predicts the labels of tunedet's ``coco`` dataset and can be evaluated as it is.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_command(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "convert", help="convert another toolbox's detector checkpoint into a tunedet one"
    )
    p.add_argument("source", choices=["torchvision"], help="the toolbox the checkpoint is from")
    p.add_argument("input", help="the checkpoint file (a torchvision detection state_dict)")
    p.add_argument("output", help="where to write the tunedet checkpoint (.pt)")
    p.add_argument(
        "--config",
        required=True,
        help="tunedet config of the same architecture (e.g. retinanet/tv_retinanet_resnet50_fpn)",
    )
    p.add_argument(
        "--coco80",
        action="store_true",
        help="keep the 80 COCO classes of torchvision's 91 outputs, in category-id order "
        "(the labels of tunedet's coco dataset); sets model.num_classes=80",
    )
    p.add_argument("overrides", nargs="*", help="dotted config overrides")
    p.set_defaults(func=cmd_convert)


def cmd_convert(args: argparse.Namespace) -> int:
    from tunedet.config.loader import load_config
    from tunedet.engine.checkpoint import load_checkpoint, load_model_state, save_checkpoint
    from tunedet.models import build_detector
    from tunedet.models.convert import coco80_indices, convert_torchvision_detector, select_classes

    overrides = [*args.overrides, *(["model.num_classes=80"] if args.coco80 else [])]
    cfg = load_config(args.config, overrides)
    if getattr(cfg.model.backbone, "init", "none") != "none":
        # the backbone's own init is irrelevant: every tensor comes from the checkpoint
        cfg = load_config(args.config, [*overrides, "model.backbone.init=none"])
    raw = load_checkpoint(args.input)
    if isinstance(raw.get("model"), dict):
        raw = raw["model"]
    state, arch = convert_torchvision_detector(raw)
    if args.coco80:
        state = select_classes(state, coco80_indices(), num_classes=91)
    model = build_detector(cfg.model.model_dump())
    load_model_state(model, state, source=args.input)
    out = save_checkpoint(
        args.output,
        {"model": model.state_dict(), "source": str(Path(args.input)), "architecture": arch},
    )
    print(f"converted torchvision {arch} ({len(state)} tensors) → {out}")
    return 0
