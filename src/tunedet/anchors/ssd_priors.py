"""SSD's default boxes ("priors", Liu et al., 2016), as the reference Caffe SSD300 lays them out.

Sizes: with ``m`` levels and ``basesize_ratio_range = (r_min, r_max)`` in fractions of the
input, the step is ``⌊(100·r_max − 100·r_min) / (m − 2)⌋`` percent; levels 2..m take
``s_k = ⌊input · (100·r_min + (k − 2)·step) / 100⌋`` and the first level
``⌊input · first_size_ratio⌋``; each level's "max size" is the next level's ``s_k``
(``⌊input · (100·r_min + (m − 1)·step) / 100⌋`` for the last). SSD300 (0.2, 0.9, first
0.1): ``s = 30, 60, 111, 162, 213, 264`` and max sizes ``60, 111, …, 315``.

Per cell, in this order: the square ``s_k``, the extra square ``sqrt(s_k · s_{k+1})``, then
for each ratio ``r`` of the level ``(s_k·√r, s_k/√r)`` and ``(s_k/√r, s_k·√r)`` (w, h):
``2 + 2·len(ratios)`` priors, 4 with ratios {2} and 6 with {2, 3}. Centres
``((x + 0.5)·stride, (y + 0.5)·stride)`` with the paper's strides 8, 16, 32, 64, 100, 300.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import Tensor

from tunedet.anchors.grid import GridAnchorGenerator
from tunedet.config.registry import register

SSD300_RATIOS = ((2.0,), (2.0, 3.0), (2.0, 3.0), (2.0, 3.0), (2.0,), (2.0,))


def ssd_sizes(
    input_size: int,
    num_levels: int,
    basesize_ratio_range: tuple[float, float] = (0.2, 0.9),
    first_size_ratio: float = 0.1,
) -> tuple[list[float], list[float]]:
    """(min sizes, max sizes) per level from the Caffe SSD rule (see the module docstring)."""
    if num_levels < 3:
        raise ValueError(f"the SSD size rule needs at least 3 levels, got {num_levels}")
    low, high = round(basesize_ratio_range[0] * 100), round(basesize_ratio_range[1] * 100)
    if not 0 < low < high:
        raise ValueError(
            f"basesize_ratio_range must be increasing in (0, 1], got {basesize_ratio_range}"
        )
    step = (high - low) // (num_levels - 2)
    percents = [low + k * step for k in range(num_levels)]  # levels 2..m, then the last max
    min_sizes = [float(input_size * first_size_ratio // 1)]
    min_sizes += [float(input_size * p // 100) for p in percents[: num_levels - 1]]
    max_sizes = min_sizes[1:] + [float(input_size * percents[num_levels - 1] // 100)]
    return min_sizes, max_sizes


@register("anchor_generator", "ssd_priors")
class SSDPriorGenerator(GridAnchorGenerator):
    """SSD default boxes: squares s_k and sqrt(s_k·s_k+1), 2 per ratio (4 or 6 per cell).

    SSD300's layout by default.

    Args:
        strides: centre spacing of each level (SSD300: 8, 16, 32, 64, 100, 300).
        input_size: the side the sizes are fractions of (300).
        basesize_ratio_range: (r_min, r_max) of the size rule; (0.2, 0.9) in the paper.
        first_size_ratio: the first level's size as a fraction of the input (0.1).
        ratios: per level, the aspect ratios r > 1 besides 1 (each gives r and 1/r).
        min_sizes, max_sizes: explicit per-level ``s_k`` and ``s_{k+1}`` instead of the rule.
        center_offset: centre within the cell, in strides.
        clip: clamp each prior's width and height to ``input_size`` (torchvision's
            ``DefaultBoxGenerator(clip=True)``, which clamps them to 1 in fractions of the
            image, before centring); off in the reference Caffe SSD.
        centers: ``"stride"``: ``(x + 0.5)·stride``; ``"map"``: ``(x + 0.5)·input_size / W_l``
            (and ``/ H_l`` for y), the cells of the map itself (torchvision's
            ``DefaultBoxGenerator`` without ``steps``, as in SSDLite).
    """

    def __init__(
        self,
        strides: tuple[int, ...] = (8, 16, 32, 64, 100, 300),
        input_size: Annotated[int, Field(ge=1)] = 300,
        basesize_ratio_range: tuple[float, float] = (0.2, 0.9),
        first_size_ratio: Annotated[float, Field(gt=0, le=1)] = 0.1,
        ratios: tuple[tuple[Annotated[float, Field(gt=0)], ...], ...] = SSD300_RATIOS,
        min_sizes: tuple[Annotated[float, Field(gt=0)], ...] | None = None,
        max_sizes: tuple[Annotated[float, Field(gt=0)], ...] | None = None,
        center_offset: float = 0.5,
        clip: bool = False,
        centers: Literal["stride", "map"] = "stride",
    ):
        levels = len(strides)
        if len(ratios) != levels:
            raise ValueError(f"ratios has {len(ratios)} levels but strides has {levels}")
        if (min_sizes is None) != (max_sizes is None):
            raise ValueError("give both min_sizes and max_sizes, or neither")
        if min_sizes is None:
            min_sizes, max_sizes = ssd_sizes(
                input_size, levels, basesize_ratio_range, first_size_ratio
            )
        if len(min_sizes) != levels or len(max_sizes) != levels:
            raise ValueError(f"min_sizes and max_sizes need {levels} entries (one per stride)")
        self.strides = tuple(int(s) for s in strides)
        self.input_size = int(input_size)
        self.min_sizes = tuple(float(s) for s in min_sizes)
        self.max_sizes = tuple(float(s) for s in max_sizes)
        self.ratios = tuple(tuple(float(r) for r in level) for level in ratios)
        self.center_offset = float(center_offset)
        self.clip = clip
        self.centers = centers
        self._cache: dict[tuple, list[Tensor]] = {}

    @property
    def num_anchors_per_location(self) -> list[int]:
        """Priors per cell of each level (SSD's heads have per-level convs)."""
        return [2 + 2 * len(r) for r in self.ratios]

    def base_anchors(self, level: int) -> Tensor:
        """Zero-centred priors of one level: (A_l, 4) xyxy float64, in the module's order."""
        s, s_next = self.min_sizes[level], self.max_sizes[level]
        wh = [(s, s), (math.sqrt(s * s_next),) * 2]
        for r in self.ratios[level]:
            wh += [(s * math.sqrt(r), s / math.sqrt(r)), (s / math.sqrt(r), s * math.sqrt(r))]
        wh = torch.tensor(wh, dtype=torch.float64)
        if self.clip:
            wh = wh.clamp(min=0, max=self.input_size)
        return torch.cat([-wh, wh], dim=1) / 2

    def _level_anchors(self, level: int, height: int, width: int) -> Tensor:
        if self.centers == "stride":
            return super()._level_anchors(level, height, width)
        ys = (torch.arange(height, dtype=torch.float64) + 0.5) * (self.input_size / height)
        xs = (torch.arange(width, dtype=torch.float64) + 0.5) * (self.input_size / width)
        cy, cx = torch.meshgrid(ys, xs, indexing="ij")
        centres = torch.stack([cx, cy, cx, cy], dim=-1).reshape(-1, 1, 4)
        return (centres + self.base_anchors(level)[None]).reshape(-1, 4)

    def __repr__(self) -> str:
        return (
            f"SSDPriorGenerator(strides={self.strides}, min_sizes={self.min_sizes}, "
            f"max_sizes={self.max_sizes}, ratios={self.ratios}, clip={self.clip}, "
            f"centers={self.centers!r})"
        )
