"""ResNet-18/34/50/101 and ResNeXt-50/101 from torchvision, returning C2..C5 feature maps.

ResNeXt (Xie et al., 2017) is the ResNet bottleneck with its 3×3 conv split into
``groups`` (the cardinality) of ``width_per_group`` channels: ``resnext50_32x4d`` has 32
groups of 4 channels in the first stage (128 wide, doubling per stage) where ResNet-50 has
one 64-wide conv; same depth, same output widths, about as many parameters (25.0M vs 25.6M
with the classifier).

The torchvision network is wrapped, not re-written: its stem and
``layer1..layer4`` are kept under their torchvision names (so a torchvision
state dict loads), ``avgpool``/``fc`` and the stages after the last requested
one are dropped. Stage indices: 0 = stem (conv1+bn1), 1..4 = layer1..layer4
(C2..C5, strides 4, 8, 16, 32).

``init`` starts the network from weights (``models/pretrained.py``): ``none`` (random),
``imagenet`` (torchvision's ``IMAGENET1K_V1`` weights, the ones its detectors start
from) or a file path (a torchvision classification state dict, or a detector checkpoint
whose backbone sits under ``backbone.`` / ``backbone.body.``). The weights are loaded
while the model is built, so a missing file fails before any training work.

Freezing, in other toolboxes' terms: torchvision's ``trainable_backbone_layers = t``
(0..5) is ``frozen_stages = 4 - t``; Detectron's ``FREEZE_AT = f`` (0 none, 1 stem,
2 stem + res2, ...) is ``frozen_stages = f - 1``. torchvision only switches off the
gradients of those stages; here they are also kept in eval mode (their BatchNorm
statistics stop moving), which matters only with ``norm: bn``.
"""

from functools import partial
from typing import Annotated, Literal

import torchvision
from pydantic import Field
from torch import Tensor, nn
from torchvision.ops import FrozenBatchNorm2d

from tunedet.config.registry import register
from tunedet.models.backbones.base import FrozenStages, MultiLevelBackbone, check_out_indices
from tunedet.models.layers import make_norm
from tunedet.models.pretrained import (
    PretrainedWeightsError,
    backbone_init_state,
    load_backbone_state,
)
from tunedet.models.regularization import DropBlock2d

ResNetNorm = Literal["bn", "frozen_bn", "gn", "ln", "in"]
NormEps = Annotated[float, Field(ge=0)]

_BUILDERS = {
    18: torchvision.models.resnet18,
    34: torchvision.models.resnet34,
    50: torchvision.models.resnet50,
    101: torchvision.models.resnet101,
    "resnext50_32x4d": torchvision.models.resnext50_32x4d,
    "resnext101_32x8d": torchvision.models.resnext101_32x8d,
}
_BASIC_CHANNELS = [64, 128, 256, 512]
_BOTTLENECK_CHANNELS = [256, 512, 1024, 2048]


def _norm_layer(norm: ResNetNorm, eps: float = 1e-5):
    if norm == "bn":
        return partial(nn.BatchNorm2d, eps=eps)
    if norm == "frozen_bn":
        return partial(FrozenBatchNorm2d, eps=eps)
    if norm in ("gn", "ln", "in"):
        return partial(make_norm, norm)
    raise ValueError(f"unknown ResNet norm '{norm}' (choices: bn, frozen_bn, gn, ln, in)")


class ResNetBackbone(MultiLevelBackbone):
    """torchvision ResNet → list of feature maps for ``out_indices``.

    ``depth``: 18, 34, 50, 101 or a ResNeXt name (``resnext50_32x4d``, ``resnext101_32x8d``).
    ``drop_block_prob`` > 0 applies DropBlock (``models/regularization.py``) of
    ``drop_block_size`` to the outputs of stages 3 and 4 (C4, C5) in training, as Ghiasi et
    al. (2018) do on ResNet-50.
    ``forward(x: (B, 3, H, W)) -> [(B, out_channels[i], H/strides[i], W/strides[i])]``.
    """

    def __init__(
        self,
        depth: int | str,
        out_indices: tuple[int, ...] = (2, 3, 4),
        frozen_stages: int = -1,
        norm_eval: bool = False,
        norm: ResNetNorm = "bn",
        init: str = "none",
        norm_eps: float = 1e-5,
        drop_block_prob: float = 0.0,
        drop_block_size: int = 7,
    ):
        super().__init__()
        if depth not in _BUILDERS:
            raise ValueError(f"ResNet depth must be one of {list(_BUILDERS)}, got {depth}")
        if init == "imagenet" and norm not in ("bn", "frozen_bn"):
            raise PretrainedWeightsError(
                "backbone init 'imagenet' holds BatchNorm statistics; use norm bn or frozen_bn"
            )
        arch = depth if isinstance(depth, str) else f"resnet{depth}"
        state = backbone_init_state(init, arch)  # fails before any work
        self.out_indices = check_out_indices(out_indices)
        net = _BUILDERS[depth](weights=None, norm_layer=_norm_layer(norm, norm_eps))
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.num_stages = self.out_indices[-1]
        for i in range(1, self.num_stages + 1):
            self.add_module(f"layer{i}", getattr(net, f"layer{i}"))
        widths = _BASIC_CHANNELS if depth in (18, 34) else _BOTTLENECK_CHANNELS
        self.out_channels = [widths[i - 1] for i in self.out_indices]
        self.strides = [2 ** (i + 1) for i in self.out_indices]
        if state is not None:
            load_backbone_state(self, state, f"'{init}'")
        self.drop_block = DropBlock2d(drop_block_prob, drop_block_size)
        self.init_freezing(frozen_stages, norm_eval)

    def stages(self) -> list[nn.Module]:
        stem = nn.ModuleList([self.conv1, self.bn1])
        return [stem] + [getattr(self, f"layer{i}") for i in range(1, self.num_stages + 1)]

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = []
        for i in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{i}")(x)
            if i >= 3:
                x = self.drop_block(x)
            if i in self.out_indices:
                outs.append(x)
        return outs


DropBlockProb = Annotated[float, Field(ge=0, lt=1)]
DropBlockSize = Annotated[int, Field(ge=1)]


@register("backbone", "resnet18")
def resnet18(
    out_indices: tuple[int, ...] = (2, 3, 4),
    frozen_stages: FrozenStages = -1,
    norm_eval: bool = False,
    norm: ResNetNorm = "bn",
    init: str = "none",
    norm_eps: NormEps = 1e-5,
    drop_block_prob: DropBlockProb = 0.0,
    drop_block_size: DropBlockSize = 7,
) -> ResNetBackbone:
    """ResNet-18 (torchvision): C3–C5 by default, channels 128/256/512.

    ``init``: none | imagenet | a weights file; ``norm_eps``: the BatchNorm epsilon
    (torchvision's COCO RetinaNet v1 checkpoint uses 0 in its frozen BN); ``norm``: bn |
    frozen_bn | gn | ln | in; ``drop_block_prob`` / ``drop_block_size``: DropBlock on C4
    and C5 in training (0: off).
    """
    return ResNetBackbone(18, **locals())


@register("backbone", "resnet34")
def resnet34(
    out_indices: tuple[int, ...] = (2, 3, 4),
    frozen_stages: FrozenStages = -1,
    norm_eval: bool = False,
    norm: ResNetNorm = "bn",
    init: str = "none",
    norm_eps: NormEps = 1e-5,
    drop_block_prob: DropBlockProb = 0.0,
    drop_block_size: DropBlockSize = 7,
) -> ResNetBackbone:
    """ResNet-34 (torchvision): C3–C5 by default, channels 128/256/512.

    ``init``: none | imagenet | a weights file; ``norm_eps``: the BatchNorm epsilon
    (torchvision's COCO RetinaNet v1 checkpoint uses 0 in its frozen BN); ``norm``: bn |
    frozen_bn | gn | ln | in; ``drop_block_prob`` / ``drop_block_size``: DropBlock on C4
    and C5 in training (0: off).
    """
    return ResNetBackbone(34, **locals())


@register("backbone", "resnet50")
def resnet50(
    out_indices: tuple[int, ...] = (2, 3, 4),
    frozen_stages: FrozenStages = -1,
    norm_eval: bool = False,
    norm: ResNetNorm = "bn",
    init: str = "none",
    norm_eps: NormEps = 1e-5,
    drop_block_prob: DropBlockProb = 0.0,
    drop_block_size: DropBlockSize = 7,
) -> ResNetBackbone:
    """ResNet-50 (torchvision): C3–C5 by default, channels 512/1024/2048.

    ``init``: none | imagenet | a weights file; ``norm_eps``: the BatchNorm epsilon
    (torchvision's COCO RetinaNet v1 checkpoint uses 0 in its frozen BN); ``norm``: bn |
    frozen_bn | gn | ln | in; ``drop_block_prob`` / ``drop_block_size``: DropBlock on C4
    and C5 in training (0: off).
    """
    return ResNetBackbone(50, **locals())


@register("backbone", "resnet101")
def resnet101(
    out_indices: tuple[int, ...] = (2, 3, 4),
    frozen_stages: FrozenStages = -1,
    norm_eval: bool = False,
    norm: ResNetNorm = "bn",
    init: str = "none",
    norm_eps: NormEps = 1e-5,
    drop_block_prob: DropBlockProb = 0.0,
    drop_block_size: DropBlockSize = 7,
) -> ResNetBackbone:
    """ResNet-101 (torchvision): C3–C5 by default, channels 512/1024/2048.

    ``init``: none | imagenet | a weights file; ``norm_eps``: the BatchNorm epsilon
    (torchvision's COCO RetinaNet v1 checkpoint uses 0 in its frozen BN); ``norm``: bn |
    frozen_bn | gn | ln | in; ``drop_block_prob`` / ``drop_block_size``: DropBlock on C4
    and C5 in training (0: off).
    """
    return ResNetBackbone(101, **locals())


@register("backbone", "resnext50_32x4d")
def resnext50_32x4d(
    out_indices: tuple[int, ...] = (2, 3, 4),
    frozen_stages: FrozenStages = -1,
    norm_eval: bool = False,
    norm: ResNetNorm = "bn",
    init: str = "none",
    norm_eps: NormEps = 1e-5,
    drop_block_prob: DropBlockProb = 0.0,
    drop_block_size: DropBlockSize = 7,
) -> ResNetBackbone:
    """ResNeXt-50 32×4d (torchvision): 32 groups of 4 channels, C3–C5 512/1024/2048.

    ``init``: none | imagenet | a weights file; ``norm_eps``: the BatchNorm epsilon
    (torchvision's COCO RetinaNet v1 checkpoint uses 0 in its frozen BN); ``norm``: bn |
    frozen_bn | gn | ln | in; ``drop_block_prob`` / ``drop_block_size``: DropBlock on C4
    and C5 in training (0: off).
    """
    return ResNetBackbone("resnext50_32x4d", **locals())


@register("backbone", "resnext101_32x8d")
def resnext101_32x8d(
    out_indices: tuple[int, ...] = (2, 3, 4),
    frozen_stages: FrozenStages = -1,
    norm_eval: bool = False,
    norm: ResNetNorm = "bn",
    init: str = "none",
    norm_eps: NormEps = 1e-5,
    drop_block_prob: DropBlockProb = 0.0,
    drop_block_size: DropBlockSize = 7,
) -> ResNetBackbone:
    """ResNeXt-101 32×8d (torchvision): 32 groups of 8 channels, C3–C5 512/1024/2048.

    ``init``: none | imagenet | a weights file; ``norm_eps``: the BatchNorm epsilon
    (torchvision's COCO RetinaNet v1 checkpoint uses 0 in its frozen BN); ``norm``: bn |
    frozen_bn | gn | ln | in; ``drop_block_prob`` / ``drop_block_size``: DropBlock on C4
    and C5 in training (0: off).
    """
    return ResNetBackbone("resnext101_32x8d", **locals())
