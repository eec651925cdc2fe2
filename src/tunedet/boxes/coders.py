"""Box coders: boxes ↔ regression targets relative to anchors (or points).

Contract (docs/ARCHITECTURE.md): ``encode(anchors (..., 4), boxes (..., 4)) -> (..., 4)``
and ``decode(anchors, deltas) -> boxes``, broadcasting over leading dims; boxes are xyxy.
The YOLO coder also needs the stride of each anchor, the distance coder works on points.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from tunedet.config.registry import register


def _centre_size(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    return boxes[..., 0] + 0.5 * w, boxes[..., 1] + 0.5 * h, w, h


def _xyxy_from_centre_size(cx: Tensor, cy: Tensor, w: Tensor, h: Tensor) -> Tensor:
    return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=-1)


def _positive_size(size: Tensor) -> Tensor:
    """Guard log(size) against empty boxes (e.g. padded GT) with the dtype's epsilon."""
    return size.clamp(min=torch.finfo(size.dtype).eps)


@register("box_coder", "delta")
class DeltaBoxCoder:
    """R-CNN deltas ``(dx, dy, dw, dh)`` of a box relative to an anchor, normalised.

    ``dx = (gx − ax) / aw``, ``dy = (gy − ay) / ah``, ``dw = log(gw / aw)``, ``dh = log(gh / ah)``
    (centres and sizes), then ``d ← (d − means) / stds · weights``.

    ``weights`` and ``stds`` are two spellings of the same knob: Detectron's weights
    ``(10, 10, 5, 5)`` equal ``stds (0.1, 0.1, 0.2, 0.2)``, SSD's "variances". ``decode``
    clamps ``dw``, ``dh`` (after un-normalising) at ``clamp`` so ``exp`` cannot overflow
    (default ``log(1000 / 16)``, as in Detectron).
    """

    def __init__(
        self,
        weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
        means: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0),
        stds: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
        clamp: float = math.log(1000.0 / 16),
    ) -> None:
        self.weights = tuple(float(v) for v in weights)
        self.means = tuple(float(v) for v in means)
        self.stds = tuple(float(v) for v in stds)
        self.clamp = float(clamp)

    def _constants(self, like: Tensor) -> tuple[Tensor, Tensor]:
        means = like.new_tensor(self.means)
        # (d - mean) / std * weight == (d - mean) * scale
        scale = like.new_tensor([w / s for w, s in zip(self.weights, self.stds, strict=True)])
        return means, scale

    def encode(self, anchors: Tensor, boxes: Tensor) -> Tensor:
        """``anchors (..., 4)``, ``boxes (..., 4)`` xyxy → ``deltas (..., 4)``."""
        ax, ay, aw, ah = _centre_size(anchors)
        gx, gy, gw, gh = _centre_size(boxes)
        deltas = torch.stack(
            (
                (gx - ax) / aw,
                (gy - ay) / ah,
                torch.log(_positive_size(gw) / aw),
                torch.log(_positive_size(gh) / ah),
            ),
            dim=-1,
        )
        means, scale = self._constants(deltas)
        return (deltas - means) * scale

    def decode(self, anchors: Tensor, deltas: Tensor) -> Tensor:
        """``anchors (..., 4)`` xyxy, ``deltas (..., 4)`` → ``boxes (..., 4)`` xyxy."""
        means, scale = self._constants(deltas)
        dx, dy, dw, dh = (deltas / scale + means).unbind(-1)
        ax, ay, aw, ah = _centre_size(anchors)
        return _xyxy_from_centre_size(
            ax + dx * aw,
            ay + dy * ah,
            aw * torch.exp(dw.clamp(max=self.clamp)),
            ah * torch.exp(dh.clamp(max=self.clamp)),
        )


@register("box_coder", "yolo")
class YOLOBoxCoder:
    """YOLO (v2/v3) targets: centre as a sigmoid offset in the grid cell, size as exp · anchor.

    Anchors are boxes centred on their cell's centre, so the cell's top-left corner is
    ``anchor_centre − stride / 2``; ``strides (...)`` gives each anchor's stride in pixels
    (a tensor broadcastable to ``anchors[..., 0]``, or a float).

    ``encode`` returns ``(tx, ty, tw, th)`` with ``tx = (gx − cell_x0) / stride``, the centre's
    offset from the cell's top-left corner in units of stride (in ``(0, 1)`` when the centre
    lies in the cell: the target of a sigmoid), and ``tw = log(gw / aw)``, ``th = log(gh / ah)``.
    ``decode`` takes the network's raw outputs: ``cx = cell_x0 + sigmoid(tx) · stride``,
    i.e. ``(cell_x + sigmoid(tx)) · stride``, and ``w = aw · exp(tw)`` (``tw`` clamped at ``clamp``).
    Pass ``logits=True`` to ``encode`` to get ``tx, ty`` as logits (inverse sigmoid; NaN for a
    centre outside its cell), or ``logits=False`` to ``decode`` when ``tx, ty`` are already
    offsets. Beyond the generic coder contract, both methods need the ``strides`` argument.

    ``scale_xy`` > 1 is YOLOv4's grid-sensitivity fix: the offset is
    ``scale_xy · sigmoid(tx) − (scale_xy − 1) / 2``, so centres on cell borders are reachable.
    """

    def __init__(self, scale_xy: float = 1.0, clamp: float = math.log(1000.0 / 16)) -> None:
        self.scale_xy = float(scale_xy)
        self.clamp = float(clamp)

    def encode(
        self, anchors: Tensor, boxes: Tensor, strides: Tensor | float, logits: bool = False
    ) -> Tensor:
        """``anchors (..., 4)``, ``boxes (..., 4)`` xyxy, ``strides (...)`` → ``(tx, ty, tw, th) (..., 4)``.

        ``tx, ty`` are cell offsets (``logits=False``) or their logits (``logits=True``).
        """
        ax, ay, aw, ah = _centre_size(anchors)
        gx, gy, gw, gh = _centre_size(boxes)
        shift = (self.scale_xy - 1) / 2
        # offset from the cell's top-left corner (anchor centre − stride / 2), in strides
        tx = ((gx - ax) / strides + 0.5 + shift) / self.scale_xy
        ty = ((gy - ay) / strides + 0.5 + shift) / self.scale_xy
        if logits:
            tx, ty = torch.logit(tx), torch.logit(ty)
        tw = torch.log(_positive_size(gw) / aw)
        th = torch.log(_positive_size(gh) / ah)
        return torch.stack((tx, ty, tw, th), dim=-1)

    def decode(
        self, anchors: Tensor, deltas: Tensor, strides: Tensor | float, logits: bool = True
    ) -> Tensor:
        """``anchors (..., 4)`` xyxy, ``deltas (..., 4)``, ``strides (...)`` → ``boxes (..., 4)`` xyxy.

        ``deltas[..., :2]`` are raw logits (``logits=True``) or cell offsets (``logits=False``).
        """
        ax, ay, aw, ah = _centre_size(anchors)
        tx, ty, tw, th = deltas.unbind(-1)
        if logits:
            tx, ty = torch.sigmoid(tx), torch.sigmoid(ty)
        shift = (self.scale_xy - 1) / 2
        cx = ax + (self.scale_xy * tx - shift - 0.5) * strides
        cy = ay + (self.scale_xy * ty - shift - 0.5) * strides
        w = aw * torch.exp(tw.clamp(max=self.clamp))
        h = ah * torch.exp(th.clamp(max=self.clamp))
        return _xyxy_from_centre_size(cx, cy, w, h)


@register("box_coder", "distance")
class DistanceBoxCoder:
    """Anchor-free targets (FCOS, GFL, YOLOv8): distances ``(l, t, r, b)`` from a point to edges.

    ``l, t, r, b`` are the distances from the point to the box's left, top, right and bottom edges.

    Points are ``(..., 2)`` ``(x, y)``; anchor boxes ``(..., 4)`` are accepted too and stand for
    their centres. With ``normalize_by_stride`` the distances are divided by ``strides (...)``
    (required then), as FCOS does per FPN level.
    """

    def __init__(self, normalize_by_stride: bool = False) -> None:
        self.normalize_by_stride = normalize_by_stride

    @staticmethod
    def _points(points: Tensor) -> tuple[Tensor, Tensor]:
        if points.shape[-1] == 4:
            return (points[..., 0] + points[..., 2]) * 0.5, (points[..., 1] + points[..., 3]) * 0.5
        if points.shape[-1] == 2:
            return points[..., 0], points[..., 1]
        raise ValueError(f"points must be (..., 2) or anchors (..., 4), got {tuple(points.shape)}")

    def _stride(self, strides: Tensor | float | None, like: Tensor) -> Tensor | float:
        if not self.normalize_by_stride:
            return 1.0
        if strides is None:
            raise ValueError("DistanceBoxCoder(normalize_by_stride=True) needs strides")
        if isinstance(strides, Tensor):
            return strides.to(like.dtype)[..., None]
        return float(strides)

    def encode(
        self, points: Tensor, boxes: Tensor, strides: Tensor | float | None = None
    ) -> Tensor:
        """``points (..., 2)``, ``boxes (..., 4)`` xyxy, ``strides (...)`` → ``(l, t, r, b) (..., 4)``."""
        px, py = self._points(points)
        distances = torch.stack(
            (px - boxes[..., 0], py - boxes[..., 1], boxes[..., 2] - px, boxes[..., 3] - py),
            dim=-1,
        )
        return distances / self._stride(strides, distances)

    def decode(
        self, points: Tensor, distances: Tensor, strides: Tensor | float | None = None
    ) -> Tensor:
        """``points (..., 2)``, ``distances (..., 4)`` ``(l, t, r, b)``, ``strides (...)`` → ``boxes (..., 4)``."""
        px, py = self._points(points)
        distances = distances * self._stride(strides, distances)
        left, top, right, bottom = distances.unbind(-1)
        return torch.stack((px - left, py - top, px + right, py + bottom), dim=-1)
