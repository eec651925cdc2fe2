"""CornerNet: corner pooling, Gaussian radius and heatmaps, the penalty-reduced focal loss,
pull/push embeddings against loops and closed forms; decoding of planted corners."""

import math

import pytest
import torch
from torchvision.ops import box_iou

from tunedet.config.loader import load_config
from tunedet.losses.corner import (
    associative_embedding_loss,
    corner_heatmap_targets,
    gaussian_radius,
    penalty_reduced_focal_loss,
)
from tunedet.models import build_detector
from tunedet.models.heads.cornernet import CornerMaps, corner_pool


@pytest.mark.parametrize("direction", ["top", "left", "bottom", "right"])
def test_corner_pool_equals_loops(direction):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 6)
    expected = torch.empty_like(x)
    height, width = x.shape[-2:]
    for i in range(height):
        for j in range(width):
            if direction == "top":  # everything below
                expected[..., i, j] = x[..., i:, j].amax(dim=-1)
            elif direction == "left":  # everything to the right
                expected[..., i, j] = x[..., i, j:].amax(dim=-1)
            elif direction == "bottom":
                expected[..., i, j] = x[..., : i + 1, j].amax(dim=-1)
            else:
                expected[..., i, j] = x[..., i, : j + 1].amax(dim=-1)
    assert torch.equal(corner_pool(x, direction), expected)


def test_gaussian_radius_keeps_iou_at_least_min_overlap_and_is_tight():
    torch.manual_seed(0)
    heights, widths = torch.rand(50) * 60 + 4, torch.rand(50) * 60 + 4
    radius = gaussian_radius(heights.double(), widths.double(), 0.3)
    for h, w, r in zip(heights.double(), widths.double(), radius, strict=True):
        gt = torch.tensor([[0.0, 0.0, w, h]], dtype=torch.float64)
        moved = torch.tensor(
            [
                [r, r, w + r, h + r],  # one corner inside, one outside
                [r, r, w - r, h - r],  # both inside
                [-r, -r, w + r, h + r],  # both outside
            ],
            dtype=torch.float64,
        )
        ious = box_iou(gt, moved)[0]
        assert ious.min() == pytest.approx(0.3, abs=1e-9)  # the binding case
        assert (ious >= 0.3 - 1e-9).all()


def test_corner_heatmap_targets_equal_a_loop_of_truncated_gaussians():
    corners = torch.tensor([[[3, 4], [5, 4], [7, 1]]])
    radius = torch.tensor([[2, 1, 0]])
    labels = torch.tensor([[1, 1, 0]])
    heat = corner_heatmap_targets(corners, radius, labels, 3, 8, 10)
    expected = torch.zeros(1, 3, 8, 10)
    for (x, y), r, c in zip(
        corners[0].tolist(), radius[0].tolist(), labels[0].tolist(), strict=True
    ):
        sigma = (2 * r + 1) / 6
        for yy in range(8):
            for xx in range(10):
                if abs(xx - x) <= r and abs(yy - y) <= r:
                    g = math.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
                    expected[0, c, yy, xx] = max(expected[0, c, yy, xx].item(), g)
    torch.testing.assert_close(heat, expected)
    assert heat[0, 1, 4, 3] == 1 and heat[0, 1, 4, 5] == 1 and heat[0, 2].sum() == 0


def test_penalty_reduced_focal_loss_equals_the_formula():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    targets = torch.rand(2, 3, 4, 5, dtype=torch.float64) * 0.9
    targets[0, 1, 2, 3] = targets[1, 0, 0, 0] = 1.0
    got = penalty_reduced_focal_loss(logits, targets, alpha=2.0, beta=4.0)
    for index in torch.cartesian_prod(*(torch.arange(n) for n in logits.shape)).tolist():
        p = torch.sigmoid(logits[tuple(index)]).item()
        y = targets[tuple(index)].item()
        positive = -((1 - p) ** 2) * math.log(p)
        negative = -((1 - y) ** 4) * p**2 * math.log(1 - p)
        want = positive if y == 1 else negative
        assert got[tuple(index)].item() == pytest.approx(want, rel=1e-9)


def test_pull_push_losses_equal_per_image_loops():
    torch.manual_seed(0)
    tl, br = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    valid = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    pull, push = associative_embedding_loss(tl, br, valid, margin=1.0)
    want_pull = want_push = 0.0
    for b in range(3):
        objects = valid[b].nonzero()[:, 0].tolist()
        n = len(objects)
        means = {k: (tl[b, k] + br[b, k]).item() / 2 for k in objects}
        want_pull += (
            sum(
                (tl[b, k].item() - means[k]) ** 2 + (br[b, k].item() - means[k]) ** 2
                for k in objects
            )
            / n
        )
        if n > 1:
            gaps = [
                max(0.0, 1 - abs(means[k] - means[j])) for k in objects for j in objects if j != k
            ]
            want_push += sum(gaps) / (n * (n - 1))
    assert pull.item() == pytest.approx(want_pull, rel=1e-9)
    assert push.item() == pytest.approx(want_push, rel=1e-9)


def tiny_cornernet():
    torch.manual_seed(0)
    return build_detector(load_config("cornernet/demo").model.model_dump())


def test_corner_targets_put_the_corners_cells_and_offsets_at_stride_4():
    model = tiny_cornernet()
    assert model.stride == 4
    boxes = torch.tensor([[[10.0, 21.0, 50.0, 62.0]]])
    targets = model.corner_targets(boxes, torch.tensor([[2]]), 32, 32)
    assert targets["tl_cell"].item() == 5 * 32 + 2 and targets["br_cell"].item() == 15 * 32 + 12
    torch.testing.assert_close(targets["tl_offset"], torch.tensor([[[0.5, 0.25]]]))
    torch.testing.assert_close(targets["br_offset"], torch.tensor([[[0.5, 0.5]]]))
    assert targets["tl_heat"][0, 2, 5, 2] == 1 and targets["br_heat"][0, 2, 15, 12] == 1


def test_predict_pairs_planted_corners_of_one_class_with_close_embeddings(monkeypatch):
    model = tiny_cornernet().eval()
    low = -20.0
    maps = {
        "tl_heat": torch.full((1, 3, 32, 32), low),
        "br_heat": torch.full((1, 3, 32, 32), low),
        "tl_embed": torch.full((1, 32, 32), -100.0),  # background corners pair with nothing
        "br_embed": torch.full((1, 32, 32), 100.0),
        "tl_offset": torch.full((1, 2, 32, 32), 0.5),
        "br_offset": torch.full((1, 2, 32, 32), 0.25),
    }
    maps["tl_heat"][0, 1, 4, 3] = 3.0  # object A, class 1: tl (3, 4), br (10, 12)
    maps["br_heat"][0, 1, 12, 10] = 3.0
    maps["tl_embed"][0, 4, 3], maps["br_embed"][0, 12, 10] = 0.0, 0.1
    maps["tl_heat"][0, 1, 20, 20] = 2.0  # object B, class 1, another embedding
    maps["br_heat"][0, 1, 28, 26] = 2.0
    maps["tl_embed"][0, 20, 20] = 5.0
    maps["br_embed"][0, 28, 26] = 5.2
    monkeypatch.setattr(model, "forward", lambda images: CornerMaps(**maps))
    dets = model.predict(torch.zeros(1, 3, 128, 128), torch.tensor([[128, 128]]))[0]
    top = torch.sigmoid(torch.tensor(3.0)).item()
    second = torch.sigmoid(torch.tensor(2.0)).item()
    assert dets["labels"].tolist()[:2] == [1, 1]
    torch.testing.assert_close(dets["boxes"][0], torch.tensor([14.0, 18.0, 41.0, 49.0]))
    torch.testing.assert_close(dets["boxes"][1], torch.tensor([82.0, 82.0, 105.0, 113.0]))
    torch.testing.assert_close(dets["scores"][:2], torch.tensor([top, second]))
    # A's top-left with B's bottom-right: embeddings 0 vs 5.2 differ by more than 0.5
    assert len(dets["boxes"]) == 2


def test_cornernet_loss_terms_are_finite_and_train():
    model = tiny_cornernet().train()
    images = torch.randn(2, 3, 64, 64)
    boxes = torch.tensor([[[4.0, 6, 30, 40], [30, 20, 60, 50]], [[10, 10, 40, 30], [0, 0, 0, 0]]])
    labels = torch.tensor([[0, 2], [1, -1]])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    first = None
    for _ in range(8):
        losses = model.loss(images, boxes, labels)
        total = sum(losses.values())
        assert set(losses) == {"heat", "pull", "push", "offset"}
        assert torch.isfinite(total)
        first = first if first is not None else total.item()
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    assert total.item() < first


def test_cornernet_dense_network_exports_to_torchscript(tmp_path, capsys):
    from tunedet.cli.main import main
    from tunedet.engine.checkpoint import save_checkpoint

    model = tiny_cornernet()
    ckpt = tmp_path / "cornernet.pt"
    save_checkpoint(ckpt, {"model": model.state_dict(), "classes": ["a", "b", "c"]})
    out = tmp_path / "cornernet.torchscript.pt"
    argv = ["export", "cornernet/demo", "threads=1", "--checkpoint", str(ckpt), "--raw"]
    assert main([*argv, "--format", "torchscript", "--out", str(out), "--image-size", "64"]) == 0
    printed = capsys.readouterr().out
    assert float(printed.split("max abs difference vs eager (")[1].split("): ")[1]) < 1e-3
