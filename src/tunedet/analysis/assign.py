"""``tunedet analyze assign CONFIG``: which anchors become positives, per pyramid level.

Builds the detector from the config (``tunedet.models.build_detector``; no
checkpoint needed: assignment does not depend on the weights) and, on real
samples through the validation transforms, runs its backbone and neck for the
feature-map sizes, its anchor generator for the anchors and its assigner for
the matching, exactly as in training. Draws each GT box (white) with its
positive anchors coloured by level, and counts positives per GT and level:
GT boxes without any positive get no training signal.
"""

from __future__ import annotations

import argparse
import inspect
import math
from pathlib import Path

import numpy as np
import torch
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from tunedet.analysis.inputs import (
    add_config_arguments,
    build_model,
    image_grid,
    load_config,
    model_samples,
    save_figure,
    split_dataset,
    spread_indices,
)

LEVEL_COLOURS = ("tab:red", "tab:orange", "tab:green", "tab:blue", "tab:purple", "tab:brown")


@torch.no_grad()
def positive_anchors(
    model: torch.nn.Module, images: torch.Tensor, gt_boxes: torch.Tensor, gt_labels: torch.Tensor
) -> list[dict[str, np.ndarray]]:
    """Positive anchors of each image under the model's anchor generator and assigner.

    images: (B, 3, H, W); gt_boxes: (B, M, 4) xyxy px; gt_labels: (B, M), -1 padding.
    Returns per image ``{"anchors": (P, 4) xyxy, "level": (P,), "gt_index": (P,),
    "per_gt_level": (M_i, L) positives of each real GT on each level}``.
    """
    outputs = model(images)  # (..., anchors, num_anchors_per_level): every dense detector
    anchors, per_level = outputs[-2], outputs[-1]
    level_of = torch.repeat_interleave(
        torch.arange(len(per_level), device=images.device),
        torch.tensor(per_level, device=images.device),
    )
    gt_boxes = gt_boxes.to(anchors)
    if gt_labels.shape[1] == 0:
        matched = torch.zeros(len(images), len(anchors), dtype=torch.long, device=anchors.device)
    else:
        # YOLOv3's grid assigner reads only the anchors; the others also the predictions
        # (cls_logits, box_deltas first).
        first = next(iter(inspect.signature(model.assign_targets).parameters))
        inputs = (anchors,) if first == "anchors" else (outputs[0], outputs[1], anchors)
        matched = model.assign_targets(*inputs, per_level, gt_boxes, gt_labels).matched
    out = []
    for b in range(len(images)):
        positive = matched[b] > 0
        gt_index = matched[b][positive] - 1
        num_gt = int((gt_labels[b] >= 0).sum())
        counts = np.zeros((num_gt, len(per_level)), dtype=np.int64)
        np.add.at(counts, (gt_index.cpu().numpy(), level_of[positive].cpu().numpy()), 1)
        out.append(
            {
                "anchors": anchors[positive].cpu().numpy(),
                "level": level_of[positive].cpu().numpy(),
                "gt_index": gt_index.cpu().numpy(),
                "per_gt_level": counts,
            }
        )
    return out


def level_names(strides: tuple[int, ...]) -> list[str]:
    return [f"P{int(round(math.log2(s)))} (stride {s})" for s in strides]


def plot_assignment(
    images: list[np.ndarray],
    gts: list[np.ndarray],
    positives: list[dict[str, np.ndarray]],
    scales: list[float],
    strides: tuple[int, ...],
    title: str,
    out: str | Path,
) -> Path:
    """GT boxes (white) and their positive anchors coloured by level, on original images."""
    fig, axes = image_grid(len(images))
    names = level_names(strides)
    totals = np.zeros(len(strides), dtype=np.int64)
    for ax, image, gt, pos, scale in zip(axes, images, gts, positives, scales, strict=True):
        ax.imshow(image)
        for anchor, level in zip(pos["anchors"] / scale, pos["level"], strict=True):
            x0, y0, x1, y1 = anchor
            colour = LEVEL_COLOURS[level % len(LEVEL_COLOURS)]
            ax.add_patch(
                Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec=colour, lw=0.8, alpha=0.9)
            )
            ax.plot((x0 + x1) / 2, (y0 + y1) / 2, "o", ms=2.5, color=colour)
        counts = pos["per_gt_level"]
        starved = counts.sum(axis=1) == 0 if len(counts) == len(gt) else np.zeros(len(gt), bool)
        for (x0, y0, x1, y1), none in zip(gt, starved, strict=True):
            ax.add_patch(
                Rectangle(
                    (x0, y0), x1 - x0, y1 - y0, fill=False, lw=2,
                    ec="black" if none else "white", ls="--" if none else "-",
                )
            )  # fmt: skip
        totals += counts.sum(axis=0)
        without = int((counts.sum(axis=1) == 0).sum())
        ax.set_title(
            f"{len(gt)} GT, {len(pos['level'])} positives, {without} GT without any",
            fontsize=9,
            color="tab:red" if without else "black",
        )
        ax.set_xlim(0, image.shape[1])
        ax.set_ylim(image.shape[0], 0)
    handles = [
        Line2D([], [], color="white", lw=2, label="GT box"),
        Line2D([], [], color="black", lw=2, ls="--", label="GT box without positives"),
    ] + [
        Line2D([], [], color=LEVEL_COLOURS[i % len(LEVEL_COLOURS)], lw=2, marker="o", ms=3,
               label=f"{names[i]}: {int(totals[i])} positives")
        for i in range(len(strides))
    ]  # fmt: skip
    legend = fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=9)
    legend.get_frame().set_facecolor("lightgrey")
    fig.suptitle(title, fontsize=11)
    return save_figure(fig, out)


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    model, device = build_model(cfg, pretrained=False)  # weights play no part
    if hasattr(model, "rpn"):
        raise ValueError(
            f"analyze assign draws a dense detector's assigned anchors; model.type "
            f"{cfg.model.type} assigns proposals in two stages (use analyze anchors for its "
            "RPN anchors)"
        )
    if not hasattr(model, "anchor_generator"):
        raise ValueError(
            f"analyze assign draws a dense detector's assigned anchors; model.type "
            f"{cfg.model.type} has no anchors (it predicts keypoints or heatmaps)"
        )
    if not hasattr(model, "assign_targets"):
        raise ValueError(
            f"analyze assign draws the positives of the detector's assign_targets; model.type "
            f"{cfg.model.type} chooses its positives inside its loss and exposes no assign_targets"
        )
    dataset = split_dataset(cfg, args.split)
    images, gts, positives, scales = [], [], [], []
    for batch, indices in model_samples(
        cfg, dataset, spread_indices(len(dataset), args.num_images)
    ):
        batch = batch.to(device)
        positives += positive_anchors(model, batch.images, batch.gt_boxes, batch.gt_labels)
        for index, meta in zip(indices, batch.metas, strict=True):
            sample = dataset[index]
            images.append(np.asarray(sample["image"]))
            gts.append(np.asarray(sample["boxes"]).reshape(-1, 4))
            scales.append(float(meta["scale"]))
    counts = np.concatenate([p["per_gt_level"] for p in positives])
    strides = tuple(model.anchor_generator.strides)
    per_gt = counts.sum(axis=1)
    assigner = type(model.assigner).__name__
    print(f"assigner {assigner}: {len(per_gt)} GT boxes in {len(images)} images")
    for name, total in zip(level_names(strides), counts.sum(axis=0), strict=True):
        print(f"  {name}: {int(total)} positives")
    if len(per_gt):
        print(
            f"  positives per GT: mean {per_gt.mean():.2f}, min {per_gt.min()}, "
            f"GT without positives: {int((per_gt == 0).sum())}"
        )
    title = f"Positive anchors of {assigner} ({args.config}, {args.split} set)"
    out = plot_assignment(images, gts, positives, scales, strides, title, args.out)
    print(f"wrote {out}")
    return 0


def add_analyze_command(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "assign", help="GT boxes and their positive anchors per level on real samples"
    )
    add_config_arguments(p)
    p.add_argument("--split", choices=["train", "val"], default="val")
    p.add_argument("--num-images", type=int, default=8)
    p.add_argument("--out", default="runs/analyze/assign.png", help="PNG to write")
    p.set_defaults(func=run)
