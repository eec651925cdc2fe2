"""Dense heads: ``forward(list of neck maps) -> flattened per-anchor predictions``.

Importing this package registers every head.
"""

from tunedet.models.heads.prediction_layout import concat_levels, flatten_level
from tunedet.models.heads.retina import RetinaHead

__all__ = ["RetinaHead", "concat_levels", "flatten_level"]
