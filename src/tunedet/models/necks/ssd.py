"""SSD's extra feature layers (Liu et al., 2016) as a neck; SSDLite's separable variant.

The backbone's maps pass through (the first one L2-normalised per position with a
learnable per-channel scale, initialised to ``l2_norm_scale`` = 20, as SSD does for
conv4_3), then each extra level is ``1×1 conv → mid`` and a ``3×3 conv → out``: stride 2
with padding, or, for the last ``valid_levels`` levels, stride 1 without padding (SSD300's
conv10_2 and conv11_2: 5×5 → 3×3 → 1×1). ``separable`` makes the 3×3 convs depthwise +
pointwise (SSDLite, Sandler et al., 2018); with ``depthwise_norm`` the depthwise conv gets
its own norm + activation (torchvision's SSDLite: 1×1 → depthwise 3×3 → 1×1, each
conv-norm-act). ``norm_eps`` / ``norm_momentum`` set the BatchNorm constants (SSDLite:
0.001 and 0.03).

Strides: a padded stride-2 level doubles the stride; a valid level's stride is
``input_size / side`` with the side propagated from ``⌈input_size / stride⌉`` of the
last input (SSD300: 100 and 300), matching the priors' centres.
"""

import math
from typing import Annotated

import torch
from pydantic import Field
from torch import Tensor, nn

from tunedet.config.registry import register
from tunedet.models.layers import ActKind, ConvNormAct, NormKind, make_activation, make_norm


class L2Norm(nn.Module):
    """``x / ‖x‖₂ · γ`` over channels at every position; ``γ`` per channel, learnable."""

    def __init__(self, channels: int, scale: float, eps: float = 1e-10):
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), float(scale)))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        z = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        norm = z.pow(2).sum(dim=1, keepdim=True).sqrt() + self.eps
        return (z / norm * self.weight[None, :, None, None]).to(x.dtype)


@register("neck", "ssd", injected=("in_channels", "in_strides"))
class SSDNeck(nn.Module):
    """SSD's extra layers: backbone maps + stride-2 or unpadded 3×3 levels (SSDLite: separable).

    ``len(extra_channels)`` extra levels (SSD300: 512, 256, 256, 256).

    ``forward(feats) -> [(B, out_channels[l], H_l, W_l)]``, finest first; ``out_channels`` is
    ``in_channels + extra_channels`` and ``strides`` as in the module docstring.
    """

    def __init__(
        self,
        in_channels: list[int],
        in_strides: list[int],
        extra_channels: tuple[Annotated[int, Field(ge=1)], ...] = (512, 256, 256, 256),
        mid_channels: tuple[Annotated[int, Field(ge=1)], ...] | None = None,
        valid_levels: Annotated[int, Field(ge=0)] = 2,
        input_size: Annotated[int, Field(ge=1)] = 300,
        l2_norm_scale: Annotated[float, Field(gt=0)] | None = 20.0,
        separable: bool = False,
        norm: NormKind = "none",
        act: ActKind = "relu",
        depthwise_norm: bool = False,
        norm_eps: Annotated[float, Field(gt=0)] = 1e-5,
        norm_momentum: Annotated[float, Field(gt=0, le=1)] = 0.1,
    ):
        super().__init__()
        if depthwise_norm and (not separable or valid_levels):
            raise ValueError("depthwise_norm needs separable: true and valid_levels: 0")
        if mid_channels is None:
            mid_channels = tuple(max(1, c // 2) for c in extra_channels)
        if len(mid_channels) != len(extra_channels):
            raise ValueError(
                f"mid_channels {tuple(mid_channels)} needs one entry per extra level "
                f"({len(extra_channels)})"
            )
        if valid_levels > len(extra_channels):
            raise ValueError(
                f"valid_levels ({valid_levels}) exceeds the extra levels ({len(extra_channels)})"
            )
        self.in_channels = list(in_channels)
        self.out_channels = list(in_channels) + list(extra_channels)
        self.l2_norm = L2Norm(in_channels[0], l2_norm_scale) if l2_norm_scale else None
        self.extras = nn.ModuleList()
        strides = list(in_strides)
        side = math.ceil(input_size / in_strides[-1])
        previous = in_channels[-1]
        first_valid = len(extra_channels) - valid_levels
        for k, (mid, out) in enumerate(zip(mid_channels, extra_channels, strict=True)):
            reduce = ConvNormAct(previous, mid, 1, norm=norm, act=act)
            if depthwise_norm:
                spread = nn.Sequential(
                    nn.Conv2d(mid, mid, 3, 2, padding=1, groups=mid, bias=norm == "none"),
                    make_norm(norm, mid),
                    make_activation(act),
                    nn.Conv2d(mid, out, 1, bias=norm == "none"),
                    make_norm(norm, out),
                    make_activation(act),
                )
                side = math.ceil(side / 2)
                strides.append(strides[-1] * 2)
            elif k < first_valid:
                spread = ConvNormAct(mid, out, 3, stride=2, norm=norm, act=act, separable=separable)
                side = math.ceil(side / 2)
                strides.append(strides[-1] * 2)
            else:
                spread = self._valid_conv(mid, out, separable, norm, act)
                side -= 2
                if side < 1:
                    raise ValueError(
                        f"input_size {input_size} is too small for {valid_levels} unpadded "
                        "3×3 levels (a map would vanish)"
                    )
                strides.append(round(input_size / side))
            self.extras.append(nn.Sequential(reduce, spread))
            previous = out
        self.strides = strides
        for m in self.extras.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                m.eps, m.momentum = norm_eps, norm_momentum

    @staticmethod
    def _valid_conv(
        mid: int, out: int, separable: bool, norm: NormKind, act: ActKind
    ) -> nn.Sequential:
        """3×3 stride-1 conv without padding (the side shrinks by 2)."""
        bias = norm == "none"
        if separable:
            conv = nn.Sequential(
                nn.Conv2d(mid, mid, 3, groups=mid, bias=False), nn.Conv2d(mid, out, 1, bias=bias)
            )
        else:
            conv = nn.Conv2d(mid, out, 3, bias=bias)
        return nn.Sequential(conv, make_norm(norm, out), make_activation(act))

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        if len(feats) != len(self.in_channels):
            raise ValueError(f"the ssd neck expects {len(self.in_channels)} maps, got {len(feats)}")
        outs = list(feats)
        if self.l2_norm is not None:
            outs[0] = self.l2_norm(outs[0])
        x = feats[-1]
        for extra in self.extras:
            x = extra(x)
            outs.append(x)
        return outs
