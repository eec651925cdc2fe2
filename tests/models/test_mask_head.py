"""The FCN mask head: layer layout, output sizes, and its loss against a float64 reference and
torchvision's ``maskrcnn_loss``."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models.detection.roi_heads import maskrcnn_loss

from tunedet.config.registry import build
from tunedet.models.heads.mask_head import FCNMaskHead
from tunedet.models.heads.mask_ops import mask_targets


def _head(**overrides) -> FCNMaskHead:
    spec = {"type": "fcn", "num_convs": 2, "conv_dim": 16, "roi_size": 7, **overrides}
    spec = {"roi_min_level": 2, "roi_max_level": 3, **spec}  # the two maps of strides 4, 8
    return build("mask_head", spec, in_channels=8, strides=[4, 8], num_classes=3)


def _rois(gen: torch.Generator, count: int, num_images: int, size: int) -> torch.Tensor:
    """(count, 5) RoIs sorted by image, inside a ``size``-px square image."""
    xy = torch.rand(count, 2, generator=gen) * size * 0.6
    wh = 4 + torch.rand(count, 2, generator=gen) * size * 0.4
    batch_index = torch.randint(num_images, (count, 1), generator=gen).sort(dim=0).values
    return torch.cat([batch_index.float(), xy, xy + wh], dim=1)


def test_fcn_head_layers_and_output_size():
    head = _head(num_convs=3, dilation=2)
    convs = [m for m in head.convs if isinstance(m, nn.Conv2d)]
    assert [(c.kernel_size, c.dilation, c.out_channels) for c in convs] == [
        ((3, 3), (2, 2), 16)
    ] * 3
    assert head.deconv.kernel_size == (2, 2) and head.deconv.stride == (2, 2)
    assert head.predictor.kernel_size == (1, 1) and head.mask_size == 14

    gen = torch.Generator().manual_seed(0)
    feats = [torch.randn(2, 8, 16, 16, generator=gen), torch.randn(2, 8, 8, 8, generator=gen)]
    rois = _rois(gen, 5, 2, 64)
    assert head(feats, rois).shape == (5, 3, 14, 14)
    assert _head(class_agnostic=True)(feats, rois).shape == (5, 1, 14, 14)
    assert _head()(feats, rois[:0]).shape == (0, 3, 14, 14)


@pytest.mark.parametrize("loss_weight", [1.0, 2.5])
def test_mask_loss_matches_float64_binary_cross_entropy(loss_weight):
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(9, 3, 14, 14, generator=gen) * 4
    labels = torch.randint(3, (9,), generator=gen)
    targets = torch.rand(9, 14, 14, generator=gen)

    loss = _head(loss_weight=loss_weight).loss(logits, labels, targets)

    x = logits.double()[torch.arange(9), labels]
    t = targets.double()
    p = torch.sigmoid(x)
    expected = -(t * p.log() + (1 - t) * (1 - p).log()).mean() * loss_weight
    torch.testing.assert_close(loss.double(), expected, atol=1e-6, rtol=1e-6)


def test_mask_loss_trains_only_each_rois_class_channel():
    logits = torch.randn(6, 3, 14, 14, requires_grad=True)
    labels = torch.tensor([0, 2, 2, 1, 0, 2])
    _head().loss(logits, labels, torch.rand(6, 14, 14)).backward()
    touched = logits.grad.abs().sum(dim=(2, 3)) > 0  # (P, C)
    assert torch.equal(touched, nn.functional.one_hot(labels, 3).bool())


def test_class_agnostic_mask_loss_uses_the_single_channel_for_every_label():
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(5, 1, 14, 14, generator=gen)
    targets = torch.rand(5, 14, 14, generator=gen)
    head = _head(class_agnostic=True)
    loss = head.loss(logits, torch.tensor([0, 1, 2, 1, 0]), targets)
    expected = nn.functional.binary_cross_entropy_with_logits(logits[:, 0], targets)
    torch.testing.assert_close(loss, expected)


def test_mask_loss_of_no_rois_is_zero_and_differentiable():
    logits = torch.randn(0, 3, 14, 14, requires_grad=True)
    loss = _head().loss(logits, torch.zeros(0, dtype=torch.long), torch.zeros(0, 14, 14))
    loss.backward()
    assert loss.item() == 0 and logits.grad.shape == logits.shape


def test_mask_loss_with_its_targets_matches_torchvision_maskrcnn_loss():
    """Same RoIs, GT masks and logits: mask_targets + FCNMaskHead.loss on the padded batch
    against torchvision's per-image lists."""
    gen = torch.Generator().manual_seed(3)
    size, num_gt = 48, (3, 1)
    gt_masks = torch.zeros(2, 3, size, size, dtype=torch.uint8)  # image 1: 2 padded slots
    gt_labels = torch.full((2, 3), -1)
    for b, m in enumerate(num_gt):
        noise = torch.randn(m, 1, 12, 12, generator=gen)
        blobs = nn.functional.interpolate(noise, size=(size, size), mode="bilinear")
        gt_masks[b, :m] = (blobs[:, 0] > 0.2).to(torch.uint8)
        gt_labels[b, :m] = torch.randint(3, (m,), generator=gen)
    rois = _rois(gen, 16, 2, size)
    in_image = rois[:, 0].long()
    gt_index = (torch.rand(16, generator=gen) * torch.tensor(num_gt)[in_image]).long()
    labels = gt_labels[in_image, gt_index]
    logits = torch.randn(16, 3, 28, 28, generator=gen) * 3

    head = _head()
    loss = head.loss(logits, labels, mask_targets(gt_masks, rois, gt_index, 28))

    expected = maskrcnn_loss(
        logits,
        [rois[in_image == b, 1:] for b in range(2)],
        [gt_masks[b, :m] for b, m in enumerate(num_gt)],
        [gt_labels[b, :m] for b, m in enumerate(num_gt)],
        [gt_index[in_image == b] for b in range(2)],
    )
    torch.testing.assert_close(loss, expected, atol=1e-6, rtol=1e-6)


def test_pooler_levels_missing_from_the_neck_are_rejected_naming_the_keys():
    with pytest.raises(ValueError, match=r"model\.mask_head\.roi_min_level/roi_max_level"):
        _head(roi_max_level=5)  # strides 16 and 32 are not among the neck's [4, 8]
