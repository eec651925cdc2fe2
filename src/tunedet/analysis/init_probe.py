"""``tunedet analyze init CONFIG``: the classification branch at initialisation.

Lin et al. 2017 (focal loss, section 4.1 "Initialization") start the classifier's bias
at ``b = −log((1 − π)/π)`` so that every anchor's initial foreground probability is
``π`` (0.01): with ``b = 0`` each of the ~10⁵ background anchors starts at ``p = 0.5``
and their loss swamps the first iterations. This probe builds the config's detector
(untrained, or a checkpoint's weights), runs it on a few images of the training set
and prints, for every layer that outputs class logits, its weight and bias statistics,
the prior the bias implies (``sigmoid(b)``; softmax heads: the background probability
of the bias alone), the output probabilities, and the loss the outputs would give if
every location were background: binary cross-entropy ``−log(1 − p)`` and the focal
term ``(1 − α)·p^γ·(−log(1 − p))`` (α = 0.25, γ = 2) for sigmoid heads, ``−log p_bg``
for softmax heads, per location and summed over one image.

Classification layers are found by name: ``cls_logits`` (RetinaNet, FCOS), ``objectness``
(RPN), ``cls_convs.<level>`` (SSD, softmax with background last), ``cls_score`` (the R-CNN
box head, softmax with background last), ``predictors.<level>`` (YOLOv3: objectness and
class channels of each anchor's ``5 + C`` outputs), ``tl_heat``/``br_heat`` (CornerNet's
corner heatmaps).
"""

from __future__ import annotations

import argparse
import math
import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from tunedet.analysis.inputs import (
    add_config_arguments,
    build_model,
    load_config,
    model_samples,
    split_dataset,
    spread_indices,
)

FOCAL_ALPHA, FOCAL_GAMMA = 0.25, 2.0


@dataclass
class ClassBranch:
    """One layer producing class logits: ``layer`` (the Conv2d/Linear), ``activation``
    (``sigmoid`` or ``softmax``), ``group`` outputs per location (anchor), and the
    ``channels`` of each group that are logits (softmax: all, background last)."""

    name: str
    layer: nn.Module
    activation: str
    group: int
    channels: slice

    def logits(self, output: Tensor) -> Tensor:
        """The layer's raw output (B, G·A, H, W) or (R, G) -> logits (M, len(channels))."""
        if output.dim() == 4:  # conv: (B, A·G, H, W) -> (B·H·W·A, G)
            b, _, h, w = output.shape
            output = output.view(b, -1, self.group, h, w).permute(0, 3, 4, 1, 2)
        return output.reshape(-1, self.group)[:, self.channels]


def _output_layer(module: nn.Module) -> nn.Module:
    """The layer that writes the logits: a depthwise-separable branch (SSDLite's
    ``Sequential(dw conv, BN, ReLU6, 1x1 conv)``) ends in its last conv."""
    from tunedet.models.layers import output_conv

    layer = output_conv(module)
    if not hasattr(layer, "weight"):
        convs = [m for m in layer.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
        layer = convs[-1] if convs else layer
    return layer


def find_class_branches(model: nn.Module) -> list[ClassBranch]:
    """The class-logit layers of ``model`` (module docstring); an error when none is known."""
    num_classes = getattr(model, "num_classes", None)
    branches = []
    for name, module in model.named_modules():
        last = name.rsplit(".", 1)[-1]
        if last in ("cls_logits", "objectness"):
            layer = _output_layer(module)
            branches.append(ClassBranch(name, layer, "sigmoid", 1, slice(None)))
        elif re.search(r"(^|\.)cls_convs\.\d+$", name) and num_classes:
            branches.append(
                ClassBranch(name, _output_layer(module), "softmax", num_classes + 1, slice(None))
            )
        elif last in ("tl_heat", "br_heat") and isinstance(module, nn.Sequential):
            branches.append(ClassBranch(name, module[-1], "sigmoid", 1, slice(None)))
        elif last == "cls_score" and isinstance(module, nn.Linear):
            branches.append(ClassBranch(name, module, "softmax", module.out_features, slice(None)))
        elif re.search(r"(^|\.)predictors\.\d+$", name) and num_classes:
            branches.append(ClassBranch(name, module, "sigmoid", 5 + num_classes, slice(4, None)))
    if not branches:
        raise ValueError(
            f"analyze init: no classification layer this probe knows in {type(model).__name__} "
            "(looked for cls_logits, objectness, cls_convs.N, cls_score, predictors.N, tl_heat)"
        )
    return branches


def branch_statistics(branch: ClassBranch, logits: Tensor, images: int) -> dict[str, float]:
    """Weight/bias statistics of ``branch`` and the probabilities and all-background
    losses of its ``logits (M, K)`` collected over ``images`` images."""
    weight = branch.layer.weight.detach().double()
    bias = branch.layer.bias
    stats: dict[str, float] = {
        "weight_mean": weight.mean().item(),
        "weight_std": weight.std().item(),
        "locations": logits.shape[0] / max(images, 1),
    }
    logits = logits.double()
    if bias is not None:
        b = bias.detach().double().view(-1, branch.group)[:, branch.channels]
        stats["bias_mean"] = b.mean().item()
        stats["bias_min"] = b.min().item()
        stats["bias_max"] = b.max().item()
        if branch.activation == "sigmoid":
            stats["bias_prior"] = torch.sigmoid(b).mean().item()
        else:
            stats["bias_prior"] = torch.softmax(b, dim=1)[:, -1].mean().item()
    stats["logit_mean"] = logits.mean().item()
    stats["logit_std"] = logits.std().item() if logits.numel() > 1 else 0.0
    if branch.activation == "sigmoid":
        p = torch.sigmoid(logits)
        bce = -torch.log1p(-p)  # −log(1 − p): each output as a negative
        focal = (1 - FOCAL_ALPHA) * p**FOCAL_GAMMA * bce
        stats["p_mean"] = p.mean().item()
        stats["p_max"] = p.max().item()
        stats["frac_p_above_half"] = (p > 0.5).double().mean().item()
        stats["bce_per_output"] = bce.mean().item()
        stats["bce_per_image"] = bce.sum().item() / max(images, 1)
        stats["focal_per_image"] = focal.sum().item() / max(images, 1)
    else:
        log_p = torch.log_softmax(logits, dim=1)
        stats["p_mean"] = log_p[:, :-1].exp().mean().item()  # a foreground class
        stats["p_max"] = log_p[:, :-1].exp().max().item()
        stats["p_background"] = log_p[:, -1].exp().mean().item()
        stats["ce_per_output"] = -log_p[:, -1].mean().item()
        stats["ce_per_image"] = -log_p[:, -1].sum().item() / max(images, 1)
    return stats


@torch.no_grad()
def probe_init(model: nn.Module, batches: list[Any]) -> dict[str, dict[str, float]]:
    """Statistics of every class branch of ``model`` (eval mode) over ``batches``."""
    branches = find_class_branches(model)
    collected: dict[str, list[Tensor]] = {b.name: [] for b in branches}
    hooks = [
        b.layer.register_forward_hook(
            lambda _m, _i, out, b=b: collected[b.name].append(b.logits(out).cpu())
        )
        for b in branches
    ]
    images = 0
    try:
        for batch in batches:
            model.predict(batch.images, batch.image_sizes)
            images += len(batch.images)
    finally:
        for hook in hooks:
            hook.remove()
    out = {}
    for branch in branches:
        if collected[branch.name]:
            logits = torch.cat(collected[branch.name])
            out[branch.name] = {"activation": branch.activation} | branch_statistics(
                branch, logits, images
            )
    return out


def format_report(report: dict[str, dict[str, Any]]) -> str:
    lines = []
    for name, s in report.items():
        lines.append(f"{name} ({s['activation']}, {s['locations']:.0f} outputs per image)")
        lines.append(f"  weight: mean {s['weight_mean']:+.2e}  std {s['weight_std']:.2e}")
        if "bias_mean" in s:
            what = "sigmoid(b)" if s["activation"] == "sigmoid" else "background softmax(b)"
            lines.append(
                f"  bias:   mean {s['bias_mean']:+.3f}  [{s['bias_min']:+.3f}, "
                f"{s['bias_max']:+.3f}]  {what} = {s['bias_prior']:.4f}"
            )
        lines.append(f"  logits: mean {s['logit_mean']:+.3f}  std {s['logit_std']:.3f}")
        if s["activation"] == "sigmoid":
            lines.append(
                f"  p:      mean {s['p_mean']:.4f}  max {s['p_max']:.4f}  "
                f"above 0.5: {100 * s['frac_p_above_half']:.1f}%"
            )
            lines.append(
                f"  if all background: BCE {s['bce_per_output']:.4f} per output, "
                f"{s['bce_per_image']:.1f} per image; focal {s['focal_per_image']:.3f} per image"
            )
        else:
            lines.append(
                f"  p:      foreground class mean {s['p_mean']:.4f} (max {s['p_max']:.4f}), "
                f"background mean {s['p_background']:.4f}"
            )
            lines.append(
                f"  if all background: CE {s['ce_per_output']:.4f} per output, "
                f"{s['ce_per_image']:.1f} per image"
            )
    return "\n".join(lines)


def prior_bias(prior: float) -> float:
    """``−log((1 − π)/π)``: the bias whose sigmoid is ``π``."""
    return -math.log((1 - prior) / prior)


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    torch.manual_seed(cfg.seed)
    model, device = build_model(cfg, args.checkpoint)
    find_class_branches(model)  # refuse before reading any image
    dataset = split_dataset(cfg, args.split)
    indices = spread_indices(len(dataset), args.images)
    batches = [batch.to(device) for batch, _ in model_samples(cfg, dataset, indices)]
    report = probe_init(model, batches)
    print(f"{args.config}: {len(indices)} images of data.{args.split}")
    print(format_report(report))
    print(f"(π = 0.01 gives bias {prior_bias(0.01):+.3f}, Lin et al. 2017)")
    return 0


def add_analyze_command(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "init", help="classification branch at initialisation: weights, bias prior, outputs"
    )
    add_config_arguments(p)
    p.add_argument("--checkpoint", help="probe these weights instead of the initialisation")
    p.add_argument("--split", choices=["train", "val"], default="train")
    p.add_argument("--images", type=int, default=4, help="images to run (default 4)")
    p.set_defaults(func=run)
