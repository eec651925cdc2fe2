"""tunedet: an object-detection training toolbox where every knob is a typed, tested config key.

import tunedet

detector = tunedet.Detector.from_checkpoint("runs/mine/best.pt")
found = detector.predict("image.jpg")[0]  # boxes xyxy, scores, labels, names
run_dir, metrics = tunedet.train("my.yaml", **{"train.max_iters": 100})
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Detections", "Detector", "__version__", "fit", "train"]

if TYPE_CHECKING:
    from tunedet.api import Detections, Detector, train


def __getattr__(name: str) -> Any:
    # torch is imported on first use, so `import tunedet` and `tunedet --version` stay quick
    if name in ("Detector", "Detections", "train"):
        from tunedet import api

        return getattr(api, name)
    raise AttributeError(f"module 'tunedet' has no attribute '{name}'")


def fit(data, budget="15m", out=None, **options):
    """Configure and train a detector for ``data`` (COCO .json, VOC folder, data.yaml)
    within a wall-time ``budget`` ("15m", "90s", "1h"): ``tunedet.tuning.fit.fit``."""
    from tunedet.tuning.fit import fit as run_fit

    return run_fit(data, budget=budget, out=out, **options)
