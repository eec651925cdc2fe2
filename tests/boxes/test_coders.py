import math

import pytest
import torch
from torchvision.models.detection._utils import BoxCoder as TorchvisionBoxCoder

from tunedet.boxes import DeltaBoxCoder, DistanceBoxCoder, YOLOBoxCoder
from tunedet.config.registry import build

DETECTRON_WEIGHTS = (10.0, 10.0, 5.0, 5.0)


def random_boxes(*shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(*shape, 2, generator=g, dtype=dtype) * 200
    wh = torch.rand(*shape, 2, generator=g, dtype=dtype) * 100 + 2
    return torch.cat((xy, xy + wh), dim=-1)


def random_deltas(*shape, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(*shape, 4, generator=g, dtype=torch.float64) * 2 - 1) * scale


# --- delta -----------------------------------------------------------------------------------


def test_delta_decode_with_detectron_weights_equals_torchvision_boxcoder():
    anchors, deltas = (
        random_boxes(50, seed=1, dtype=torch.float32),
        random_deltas(50, seed=2).float() * 8,
    )
    reference = TorchvisionBoxCoder(DETECTRON_WEIGHTS).decode_single(deltas, anchors)
    decoded = DeltaBoxCoder(weights=DETECTRON_WEIGHTS).decode(anchors, deltas)
    torch.testing.assert_close(decoded, reference)


def test_delta_encode_with_detectron_weights_equals_torchvision_boxcoder():
    anchors, boxes = (
        random_boxes(50, seed=3, dtype=torch.float32),
        random_boxes(50, seed=4, dtype=torch.float32),
    )
    reference = TorchvisionBoxCoder(DETECTRON_WEIGHTS).encode_single(boxes, anchors)
    torch.testing.assert_close(
        DeltaBoxCoder(weights=DETECTRON_WEIGHTS).encode(anchors, boxes), reference
    )


def test_detectron_weights_equal_ssd_variances_as_stds():
    anchors, boxes = random_boxes(20, seed=5), random_boxes(20, seed=6)
    by_weights = DeltaBoxCoder(weights=DETECTRON_WEIGHTS)
    by_stds = DeltaBoxCoder(stds=(0.1, 0.1, 0.2, 0.2))
    torch.testing.assert_close(by_weights.encode(anchors, boxes), by_stds.encode(anchors, boxes))


def test_delta_encode_matches_hand_values():
    anchor = torch.tensor([0.0, 0.0, 10.0, 20.0], dtype=torch.float64)
    box = torch.tensor([5.0, 0.0, 25.0, 20.0], dtype=torch.float64)  # centre +10 px in x, 2x wide
    coder = DeltaBoxCoder(means=(0.5, 0.0, 0.0, 0.0), stds=(0.5, 1.0, 0.5, 1.0))
    expected = [(1.0 - 0.5) / 0.5, 0.0, math.log(2) / 0.5, 0.0]
    torch.testing.assert_close(
        coder.encode(anchor, box), torch.tensor(expected, dtype=torch.float64)
    )


@pytest.mark.parametrize(
    "coder",
    [
        DeltaBoxCoder(),
        DeltaBoxCoder(weights=DETECTRON_WEIGHTS),
        DeltaBoxCoder(means=(0.1, -0.2, 0.05, 0.0), stds=(0.1, 0.1, 0.2, 0.2)),
    ],
)
def test_delta_round_trips(coder):
    anchors, boxes = random_boxes(4, 30, seed=7), random_boxes(4, 30, seed=8)
    torch.testing.assert_close(coder.decode(anchors, coder.encode(anchors, boxes)), boxes)
    deltas = random_deltas(4, 30, seed=9)
    torch.testing.assert_close(coder.encode(anchors, coder.decode(anchors, deltas)), deltas)


def test_delta_decode_clamps_dw_dh():
    coder = DeltaBoxCoder(clamp=math.log(4.0))
    anchor = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    huge = torch.tensor([[0.0, 0.0, 50.0, 1000.0]])
    decoded = coder.decode(anchor, huge)
    assert decoded.tolist() == [[-15.0, -15.0, 25.0, 25.0]]  # 4x the anchor, centred
    assert torch.isfinite(DeltaBoxCoder().decode(anchor, huge)).all()


def test_delta_broadcasts_shared_anchors_over_a_batch():
    coder = DeltaBoxCoder(weights=DETECTRON_WEIGHTS)
    anchors, boxes = random_boxes(30, seed=10), random_boxes(3, 30, seed=11)
    deltas = coder.encode(anchors, boxes)
    assert deltas.shape == (3, 30, 4)
    torch.testing.assert_close(deltas[2], coder.encode(anchors, boxes[2]))
    torch.testing.assert_close(coder.decode(anchors, deltas), boxes)


def test_delta_encode_of_empty_padding_box_is_finite():
    anchors = random_boxes(3, seed=12, dtype=torch.float32)
    assert torch.isfinite(DeltaBoxCoder().encode(anchors, torch.zeros(3, 4))).all()


# --- yolo ------------------------------------------------------------------------------------


def yolo_anchors(seed=0):
    """Anchors centred on cells of a stride-8 and a stride-16 grid, with their strides."""
    g = torch.Generator().manual_seed(seed)
    strides = torch.tensor([8.0] * 20 + [16.0] * 20, dtype=torch.float64)
    cells = torch.randint(0, 20, (40, 2), generator=g).double()
    centres = (cells + 0.5) * strides[:, None]
    sizes = torch.rand(40, 2, generator=g, dtype=torch.float64) * 60 + 4
    return torch.cat((centres - sizes / 2, centres + sizes / 2), dim=-1), strides, cells


def boxes_in_cells(anchors, strides, cells, seed=1):
    g = torch.Generator().manual_seed(seed)
    offsets = torch.rand(len(cells), 2, generator=g, dtype=torch.float64) * 0.98 + 0.01
    centres = (cells + offsets) * strides[:, None]
    sizes = torch.rand(len(cells), 2, generator=g, dtype=torch.float64) * 100 + 2
    return torch.cat((centres - sizes / 2, centres + sizes / 2), dim=-1), offsets


def test_yolo_encode_gives_cell_offsets_and_log_size_ratios():
    anchors, strides, cells = yolo_anchors()
    boxes, offsets = boxes_in_cells(anchors, strides, cells)
    targets = YOLOBoxCoder().encode(anchors, boxes, strides)
    torch.testing.assert_close(targets[:, :2], offsets)
    anchor_wh = anchors[:, 2:] - anchors[:, :2]
    torch.testing.assert_close(targets[:, 2:], torch.log((boxes[:, 2:] - boxes[:, :2]) / anchor_wh))


def test_yolo_decode_applies_sigmoid_in_the_cell():
    anchors, strides, cells = yolo_anchors()
    raw = random_deltas(40, seed=2, scale=3.0)
    boxes = YOLOBoxCoder().decode(anchors, raw, strides)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    torch.testing.assert_close(centres, (cells + torch.sigmoid(raw[:, :2])) * strides[:, None])
    anchor_wh = anchors[:, 2:] - anchors[:, :2]
    torch.testing.assert_close(boxes[:, 2:] - boxes[:, :2], anchor_wh * torch.exp(raw[:, 2:]))


@pytest.mark.parametrize("scale_xy", [1.0, 1.2, 2.0])
def test_yolo_round_trips(scale_xy):
    coder = YOLOBoxCoder(scale_xy=scale_xy)
    anchors, strides, cells = yolo_anchors(seed=3)
    boxes, _ = boxes_in_cells(anchors, strides, cells, seed=4)
    for logits in (True, False):
        encoded = coder.encode(anchors, boxes, strides, logits=logits)
        torch.testing.assert_close(coder.decode(anchors, encoded, strides, logits=logits), boxes)
    raw = random_deltas(40, seed=5, scale=3.0)
    decoded = coder.decode(anchors, raw, strides)
    torch.testing.assert_close(coder.encode(anchors, decoded, strides, logits=True), raw)


def test_yolo_accepts_a_single_float_stride():
    anchors = torch.tensor([[0.0, 0.0, 16.0, 16.0]], dtype=torch.float64)  # cell (0, 0), stride 16
    box = torch.tensor([[4.0, 8.0, 8.0, 16.0]], dtype=torch.float64)  # centre (6, 12)
    targets = YOLOBoxCoder().encode(anchors, box, 16.0)
    torch.testing.assert_close(targets[0, :2], torch.tensor([6 / 16, 12 / 16], dtype=torch.float64))


# --- distance --------------------------------------------------------------------------------


def test_distance_encode_matches_hand_values():
    point = torch.tensor([10.0, 20.0])
    box = torch.tensor([4.0, 15.0, 30.0, 22.0])
    assert DistanceBoxCoder().encode(point, box).tolist() == [6.0, 5.0, 20.0, 2.0]
    coder = DistanceBoxCoder(normalize_by_stride=True)
    assert coder.encode(point, box, torch.tensor(2.0)).tolist() == [3.0, 2.5, 10.0, 1.0]


@pytest.mark.parametrize("normalize_by_stride", [False, True])
def test_distance_round_trips(normalize_by_stride):
    coder = DistanceBoxCoder(normalize_by_stride=normalize_by_stride)
    boxes = random_boxes(2, 25, seed=13)
    g = torch.Generator().manual_seed(14)
    t = torch.rand(2, 25, 2, generator=g, dtype=torch.float64)
    points = boxes[..., :2] + t * (boxes[..., 2:] - boxes[..., :2])
    strides = torch.tensor([8.0] * 10 + [32.0] * 15, dtype=torch.float64)
    distances = coder.encode(points, boxes, strides)
    assert (distances > 0).all()
    torch.testing.assert_close(coder.decode(points, distances, strides), boxes)
    raw = random_deltas(2, 25, seed=15).abs() * 5
    torch.testing.assert_close(
        coder.encode(points, coder.decode(points, raw, strides), strides), raw
    )


def test_distance_accepts_anchor_boxes_as_their_centres():
    anchors = random_boxes(10, seed=16)
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    boxes = random_boxes(10, seed=17)
    coder = DistanceBoxCoder()
    torch.testing.assert_close(coder.encode(anchors, boxes), coder.encode(centres, boxes))


def test_distance_normalized_by_stride_requires_strides():
    with pytest.raises(ValueError, match="needs strides"):
        DistanceBoxCoder(normalize_by_stride=True).encode(torch.zeros(1, 2), torch.ones(1, 4))


def test_coders_are_registered_and_built_from_config():
    coder = build("box_coder", {"type": "delta", "weights": DETECTRON_WEIGHTS})
    assert isinstance(coder, DeltaBoxCoder) and coder.weights == DETECTRON_WEIGHTS
    assert isinstance(build("box_coder", {"type": "yolo"}), YOLOBoxCoder)
    assert build("box_coder", {"type": "distance", "normalize_by_stride": True}).normalize_by_stride
