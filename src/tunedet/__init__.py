"""tunedet: an object-detection training toolbox where every knob is a typed, tested config key."""

__version__ = "0.1.0"
