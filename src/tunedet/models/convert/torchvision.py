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

``ssd300_vgg16`` (config ``ssd/tv_ssd300_vgg16``): torchvision's ``backbone.features``
(VGG-16 up to conv4_3), ``backbone.extra.0`` (pool4, conv5, pool5, fc6, fc7) and
``backbone.scale_weight`` become the ``vgg`` backbone's ``layers.0-4`` and the ``ssd``
neck's ``l2_norm`` and ``extras``; the head's ``module_list.{l}`` become ``cls_convs`` /
``box_convs``. Its classifier is the one tensor whose values move: torchvision puts
background at class 0 of each prior's 91 outputs, tunedet last, so the rows of each prior
are rotated and tunedet's label ``k`` is torchvision's label ``k + 1``.
``ssdlite320_mobilenet_v3_large`` (config ``ssd/tv_ssdlite320_mobilenet_v3_large``): the
backbone keeps torchvision's ``features`` names; ``backbone.extra`` becomes the neck's
``extras`` and the head's depthwise-BN-ReLU6 + 1×1 predictors ``cls_convs`` /
``box_convs`` (background rotated the same way).
"""

from __future__ import annotations

import re
from typing import Any

import torch
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
# torchvision's vgg16.features index → tunedet vgg layers.{stage}.{i}: conv1-4
_VGG_FEATURES = {0: "0.0", 2: "0.1", 5: "1.0", 7: "1.1", 10: "2.0", 12: "2.1", 14: "2.2"}
_VGG_FEATURES |= {17: "2.4", 19: "2.5", 21: "2.6"}
_SSD_VGG_RULES = [
    (r"^backbone\.scale_weight$", "neck.l2_norm.weight"),
    (r"^backbone\.extra\.0\.1\.", "backbone.layers.3.1.conv."),  # conv5_1
    (r"^backbone\.extra\.0\.3\.", "backbone.layers.3.2.conv."),
    (r"^backbone\.extra\.0\.5\.", "backbone.layers.3.3.conv."),
    (r"^backbone\.extra\.0\.7\.1\.", "backbone.layers.4.1."),  # fc6 (dilated)
    (r"^backbone\.extra\.0\.7\.3\.", "backbone.layers.4.3.conv."),  # fc7
    (r"^backbone\.extra\.([12])\.0\.", lambda m: f"neck.extras.{int(m[1]) - 1}.0.conv."),
    (r"^backbone\.extra\.([12])\.2\.", lambda m: f"neck.extras.{int(m[1]) - 1}.1.conv."),
    (r"^backbone\.extra\.([34])\.0\.", lambda m: f"neck.extras.{int(m[1]) - 1}.0.conv."),
    (r"^backbone\.extra\.([34])\.2\.", lambda m: f"neck.extras.{int(m[1]) - 1}.1.0."),
    (
        r"^backbone\.features\.(\d+)\.",
        lambda m: f"backbone.layers.{_VGG_FEATURES.get(int(m[1]), 'unknown.' + m[1])}.conv.",
    ),
    (r"^head\.classification_head\.module_list\.(\d+)\.", r"head.cls_convs.\1."),
    (r"^head\.regression_head\.module_list\.(\d+)\.", r"head.box_convs.\1."),
]
_SSDLITE_RULES = [  # backbone.features.* keep their names (see backbones/mobilenet_v3.py)
    (r"^backbone\.extra\.(\d+)\.0\.0\.", r"neck.extras.\1.0.conv."),
    (r"^backbone\.extra\.(\d+)\.0\.1\.", r"neck.extras.\1.0.norm."),
    (r"^backbone\.extra\.(\d+)\.1\.([01])\.", r"neck.extras.\1.1.\2."),  # depthwise, BN
    (r"^backbone\.extra\.(\d+)\.2\.0\.", r"neck.extras.\1.1.3."),  # pointwise
    (r"^backbone\.extra\.(\d+)\.2\.1\.", r"neck.extras.\1.1.4."),
    (r"^head\.classification_head\.module_list\.(\d+)\.0\.([01])\.", r"head.cls_convs.\1.\2."),
    (r"^head\.classification_head\.module_list\.(\d+)\.1\.", r"head.cls_convs.\1.3."),
    (r"^head\.regression_head\.module_list\.(\d+)\.0\.([01])\.", r"head.box_convs.\1.\2."),
    (r"^head\.regression_head\.module_list\.(\d+)\.1\.", r"head.box_convs.\1.3."),
]
# an SSD classifier's output conv in tunedet's names: plain (ssd300) or after depthwise-BN-act
_SSD_CLASSIFIER = re.compile(r"^head\.cls_convs\.(\d+)\.(?:3\.)?(weight|bias)$")
_OLD_HEAD_CONV = re.compile(
    r"^(head\.(?:classification|regression)_head\.conv)\.(\d+)\.(weight|bias)$"
)

ARCHITECTURES = (
    "retinanet_resnet50_fpn",
    "retinanet_resnet50_fpn_v2",
    "fcos_resnet50_fpn",
    "ssd300_vgg16",
    "ssdlite320_mobilenet_v3_large",
)


def torchvision_architecture(state: dict[str, Tensor]) -> str | None:
    """Which torchvision detector ``state`` comes from (one of ``ARCHITECTURES``), or None.

    RetinaNet v2 differs from v1 by its GroupNorm head (``conv.0.1.weight``) and its P6
    taken from C5 (2048 input channels); FCOS by its centerness branch; SSD300 by its
    L2-norm scale (``backbone.scale_weight``) and per-level head convs.
    """
    if (
        "backbone.scale_weight" in state
        and "backbone.features.0.weight" in state
        and "head.classification_head.module_list.0.weight" in state
    ):
        return "ssd300_vgg16"
    if (
        "backbone.features.0.0.0.weight" in state
        and "backbone.extra.0.1.0.weight" in state
        and "head.classification_head.module_list.0.1.weight" in state
    ):
        return "ssdlite320_mobilenet_v3_large"
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


def _background_last(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """SSD classifier rows (prior, class) with background at class 0 → background last;
    the priors per cell read from the box regressor of the same level (4 rows each)."""
    moved = dict(state)
    for key, value in state.items():
        match = _SSD_CLASSIFIER.match(key)
        if not match:
            continue
        box_bias = re.sub(r"(weight|bias)$", "bias", key.replace("cls_convs", "box_convs", 1))
        priors = len(state[box_bias]) // 4
        per_prior = value.view(priors, -1, *value.shape[1:])
        moved[key] = torch.cat([per_prior[:, 1:], per_prior[:, :1]], dim=1).reshape(value.shape)
    return moved


def _rename(key: str, rules: list[tuple[str, Any]]) -> str:
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
            "not a torchvision RetinaNet/FCOS/SSD state dict (no 'backbone.body.conv1.weight' "
            "and 'head.classification_head.cls_logits.weight', nor 'backbone.scale_weight'; "
            f"first key '{first}')"
        )
    if arch.startswith("ssd"):
        rules = _SSD_VGG_RULES if arch == "ssd300_vgg16" else _SSDLITE_RULES
        return _background_last({_rename(key, rules): v for key, v in state.items()}), arch
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
    """Keep only torchvision's outputs ``keep`` in a converted state's classifier.

    RetinaNet/FCOS (``head.cls_logits``): rows ordered (anchor, class), ``num_classes``
    per anchor (as in ``models/heads/prediction_layout``); the result has ``len(keep)``
    per anchor. SSD (``head.cls_convs.{l}``): ``num_classes`` rows per prior with
    torchvision's background (output 0) moved last, so output ``i`` sits at row ``i − 1``;
    the result has ``len(keep)`` rows and background last.
    """
    selected = dict(state)
    ssd_keys = [key for key in state if _SSD_CLASSIFIER.match(key)]
    if ssd_keys:  # SSD: softmax with background last
        rows = [i - 1 for i in keep if i != 0] + [num_classes - 1]
        keys = ssd_keys
    else:
        rows = list(keep)
        keys = ["head.cls_logits.weight", "head.cls_logits.bias"]
    for key in keys:
        value = state[key]
        if value.shape[0] % num_classes:
            raise ValueError(
                f"'{key}' has {value.shape[0]} outputs, not a multiple of {num_classes} classes"
            )
        per_anchor = value.view(-1, num_classes, *value.shape[1:])
        selected[key] = per_anchor[:, rows].reshape(-1, *value.shape[1:]).clone()
    return selected
