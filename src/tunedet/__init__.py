"""tunedet: an object-detection training toolbox where every knob is a typed, tested config key."""

__version__ = "0.1.0"


def fit(data, budget="15m", out=None, **options):
    """Configure and train a detector for ``data`` (COCO .json, VOC folder, data.yaml)
    within a wall-time ``budget`` ("15m", "90s", "1h"): ``tunedet.tuning.fit.fit``."""
    from tunedet.tuning.fit import fit as run_fit

    return run_fit(data, budget=budget, out=out, **options)
