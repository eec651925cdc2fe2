"""Fixtures shared across the test folders."""

from __future__ import annotations

import pytest

# The demo recipe shrunk to seconds: a tiny network, 64-px images, 2 iterations.
TINY_DEMO_OVERRIDES = (
    "model.backbone.widths=[8, 8, 16, 16, 16]",
    "model.neck.out_channels=16",
    "model.head.feat_channels=16",
    "model.head.stacked_convs=1",
    "data.train.num_images=8",
    "data.train.image_size=64",
    "data.val.num_images=4",
    "data.val.image_size=64",
    "data.batch_size=2",
    "train.progress=false",
    "train.max_iters=2",
)


@pytest.fixture(scope="session")
def tiny_demo() -> list[str]:
    """Overrides that make ``retinanet/demo`` train and evaluate in seconds."""
    return list(TINY_DEMO_OVERRIDES)
