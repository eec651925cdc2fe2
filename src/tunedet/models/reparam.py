"""Structural re-parameterisation for deployment: fold every RepVGG block of a model into
the single 3×3 conv it equals in evaluation mode (``models/backbones/repvgg.py``)."""

from __future__ import annotations

import torch
from torch import nn

from tunedet.models.backbones.repvgg import RepVGGBlock


def reparameterize(model: nn.Module) -> int:
    """Put ``model`` in eval mode and fold its multi-branch blocks in place; returns how
    many were folded (0 for a model without any). The outputs stay the same up to float
    rounding; the training-time branches (and their state-dict keys) are gone."""
    model.eval()
    blocks = [m for m in model.modules() if isinstance(m, RepVGGBlock) and m.fused is None]
    for block in blocks:
        block.reparameterize()
    return len(blocks)


def reparameterization_difference(model: nn.Module, image_size: int) -> tuple[int, float]:
    """Fold ``model`` (a detector) in place; returns the blocks folded and the largest
    absolute difference of its feature maps (backbone, then neck) before and after, on a
    fixed random batch ``(2, 3, image_size, image_size)``."""
    images = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    model.eval()

    def features() -> list[torch.Tensor]:
        feats = model.backbone(images)
        neck = getattr(model, "neck", None)
        return feats + (neck(feats) if neck is not None else [])

    with torch.no_grad():
        before = features()
        folded = reparameterize(model)
        after = features()
    worst = max(float((a - b).abs().max()) for a, b in zip(before, after, strict=True))
    return folded, worst
