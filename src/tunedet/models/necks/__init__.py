"""Necks: ``forward(list of backbone maps) -> list of maps`` with ``out_channels`` and ``strides``.

Importing this package registers every neck.
"""

from tunedet.models.necks.fpn import FPN

__all__ = ["FPN"]
