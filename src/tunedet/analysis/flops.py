"""``tunedet analyze flops CONFIG``: parameters and forward FLOPs per module.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` during one
``model.predict`` on a real validation sample (or ``--size H W`` zeros), at
2 FLOPs per multiply-accumulate (halve for the "MACs" many papers quote).
Only matmuls and convolutions are counted; element-wise ops, norms and the
post-processing (decoding, NMS) are not. Forward only: FlopCounterMode in
torch 2.14 over-counts the *weight gradient* of grouped and depthwise
convolutions by a factor of ``groups`` (shared/PERF_BASELINE.md), which does
not touch these forward counts; use another count for training-step FLOPs.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from tunedet.analysis.inputs import (
    add_config_arguments,
    build_model,
    load_config,
    model_samples,
    plt,
    save_figure,
    split_dataset,
)


class _PredictCall(torch.nn.Module):
    """Calls ``model.predict`` as a module, so every submodule is named from one root."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, image_sizes: torch.Tensor) -> Any:
        return self.model.predict(images, image_sizes)


@torch.no_grad()
def count_params_and_flops(
    model: torch.nn.Module, images: torch.Tensor, image_sizes: torch.Tensor, depth: int = 2
) -> list[dict[str, Any]]:
    """Parameters and forward FLOPs of `model` and its submodules up to `depth` levels.

    images: (B, 3, H, W); image_sizes: (B, 2). Returns rows ``{"module": dotted
    name ("" for the whole model), "depth", "params", "flops"}`` in module order.
    """
    counter = FlopCounterMode(display=False, depth=10**6)  # every module, aggregated below
    model.eval()
    with counter:
        _PredictCall(model)(images, image_sizes)
    # names are "_PredictCall.model.<dotted path>" (the wrapper fixes the root's name)
    root = f"{_PredictCall.__name__}.model"
    called = {
        ("" if name == root else name[len(root) + 1 :]): sum(ops.values())
        for name, ops in counter.get_flop_counts().items()
        if name == root or name.startswith(root + ".")
    }
    called.setdefault("", counter.get_total_flops())  # predict() need not call forward()
    modules = dict(model.named_modules())

    def flops_of(name: str) -> int:
        # containers never called (ModuleList) get the sum of their children's counts
        if name in called:
            return called[name]
        prefix = f"{name}." if name else ""
        children = [prefix + child for child, _ in modules[name].named_children()]
        return sum(flops_of(child) for child in children)

    rows = []
    for name, module in model.named_modules():
        level = 0 if name == "" else name.count(".") + 1
        if level > depth:
            continue
        params = sum(p.numel() for p in module.parameters())
        flops = flops_of(name)
        if params == 0 and flops == 0:
            continue
        rows.append({"module": name, "depth": level, "params": int(params), "flops": int(flops)})
    return rows


def format_table(rows: list[dict[str, Any]], input_shape: tuple[int, ...]) -> str:
    width = max(12, *(len(r["module"]) + 2 * r["depth"] for r in rows))
    lines = [
        f"input {tuple(input_shape)}; FLOPs = 2 x multiply-accumulates of convs and matmuls",
        f"{'module':<{width}}  {'params':>12}  {'GFLOPs':>9}  {'share':>6}",
    ]
    total = max(rows[0]["flops"], 1) if rows else 1
    for r in rows:
        name = "  " * max(r["depth"] - 1, 0) + (r["module"] or "(total)")
        lines.append(
            f"{name:<{width}}  {r['params']:>12,}  {r['flops'] / 1e9:>9.3f}  "
            f"{100 * r['flops'] / total:>5.1f}%"
        )
    return "\n".join(lines)


def plot_params_and_flops(
    rows: list[dict[str, Any]], input_shape: tuple[int, ...], title: str, out: str | Path
) -> Path:
    """Horizontal bars of parameters and GFLOPs per submodule (depth >= 1)."""
    parts = [r for r in rows if r["depth"] >= 1]
    names = ["    " * (r["depth"] - 1) + r["module"] for r in parts]
    y = np.arange(len(parts))
    total = rows[0] if rows and rows[0]["depth"] == 0 else {"params": 0, "flops": 0}
    fig, (ax_p, ax_f) = plt.subplots(
        1, 2, figsize=(12, 1.2 + 0.32 * max(len(parts), 4)), sharey=True
    )
    colours = ["tab:blue" if r["depth"] == 1 else "tab:cyan" for r in parts]
    ax_p.barh(y, [r["params"] / 1e6 for r in parts], color=colours)
    ax_f.barh(y, [r["flops"] / 1e9 for r in parts], color=colours)
    ax_p.set_yticks(y, names, fontsize=8)
    ax_p.invert_yaxis()
    ax_p.set_xlabel("parameters (millions)")
    ax_p.set_title(f"Parameters (total {total['params'] / 1e6:.3f} M)")
    ax_f.set_xlabel("GFLOPs (2 per multiply-accumulate)")
    ax_f.set_title(
        f"Forward FLOPs at input {tuple(input_shape)} (total {total['flops'] / 1e9:.3f} G)"
    )
    for ax in (ax_p, ax_f):
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(title + " (dark: top-level modules, light: their children)")
    fig.tight_layout()
    return save_figure(fig, out)


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    model, device = build_model(cfg, pretrained=False)  # weights play no part
    if args.size:
        h, w = args.size
        images = torch.zeros(1, 3, h, w, device=device)
        image_sizes = torch.tensor([[h, w]], device=device)
    else:
        batch, _ = next(model_samples(cfg, split_dataset(cfg, "val"), [0], batch_size=1))
        images, image_sizes = batch.images.to(device), batch.image_sizes.to(device)
    try:
        rows = count_params_and_flops(model, images, image_sizes, depth=args.depth)
    except RuntimeError as error:  # e.g. VGG's pooling below 1 px on a small --size
        if not args.size:
            raise
        first = str(error).strip().splitlines()[0]
        raise ValueError(f"the model does not run on a {h}x{w} input (--size): {first}") from None
    print(format_table(rows, tuple(images.shape)))
    out = plot_params_and_flops(rows, tuple(images.shape), f"{args.config}", args.out)
    print(f"wrote {out}")
    return 0


def add_analyze_command(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("flops", help="parameters and forward FLOPs per module")
    add_config_arguments(p)
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="input size (zeros)")
    p.add_argument("--depth", type=int, default=2, help="module nesting shown")
    p.add_argument("--out", default="runs/analyze/flops.png", help="PNG to write")
    p.set_defaults(func=run)
