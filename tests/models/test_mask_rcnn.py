"""Mask R-CNN: the mask term of the loss, masks in the predictions, the recipes, and
overfitting 8 synthetic images from the demo (box and mask AP50 through the COCO
evaluator)."""

from __future__ import annotations

import io
from contextlib import redirect_stdout

import pytest
import torch

from tunedet.cli.main import main as cli_main
from tunedet.config.loader import load_config
from tunedet.data.build import build_dataset, build_loader
from tunedet.models import build_detector
from tunedet.models.heads.mask_ops import mask_targets


def demo(*overrides, size=64, num_images=8):
    return load_config(
        "mask_rcnn/demo",
        [f"data.train.num_images={num_images}", f"data.train.image_size={size}", *overrides],
    )


def synthetic_batch(cfg, num_images=8):
    dataset = build_dataset(cfg.data.train)
    loader = build_loader(dataset, cfg.data.val_transforms, seed=0, batch_size=num_images)
    return dataset, next(iter(loader))


def test_loss_adds_the_mask_term_on_the_box_heads_positive_rois():
    torch.manual_seed(0)
    cfg = demo(num_images=2)
    model = build_detector(cfg.model)
    _, batch = synthetic_batch(cfg, num_images=2)
    assert batch.gt_masks is not None and batch.gt_masks.shape[:2] == batch.gt_labels.shape

    torch.manual_seed(1)
    losses = model.loss(batch.images, batch.gt_boxes, batch.gt_labels, gt_masks=batch.gt_masks)
    assert set(losses) == {"rpn_cls", "rpn_box", "rcnn_cls", "rcnn_box", "mask"}
    assert all(v.ndim == 0 and torch.isfinite(v) for v in losses.values())

    # the same term from its parts, on the same sampled RoIs (same random draws)
    torch.manual_seed(1)
    _, feats, sampled = model.box_losses(batch.images, batch.gt_boxes, batch.gt_labels)
    assert len(sampled.rois) > 0
    head = model.mask_head
    targets = mask_targets(batch.gt_masks, sampled.rois, sampled.gt_index, head.mask_size)
    expected = head.loss(head(feats, sampled.rois), sampled.labels, targets)
    torch.testing.assert_close(losses["mask"], expected)

    losses["mask"].backward()
    assert head.predictor.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="gt_masks"):
        model.loss(batch.images, batch.gt_boxes, batch.gt_labels)


def test_predicted_masks_cover_each_unpadded_image_and_stay_in_their_boxes():
    torch.manual_seed(0)
    cfg = demo("model.roi_head.score_thr=0.0", num_images=2)
    model = build_detector(cfg.model).eval()
    _, batch = synthetic_batch(cfg, num_images=2)
    image_sizes = torch.tensor([[64, 64], [48, 56]])  # the second as if padded from 48x56

    predictions = model.predict(batch.images, image_sizes)

    for p, (h, w) in zip(predictions, image_sizes.tolist(), strict=True):
        assert len(p["boxes"]) > 0
        assert p["masks"].shape == (len(p["boxes"]), h, w)
        assert p["masks"].min() >= 0 and p["masks"].max() <= 1
        # no mask pixel whose centre is outside its box
        centre_x = torch.arange(w) + 0.5
        centre_y = torch.arange(h) + 0.5
        b = p["boxes"]
        in_x = (centre_x >= b[:, 0:1]) & (centre_x < b[:, 2:3])
        in_y = (centre_y >= b[:, 1:2]) & (centre_y < b[:, 3:4])
        outside = ~(in_y[:, :, None] & in_x[:, None, :])
        assert p["masks"][outside].abs().max() == 0


def test_list_detectors_describes_mask_rcnn():
    out = io.StringIO()
    with redirect_stdout(out):
        assert cli_main(["list", "detectors"]) == 0
    line = next(x for x in out.getvalue().splitlines() if x.startswith("mask_rcnn "))
    assert "mask head" in line


def test_the_1x_recipe_keeps_detectrons_mask_head_values():
    cfg = load_config("mask_rcnn/mask_rcnn_r50_fpn_1x")
    mask = cfg.model.mask_head
    assert cfg.model.type == "mask_rcnn" and cfg.data.train.masks and cfg.data.val.masks
    assert (mask.num_convs, mask.conv_dim, mask.roi_size, mask.sampling_ratio) == (4, 256, 14, 2)
    assert (mask.dilation, mask.class_agnostic, mask.loss_weight) == (1, False, 1.0)
    assert (mask.canonical_level, mask.canonical_scale) == (4, 224)
    box = load_config("faster_rcnn/faster_rcnn_r50_fpn_1x").model
    assert cfg.model.rpn == box.rpn and cfg.model.roi_head == box.roi_head  # the same boxes


# The demo narrowed for seconds (as tests/conftest.py's TINY_DEMO_OVERRIDES narrows
# retinanet/demo): FPN 16 channels, 64 RoIs per image, mask convs 16 wide; torchvision's CPU
# roi_align backward (cost ∝ RoIs × channels) dominates a step otherwise.
NARROW = (
    "model.neck.out_channels=16",
    "model.roi_head.sampler.num=64",
    "model.mask_head.conv_dim=16",
)


def test_mask_rcnn_demo_overfits_eight_synthetic_images(overfit_stats):
    """Box AP50 >= 0.9 and mask (segm) AP50 >= 0.8 on the 8 images it trained on, the
    masks scored as the trainer's evaluation scores them (RLE in original pixels)."""
    torch.manual_seed(0)
    cfg = demo(*NARROW)
    model = build_detector(cfg.model)
    dataset, batch = synthetic_batch(cfg)
    stats = overfit_stats(model, batch, dataset.coco_ground_truth(), iters=60, lr=4e-3)
    print(
        f"mask_rcnn demo overfit: box AP {stats['AP']:.3f} AP50 {stats['AP50']:.3f}, "
        f"mask AP {stats['segm_AP']:.3f} AP50 {stats['segm_AP50']:.3f}"
    )
    assert stats["AP50"] >= 0.9
    assert stats["segm_AP50"] >= 0.8


def test_cli_eval_of_a_mask_rcnn_checkpoint_reports_box_and_mask_stats(tmp_path, capsys):
    import json

    small = [
        "data.train.num_images=4",
        "data.train.image_size=64",
        "data.val.num_images=4",
        "data.val.image_size=64",
        "threads=1",
    ]
    run = ["train.max_iters=2", "train.eval_every=0", "train.ckpt_every=2", "train.progress=false"]
    assert cli_main(["train", "mask_rcnn/demo", *small, *run, "--work-dir", str(tmp_path)]) == 0
    checkpoint = sorted((tmp_path / "checkpoints").glob("*.pt"))[-1]
    capsys.readouterr()
    code = cli_main(["eval", "mask_rcnn/demo", *small, "--checkpoint", str(checkpoint), "--json"])
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0
    segm = {k for k in report if k.startswith("segm_")}
    assert segm == {f"segm_{k}" for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")} | {
        f"segm_{k}" for k in ("AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
    }
    assert all(-1.0 <= report[k] <= 1.0 for k in segm) and "AP" in report
