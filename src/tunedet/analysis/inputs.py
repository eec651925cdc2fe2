"""What the analysis tools read: configs, samples as the model sees them, models, figures.

Not a tool itself (no ``add_analyze_command``); the tools share these edges.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """``CONFIG [KEY=VALUE ...]`` positionals, as ``tunedet train`` takes them."""
    parser.add_argument("config", help="config file or built-in name (retinanet/demo)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides: data.val.num_images=50")


def load_config(config: str, overrides: list[str] | tuple[str, ...] = ()) -> Any:
    from tunedet.config.loader import load_config as load

    return load(config, list(overrides))


def split_dataset(cfg: Any, split: str) -> Any:
    """The config's ``data.train`` or ``data.val`` dataset."""
    from tunedet.data.build import build_dataset

    spec = cfg.data.train if split == "train" else cfg.data.val
    if spec is None:
        raise ValueError(f"the config has no data.{split}")
    return build_dataset(spec)


def spread_indices(length: int, count: int) -> list[int]:
    """Up to ``count`` indices spread evenly over ``range(length)`` (first and last included)."""
    if length <= 0 or count <= 0:
        return []
    return sorted({int(i) for i in np.linspace(0, length - 1, min(count, length)).round()})


def model_samples(
    cfg: Any, dataset: Any, indices: list[int], batch_size: int = 8
) -> Iterator[tuple[Any, list[int]]]:
    """``(DetectionBatch, dataset indices)`` of ``indices`` through the config's
    deterministic validation transforms (what the model sees at evaluation)."""
    from torch.utils.data import Subset

    from tunedet.data.build import build_loader

    loader = build_loader(
        Subset(dataset, indices),
        cfg.data.val_transforms,
        batch_size=batch_size,
        seed=cfg.seed,
        num_workers=0,
        size_divisor=cfg.data.size_divisor,
    )
    start = 0
    for batch in loader:
        yield batch, indices[start : start + len(batch)]
        start += len(batch)


def build_model(
    cfg: Any, checkpoint: str | None = None, pretrained: bool = True
) -> tuple[torch.nn.Module, torch.device]:
    """The config's detector in eval mode, with ``checkpoint``'s weights when given (its EMA
    weights when the run kept them: the weights ``tunedet eval`` scores).

    ``pretrained=False`` skips ``backbone.init`` (ImageNet files, perhaps a download): for
    tools that look at shapes, anchors and assignment, not at learned weights.
    """
    from tunedet.engine.build import model_from_checkpoint, resolve_device
    from tunedet.models import build_detector
    from tunedet.models.pretrained import skip_backbone_init

    device = resolve_device(cfg.device)
    if checkpoint is not None:  # every weight comes from the checkpoint
        return model_from_checkpoint(checkpoint, device, cfg=cfg)[0], device
    spec = cfg.model.model_dump()
    if not pretrained:
        spec = skip_backbone_init(spec)
    model = build_detector(spec).to(device)
    model.eval()
    return model, device


def image_grid(count: int, tile: float = 3.6) -> tuple[plt.Figure, np.ndarray]:
    """A figure with ``count`` image axes (4 per row), axes without ticks, constrained layout
    (put a legend above with ``fig.legend(loc="outside upper center")``)."""
    cols = max(1, min(4, count))
    rows = max(1, -(-count // cols))
    fig, axes = plt.subplots(
        rows, cols, figsize=(tile * cols, tile * rows + 1.2), squeeze=False, layout="constrained"
    )
    for ax in axes.flat:
        ax.set_axis_off()
    return fig, axes.flat[:count] if count else axes.flat[:0]


def save_figure(fig: plt.Figure, out: str | Path, dpi: int = 100) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out
