"""Sampling: which assigned anchors enter the classification loss (registry kind ``sampler``).

Contract (``base.py``): ``sample(assign_result, anchor_loss=None) -> (B, A) bool``.
"""

from tunedet.samplers.base import pick_per_image
from tunedet.samplers.hard_negative import HardNegativeSampler
from tunedet.samplers.iou_balanced import IoUBalancedNegSampler
from tunedet.samplers.ohem import OHEMSampler
from tunedet.samplers.pseudo import PseudoSampler
from tunedet.samplers.random_sampler import RandomSampler

__all__ = [
    "HardNegativeSampler",
    "IoUBalancedNegSampler",
    "OHEMSampler",
    "PseudoSampler",
    "RandomSampler",
    "pick_per_image",
]
