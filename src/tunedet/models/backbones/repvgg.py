"""RepVGG (Ding et al., 2021): a multi-branch net in training, a plain 3×3-conv stack after.

A training-time block sums three branches, each ending in BatchNorm,

    y = act(BN(conv3×3(x)) + BN(conv1×1(x)) + BN(x))

(the identity branch only when the width and the resolution are kept). A BN in eval mode
is affine, ``BN(z) = γ·(z − μ)/√(σ² + ε) + β``, so each branch is a conv with kernel
``W·γ/√(σ² + ε)`` and bias ``β − μ·γ/√(σ² + ε)``; the 1×1 kernel is the centre of a 3×3
one and the identity is the 3×3 kernel with a 1 at the centre of channel ``i → i``. The
three kernels and biases add up to one 3×3 conv (``RepVGGBlock.reparameterize``): the
deployed network is a VGG-like stack of 3×3 convs and ReLUs with the same outputs.
``tunedet export --reparam`` folds every block before exporting (``models/reparam.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tunedet.config.registry import register
from tunedet.models.backbones.base import FrozenStages, MultiLevelBackbone, check_out_indices
from tunedet.models.layers import ActKind, make_activation

# RepVGG-A0: widths min(64, 64a), 64a, 128a, 256a, 512b with a = 0.75, b = 2.5
REPVGG_A0_WIDTHS = (48, 48, 96, 192, 1280)
REPVGG_A0_DEPTHS = (1, 2, 4, 14, 1)


def fuse_conv_bn(kernel: Tensor, bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """``BN(conv(x, kernel))`` in eval mode as one conv: (kernel · γ/√(σ² + ε), β − μ·γ/√(σ² + ε))."""
    scale = bn.weight / (bn.running_var + bn.eps).sqrt()
    return kernel * scale.view(-1, 1, 1, 1), bn.bias - bn.running_mean * scale


class ConvBN(nn.Sequential):
    """``BN(conv_k×k(x))``, no bias, "same" padding."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int):
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False
        )
        self.bn = nn.BatchNorm2d(out_channels)


class RepVGGBlock(nn.Module):
    """``act(BN(conv3×3(x)) + BN(conv1×1(x)) [+ BN(x)])``; after ``reparameterize()``,
    ``act(conv3×3(x))`` with the same outputs (BN statistics frozen at their values)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, act: ActKind = "relu"):
        super().__init__()
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.dense = ConvBN(in_channels, out_channels, 3, stride)
        self.pointwise = ConvBN(in_channels, out_channels, 1, stride)
        keeps_shape = in_channels == out_channels and stride == 1
        self.identity = nn.BatchNorm2d(in_channels) if keeps_shape else None
        self.act = make_activation(act)
        self.fused: nn.Conv2d | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.fused is not None:
            return self.act(self.fused(x))
        y = self.dense(x) + self.pointwise(x)
        if self.identity is not None:
            y = y + self.identity(x)
        return self.act(y)

    def equivalent_kernel(self) -> tuple[Tensor, Tensor]:
        """The one 3×3 kernel (out, in, 3, 3) and bias (out,) of the three branches."""
        kernel, bias = fuse_conv_bn(self.dense.conv.weight, self.dense.bn)
        kernel_1x1, bias_1x1 = fuse_conv_bn(self.pointwise.conv.weight, self.pointwise.bn)
        kernel = kernel + F.pad(kernel_1x1, (1, 1, 1, 1))
        bias = bias + bias_1x1
        if self.identity is not None:
            eye = torch.zeros_like(kernel)
            channels = torch.arange(self.in_channels, device=kernel.device)
            eye[channels, channels, 1, 1] = 1.0
            kernel_id, bias_id = fuse_conv_bn(eye, self.identity)
            kernel, bias = kernel + kernel_id, bias + bias_id
        return kernel, bias

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Replace the branches by their equivalent 3×3 conv (for inference and export)."""
        if self.fused is not None:
            return
        kernel, bias = self.equivalent_kernel()
        fused = nn.Conv2d(self.in_channels, self.out_channels, 3, self.stride, 1).to(kernel)
        fused.weight.copy_(kernel)
        fused.bias.copy_(bias)
        self.fused = fused
        self.dense = self.pointwise = self.identity = None


@register("backbone", "repvgg")
class RepVGG(MultiLevelBackbone):
    """RepVGG (A0 widths/depths by default): stages of RepVGG blocks, each opening at stride 2.

    ``widths``/``depths``: the five stages (stage 0 is the stem, stride 2; stages 1–4 reach
    strides 4–32). ``forward(x: (B, 3, H, W)) -> [(B, out_channels[i], H/strides[i],
    W/strides[i])]``; ``tunedet export --reparam`` turns every block into one 3×3 conv.
    """

    def __init__(
        self,
        widths: tuple[int, ...] = REPVGG_A0_WIDTHS,
        depths: tuple[int, ...] = REPVGG_A0_DEPTHS,
        out_indices: tuple[int, ...] = (2, 3, 4),
        act: ActKind = "relu",
        frozen_stages: FrozenStages = -1,
        norm_eval: bool = False,
    ):
        super().__init__()
        if len(widths) != 5 or len(depths) != 5 or min(widths) < 1 or min(depths) < 1:
            raise ValueError(f"widths and depths need 5 positive entries, got {widths}, {depths}")
        self.out_indices = check_out_indices(out_indices)
        stages, in_channels = [], 3
        for width, depth in zip(widths, depths, strict=True):
            blocks = [RepVGGBlock(in_channels, width, 2, act)]
            blocks += [RepVGGBlock(width, width, 1, act) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*blocks))
            in_channels = width
        self.stem = stages[0]
        self.layers = nn.ModuleList(stages[1 : self.out_indices[-1] + 1])
        self.out_channels = [widths[i] for i in self.out_indices]
        self.strides = [2 ** (i + 1) for i in self.out_indices]
        self.init_freezing(frozen_stages, norm_eval)

    def stages(self) -> list[nn.Module]:
        return [self.stem, *self.layers]
