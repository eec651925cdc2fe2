"""CPU deployment: conv-BN folding, channels_last, ONNX / TorchScript export checked
against eager PyTorch."""

from tunedet.deploy.export import (
    DenseNetwork,
    ExportedDetector,
    detections_equal,
    detections_from_dense,
    export_dense,
    feature_sizes,
    max_abs_difference,
    raw_export_unsupported,
)
from tunedet.deploy.fold import fold_bn_into_conv, fold_conv_bn, to_channels_last

__all__ = [
    "DenseNetwork",
    "ExportedDetector",
    "detections_equal",
    "detections_from_dense",
    "export_dense",
    "feature_sizes",
    "fold_bn_into_conv",
    "fold_conv_bn",
    "max_abs_difference",
    "raw_export_unsupported",
    "to_channels_last",
]
