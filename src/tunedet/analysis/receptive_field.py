"""``tunedet analyze receptive-field CONFIG``: each pyramid level's receptive fields beside
its anchor sizes.

For the unit at the centre of each feature map the head reads (the neck's outputs, or the
backbone's without a neck), the gradient of the sum of its channels with respect to the
input image is taken on ``samples`` random N(0, 1) images (Luo et al. 2016, "Understanding
the Effective Receptive Field in Deep Convolutional Neural Networks"):

- theoretical receptive field (TRF): the support of the same gradient in a linearised
  copy of the network (`linearised_copy`: every conv and linear kernel a positive
  constant, norms and activations pointwise identities, max-pools average-pools), so no
  ReLU or max-pool can block a path and no weights can cancel; measured as its bounding
  box, and where it reaches the image border it is at least the image size;
- effective receptive field (ERF): the pixels where the mean |gradient| is at least
  ``threshold`` of its peak (default e⁻² ≈ 0.135: the 2σ contour of a Gaussian, the
  shape Luo et al. find), reported as the side ``sqrt(count)`` of a square of that area.

Luo et al. show the ERF is roughly Gaussian and much smaller than the TRF; anchors (or
priors) much larger than a level's ERF ask the head to regress boxes from features that
barely see the object. The weights are the config's initialisation, or a checkpoint's.
"""

from __future__ import annotations

import argparse
import math
from copy import deepcopy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.ops.misc import FrozenBatchNorm2d

from tunedet.analysis.inputs import add_config_arguments, build_model, load_config, plt, save_figure


def pyramid_features(model: nn.Module, images: Tensor) -> list[Tensor]:
    """The feature maps the detector's heads read: the neck's outputs (or the backbone's)."""
    if not hasattr(model, "backbone"):
        raise ValueError(f"analyze receptive-field: {type(model).__name__} has no backbone")
    feats = model.backbone(images)
    neck = getattr(model, "neck", None)
    if neck is not None:
        feats = neck(feats)
    if isinstance(feats, Tensor):
        feats = [feats]
    return list(feats)


def linearised_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode whose gradient support is its theoretical receptive
    field: conv/linear weights ``1 / fan_in`` (biases 0), norm layers and activations
    replaced by identities, ``MaxPool2d`` by ``AvgPool2d`` of the same window. Functional
    activations (``F.relu``) stay, so it is run on positive images."""
    copy = deepcopy(model).eval()
    pointwise = (
        nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, FrozenBatchNorm2d,
        nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.SiLU, nn.GELU, nn.Hardswish, nn.Sigmoid, nn.Mish,
    )  # fmt: skip
    for name, module in list(copy.named_modules()):
        if not name:
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = copy.get_submodule(parent_name) if parent_name else copy
        if isinstance(module, pointwise):
            setattr(parent, attr, nn.Identity())
        elif isinstance(module, nn.MaxPool2d):
            setattr(
                parent,
                attr,
                nn.AvgPool2d(module.kernel_size, module.stride, module.padding, module.ceil_mode),
            )
        elif isinstance(module, (nn.Conv2d, nn.Linear)):
            with torch.no_grad():
                module.weight.fill_(1.0 / max(module.weight[0].numel(), 1))
                if module.bias is not None:
                    module.bias.zero_()
    return copy


def trf_extent(support: np.ndarray) -> tuple[int, int, int, int]:
    """Bounding box (x0, y0, x1, y1), end exclusive, of the True pixels of ``support (H, W)``."""
    rows, cols = np.flatnonzero(support.any(1)), np.flatnonzero(support.any(0))
    if len(rows) == 0:
        return 0, 0, 0, 0
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def erf_side(
    grad: np.ndarray, threshold: float = math.exp(-2)
) -> tuple[float, tuple[float, float]]:
    """``sqrt`` of the number of pixels of ``grad (H, W) >= 0`` at or above ``threshold`` ×
    its maximum (the side of a square of that area), and the centre of mass (x, y) of
    those pixels' gradient."""
    peak = grad.max()
    if peak <= 0:
        return 0.0, (0.0, 0.0)
    inside = grad >= threshold * peak
    ys, xs = np.nonzero(inside)
    weights = grad[inside]
    centre = (
        float((xs * weights).sum() / weights.sum()),
        float((ys * weights).sum() / weights.sum()),
    )
    return math.sqrt(float(inside.sum())), centre


def centre_gradients(model: nn.Module, images: Tensor) -> list[tuple[Tensor, int]]:
    """Per pyramid level: (d Σ_channels feature[centre] / d images, the level's width)."""
    feats = pyramid_features(model, images)
    out = []
    for level, feat in enumerate(feats):
        h, w = feat.shape[-2:]
        unit = feat[:, :, h // 2, w // 2].sum()
        (grad,) = torch.autograd.grad(unit, images, retain_graph=level + 1 < len(feats))
        out.append((grad, w))
    return out


def receptive_fields(
    model: nn.Module,
    size: int,
    samples: int = 8,
    threshold: float = math.exp(-2),
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Per level: ``stride``, ``trf`` (w, h) and ``trf_box``, ``trf_clipped`` (reaches the
    border), ``erf`` (side), ``centre`` (x, y) and ``grad`` (H, W), the mean |gradient|
    of its centre unit over ``samples`` N(0, 1) images."""
    device = next(model.parameters()).device
    ones = torch.ones(1, 3, size, size, device=device, requires_grad=True)
    supports = [
        (grad[0].abs().sum(dim=0) > 0).cpu().numpy()
        for grad, _ in centre_gradients(linearised_copy(model), ones)
    ]
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(samples, 3, size, size, generator=g).to(device).requires_grad_(True)
    out = []
    for level, (grad, width) in enumerate(centre_gradients(model, images)):
        mean = grad.abs().sum(dim=1).mean(dim=0).double().cpu().numpy()
        x0, y0, x1, y1 = trf_extent(supports[level])
        side, centre = erf_side(mean, threshold)
        out.append(
            {
                "level": level,
                "stride": size / width,
                "trf": (x1 - x0, y1 - y0),
                "trf_box": (x0, y0, x1, y1),
                "trf_clipped": x0 == 0 or y0 == 0 or x1 == size or y1 == size,
                "erf": side,
                "centre": centre,
                "grad": mean,
            }
        )
    return out


def anchor_shapes(model: nn.Module) -> list[np.ndarray] | None:
    """Per level (A, 2) anchor widths and heights of the detector's anchor generator (a
    two-stage detector's: its RPN's), or None for an anchor-free detector."""
    generator = getattr(model, "anchor_generator", None)
    if generator is None and hasattr(model, "rpn"):
        generator = getattr(model.rpn, "anchor_generator", None)
    if generator is None or not hasattr(generator, "base_anchors"):
        return None
    shapes = []
    for level in range(generator.num_levels):
        base = generator.base_anchors(level).double().numpy()
        shapes.append(np.stack([base[:, 2] - base[:, 0], base[:, 3] - base[:, 1]], axis=1))
    return shapes


def format_table(fields: list[dict[str, Any]], anchors: list[np.ndarray] | None) -> str:
    lines = ["level  stride  TRF (w x h)     ERF    anchor sizes sqrt(w·h)"]
    for f in fields:
        trf = f"{f['trf'][0]} x {f['trf'][1]}" + (" (>=)" if f["trf_clipped"] else "")
        sizes = "anchor-free"
        if anchors is not None and f["level"] < len(anchors):
            s = np.sqrt(anchors[f["level"]].prod(axis=1))
            sizes = f"{s.min():.0f}-{s.max():.0f}" if s.max() > s.min() else f"{s.min():.0f}"
        elif anchors is not None:
            sizes = "(no anchors)"
        lines.append(f"{f['level']:5d}  {f['stride']:6.0f}  {trf:14s}  {f['erf']:5.0f}  {sizes}")
    return "\n".join(lines)


def plot_receptive_fields(
    fields: list[dict[str, Any]], anchors: list[np.ndarray] | None, title: str, out: str | Path
) -> Path:
    levels = len(fields)
    fig = plt.figure(figsize=(3.2 * max(levels, 3), 6.8), layout="constrained")
    grid = fig.add_gridspec(2, levels, height_ratios=[1.0, 0.9])
    for k, f in enumerate(fields):
        ax = fig.add_subplot(grid[0, k])
        grad = f["grad"]
        ax.imshow(grad / max(grad.max(), 1e-30), cmap="magma", interpolation="nearest")
        cx, cy = f["centre"]
        x0, y0, x1, y1 = f["trf_box"]
        ax.add_patch(
            plt.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ls="--", ec="white")
        )
        e = f["erf"]
        ax.add_patch(
            plt.Rectangle((cx - e / 2, cy - e / 2), e, e, fill=False, ec="tab:green", lw=1.5)
        )
        if anchors is not None and k < len(anchors):
            for w, h in anchors[k]:
                ax.add_patch(
                    plt.Rectangle((cx - w / 2, cy - h / 2), w, h, fill=False, ec="tab:cyan", lw=0.8)
                )
        ax.set_title(f"level {k} (stride {f['stride']:.0f})", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    ax = fig.add_subplot(grid[1, :])
    strides = [f["stride"] for f in fields]
    trf = [math.sqrt(f["trf"][0] * f["trf"][1]) for f in fields]
    ax.plot(
        strides, trf, "o--", color="black", label="theoretical RF (bounding box; ▲: ≥, clipped)"
    )
    for s, t, f in zip(strides, trf, fields, strict=True):
        if f["trf_clipped"]:
            ax.plot([s], [t], "^", color="black", ms=9)
    ax.plot(
        strides,
        [f["erf"] for f in fields],
        "o-",
        color="tab:green",
        label="effective RF (|grad| ≥ e⁻² of its peak)",
    )
    if anchors is not None:
        for k, (s, shape) in enumerate(zip(strides, anchors, strict=False)):
            sizes = np.sqrt(shape.prod(axis=1))
            ax.scatter([s] * len(sizes), sizes, color="tab:cyan", marker="s", s=22,
                       label="anchor sizes sqrt(w·h)" if k == 0 else None)  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xticks(strides, [f"{s:.0f}" for s in strides])
    ax.set_xlabel("stride of the level (px)")
    ax.set_ylabel("size (px)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(
        f"{title}: centre unit's mean |gradient| per level "
        "(dashed: theoretical RF, green: effective RF, cyan: anchors)",
        fontsize=10,
    )
    return save_figure(fig, out)


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    torch.manual_seed(cfg.seed)
    model, _ = build_model(cfg, args.checkpoint)
    try:
        fields = receptive_fields(model, args.size, args.samples, args.threshold)
    except RuntimeError as error:  # e.g. VGG's pooling below 1 px on a small --size
        first = str(error).strip().splitlines()[0]
        raise ValueError(
            f"the model does not run on a {args.size}x{args.size} input (--size): {first}"
        ) from None
    anchors = anchor_shapes(model)
    print(f"{args.config}: input {args.size} x {args.size}, {args.samples} random images")
    print(format_table(fields, anchors))
    out = plot_receptive_fields(fields, anchors, args.config, args.out)
    print(f"wrote {out}")
    return 0


def add_analyze_command(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "receptive-field",
        help="theoretical and effective (gradient) receptive field per level vs anchor sizes",
    )
    add_config_arguments(p)
    p.add_argument("--checkpoint", help="measure these weights instead of the initialisation")
    p.add_argument("--size", type=int, default=512, help="input side in px (default 512)")
    p.add_argument("--samples", type=int, default=8, help="random images averaged (default 8)")
    p.add_argument(
        "--threshold", type=float, default=math.exp(-2), help="ERF: fraction of the peak (e^-2)"
    )
    p.add_argument("--out", default="runs/analyze/receptive_field.png", help="PNG to write")
    p.set_defaults(func=run)
