"""Dense anchor grid: every feature-map cell gets the same set of anchors per level.

RetinaNet (Lin et al., 2017) on P3–P7: base size 4·stride (32 … 512), scales
2^(i/3) for i = 0, 1, 2 and height/width ratios 0.5, 1, 2: 9 anchors per cell.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tunedet.config.registry import register

_CACHE_SIZE = 16


@register("anchor_generator", "grid")
class GridAnchorGenerator:
    """Anchors on a regular grid per level: sizes × scales × ratios at every cell.

    Args:
        strides: stride in pixels of each level's feature map.
        octave_base_scale: base size of a level's anchors = octave_base_scale · stride.
        scales_per_octave: anchor scales per level, 2^(i / scales_per_octave).
        ratios: anchor height / width ratios; a ratio r gives w = s / sqrt(r), h = s · sqrt(r)
            for an anchor of size s (area s²).
        base_sizes: per-level base sizes, replacing octave_base_scale · stride.
        center_offset: position of the anchor centre within its cell, in strides
            (0.5: cell centre, 0: the cell's top-left corner as torchvision does).
        scale_major: anchor order within a cell. True (mmdetection's and torchvision's
            order): index = ratio_index · num_scales + scale_index, the scale varying
            fastest; False: index = scale_index · num_ratios + ratio_index.
        sizes: per-level absolute anchor sizes, replacing base size × scales (torchvision's
            ``AnchorGenerator(sizes=...)``: RetinaNet's ``(32, 40, 50)`` on P3 is
            ``int(32 · 2^(i/3))``, truncated); every level needs the same count.
        round_base_anchors: round the zero-centred anchors' corners to integers
            (torchvision's ``generate_anchors``), before they are shifted to the cells.
    """

    def __init__(
        self,
        strides: tuple[int, ...] = (8, 16, 32, 64, 128),
        octave_base_scale: float = 4.0,
        scales_per_octave: int = 3,
        ratios: tuple[float, ...] = (0.5, 1.0, 2.0),
        base_sizes: tuple[float, ...] | None = None,
        center_offset: float = 0.5,
        scale_major: bool = True,
        sizes: tuple[tuple[float, ...], ...] | None = None,
        round_base_anchors: bool = False,
    ):
        if base_sizes is not None and len(base_sizes) != len(strides):
            raise ValueError(
                f"base_sizes has {len(base_sizes)} entries but strides has {len(strides)}"
            )
        self.strides = tuple(int(s) for s in strides)
        self.octave_base_scale = float(octave_base_scale)
        self.scales_per_octave = int(scales_per_octave)
        self.ratios = tuple(float(r) for r in ratios)
        self.base_sizes = (
            tuple(float(b) for b in base_sizes)
            if base_sizes is not None
            else tuple(self.octave_base_scale * s for s in self.strides)
        )
        if sizes is not None and (
            len(sizes) != len(strides) or len({len(level) for level in sizes}) != 1
        ):
            raise ValueError(
                f"sizes must give one tuple per stride ({len(strides)}), all of the same "
                f"length, got {sizes}"
            )
        self.center_offset = float(center_offset)
        self.scale_major = bool(scale_major)
        self.sizes = tuple(tuple(float(v) for v in level) for level in sizes) if sizes else None
        self.round_base_anchors = bool(round_base_anchors)
        self.scales = tuple(2.0 ** (i / self.scales_per_octave) for i in range(scales_per_octave))
        self._cache: dict[tuple, list[Tensor]] = {}

    @property
    def num_levels(self) -> int:
        return len(self.strides)

    @property
    def num_anchors_per_location(self) -> int:
        num_sizes = len(self.sizes[0]) if self.sizes is not None else len(self.scales)
        return num_sizes * len(self.ratios)

    def base_anchors(self, level: int) -> Tensor:
        """Zero-centred anchors of one level: (A, 4) xyxy float64, in this generator's order."""
        size = self.base_sizes[level]
        scales = torch.tensor(self.scales, dtype=torch.float64)
        if self.sizes is not None:
            size, scales = 1.0, torch.tensor(self.sizes[level], dtype=torch.float64)
        ratios = torch.tensor(self.ratios, dtype=torch.float64)
        h_ratio, w_ratio = ratios.sqrt(), 1.0 / ratios.sqrt()
        if self.scale_major:
            ws = (size * w_ratio[:, None] * scales[None, :]).reshape(-1)
            hs = (size * h_ratio[:, None] * scales[None, :]).reshape(-1)
        else:
            ws = (size * scales[:, None] * w_ratio[None, :]).reshape(-1)
            hs = (size * scales[:, None] * h_ratio[None, :]).reshape(-1)
        anchors = torch.stack([-ws, -hs, ws, hs], dim=1) / 2
        return anchors.round() if self.round_base_anchors else anchors

    def grid_anchors(
        self,
        feature_sizes: list[tuple[int, int]],
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> list[Tensor]:
        """Anchors of every level: list of (H·W·A, 4) xyxy px, ordered (y, x, a), a innermost.

        ``feature_sizes`` holds (H, W) per level, one per stride. Results are cached per
        (feature sizes, device, dtype).
        """
        sizes = tuple((int(h), int(w)) for h, w in feature_sizes)
        if len(sizes) != self.num_levels:
            raise ValueError(
                f"got {len(sizes)} feature maps but the anchor generator has "
                f"{self.num_levels} strides {self.strides}"
            )
        device = torch.device(device) if device is not None else torch.device("cpu")
        key = (sizes, str(device), dtype)
        if key not in self._cache:
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = [
                self._level_anchors(level, h, w).to(device=device, dtype=dtype)
                for level, (h, w) in enumerate(sizes)
            ]
        return self._cache[key]

    def _level_anchors(self, level: int, height: int, width: int) -> Tensor:
        stride = self.strides[level]
        ys = (torch.arange(height, dtype=torch.float64) + self.center_offset) * stride
        xs = (torch.arange(width, dtype=torch.float64) + self.center_offset) * stride
        cy, cx = torch.meshgrid(ys, xs, indexing="ij")
        centres = torch.stack([cx, cy, cx, cy], dim=-1).reshape(-1, 1, 4)
        return (centres + self.base_anchors(level)[None]).reshape(-1, 4)

    def __repr__(self) -> str:
        return (
            f"GridAnchorGenerator(strides={self.strides}, base_sizes={self.base_sizes}, "
            f"scales={tuple(round(s, 4) for s in self.scales)}, ratios={self.ratios}, "
            f"center_offset={self.center_offset}, scale_major={self.scale_major}, "
            f"sizes={self.sizes}, round_base_anchors={self.round_base_anchors})"
        )
