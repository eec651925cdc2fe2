"""torchvision detection state dicts → tunedet key names.

torchvision's detectors (``retinanet_resnet50_fpn``, ``retinanet_resnet50_fpn_v2``,
``fcos_resnet50_fpn``) name their parts ``backbone.body`` (the ResNet),
``backbone.fpn`` (``inner_blocks`` / ``layer_blocks`` / ``extra_blocks.p6, p7``) and
``head.classification_head`` / ``head.regression_head`` (``conv.i.0`` conv, ``conv.i.1``
norm, then the predictors). tunedet's configs ``retinanet/tv_retinanet_resnet50_fpn``
(and ``_v2``) build the same layers under ``backbone``, ``neck`` and ``head``; this module
renames the tensors, it never changes a value. Older torchvision files (head convs at
``conv.0, conv.2, ...``, FPN convs without the ``.0``) are read too, as torchvision's own
``_load_from_state_dict`` does. FCOS maps onto the ``fcos`` head's
``cls_tower/box_tower/cls_logits/bbox_pred/centerness``.
"""

from __future__ import annotations

import re

from torch import Tensor

# (pattern, replacement) applied in order; the first pattern that matches renames the key
_FPN_RULES = [
    (r"^backbone\.body\.", "backbone."),
    (
        r"^backbone\.fpn\.inner_blocks\.(\d+)\.(?:0\.)?(weight|bias)$",
        r"neck.lateral_convs.\1.conv.\2",
    ),
    (
        r"^backbone\.fpn\.layer_blocks\.(\d+)\.(?:0\.)?(weight|bias)$",
        r"neck.output_convs.\1.conv.\2",
    ),
    (r"^backbone\.fpn\.extra_blocks\.p6\.", "neck.extra_convs.0.conv."),
    (r"^backbone\.fpn\.extra_blocks\.p7\.", "neck.extra_convs.1.conv."),
]
_TOWER_RULES = [
    (r"^head\.classification_head\.conv\.(\d+)\.0\.", r"head.cls_tower.\1.conv."),
    (r"^head\.classification_head\.conv\.(\d+)\.1\.", r"head.cls_tower.\1.norm."),
    (r"^head\.regression_head\.conv\.(\d+)\.0\.", r"head.box_tower.\1.conv."),
    (r"^head\.regression_head\.conv\.(\d+)\.1\.", r"head.box_tower.\1.norm."),
]
_RETINA_RULES = [
    (r"^head\.classification_head\.cls_logits\.", "head.cls_logits."),
    (r"^head\.regression_head\.bbox_reg\.", "head.box_deltas."),
]
_FCOS_RULES = [
    (r"^head\.classification_head\.cls_logits\.", "head.cls_logits."),
    (r"^head\.regression_head\.bbox_reg\.", "head.bbox_pred."),
    (r"^head\.regression_head\.bbox_ctrness\.", "head.centerness."),
]
_OLD_HEAD_CONV = re.compile(
    r"^(head\.(?:classification|regression)_head\.conv)\.(\d+)\.(weight|bias)$"
)

ARCHITECTURES = ("retinanet_resnet50_fpn", "retinanet_resnet50_fpn_v2", "fcos_resnet50_fpn")


def torchvision_architecture(state: dict[str, Tensor]) -> str | None:
    """Which torchvision detector ``state`` comes from (one of ``ARCHITECTURES``), or None.

    RetinaNet v2 differs from v1 by its GroupNorm head (``conv.0.1.weight``) and its P6
    taken from C5 (2048 input channels); FCOS by its centerness branch.
    """
    if "backbone.body.conv1.weight" not in state:
        return None
    if "head.classification_head.cls_logits.weight" not in state:
        return None
    if "head.regression_head.bbox_ctrness.weight" in state:
        return "fcos_resnet50_fpn"
    if "head.regression_head.bbox_reg.weight" not in state:
        return None
    if "head.classification_head.conv.0.1.weight" in state:
        return "retinanet_resnet50_fpn_v2"
    return "retinanet_resnet50_fpn"


def _regroup_flat_head_convs(state: dict[str, Tensor], layers_per_block: int) -> dict[str, Tensor]:
    """Flat ``nn.Sequential`` head towers → ``conv.{i}.{j}``: ``conv.{k}`` becomes
    ``conv.{k // layers_per_block}.{k % layers_per_block}``.

    RetinaNet files of torchvision < 0.13 hold ``conv.{2i}`` (conv, ReLU, ...); FCOS's
    towers are always flat ``conv.{3i}`` conv, ``conv.{3i+1}`` GroupNorm, ReLU.
    """
    regrouped = {}
    for key, value in state.items():
        match = _OLD_HEAD_CONV.match(key)
        if match:
            index = int(match.group(2))
            key = (
                f"{match.group(1)}.{index // layers_per_block}."
                f"{index % layers_per_block}.{match.group(3)}"
            )
        regrouped[key] = value
    return regrouped


def _rename(key: str, rules: list[tuple[str, str]]) -> str:
    for pattern, replacement in rules:
        new_key, count = re.subn(pattern, replacement, key)
        if count:
            return new_key
    return key


def convert_torchvision_detector(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], str]:
    """A torchvision detection ``state_dict`` → (tunedet state dict, architecture name).

    Keys no rule knows keep their name (and show up as "unexpected" when loaded).
    Raises ValueError when ``state`` is not a torchvision detector this module knows.
    """
    arch = torchvision_architecture(state)
    if arch is None:
        first = next(iter(state), "<empty>")
        raise ValueError(
            "not a torchvision RetinaNet/FCOS state dict (no 'backbone.body.conv1.weight' and "
            f"'head.classification_head.cls_logits.weight'; first key '{first}')"
        )
    if arch.startswith("retinanet"):
        rules = _FPN_RULES + _TOWER_RULES + _RETINA_RULES
        state = _regroup_flat_head_convs(state, layers_per_block=2)
    else:
        rules = _FPN_RULES + _TOWER_RULES + _FCOS_RULES
        state = _regroup_flat_head_convs(state, layers_per_block=3)
    return {_rename(key, rules): value for key, value in state.items()}, arch


def coco80_indices() -> list[int]:
    """The 80 COCO category ids among torchvision's 91 outputs (``__background__`` and the
    ten ``N/A`` ids left out), in id order: tunedet's ``coco`` dataset labels 0..79."""
    from torchvision.models._meta import _COCO_CATEGORIES

    return [i for i, name in enumerate(_COCO_CATEGORIES) if name not in ("__background__", "N/A")]


def select_classes(
    state: dict[str, Tensor], keep: list[int], num_classes: int
) -> dict[str, Tensor]:
    """Keep only the outputs ``keep`` of a converted state's ``head.cls_logits``.

    Its rows are ordered (anchor, class), ``num_classes`` per anchor (as in
    ``models/heads/prediction_layout``); the result has ``len(keep)`` per anchor.
    """
    selected = dict(state)
    for key in ("head.cls_logits.weight", "head.cls_logits.bias"):
        value = state[key]
        if value.shape[0] % num_classes:
            raise ValueError(
                f"'{key}' has {value.shape[0]} outputs, not a multiple of {num_classes} classes"
            )
        per_anchor = value.view(-1, num_classes, *value.shape[1:])
        selected[key] = per_anchor[:, keep].reshape(-1, *value.shape[1:]).clone()
    return selected
