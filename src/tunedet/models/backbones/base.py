"""What every multi-level backbone shares: ``frozen_stages`` and ``norm_eval``.

A backbone is split into stage 0 (the stem) and stages 1..4; stage ``i`` has
stride ``2**(i+1)`` in the ResNet layout (C2..C5 = stages 1..4). Freezing up to
stage ``k`` sets ``requires_grad=False`` on the parameters of stages ``0..k``
*and* keeps those stages in eval mode after every ``model.train()`` call, so
their BatchNorm statistics stop moving too (mmdetection-mini's warning: a
parent's ``train()`` would otherwise switch them back to training mode).
"""

from typing import Annotated

from pydantic import Field
from torch import Tensor, nn

from tunedet.models.layers import is_batch_norm

FrozenStages = Annotated[int, Field(ge=-1, le=4)]


def check_out_indices(out_indices: tuple[int, ...], num_stages: int = 4) -> tuple[int, ...]:
    """Validate stage indices (1-based, stage ``i`` = C``i+1``); returns them sorted."""
    indices = tuple(sorted(set(out_indices)))
    if not indices or len(indices) != len(out_indices):
        raise ValueError(f"out_indices must be distinct and non-empty, got {out_indices}")
    if indices[0] < 1 or indices[-1] > num_stages:
        raise ValueError(f"out_indices must lie in 1..{num_stages}, got {out_indices}")
    return indices


class MultiLevelBackbone(nn.Module):
    """Base class: subclasses build their stages, then call ``init_freezing``.

    Attributes the neck reads: ``out_channels: list[int]`` and ``strides:
    list[int]``, one per returned feature map.
    """

    out_channels: list[int]
    strides: list[int]
    frozen_stages: int = -1
    norm_eval: bool = False

    def stages(self) -> list[nn.Module]:
        """``[stem, stage1, stage2, ...]`` (only the stages that exist)."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> list[Tensor]:
        """Run ``stages()`` in order and return the outputs of the stages whose index
        (the stem is 0) is in ``self.out_indices``."""
        outs = []
        for i, stage in enumerate(self.stages()):
            x = stage(x)
            if i in self.out_indices:
                outs.append(x)
        return outs

    def init_freezing(self, frozen_stages: int, norm_eval: bool) -> None:
        """Record the knobs and switch off gradients of the frozen stages."""
        if not -1 <= frozen_stages <= 4:
            raise ValueError(f"frozen_stages must lie in -1..4, got {frozen_stages}")
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        for stage in self.frozen_modules():
            for param in stage.parameters():
                param.requires_grad_(False)
        self.train(self.training)

    def frozen_modules(self) -> list[nn.Module]:
        return self.stages()[: self.frozen_stages + 1]

    def train(self, mode: bool = True) -> "MultiLevelBackbone":
        """Set train/eval mode, then force frozen stages (and BN when ``norm_eval``) to eval."""
        super().train(mode)
        if mode:
            for stage in self.frozen_modules():
                stage.eval()
            if self.norm_eval:
                for module in self.modules():
                    if is_batch_norm(module):
                        module.eval()
        return self
