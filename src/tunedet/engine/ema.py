"""Exponential moving average of a model's weights, used for evaluation (Polyak averaging).

After every optimizer step ``ema = d·ema + (1 − d)·w`` for each
floating-point parameter, with a warm-up ramp on the decay,

    d(updates) = decay · (1 − exp(−updates / tau)),

so the first updates follow the weights closely instead of averaging in the random
initialisation. Buffers (BatchNorm running statistics, counters) are copied, not
averaged. The average lives in a frozen deep copy of the model, in eval mode.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn


class ModelEMA:
    """EMA of ``model``'s parameters; ``module`` is the averaged copy (use it to predict)."""

    def __init__(self, model: nn.Module, decay: float = 0.9998, tau: float = 2000.0):
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must lie in (0, 1), got {decay}")
        if tau <= 0:
            raise ValueError(f"EMA tau must be > 0, got {tau}")
        self.decay = decay
        self.tau = tau
        self.updates = 0
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)

    def decay_at(self, updates: int) -> float:
        """The decay used by update number ``updates`` (1 for the first update)."""
        return self.decay * (1.0 - math.exp(-updates / self.tau))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One EMA step towards ``model``'s current weights (call after each optimizer step)."""
        self.updates += 1
        d = self.decay_at(self.updates)
        source = dict(model.named_parameters())
        for name, average in self.module.named_parameters():
            weight = source[name].detach()
            if average.dtype.is_floating_point:
                average.mul_(d).add_(weight.to(average.dtype), alpha=1.0 - d)
            else:
                average.copy_(weight)
        buffers = dict(model.named_buffers())
        for name, buffer in self.module.named_buffers():
            buffer.copy_(buffers[name])

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["model"])
        self.updates = int(state["updates"])
