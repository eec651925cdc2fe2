"""Build a detector and its parts from the validated ``model:`` section of a config."""

from __future__ import annotations

from typing import Any

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
    location). Components a detector does not use are simply absent from ``spec``; those
    it declares in ``default_components`` may be left out. Combinations of parts that
    cannot train together raise ValueError naming the config keys (``_check_combination``).
    """
    params = spec.model_dump() if hasattr(spec, "model_dump") else dict(spec)
    detector_class = REGISTRIES["detector"].get(params["type"]).target
    for kind, default in getattr(detector_class, "default_components", {}).items():
        if params.get(kind) is None:
            params[kind] = default
    num_classes = params["num_classes"]
    parts: dict[str, Any] = {}
    names: dict[str, str] = {"detector": params["type"]}
    for kind in COMPONENTS:
        sub_spec = params.pop(kind, None)
        if sub_spec is None:
            continue
        names[kind] = sub_spec["type"]
        parts[kind] = build(kind, sub_spec, num_classes=num_classes, **_injected_for(kind, parts))
        if kind == "anchor_generator":
            _check_strides(parts)
    _check_combination(detector_class, parts, names)
    return build("detector", params, **parts)


def _injected_for(kind: str, parts: dict[str, Any]) -> dict[str, Any]:
    if kind == "neck":
        backbone = parts["backbone"]
        return {"in_channels": backbone.out_channels, "in_strides": backbone.strides}
    if kind == "head":
        feature_source = parts.get("neck", parts.get("backbone"))
        injected = {"in_channels": feature_source.out_channels}
        if hasattr(feature_source, "strides"):  # heads with per-level parts (fcos scales)
            injected["strides"] = tuple(feature_source.strides)
        if "anchor_generator" in parts:
            injected["num_anchors"] = parts["anchor_generator"].num_anchors_per_location
        return injected
    return {}


def _check_strides(parts: dict[str, Any]) -> None:
    """The anchor grid must sit on the feature maps the head sees."""
    source = "neck" if "neck" in parts else "backbone"
    anchor_strides = tuple(parts["anchor_generator"].strides)
    feature_strides = tuple(parts[source].strides)
    if anchor_strides != feature_strides:
        raise ValueError(
            f"anchor_generator strides {anchor_strides} differ from the {source}'s "
            f"output strides {feature_strides}"
        )


def _check_combination(detector_class: type, parts: dict[str, Any], names: dict[str, str]) -> None:
    """Reject parts that build but cannot train together, in one line naming the keys.

    The detector class declares what it offers (``passes_predictions_to_assigner``,
    ``passes_loss_to_sampler``, ``two_stage``, ``background_logit``); the parts declare
    what they need (``needs_predictions``, ``needs_loss``, ``add_gt_as_proposals``,
    ``needs_background_logit``, …).
    """
    detector = names["detector"]
    assigner, sampler = parts.get("assigner"), parts.get("sampler")
    anchors, cls_loss = parts.get("anchor_generator"), parts.get("cls_loss")
    if getattr(assigner, "needs_predictions", False) and not getattr(
        detector_class, "passes_predictions_to_assigner", False
    ):
        raise ValueError(
            f"model.assigner: {names['assigner']} matches predictions to GTs, but {detector} "
            "does not pass its predictions to the assigner"
        )
    if getattr(sampler, "needs_loss", False) and not getattr(
        detector_class, "passes_loss_to_sampler", False
    ):
        raise ValueError(
            f"model.sampler: {names['sampler']} ranks anchors by their loss, but {detector} "
            "does not pass the loss to the sampler"
        )
    if getattr(sampler, "add_gt_as_proposals", False) and not getattr(
        detector_class, "two_stage", False
    ):
        raise ValueError(
            f"model.sampler.add_gt_as_proposals: true needs a two-stage detector; {detector} "
            "has no proposals to add the GT boxes to (set it to false)"
        )
    if getattr(cls_loss, "needs_background_logit", False) and not getattr(
        detector_class, "background_logit", False
    ):
        raise ValueError(
            f"model.cls_loss: {names['cls_loss']} needs a background logit; {detector}'s "
            "head has sigmoid logits without one, so background anchors would get no loss "
            "(use focal or bce)"
        )
    if names.get("box_coder") == "yolo" and not getattr(detector_class, "passes_strides", False):
        raise ValueError(
            f"model.box_coder: yolo needs each anchor's stride, which {detector} does not "
            "pass (use delta or distance)"
        )
    if anchors is None:
        return
    if names.get("assigner") == "grid" and getattr(anchors, "center_offset", 0.5) != 0.5:
        raise ValueError(
            "model.assigner: grid reads each cell from the anchors centred in it, but "
            f"model.anchor_generator.center_offset is {anchors.center_offset}, not 0.5"
        )
    levels = getattr(assigner, "num_levels", None)
    if levels is not None and levels != len(anchors.strides):
        raise ValueError(
            f"model.assigner.scale_ranges: {levels + 1} boundaries give {levels} levels, "
            f"but model.anchor_generator has {len(anchors.strides)} (strides {anchors.strides})"
        )
