"""Building blocks shared by backbones, necks and heads: norm and activation
factories, a (depthwise-separable) conv, and ``ConvNormAct``.

The ``Literal`` aliases below are the config vocabulary for these knobs; the
components that take a ``norm`` or ``act`` argument use them as type hints.
"""

from typing import Literal

from torch import nn
from torchvision.ops import FrozenBatchNorm2d

NormKind = Literal["none", "bn", "gn", "frozen_bn", "ln", "in"]
ActKind = Literal["relu", "leaky_relu", "relu6", "silu", "hardswish", "gelu"]


def group_count(channels: int, num_groups: int = 32) -> int:
    """Largest divisor of ``channels`` that is ``<= num_groups`` (GroupNorm needs one)."""
    groups = max(1, min(num_groups, channels))
    while channels % groups:
        groups -= 1
    return groups


def make_norm(kind: NormKind, channels: int, num_groups: int = 32) -> nn.Module:
    """Normalisation layer over ``channels`` feature maps.

    ``"none"`` gives an ``nn.Identity``; ``"gn"`` uses ``num_groups`` clamped to a
    divisor of ``channels``; ``"frozen_bn"`` is torchvision's ``FrozenBatchNorm2d``
    (affine and statistics are buffers, never trained). In the terms of Wu & He's Group
    Norm paper (2018), for ``x (N, C, H, W)``: ``"ln"`` (LayerNorm, Ba et al. 2016)
    normalises each sample over ``(C, H, W)`` (GroupNorm with one group), ``"in"``
    (InstanceNorm, Ulyanov et al. 2016) each sample's channel over ``(H, W)`` (GroupNorm
    with ``C`` groups); both with a per-channel affine and the same statistics in
    training and evaluation.
    """
    if kind == "none":
        return nn.Identity()
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "gn":
        return nn.GroupNorm(group_count(channels, num_groups), channels)
    if kind == "frozen_bn":
        return FrozenBatchNorm2d(channels)
    if kind == "ln":
        return nn.GroupNorm(1, channels)
    if kind == "in":
        return nn.GroupNorm(channels, channels)
    raise ValueError(f"unknown norm '{kind}' (choices: none, bn, gn, frozen_bn, ln, in)")


def make_activation(kind: ActKind | Literal["none"]) -> nn.Module:
    """Activation module; ``"none"`` gives an ``nn.Identity``."""
    if kind == "none":
        return nn.Identity()
    if kind == "relu":
        return nn.ReLU(inplace=True)
    if kind == "leaky_relu":
        return nn.LeakyReLU(0.1, inplace=True)
    if kind == "relu6":
        return nn.ReLU6(inplace=True)
    if kind == "silu":
        return nn.SiLU(inplace=True)
    if kind == "hardswish":
        return nn.Hardswish(inplace=True)
    if kind == "gelu":
        return nn.GELU()
    raise ValueError(
        f"unknown activation '{kind}' (choices: none, relu, leaky_relu, relu6, silu, hardswish, gelu)"
    )


def is_batch_norm(module: nn.Module) -> bool:
    """True for layers whose behaviour depends on train/eval mode (BN and SyncBN)."""
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


class SeparableConv2d(nn.Sequential):
    """Depthwise ``k×k`` conv followed by a pointwise ``1×1`` conv (Xception/MobileNet).

    Costs about ``1/out_channels + 1/k²`` of a full ``k×k`` conv. Only the
    pointwise conv carries a bias.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        bias: bool = True,
    ):
        super().__init__()
        self.depthwise = nn.Conv2d(
            in_channels,
            in_channels,
            kernel_size,
            stride,
            padding=kernel_size // 2,
            groups=in_channels,
            bias=False,
        )
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=bias)


def make_conv(
    in_channels: int,
    out_channels: int,
    kernel_size: int = 3,
    stride: int = 1,
    bias: bool = True,
    separable: bool = False,
) -> nn.Module:
    """A "same"-padded conv; depthwise-separable when ``separable`` and ``kernel_size > 1``."""
    if separable and kernel_size > 1:
        return SeparableConv2d(in_channels, out_channels, kernel_size, stride, bias)
    return nn.Conv2d(
        in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, bias=bias
    )


def output_conv(conv: nn.Module) -> nn.Conv2d:
    """The conv that produces ``conv``'s output channels (the pointwise one when separable)."""
    return conv.pointwise if isinstance(conv, SeparableConv2d) else conv


class ConvNormAct(nn.Sequential):
    """``conv → norm → activation``; the conv has a bias only when ``norm == "none"``.

    Input ``(B, in_channels, H, W)`` → ``(B, out_channels, ceil(H/stride), ceil(W/stride))``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        norm: NormKind = "bn",
        act: ActKind | Literal["none"] = "relu",
        separable: bool = False,
        num_groups: int = 32,
    ):
        super().__init__()
        self.conv = make_conv(
            in_channels, out_channels, kernel_size, stride, bias=norm == "none", separable=separable
        )
        self.norm = make_norm(norm, out_channels, num_groups)
        self.act = make_activation(act)
