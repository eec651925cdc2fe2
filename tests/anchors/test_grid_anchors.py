import math

import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator

from tunedet.anchors.grid import GridAnchorGenerator
from tunedet.config.registry import build


def torchvision_retinanet_anchors(feature_sizes, strides):
    sizes = tuple(
        (x, int(x * 2 ** (1 / 3)), int(x * 2 ** (2 / 3))) for x in [32, 64, 128, 256, 512]
    )
    generator = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
    strides_t = [[torch.tensor(s), torch.tensor(s)] for s in strides]
    return generator.grid_anchors([list(s) for s in feature_sizes], strides_t)


def test_retinanet_preset_has_nine_anchors_sized_32_to_512():
    gen = GridAnchorGenerator()
    assert gen.num_anchors_per_location == 9
    sizes = [gen.base_sizes[i] for i in range(5)]
    assert sizes == [32.0, 64.0, 128.0, 256.0, 512.0]
    base = gen.base_anchors(0)
    areas = (base[:, 2] - base[:, 0]) * (base[:, 3] - base[:, 1])
    expected = torch.tensor([32.0 * 2 ** (i / 3) for i in range(3)] * 3, dtype=torch.float64) ** 2
    torch.testing.assert_close(areas, expected)


def test_grid_anchors_match_torchvision_retinanet_with_corner_centres():
    strides = (8, 16, 32, 64, 128)
    feature_sizes = [(8, 10), (4, 5), (2, 3), (1, 2), (1, 1)]
    ours = GridAnchorGenerator(strides=strides, center_offset=0.0).grid_anchors(feature_sizes)
    theirs = torchvision_retinanet_anchors(feature_sizes, strides)
    for level, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        assert a.shape == b.shape == (feature_sizes[level][0] * feature_sizes[level][1] * 9, 4)
        # torchvision truncates the scaled sizes to int and rounds the base anchors.
        assert (a - b).abs().max() <= 1.5
        # Same ordering: each of our anchors is closest to the torchvision anchor at the same index.
        nearest = torch.cdist(a, b.float()).argmin(dim=1)
        assert torch.equal(nearest, torch.arange(len(a)))


def test_grid_anchors_are_ordered_y_then_x_then_anchor():
    gen = GridAnchorGenerator(
        strides=(16,), base_sizes=(16.0,), scales_per_octave=1, ratios=(1.0, 4.0)
    )
    (anchors,) = gen.grid_anchors([(2, 3)])
    assert anchors.shape == (2 * 3 * 2, 4)
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    expected_centres = torch.tensor(
        [[(x + 0.5) * 16, (y + 0.5) * 16] for y in range(2) for x in range(3) for _ in range(2)]
    )
    torch.testing.assert_close(centres, expected_centres)
    # first anchor of the first cell: 16×16 around (8, 8); second: ratio 4 → w = 8, h = 32
    torch.testing.assert_close(anchors[0], torch.tensor([0.0, 0.0, 16.0, 16.0]))
    torch.testing.assert_close(anchors[1], torch.tensor([4.0, -8.0, 12.0, 24.0]))


def test_scale_major_orders_scales_fastest_and_false_orders_ratios_fastest():
    kwargs = dict(strides=(8,), base_sizes=(8.0,), scales_per_octave=2, ratios=(0.5, 2.0))
    major = GridAnchorGenerator(**kwargs, scale_major=True).base_anchors(0)
    minor = GridAnchorGenerator(**kwargs, scale_major=False).base_anchors(0)
    w = lambda a: a[:, 2] - a[:, 0]  # noqa: E731
    h = lambda a: a[:, 3] - a[:, 1]  # noqa: E731
    s = math.sqrt(2)
    # ratio 0.5 is wide: w = 8/sqrt(0.5)
    torch.testing.assert_close(
        w(major), torch.tensor([8 * s, 8 * s * s, 8 / s, 8.0], dtype=torch.float64)
    )
    torch.testing.assert_close(
        w(minor), torch.tensor([8 * s, 8 / s, 8 * s * s, 8.0], dtype=torch.float64)
    )
    torch.testing.assert_close(
        h(major) / w(major), torch.tensor([0.5, 0.5, 2.0, 2.0], dtype=torch.float64)
    )


def test_base_sizes_override_octave_base_scale():
    gen = GridAnchorGenerator(
        strides=(8, 16), base_sizes=(10.0, 50.0), scales_per_octave=1, ratios=(1.0,)
    )
    a0, a1 = gen.grid_anchors([(1, 1), (1, 1)])
    torch.testing.assert_close(a0, torch.tensor([[-1.0, -1.0, 9.0, 9.0]]))
    torch.testing.assert_close(a1, torch.tensor([[-17.0, -17.0, 33.0, 33.0]]))


def test_grid_anchors_are_cached_per_size_device_and_dtype():
    gen = GridAnchorGenerator()
    sizes = [(4, 4), (2, 2), (1, 1), (1, 1), (1, 1)]
    first = gen.grid_anchors(sizes)
    assert gen.grid_anchors(sizes) is first
    doubles = gen.grid_anchors(sizes, dtype=torch.float64)
    assert doubles is not first and doubles[0].dtype == torch.float64
    assert gen.grid_anchors([(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)])[0].shape == (8 * 8 * 9, 4)


def test_grid_anchors_reject_wrong_number_of_levels():
    with pytest.raises(ValueError, match="strides"):
        GridAnchorGenerator().grid_anchors([(4, 4)])


def test_grid_generator_builds_from_registry_spec():
    gen = build("anchor_generator", {"type": "grid", "strides": [8, 16, 32], "ratios": [1.0]})
    assert gen.strides == (8, 16, 32)
    assert gen.num_anchors_per_location == 3
