"""``tunedet analyze receptive-field``: receptive fields of small conv stacks whose fields
are known in closed form."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tunedet.analysis.receptive_field import erf_side, receptive_fields, trf_extent
from tunedet.cli.main import main


class ConvStack(nn.Module):
    """A "detector" whose backbone is a linear conv stack of all-ones kernels, its output
    one pyramid level (no neck)."""

    def __init__(self, layers):
        super().__init__()
        convs = []
        for k, (kernel, stride) in enumerate(layers):
            if kernel == "maxpool":
                convs += [nn.ReLU(), nn.MaxPool2d(stride, 1, stride // 2)]
                continue
            conv = nn.Conv2d(3 if k == 0 else 1, 1, kernel, stride, padding=kernel // 2, bias=False)
            nn.init.ones_(conv.weight)
            convs.append(conv)
        self.convs = nn.Sequential(*convs)
        self.neck = None

    def backbone(self, images):
        return [self.convs(images)]


@pytest.mark.parametrize(
    ("layers", "trf"),
    [
        ([(3, 1)], 3),
        ([(3, 1), (3, 1)], 5),
        ([(3, 2), (3, 1)], 7),
        ([(5, 2), (3, 2), (3, 1)], 5 + 2 * 2 + 2 * 4),
    ],
)
def test_theoretical_field_is_the_stacks_closed_form(layers, trf):
    # r_L = r_{L-1} + (k_L − 1)·Π strides before L
    (field,) = receptive_fields(ConvStack(layers), 64, samples=2)
    assert field["trf"] == (trf, trf) and not field["trf_clipped"]


def test_theoretical_field_counts_paths_that_relu_and_max_pool_block():
    # a 3x3 conv, ReLU + 3x3 max-pool (stride 1), a 3x3 conv: 3 + 2 + 2 = 7 px, although the
    # real network's gradient flows through one max per window and only active ReLUs
    model = ConvStack([(3, 1), ("maxpool", 3), (3, 1)])
    with torch.no_grad():
        model.convs[0].weight.normal_()
    (field,) = receptive_fields(model, 48, samples=1)
    assert field["trf"] == (7, 7)


def test_effective_field_of_two_ones_kernels_is_the_triangle_above_the_threshold():
    # the gradient of two stacked 3x3 ones kernels is (1 2 3 2 1) ⊗ (1 2 3 2 1): peak 9;
    # at e^-2 · 9 ≈ 1.22 every pixel but the four corners (1 · 1) is inside: 21 pixels
    (field,) = receptive_fields(ConvStack([(3, 1), (3, 1)]), 32, samples=1)
    assert field["erf"] == pytest.approx(math.sqrt(21))
    assert field["centre"] == pytest.approx((16.0, 16.0))
    assert erf_side(np.outer([1, 2, 3, 2, 1], [1, 2, 3, 2, 1]).astype(float), 0.4)[0] == 3.0


def test_trf_extent_of_a_support_and_clipping_at_the_border():
    support = np.zeros((10, 10), bool)
    support[2:5, 3:9] = True
    assert trf_extent(support) == (3, 2, 9, 5)
    (field,) = receptive_fields(ConvStack([(9, 1), (9, 1)]), 12, samples=1)
    assert field["trf_clipped"] and field["trf"] == (12, 12)


def test_analyze_receptive_field_writes_png(tmp_path: Path, tiny_demo, capsys):
    out = tmp_path / "rf.png"
    args = ["analyze", "receptive-field", "retinanet/demo", *tiny_demo]
    assert main([*args, "--size", "128", "--samples", "1", "--out", str(out)]) == 0
    assert out.stat().st_size > 0
    text = capsys.readouterr().out
    assert "TRF" in text and text.count("\n") >= 4


def test_a_grad_with_no_mass_has_no_field():
    assert erf_side(np.zeros((4, 4)))[0] == 0.0
