"""Mask targets (GT masks RoIAligned into RoIs) and mask pasting (RoI masks back into the
image): against torchvision's Mask R-CNN code, a float64 grid_sample reference and
closed forms."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection.roi_heads import paste_masks_in_image, project_masks_on_boxes

from tunedet.models.heads.mask_ops import mask_targets, paste_masks


def _random_rois(gen: torch.Generator, count: int, num_images: int, height: int, width: int):
    """(count, 5) RoIs with fractional corners, some reaching past the image border."""
    xy = torch.rand(count, 2, generator=gen) * torch.tensor([width, height]) - 4
    wh = 2 + torch.rand(count, 2, generator=gen) * torch.tensor([width, height]) * 0.6
    batch_index = torch.randint(num_images, (count, 1), generator=gen).float()
    return torch.cat([batch_index, xy, xy + wh], dim=1)


def _random_masks(gen: torch.Generator, num_images: int, num_gt: int, height: int, width: int):
    """(B, M, H, W) uint8 blobs: thresholded upsampled noise, so masks have areas and edges."""
    noise = torch.randn(num_images * num_gt, 1, height // 4, width // 4, generator=gen)
    smooth = F.interpolate(noise, size=(height, width), mode="bilinear", align_corners=False)
    return (smooth > 0.3).to(torch.uint8).view(num_images, num_gt, height, width)


@pytest.mark.parametrize("size", [28, 7])
def test_mask_targets_match_torchvision_project_masks_on_boxes(size):
    gen = torch.Generator().manual_seed(0)
    num_images, num_gt, height, width = 3, 4, 40, 56
    gt_masks = _random_masks(gen, num_images, num_gt, height, width)
    rois = _random_rois(gen, 30, num_images, height, width)
    gt_index = torch.randint(num_gt, (30,), generator=gen)

    targets = mask_targets(gt_masks, rois, gt_index, size)

    assert targets.shape == (30, size, size) and targets.dtype == torch.float32
    assert targets.min() >= 0 and targets.max() <= 1
    assert 0 < targets.mean() < 1  # the random masks give both values inside the RoIs
    for b in range(num_images):
        in_image = rois[:, 0] == b
        expected = project_masks_on_boxes(gt_masks[b], rois[in_image, 1:], gt_index[in_image], size)
        torch.testing.assert_close(targets[in_image], expected, atol=1e-6, rtol=0)


def test_aligned_mask_targets_shift_the_rois_by_half_a_pixel():
    """aligned=True samples pixel i's value over [i, i + 1): the unaligned result on the
    RoI moved by −0.5 px (RoIs at least 2 px wide, so torchvision's clamp of unaligned
    RoI sides to ≥ 1 px does not apply)."""
    gen = torch.Generator().manual_seed(1)
    gt_masks = _random_masks(gen, 2, 3, 32, 32)
    rois = _random_rois(gen, 12, 2, 32, 32)
    gt_index = torch.randint(3, (12,), generator=gen)
    shifted = rois.clone()
    shifted[:, 1:] -= 0.5

    aligned = mask_targets(gt_masks, rois, gt_index, 14, aligned=True)
    torch.testing.assert_close(aligned, mask_targets(gt_masks, shifted, gt_index, 14))
    assert not torch.allclose(aligned, mask_targets(gt_masks, rois, gt_index, 14))


def test_mask_targets_of_no_rois_are_empty():
    gt_masks = torch.ones(2, 3, 16, 16, dtype=torch.uint8)
    targets = mask_targets(gt_masks, torch.zeros(0, 5), torch.zeros(0, dtype=torch.long), 28)
    assert targets.shape == (0, 28, 28)


def _pixel_inside(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(K, h, w) bool: the pixel's centre lies in [x1, x2) × [y1, y2)."""
    cx = torch.arange(width, dtype=torch.float64) + 0.5
    cy = torch.arange(height, dtype=torch.float64) + 0.5
    b = boxes.double()
    in_x = (cx >= b[:, 0:1]) & (cx < b[:, 2:3])
    in_y = (cy >= b[:, 1:2]) & (cy < b[:, 3:4])
    return in_y[:, :, None] & in_x[:, None, :]


def _fractional_boxes(gen: torch.Generator, count: int, height: int, width: int):
    """Boxes with fractional corners, some past the image border, one of zero width."""
    rois = _random_rois(gen, count, 1, height, width)[:, 1:]
    rois[0, 2] = rois[0, 0]
    return rois


def test_pasted_constant_mask_covers_exactly_the_pixels_whose_centres_are_in_the_box():
    gen = torch.Generator().manual_seed(2)
    height, width = 37, 45
    boxes = _fractional_boxes(gen, 16, height, width)
    boxes[1] = torch.tensor([10.0, 5.0, 20.0, 9.0])  # integer box: pixels 10..19 × 5..8

    pasted = paste_masks(torch.ones(16, 28, 28), boxes, (height, width))

    inside = _pixel_inside(boxes, height, width)
    assert pasted.shape == (16, height, width)
    assert torch.equal(pasted > 0.5, inside)
    assert torch.equal(pasted == 0, ~inside)  # outside the box: exactly 0
    torch.testing.assert_close(pasted, inside.float(), atol=1e-6, rtol=0)  # inside: 1
    assert inside[1].sum() == 10 * 4 and inside[1, 5:9, 10:20].all()
    assert pasted[0].abs().sum() == 0  # zero-width box: no pixel


def test_pasted_linear_ramp_is_linear_in_the_pixel_position():
    """Bilinear interpolation reproduces an affine function of the mask coordinates: a mask
    ``a + b·(j + 0.5)/S + c·(i + 0.5)/S`` pastes to ``a + b·fx + c·fy`` with ``fx = (cx −
    x1)/bw`` clamped to the first/last cell centre [0.5/S, 1 − 0.5/S]."""
    gen = torch.Generator().manual_seed(3)
    size, height, width, count = 14, 41, 50, 12
    boxes = _fractional_boxes(gen, count, height, width)
    a, b, c = (0.4 * torch.rand(count, 1, 1, generator=gen, dtype=torch.float64) for _ in "abc")
    centres = (torch.arange(size, dtype=torch.float64) + 0.5) / size
    probs = a + b * centres[None, None, :] + c * centres[None, :, None]

    pasted = paste_masks(probs.float(), boxes, (height, width))

    box = boxes.double()
    lo, hi = 0.5 / size, 1 - 0.5 / size
    cx = torch.arange(width, dtype=torch.float64) + 0.5
    cy = torch.arange(height, dtype=torch.float64) + 0.5
    span_x = (box[:, 2:3] - box[:, 0:1]).clamp(min=1e-9)
    span_y = (box[:, 3:4] - box[:, 1:2]).clamp(min=1e-9)
    fx = ((cx - box[:, 0:1]) / span_x).clamp(lo, hi)  # (K, w)
    fy = ((cy - box[:, 1:2]) / span_y).clamp(lo, hi)  # (K, h)
    expected = a + b * fx[:, None, :] + c * fy[:, :, None]
    expected = expected * _pixel_inside(boxes, height, width)
    torch.testing.assert_close(pasted.double(), expected, atol=5e-6, rtol=0)


def test_paste_masks_equals_border_padded_grid_sample_in_float64():
    """The separable matrix form against sampling every pixel centre with grid_sample."""
    gen = torch.Generator().manual_seed(4)
    size, height, width, count = 28, 33, 47, 10
    boxes = _fractional_boxes(gen, count, height, width)
    probs = torch.rand(count, size, size, generator=gen)

    pasted = paste_masks(probs, boxes, (height, width))

    box = boxes.double()
    cx = torch.arange(width, dtype=torch.float64) + 0.5
    cy = torch.arange(height, dtype=torch.float64) + 0.5
    gx = (cx - box[:, 0:1]) / (box[:, 2:3] - box[:, 0:1]).clamp(min=1e-9) * 2 - 1  # (K, w)
    gy = (cy - box[:, 1:2]) / (box[:, 3:4] - box[:, 1:2]).clamp(min=1e-9) * 2 - 1  # (K, h)
    grid = torch.stack(
        [gx[:, None, :].expand(-1, height, -1), gy[:, :, None].expand(-1, -1, width)], dim=-1
    )
    sampled = F.grid_sample(
        probs.double()[:, None], grid, padding_mode="border", align_corners=False
    )[:, 0]
    expected = sampled * _pixel_inside(boxes, height, width)
    torch.testing.assert_close(pasted.double(), expected, atol=1e-5, rtol=0)


def test_paste_masks_matches_torchvision_paste_masks_in_image_inside_the_boxes():
    """torchvision pastes with its legacy "+1" box size: a box ``k·S`` px wide (here integer
    corners, S = 16 so its (S+2)/S box expansion is exact in float) is resized to
    ``(S + 2)·k + 1`` px including a zero border cell. Pixel ``x`` then samples mask
    coordinate ``u_tv = (t + k)(S + 2)/((S + 2)k + 1) − 1.5`` (``t = x − x1 + 0.5``) where
    ours is ``u = t/k − 0.5``; ``u − u_tv = (t + k)/(k((S + 2)k + 1)) < 1/k`` cell, i.e. less
    than one image pixel. Away from the box edges (``t`` in [1.5k, (S − 1.5)k], both
    sample real cells only) both are bilinear interpolants of the same cells, Lipschitz
    with the largest step between neighbouring cells ``Lx`` (``Ly``), so they differ by at
    most ``(Lx + Ly)/k`` (plus float rounding)."""
    gen = torch.Generator().manual_seed(5)
    size, height, width, count = 16, 90, 110, 12
    kx = torch.randint(1, 5, (count,), generator=gen)
    ky = torch.randint(1, 5, (count,), generator=gen)
    x1 = torch.randint(-6, width - 20, (count,), generator=gen)
    y1 = torch.randint(-6, height - 20, (count,), generator=gen)
    boxes = torch.stack([x1, y1, x1 + size * kx, y1 + size * ky], dim=1).float()
    noise = torch.randn(count, 1, 4, 4, generator=gen) * 3
    probs = F.interpolate(noise, size=(size, size), mode="bilinear", align_corners=False)
    probs = probs.sigmoid()[:, 0]  # smooth masks, so the tolerance below is informative

    ours = paste_masks(probs, boxes, (height, width))
    theirs = paste_masks_in_image(probs[:, None], boxes, (height, width))[:, 0]

    step_x = (probs[:, :, 1:] - probs[:, :, :-1]).abs().amax(dim=(1, 2))
    step_y = (probs[:, 1:] - probs[:, :-1]).abs().amax(dim=(1, 2))
    compared = 0
    for k in range(count):  # a test-side loop: each box has its own interior and bound
        tx = torch.arange(width) - x1[k] + 0.5
        ty = torch.arange(height) - y1[k] + 0.5
        in_x = (tx >= 1.5 * kx[k]) & (tx <= (size - 1.5) * kx[k])
        in_y = (ty >= 1.5 * ky[k]) & (ty <= (size - 1.5) * ky[k])
        bound = step_x[k] / kx[k] + step_y[k] / ky[k] + 1e-5
        difference = (ours[k] - theirs[k])[in_y][:, in_x].abs()
        assert difference.max() <= bound, (k, difference.max().item(), bound.item())
        compared += difference.numel()
    assert compared > 1000
    # both are zero far from the boxes (torchvision's zero border cell bleeds ≤ k/2 + 1 px)
    far = ~_pixel_inside(boxes + torch.tensor([-5.0, -5.0, 5.0, 5.0]), height, width)
    assert ours[far].abs().max() == 0 and theirs[far].abs().max() == 0


def test_paste_masks_of_no_detections_is_empty():
    pasted = paste_masks(torch.zeros(0, 28, 28), torch.zeros(0, 4), (20, 30))
    assert pasted.shape == (0, 20, 30)
