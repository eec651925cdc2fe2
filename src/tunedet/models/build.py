"""Build a detector and its parts from the validated ``model:`` section of a config."""

from __future__ import annotations

from typing import Any

from torch import nn

import tunedet.anchors  # noqa: F401  (registers anchor generators)
import tunedet.assigners  # noqa: F401  (registers assigners)
import tunedet.boxes  # noqa: F401  (registers box coders)
import tunedet.losses  # noqa: F401  (registers losses)
from tunedet.config.registry import REGISTRIES, build

# built in this order; each may receive attributes of those before it
COMPONENTS = (
    "backbone",
    "neck",
    "anchor_generator",
    "head",
    "assigner",
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
    it declares in ``default_components`` may be left out.
    """
    params = spec.model_dump() if hasattr(spec, "model_dump") else dict(spec)
    detector_class = REGISTRIES["detector"].get(params["type"]).target
    for kind, default in getattr(detector_class, "default_components", {}).items():
        if params.get(kind) is None:
            params[kind] = default
    num_classes = params["num_classes"]
    parts: dict[str, Any] = {}
    for kind in COMPONENTS:
        sub_spec = params.pop(kind, None)
        if sub_spec is None:
            continue
        parts[kind] = build(kind, sub_spec, num_classes=num_classes, **_injected_for(kind, parts))
        if kind == "anchor_generator":
            _check_strides(parts)
    return build("detector", params, **parts)


def _injected_for(kind: str, parts: dict[str, Any]) -> dict[str, Any]:
    if kind == "neck":
        backbone = parts["backbone"]
        return {"in_channels": backbone.out_channels, "in_strides": backbone.strides}
    if kind == "head":
        feature_source = parts.get("neck", parts.get("backbone"))
        injected = {"in_channels": feature_source.out_channels}
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
