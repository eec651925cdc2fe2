"""RoIAlign (He et al., 2017) over FPN levels, each RoI pooled from the level of its size.

Level of a box (FPN paper, eq. 1, Detectron's form): ``k = floor(k0 + log2(sqrt(w·h) / s0
+ 1e-6))`` clamped to the levels present, ``k0 = canonical_level`` (4), ``s0 =
canonical_scale`` (224): a 224² box pools from P4, a 112² box from P3. torchvision's
``LevelMapper`` adds the 1e-6 after the log; both agree except within 1e-6 of a level
boundary.

Two implementations of the same bilinear pooling (``impl``), measured forward +
backward at Faster R-CNN training sizes on CPU (``benchmarks/bench_roi_align.py``):

- ``torchvision``: ``torchvision.ops.roi_align`` per level;
- ``sparse``: RoIAlign as a sparse (bins × pixels) matrix of bilinear weights, applied
  with sparse × dense products forward and, transposed, backward (``roi_align_matrix``):
  the same values by torchvision's rules, 2.5× torchvision's speed on 1 thread, 1.1× on
  2 (torchvision's backward is a serial scatter); needs a fixed ``sampling_ratio ≥ 1``.

``auto`` (default) takes ``sparse`` for features on the CPU with ``sampling_ratio ≥ 1``
(a whole Faster R-CNN-R18-FPN training step: 1.60× torchvision's FasterRCNN with it,
1.05× without; docs/PERFORMANCE.md) and ``torchvision`` otherwise (CUDA, adaptive
sampling). A formulation through ``F.grid_sample`` was measured too, at 0.55–0.65×
torchvision's speed, and dropped.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from typing import Literal

import torch
from torch import Tensor, nn
from torchvision.ops import roi_align, roi_pool

RoIAlignImpl = Literal["auto", "torchvision", "sparse"]
PoolerMode = Literal["roi_align", "roi_pool"]


def fpn_levels(
    boxes: Tensor, canonical_level: int, canonical_scale: float, min_level: int, max_level: int
) -> Tensor:
    """boxes: (P, 4) xyxy → (P,) long FPN level k in [min_level, max_level] (eq. 1)."""
    scale = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp(min=0).sqrt()
    level = torch.floor(canonical_level + torch.log2(scale / canonical_scale + 1e-6))
    return level.clamp(min_level, max_level).long()


def _axis_samples(start: Tensor, size: Tensor, num: int, limit: int):
    """roi_align's ``num`` sample points along one axis of every RoI (P, num), as indices
    of the two neighbouring pixels and their bilinear weights (0 beyond ``[-1, limit]``)."""
    steps = (torch.arange(num, device=start.device, dtype=start.dtype) + 0.5) / num
    y = start[:, None] + steps * size[:, None]
    inside = ((y >= -1) & (y <= limit)).to(y.dtype)
    y = y.clamp(min=0)
    low = y.floor().long()
    edge = low >= limit - 1
    low = torch.where(edge, limit - 1, low)
    high = torch.where(edge, limit - 1, low + 1)
    frac = torch.where(edge, 0.0, y - low)
    return torch.stack([low, high], -1), torch.stack([1 - frac, frac], -1) * inside[..., None]


def roi_align_matrix(
    rois: Tensor,
    feature_shape: tuple[int, int, int, int],
    output_size: int,
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """RoIAlign as a sparse matrix: ``(bins, pixels, weights)``, bin ``(p·S + i)·S + j``,
    pixel ``(b·H + y)·W + x`` of the ``(B, C, H, W)`` map; ``out[bin] = Σ weight ·
    feature[pixel]`` over the channels is ``roi_align`` (torchvision's rules: samples
    beyond one pixel outside the map read 0, those within it the border; the bilinear
    weights of the ``r × r`` samples of a bin are averaged). Bilinear weights on a grid of
    samples separate into a y and an x factor."""
    num_images, _, height, width = feature_shape
    n = output_size * sampling_ratio
    start = rois[:, 1:3] * spatial_scale - (0.5 if aligned else 0.0)
    size = (rois[:, 3:5] - rois[:, 1:3]) * spatial_scale
    if not aligned:
        size = size.clamp(min=1.0)
    y_index, y_weight = _axis_samples(start[:, 1], size[:, 1], n, height)  # (P, n, 2)
    x_index, x_weight = _axis_samples(start[:, 0], size[:, 0], n, width)
    image = rois[:, 0].long()[:, None, None, None, None]
    pixels = (image * height + y_index[:, :, None, :, None]) * width + x_index[:, None, :, None, :]
    weights = y_weight[:, :, None, :, None] * x_weight[:, None, :, None, :] / sampling_ratio**2
    cell = torch.arange(n, device=rois.device) // sampling_ratio  # sample → bin along an axis
    roi = torch.arange(len(rois), device=rois.device)[:, None, None]
    bins = (roi * output_size + cell[:, None]) * output_size + cell  # (P, n, n)
    bins = bins[..., None, None].expand_as(pixels)
    keep = weights.reshape(-1) != 0
    return bins.reshape(-1)[keep], pixels.reshape(-1)[keep], weights.reshape(-1)[keep]


def _csr(rows: Tensor, cols: Tensor, values: Tensor, shape: tuple[int, int]) -> Tensor:
    """A CSR matrix from (row, column, value) triples, duplicates summed."""
    indices = torch.stack([rows, cols])
    coo = torch.sparse_coo_tensor(indices, values, shape, check_invariants=False).coalesce()
    with warnings.catch_warnings():  # "sparse CSR support is in beta": known and tested here
        warnings.simplefilter("ignore", UserWarning)
        return coo.to_sparse_csr()


@contextlib.contextmanager
def _sparse_precision(tensor: Tensor) -> Iterator[torch.dtype]:
    """The dtype for the sparse products on ``tensor``: its own in float32/float64,
    float32 for bf16/fp16 (MKL's sparse kernels have no half types), with autocast off
    (it would cast the product back to half)."""
    dtype = tensor.dtype if tensor.dtype in (torch.float32, torch.float64) else torch.float32
    with torch.autocast(tensor.device.type, enabled=False):
        yield dtype


class _SparseRoIAlign(torch.autograd.Function):
    """``roi_align`` through ``roi_align_matrix``: forward ``A @ F``, backward ``Aᵀ @ G``
    (sparse × dense products over channels-last maps)."""

    @staticmethod
    def forward(ctx, feature, rois, output_size, spatial_scale, sampling_ratio, aligned):
        num_images, channels, height, width = feature.shape
        bins, pixels, weights = roi_align_matrix(
            rois, feature.shape, output_size, spatial_scale, sampling_ratio, aligned
        )
        shape = (len(rois) * output_size**2, num_images * height * width)
        ctx.save_for_backward(bins, pixels, weights)
        ctx.shapes = shape, feature.shape, output_size
        ctx.dtype = feature.dtype
        dense = feature.permute(0, 2, 3, 1).reshape(shape[1], channels)
        with _sparse_precision(feature) as dtype:
            out = _csr(bins, pixels, weights.to(dtype), shape) @ dense.to(dtype)
        out = out.to(feature.dtype)
        return out.view(len(rois), output_size, output_size, channels).permute(0, 3, 1, 2)

    @staticmethod
    def backward(ctx, grad):
        bins, pixels, weights = ctx.saved_tensors
        shape, (num_images, channels, height, width), size = ctx.shapes
        grad = grad.permute(0, 2, 3, 1).reshape(shape[0], channels)
        with _sparse_precision(grad) as dtype:
            transposed = _csr(pixels, bins, weights.to(dtype), (shape[1], shape[0]))
            grad = (transposed @ grad.to(dtype)).to(ctx.dtype)
        grad = grad.view(num_images, height, width, channels).permute(0, 3, 1, 2)
        return grad, None, None, None, None, None


def roi_align_sparse(
    feature: Tensor,
    rois: Tensor,
    output_size: int,
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
) -> Tensor:
    """``torchvision.ops.roi_align`` (same values, ``sampling_ratio ≥ 1``) as sparse matrix
    products: feature (B, C, H, W), rois (P, 5) [batch_index, x1, y1, x2, y2] px → (P, C, S, S)."""
    if len(rois) == 0:
        return feature.new_zeros(0, feature.shape[1], output_size, output_size)
    return _SparseRoIAlign.apply(feature, rois, output_size, spatial_scale, sampling_ratio, aligned)


def pooled_levels(
    strides: list[int], min_level: int, max_level: int, section: str
) -> tuple[list[int], list[int]]:
    """The strides of FPN levels ``min_level``–``max_level`` and the indices of those maps
    among the neck's ``strides``; a ValueError naming ``model.<section>`` when the neck
    lacks one."""
    wanted = [2**k for k in range(min_level, max_level + 1)]
    if not wanted or any(s not in strides for s in wanted):
        raise ValueError(
            f"model.{section}.roi_min_level/roi_max_level: levels {min_level}–{max_level} "
            f"need feature maps of strides {wanted}, the neck gives {list(strides)}"
        )
    return wanted, [list(strides).index(s) for s in wanted]


class MultiLevelRoIAlign(nn.Module):
    """RoIAlign from the FPN level of each RoI's size: ``(feats, rois) -> (P, C, S, S)``.

    ``feats``: one map per entry of ``strides`` (powers of two, consecutive, finest
    first; their log2 are the levels, e.g. strides 4…32 are levels 2–5); ``rois (P, 5)``
    ``[batch_index, x1, y1, x2, y2]`` in image pixels. ``sampling_ratio`` ≤ 0 is
    roi_align's adaptive ``ceil(size / S)`` (``torchvision`` only); ``aligned`` shifts by
    half a pixel (Detectron2's ROIAlignV2). ``mode="roi_pool"`` pools with Fast R-CNN's
    quantised max pooling instead (``torchvision.ops.roi_pool``, Detectron's ``RoIPoolF``;
    ``sampling_ratio``, ``aligned`` and ``impl`` do not apply).
    """

    def __init__(
        self,
        output_size: int,
        sampling_ratio: int,
        strides: list[int],
        canonical_level: int = 4,
        canonical_scale: float = 224.0,
        aligned: bool = False,
        impl: RoIAlignImpl = "auto",
        mode: PoolerMode = "roi_align",
    ):
        super().__init__()
        levels = [math.log2(s) for s in strides]
        if (
            not strides
            or any(k != round(k) for k in levels)
            or levels != list(range(round(levels[0]), round(levels[0]) + len(levels)))
        ):
            raise ValueError(f"RoIAlign strides must be consecutive powers of two, got {strides}")
        if impl == "sparse" and sampling_ratio < 1:
            raise ValueError(
                f"roi_align_impl {impl} needs sampling_ratio >= 1, got {sampling_ratio} "
                "(adaptive sampling is torchvision's only)"
            )
        self.output_size = output_size
        self.sampling_ratio = sampling_ratio
        self.strides = list(strides)
        self.min_level, self.max_level = round(levels[0]), round(levels[-1])
        self.canonical_level = canonical_level
        self.canonical_scale = canonical_scale
        self.aligned = aligned
        self.impl = impl
        self.mode = mode

    def forward(self, feats: list[Tensor], rois: Tensor) -> Tensor:
        if len(feats) != len(self.strides):
            raise ValueError(f"RoIAlign expects {len(self.strides)} feature maps, got {len(feats)}")
        levels = (
            fpn_levels(
                rois[:, 1:],
                self.canonical_level,
                self.canonical_scale,
                self.min_level,
                self.max_level,
            )
            - self.min_level
        )
        size = self.output_size
        out = rois.new_zeros(len(rois), feats[0].shape[1], size, size)
        for level, (feature, stride) in enumerate(zip(feats, self.strides, strict=True)):
            index = (levels == level).nonzero().squeeze(1)
            if len(index) == 0:
                continue
            feature = feature.to(rois.dtype)  # boxes keep full precision under AMP
            if self.mode == "roi_pool":
                out[index] = roi_pool(feature, rois[index], size, 1.0 / stride)
                continue
            args = (rois[index], size, 1.0 / stride, self.sampling_ratio, self.aligned)
            if self._sparse(feature):
                out[index] = roi_align_sparse(feature, *args)
            else:
                out[index] = roi_align(feature, *args)
        return out

    def _sparse(self, feature: Tensor) -> bool:
        if self.impl == "auto":
            return feature.device.type == "cpu" and self.sampling_ratio >= 1
        return self.impl == "sparse"

    def extra_repr(self) -> str:
        return (
            f"output_size={self.output_size}, sampling_ratio={self.sampling_ratio}, "
            f"levels={self.min_level}-{self.max_level}, canonical_level={self.canonical_level}, "
            f"canonical_scale={self.canonical_scale}, aligned={self.aligned}, impl={self.impl}, "
            f"mode={self.mode}"
        )
