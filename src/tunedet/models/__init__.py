"""Models: backbones, necks, heads, detectors and ``build_detector``.

Importing this package registers every backbone, neck, head and detector.
"""

from tunedet.models import backbones, detectors, heads, necks
from tunedet.models.build import build_detector

__all__ = ["backbones", "build_detector", "detectors", "heads", "necks"]
