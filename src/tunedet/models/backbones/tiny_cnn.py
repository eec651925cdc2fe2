"""A small plain CNN for CPU demos: learns shapes from scratch in minutes.

Layout (default widths 16, 32, 64, 128, 160)::

    stem     3×3 stride-2 conv           stride 2    widths[0]
    stage i  3×3 stride-2 ConvNormAct    stride 2**(i+1)   widths[i]
             + blocks_per_stage × 3×3 ConvNormAct (residual when ``residual``)

Stage indices as in ResNet: 0 = stem, 1..4 = strides 4, 8, 16, 32, so the
default ``out_indices=(2, 3, 4)`` gives strides 8, 16, 32.
"""

from torch import Tensor, nn

from tunedet.config.registry import register
from tunedet.models.backbones.base import FrozenStages, MultiLevelBackbone, check_out_indices
from tunedet.models.layers import ActKind, ConvNormAct, NormKind


class ResidualConv(nn.Module):
    """``x + ConvNormAct(x)`` (3×3, same width)."""

    def __init__(self, channels: int, norm: NormKind, act: ActKind):
        super().__init__()
        self.block = ConvNormAct(channels, channels, 3, norm=norm, act=act)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


@register("backbone", "tiny_cnn")
class TinyCNN(MultiLevelBackbone):
    """Tiny 4-stage CNN (16–160 channels) for fast CPU training from scratch.

    ``forward(x: (B, 3, H, W)) -> [(B, out_channels[i], ~H/strides[i], ~W/strides[i])]``.
    """

    def __init__(
        self,
        widths: tuple[int, ...] = (16, 32, 64, 128, 160),
        blocks_per_stage: int = 1,
        residual: bool = True,
        out_indices: tuple[int, ...] = (2, 3, 4),
        norm: NormKind = "bn",
        act: ActKind = "relu",
        frozen_stages: FrozenStages = -1,
        norm_eval: bool = False,
    ):
        super().__init__()
        if len(widths) != 5 or min(widths) < 1:
            raise ValueError(f"widths needs 5 positive entries (stem + 4 stages), got {widths}")
        if blocks_per_stage < 0:
            raise ValueError(f"blocks_per_stage must be >= 0, got {blocks_per_stage}")
        self.out_indices = check_out_indices(out_indices)
        self.stem = ConvNormAct(3, widths[0], 3, stride=2, norm=norm, act=act)
        self.layers = nn.ModuleList()
        for i in range(1, self.out_indices[-1] + 1):
            blocks: list[nn.Module] = [
                ConvNormAct(widths[i - 1], widths[i], 3, stride=2, norm=norm, act=act)
            ]
            for _ in range(blocks_per_stage):
                if residual:
                    blocks.append(ResidualConv(widths[i], norm, act))
                else:
                    blocks.append(ConvNormAct(widths[i], widths[i], 3, norm=norm, act=act))
            self.layers.append(nn.Sequential(*blocks))
        self.out_channels = [widths[i] for i in self.out_indices]
        self.strides = [2 ** (i + 1) for i in self.out_indices]
        self._init_weights()
        self.init_freezing(frozen_stages, norm_eval)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def stages(self) -> list[nn.Module]:
        return [self.stem, *self.layers]
