import pytest
import torch
import torchvision

from tunedet.boxes import (
    box_area,
    clip_boxes,
    convert_boxes,
    cxcywh_to_xyxy,
    scale_boxes,
    xywh_to_xyxy,
    xyxy_to_cxcywh,
    xyxy_to_xywh,
)

FORMATS = ("xyxy", "xywh", "cxcywh")


def random_boxes(*shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(*shape, 2, generator=g, dtype=dtype) * 100
    wh = torch.rand(*shape, 2, generator=g, dtype=dtype) * 50
    return torch.cat((xy, xy + wh), dim=-1)


def test_conversions_match_hand_values():
    box = torch.tensor([10.0, 5.0, 20.0, 8.0])
    assert xyxy_to_xywh(box).tolist() == [10.0, 5.0, 10.0, 3.0]
    assert xyxy_to_cxcywh(box).tolist() == [15.0, 6.5, 10.0, 3.0]
    assert xywh_to_xyxy(torch.tensor([10.0, 5.0, 10.0, 3.0])).tolist() == box.tolist()
    assert cxcywh_to_xyxy(torch.tensor([15.0, 6.5, 10.0, 3.0])).tolist() == box.tolist()


@pytest.mark.parametrize("src", FORMATS)
@pytest.mark.parametrize("dst", FORMATS)
def test_conversions_round_trip_between_every_pair_of_formats(src, dst):
    boxes = convert_boxes(random_boxes(3, 7), "xyxy", src)
    there = convert_boxes(boxes, src, dst)
    assert there.shape == (3, 7, 4)
    torch.testing.assert_close(convert_boxes(there, dst, src), boxes)


@pytest.mark.parametrize("dst", ("xywh", "cxcywh"))
def test_conversions_equal_torchvision_box_convert(dst):
    boxes = random_boxes(20)
    expected = torchvision.ops.box_convert(boxes, "xyxy", dst)
    torch.testing.assert_close(convert_boxes(boxes, "xyxy", dst), expected)
    torch.testing.assert_close(convert_boxes(expected, dst, "xyxy"), boxes)


def test_convert_boxes_rejects_unknown_format():
    with pytest.raises(ValueError, match="unknown box format 'yxyx'"):
        convert_boxes(random_boxes(2), "yxyx", "xyxy")


def test_box_area_has_no_plus_one_pixel():
    boxes = torch.tensor([[10.0, 5.0, 20.0, 8.0], [3.0, 3.0, 3.0, 9.0]])
    assert box_area(boxes).tolist() == [30.0, 0.0]
    torch.testing.assert_close(
        box_area(random_boxes(2, 5)),
        torch.stack([torchvision.ops.box_area(b) for b in random_boxes(2, 5)]),
    )


def test_clip_keeps_boxes_inside_image():
    boxes = random_boxes(50) * 3 - 60
    clipped = clip_boxes(boxes, (40, 70))
    assert clipped[:, 0::2].min() >= 0 and clipped[:, 0::2].max() <= 70
    assert clipped[:, 1::2].min() >= 0 and clipped[:, 1::2].max() <= 40
    torch.testing.assert_close(clipped, torchvision.ops.clip_boxes_to_image(boxes, (40, 70)))


def test_clip_with_per_image_sizes_equals_per_image_calls():
    boxes = random_boxes(3, 10) * 2 - 20
    sizes = torch.tensor([[30, 50], [100, 20], [64, 64]])
    clipped = clip_boxes(boxes, sizes)
    assert clipped.dtype == boxes.dtype
    for i in range(3):
        h, w = sizes[i].tolist()
        torch.testing.assert_close(clipped[i], clip_boxes(boxes[i], (h, w)))


def test_clip_leaves_inside_boxes_unchanged():
    boxes = torch.tensor([[1.0, 2.0, 30.0, 40.0]])
    torch.testing.assert_close(clip_boxes(boxes, (50, 50)), boxes)
    torch.testing.assert_close(clip_boxes(boxes, torch.tensor([50, 50])), boxes)


def test_scale_boxes_scales_each_axis():
    boxes = torch.tensor([[10.0, 20.0, 30.0, 40.0]])
    assert scale_boxes(boxes, 2.0, 0.5).tolist() == [[20.0, 10.0, 60.0, 20.0]]


def test_scale_boxes_accepts_per_image_factors():
    boxes = random_boxes(2, 4)
    sx = torch.tensor([[2.0], [0.5]], dtype=torch.float64)
    scaled = scale_boxes(boxes, sx, 3.0)
    torch.testing.assert_close(scaled[1], scale_boxes(boxes[1], 0.5, 3.0))
    torch.testing.assert_close(box_area(scaled[0]), box_area(boxes[0]) * 6.0)
