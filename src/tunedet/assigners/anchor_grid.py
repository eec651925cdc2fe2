"""The grid behind a level's anchors: stride, size and cells, read back from the anchors.

Assigners that reason in cells or strides (``grid``, ``fcos``) keep the generic
``assign(anchors (A, 4), num_anchors_per_level, ...)`` contract and recover the grid
from the anchors, which the anchor generators lay out per level in (y, x, anchor)
order with the anchors of a cell centred on the cell's centre. A level's stride is the
spacing of its anchor centres; a level with a single cell takes twice the stride of the
level before it (or half the next one's), as FPN levels do.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

TOLERANCE = 1e-2  # px; anchor centres are float32 sums of float64 grids
DECIMALS = 4  # strides and grid origins are rounded to 1e-4 px


class LevelGrid(NamedTuple):
    """One level: anchors ``start … start + height·width·per_cell − 1`` in (y, x, a) order.

    ``x0, y0``: top-left corner of cell (0, 0); cell (i, j) covers
    ``[x0 + j·stride, x0 + (j + 1)·stride) × [y0 + i·stride, y0 + (i + 1)·stride)``.
    """

    start: int
    height: int
    width: int
    per_cell: int
    stride: float
    x0: float
    y0: float


def level_grids(anchors: Tensor, num_anchors_per_level: list[int]) -> list[LevelGrid]:
    """Read each level's grid from ``anchors (A, 4)``; ValueError if they are not on one."""
    shapes, start = [], 0
    for count in num_anchors_per_level:
        shapes.append((start, *_level_shape(anchors[start : start + count])))
        start += count
    strides = [spacing for *_, spacing in shapes]
    known = [i for i, s in enumerate(strides) if s is not None]
    if not known:
        raise ValueError("every level has a single anchor location: the stride is unknown")
    grids = []
    for level, (start, height, width, per_cell, centre, _) in enumerate(shapes):
        if strides[level] is None:
            nearest = min(known, key=lambda i: abs(i - level))
            strides[level] = strides[nearest] * 2.0 ** (level - nearest)
        stride = strides[level]
        x0 = round(centre[0] - stride / 2, DECIMALS)
        y0 = round(centre[1] - stride / 2, DECIMALS)
        grids.append(LevelGrid(start, height, width, per_cell, stride, x0, y0))
    return grids


def _level_shape(anchors: Tensor) -> tuple[int, int, int, tuple[float, float], float | None]:
    """(height, width, anchors per cell, first cell centre, stride or None) of one level."""
    if len(anchors) == 0:
        raise ValueError("a level without anchors has no grid")
    centres = ((anchors[:, :2] + anchors[:, 2:]) / 2).double()
    same_cell = (centres - centres[0]).abs().amax(dim=1) <= TOLERANCE
    per_cell = int(same_cell.long().cumprod(0).sum())
    if len(anchors) % per_cell:
        raise ValueError("anchors are not in (y, x, anchor) grid order")
    cells = centres[::per_cell]
    width = int(((cells[:, 1] - cells[0, 1]).abs() <= TOLERANCE).long().cumprod(0).sum())
    height = len(cells) // width
    # the span over the whole row / column, rounded: exact for the usual strides
    if width > 1:
        stride = round(float(cells[width - 1, 0] - cells[0, 0]) / (width - 1), DECIMALS)
    elif height > 1:
        stride = round(float(cells[-1, 1] - cells[0, 1]) / (height - 1), DECIMALS)
    else:
        stride = None
    step = stride or 0.0
    ys = cells[0, 1] + step * torch.arange(height, dtype=torch.float64, device=cells.device)
    xs = cells[0, 0] + step * torch.arange(width, dtype=torch.float64, device=cells.device)
    expected = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).reshape(-1, 2)
    if height * width != len(cells) or (expected - cells).abs().amax() > TOLERANCE * max(1.0, step):
        raise ValueError("anchors are not on a regular grid in (y, x, anchor) order")
    return height, width, per_cell, (float(cells[0, 0]), float(cells[0, 1])), stride


def anchor_strides(anchors: Tensor, num_anchors_per_level: list[int]) -> Tensor:
    """(A,) the stride of each anchor's level, in the anchors' dtype."""
    grids = level_grids(anchors, num_anchors_per_level)
    values = torch.tensor([g.stride for g in grids], dtype=anchors.dtype, device=anchors.device)
    counts = torch.tensor(num_anchors_per_level, device=anchors.device)
    return values.repeat_interleave(counts)


def cell_anchor_indices(grids: list[LevelGrid], points: Tensor) -> tuple[Tensor, Tensor]:
    """Anchors of the cell holding each point, on every level.

    points: (..., 2) x, y → ``indices (..., Q)`` (Q = Σ anchors per cell over levels),
    ``inside (..., Q)`` bool: False where the point lies outside that level's grid
    (the index is then a valid but meaningless anchor).
    """
    indices, inside = [], []
    for grid in grids:
        column = torch.floor((points[..., 0] - grid.x0) / grid.stride).long()
        row = torch.floor((points[..., 1] - grid.y0) / grid.stride).long()
        within = (column >= 0) & (column < grid.width) & (row >= 0) & (row < grid.height)
        cell = row.clamp(0, grid.height - 1) * grid.width + column.clamp(0, grid.width - 1)
        first = grid.start + cell * grid.per_cell
        offsets = torch.arange(grid.per_cell, device=points.device)
        indices.append(first[..., None] + offsets)
        inside.append(within[..., None].expand(*within.shape, grid.per_cell))
    return torch.cat(indices, dim=-1), torch.cat(inside, dim=-1)
