"""Build a detector and its parts from the validated ``model:`` section of a config."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

import tunedet.anchors  # noqa: F401  (registers anchor generators)
import tunedet.assigners  # noqa: F401  (registers assigners)
import tunedet.boxes  # noqa: F401  (registers box coders)
import tunedet.losses  # noqa: F401  (registers losses)
import tunedet.samplers  # noqa: F401  (registers samplers)
from tunedet.config.registry import REGISTRIES, build

# built in this order; each may receive attributes of those before it
COMPONENTS = (
    "backbone",
    "neck",
    "anchor_generator",
    "head",
    "rpn",
    "roi_head",
    "mask_head",
    "assigner",
    "sampler",
    "box_coder",
    "cls_loss",
    "box_loss",
)


def build_detector(spec: dict[str, Any] | Any) -> nn.Module:
    """``spec``: ``{"type": detector name, "num_classes": int, "backbone": {...}, "neck": {...},
    "head": {...}, ...component specs, ...the detector's own scalar args}``.

    The neck gets ``in_channels``/``in_strides`` from the backbone; the head gets
    ``in_channels`` from the neck, ``num_classes`` and ``num_anchors`` (anchors per
    location); a two-stage detector's ``rpn``, ``roi_head`` and ``mask_head`` get the
    neck's ``in_channels`` and ``strides`` (and ``num_classes``). Components a detector does not use are simply absent from
    ``spec``; those it declares in ``default_components`` may be left out. A component
    with component slots of its own (``rpn.assigner``, ``roi_head.sampler``) has them
    built first, the same way (``_build_component``). Combinations of parts that cannot
    train together raise ValueError naming the config keys (``_check_combination``).
    """
    params = spec.model_dump() if hasattr(spec, "model_dump") else dict(spec)
    detector_class = REGISTRIES["detector"].get(params["type"]).target
    _fill_defaults(detector_class, params)
    num_classes = params["num_classes"]
    parts: dict[str, Any] = {}
    names: dict[str, str] = {"detector": params["type"]}
    for kind in COMPONENTS:
        sub_spec = params.pop(kind, None)
        if sub_spec is None:
            continue
        names[kind] = sub_spec["type"]
        injected = _injected_for(kind, parts)
        parts[kind] = _build_component(kind, sub_spec, num_classes, injected, f"model.{kind}")
        if kind == "anchor_generator":
            _check_strides(parts["anchor_generator"], parts, "model.anchor_generator")
    _check_combination(detector_class, parts, names)
    return build("detector", params, **parts)


def _fill_defaults(owner: type, params: dict[str, Any]) -> None:
    for kind, default in getattr(owner, "default_components", {}).items():
        if params.get(kind) is None:
            params[kind] = default


def _build_component(
    kind: str, spec: dict[str, Any], num_classes: int, injected: dict[str, Any], key: str
) -> Any:
    """Build one component; its own component slots (registry kinds among its injected
    arguments, e.g. an rpn's ``assigner``) first, recursively, then checked together as
    ``_check_combination`` checks a detector's parts (``key``: its config path)."""
    params = dict(spec)
    entry = REGISTRIES[kind].get(params["type"])
    slots = [arg for arg in entry.injected if arg in REGISTRIES]
    if not slots:
        return build(kind, params, num_classes=num_classes, **injected)
    _fill_defaults(entry.target, params)
    parts: dict[str, Any] = {}
    names: dict[str, str] = {"detector": f"{key} ({params['type']})"}
    for slot in slots:
        sub_spec = params.pop(slot, None)
        if sub_spec is None:
            continue
        names[slot] = sub_spec["type"]
        parts[slot] = _build_component(slot, sub_spec, num_classes, {}, f"{key}.{slot}")
    if "anchor_generator" in parts:
        _check_strides(parts["anchor_generator"], injected, f"{key}.anchor_generator")
    _check_combination(entry.target, parts, names, prefix=f"{key}.")
    return build(kind, params, num_classes=num_classes, **injected, **parts)


def _injected_for(kind: str, parts: dict[str, Any]) -> dict[str, Any]:
    if kind == "neck":
        backbone = parts["backbone"]
        return {"in_channels": backbone.out_channels, "in_strides": backbone.strides}
    feature_source = parts.get("neck", parts.get("backbone"))
    if kind == "head":
        injected = {"in_channels": feature_source.out_channels}
        if hasattr(feature_source, "strides"):  # heads with per-level parts (fcos scales)
            injected["strides"] = tuple(feature_source.strides)
        if "anchor_generator" in parts:
            injected["num_anchors"] = parts["anchor_generator"].num_anchors_per_location
        return injected
    if kind in ("rpn", "roi_head", "mask_head"):
        return {"in_channels": feature_source.out_channels, "strides": list(feature_source.strides)}
    return {}


def _check_strides(anchor_generator: Any, features: dict[str, Any], key: str) -> None:
    """The anchor grid must sit on the feature maps the head sees (``features``: the
    detector's parts, or an rpn's injected ``strides``)."""
    if "strides" in features:
        source, feature_strides = "neck", tuple(features["strides"])
    else:
        source = "neck" if "neck" in features else "backbone"
        feature_strides = tuple(features[source].strides)
    anchor_strides = tuple(anchor_generator.strides)
    if anchor_strides != feature_strides:
        raise ValueError(
            f"{key} strides {anchor_strides} differ from the {source}'s "
            f"output strides {feature_strides}"
        )


def _check_combination(
    detector_class: type, parts: dict[str, Any], names: dict[str, str], prefix: str = "model."
) -> None:
    """Reject parts that build but cannot train together, in one line naming the keys.

    The detector class (or, for nested slots, the component that owns them: an rpn, a
    roi_head; ``prefix`` is its config path) declares what it offers
    (``passes_predictions_to_assigner``, ``passes_loss_to_sampler``, ``two_stage``,
    ``background_logit``, ``cls_loss_on_positives_only``, ``passes_per_image_boxes``,
    ``reads_several_gts_per_anchor``); the parts declare what they need
    (``needs_predictions``, ``needs_loss``, ``add_gt_as_proposals``,
    ``needs_background_logit``, ``per_image_anchors``, ``several_gts_per_anchor``, …).
    """
    detector = names["detector"]
    assigner, sampler = parts.get("assigner"), parts.get("sampler")
    anchors, cls_loss = parts.get("anchor_generator"), parts.get("cls_loss")
    if getattr(assigner, "needs_predictions", False) and not getattr(
        detector_class, "passes_predictions_to_assigner", False
    ):
        raise ValueError(
            f"{prefix}assigner: {names['assigner']} matches predictions to GTs, but {detector} "
            "does not pass its predictions to the assigner"
        )
    if (
        assigner is not None
        and getattr(detector_class, "passes_per_image_boxes", False)
        and not getattr(assigner, "per_image_anchors", False)
    ):
        raise ValueError(
            f"{prefix}assigner: {names['assigner']} assigns one anchor set shared by the "
            f"batch, but {detector} matches each image's own proposals (use max_iou)"
        )
    if getattr(sampler, "needs_loss", False) and not getattr(
        detector_class, "passes_loss_to_sampler", False
    ):
        raise ValueError(
            f"{prefix}sampler: {names['sampler']} ranks anchors by their loss, but {detector} "
            "does not pass the loss to the sampler"
        )
    if getattr(sampler, "add_gt_as_proposals", False) and not getattr(
        detector_class, "two_stage", False
    ):
        raise ValueError(
            f"{prefix}sampler.add_gt_as_proposals: true needs a two-stage detector's "
            f"proposals (its roi_head); {detector} has no proposals to add the GT boxes to "
            "(set it to false)"
        )
    if getattr(cls_loss, "needs_background_logit", False) and not (
        getattr(detector_class, "background_logit", False)
        or getattr(detector_class, "cls_loss_on_positives_only", False)
    ):
        raise ValueError(
            f"{prefix}cls_loss: {names['cls_loss']} needs a background logit; {detector}'s "
            "head has sigmoid logits without one, so background anchors would get no loss "
            "(use focal or bce)"
        )
    if getattr(assigner, "several_gts_per_anchor", False) and not getattr(
        detector_class, "reads_several_gts_per_anchor", False
    ):
        raise ValueError(
            f"{prefix}assigner: {names['assigner']} gives an anchor several GTs, but "
            f"{detector} trains each anchor on one GT ("
            + (
                "its softmax target would be multi-hot"
                if getattr(detector_class, "background_logit", False)
                else "the extra matches would be ignored"
            )
            + "; use max_iou, or retinanet)"
        )
    if names.get("box_coder") == "yolo" and not getattr(detector_class, "passes_strides", False):
        raise ValueError(
            f"{prefix}box_coder: yolo needs each anchor's stride, which {detector} does not "
            "pass (use delta or distance)"
        )
    if anchors is None:
        return
    if names.get("assigner") == "grid" and getattr(anchors, "center_offset", 0.5) != 0.5:
        raise ValueError(
            f"{prefix}assigner: grid reads each cell from the anchors centred in it, but "
            f"{prefix}anchor_generator.center_offset is {anchors.center_offset}, not 0.5"
        )
    levels = getattr(assigner, "num_levels", None)
    if levels is not None and levels != len(anchors.strides):
        raise ValueError(
            f"{prefix}assigner.scale_ranges: {levels + 1} boundaries give {levels} levels, "
            f"but {prefix}anchor_generator has {len(anchors.strides)} (strides {anchors.strides})"
        )


def memory_bytes(device: torch.device) -> int | None:
    """The memory of ``device`` in bytes (a CUDA card's, or the machine's RAM); None if
    unknown."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device.index or 0).total_memory
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not a POSIX system
        return None


def check_model_memory(spec: dict[str, Any], device: torch.device) -> None:
    """Refuse, before any allocation, a model whose training state would not fit in the
    device's memory: its parameters are counted on the ``meta`` device (no memory), and
    training holds at least three fp32 copies (weights, gradients, momentum). A model
    that cannot be built on ``meta`` is not checked."""
    available = memory_bytes(device)
    if available is None:
        return
    from tunedet.models.pretrained import skip_backbone_init

    try:
        with torch.device("meta"):
            model = build_detector(skip_backbone_init(spec))  # no weight file read twice
    except Exception:  # noqa: BLE001 (the real build reports the problem)
        return
    count = sum(p.numel() for p in model.parameters())
    needed = 3 * 4 * count
    if needed > available:
        raise ValueError(
            f"model: {count:,} parameters need {needed / 2**30:.1f} GiB to train (weights, "
            f"gradients, momentum) but {device.type} has {available / 2**30:.1f} GiB "
            "(check model.num_classes and the widths)"
        )
