"""Anchor and prior generators (registry kind ``anchor_generator``)."""

from tunedet.anchors.grid import GridAnchorGenerator

__all__ = ["GridAnchorGenerator"]
