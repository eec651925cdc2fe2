"""``eval.tta``: flipped passes mapped back exactly (padding included), the two merges
against brute-force references, and the knob through evaluation and ``tunedet infer``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torchvision.ops import batched_nms, box_iou

from tunedet.cli.main import main
from tunedet.config.loader import ConfigError, load_config
from tunedet.engine.test_time_augmentation import (
    FlipTTA,
    flip_boxes_back,
    merge_passes,
    vote_scores,
    with_tta,
)


class BrightBlobDetector:
    """Finds the bounding box of the pixels above 0.5 inside ``image_sizes`` (one box per
    image, label 0, score = the blob's mean brightness): equivariant to flips by
    construction, so every flipped pass must map back onto the unflipped one."""

    def predict(self, images, image_sizes):
        out = []
        for image, (h, w) in zip(images, image_sizes.tolist(), strict=True):
            ys, xs = torch.nonzero(image[0, :h, :w] > 0.5, as_tuple=True)
            box = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).double()
            score = image[0, :h, :w][image[0, :h, :w] > 0.5].mean().double()
            out.append({"boxes": box[None], "scores": score[None], "labels": torch.zeros(1).long()})
        return out

    def eval(self):
        return self


def test_flip_boxes_back_is_the_flip_and_its_own_inverse():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(50, 2, generator=g, dtype=torch.float64) * 80
    boxes = torch.cat([xy, xy + torch.rand(50, 2, generator=g, dtype=torch.float64) * 20], 1)
    h_back = flip_boxes_back(boxes, "h", 100, 120)
    torch.testing.assert_close(h_back[:, [1, 3]], boxes[:, [1, 3]])
    torch.testing.assert_close(h_back[:, 0], 120 - boxes[:, 2])
    torch.testing.assert_close(h_back[:, 2], 120 - boxes[:, 0])
    hv = flip_boxes_back(boxes, "hv", 100, 120)
    torch.testing.assert_close(
        hv, flip_boxes_back(flip_boxes_back(boxes, "v", 100, 120), "h", 100, 120)
    )
    for flip in ("h", "v", "hv"):
        twice = flip_boxes_back(flip_boxes_back(boxes, flip, 100, 120), flip, 100, 120)
        torch.testing.assert_close(twice, boxes)


@pytest.mark.parametrize("merge", ["nms", "vote"])
def test_flipped_passes_of_padded_images_map_back_onto_the_image(merge):
    # Two images of different sizes in one padded batch: the flipped passes see their
    # content at the far side of the padding and must still land on the original box.
    images = torch.zeros(2, 3, 64, 96)
    sizes = torch.tensor([[64, 96], [40, 50]])
    images[0, :, 10:20, 30:55] = 0.9
    images[1, :, 5:37, 2:11] = 0.7
    images[1, :, 40:, 50:] = 0.0  # padding
    plain = BrightBlobDetector().predict(images, sizes)
    tta = FlipTTA(BrightBlobDetector(), ["h", "v", "hv"], merge=merge, iou_thr=0.5)
    merged = tta.predict(images, sizes)
    for got, want in zip(merged, plain, strict=True):
        assert len(got["boxes"]) == 1  # four agreeing passes suppress to one box
        torch.testing.assert_close(got["boxes"], want["boxes"])
        torch.testing.assert_close(got["scores"], want["scores"])  # all passes agree


def _random_pass(g: torch.Generator, n: int) -> dict[str, torch.Tensor]:
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * 50
    wh = 5 + torch.rand(n, 2, generator=g, dtype=torch.float64) * 20
    return {
        "boxes": torch.cat([xy, xy + wh], 1),
        "scores": torch.rand(n, generator=g, dtype=torch.float64),
        "labels": torch.randint(0, 3, (n,), generator=g),
    }


def test_vote_scores_equal_a_per_box_loop():
    g = torch.Generator().manual_seed(1)
    passes = [_random_pass(g, n) for n in (30, 0, 25, 40)]
    boxes = _random_pass(g, 20)
    got = vote_scores(boxes["boxes"], boxes["labels"], passes, 0.4)
    for k in range(20):
        total = 0.0
        for p in passes:
            best = 0.0
            for j in range(len(p["boxes"])):
                iou = box_iou(boxes["boxes"][k : k + 1], p["boxes"][j : j + 1]).item()
                if iou >= 0.4 and p["labels"][j] == boxes["labels"][k]:
                    best = max(best, p["scores"][j].item())
            total += best
        assert got[k].item() == pytest.approx(total / len(passes), abs=1e-12)


def test_merge_nms_is_batched_nms_of_the_union_and_vote_reranks_its_boxes():
    g = torch.Generator().manual_seed(2)
    passes = [_random_pass(g, 40) for _ in range(3)]
    union = {k: torch.cat([p[k] for p in passes]) for k in passes[0]}
    keep = batched_nms(union["boxes"], union["scores"], union["labels"], 0.5)
    nms = merge_passes(passes, "nms", 0.5, max_dets=1000)
    torch.testing.assert_close(nms["boxes"], union["boxes"][keep])
    torch.testing.assert_close(nms["scores"], union["scores"][keep])
    vote = merge_passes(passes, "vote", 0.5, max_dets=1000)
    want = vote_scores(nms["boxes"], nms["labels"], passes, 0.5)
    assert sorted(vote["scores"].tolist(), reverse=True) == vote["scores"].tolist()
    torch.testing.assert_close(vote["scores"].sort().values, want.sort().values)
    # every kept box is seen at least by its own pass: score >= its own / passes
    assert (vote["scores"] > 0).all()
    assert len(merge_passes(passes, "vote", 0.5, max_dets=7)["boxes"]) == 7


def test_a_box_one_pass_alone_reports_is_down_weighted_by_vote():
    lone = {
        "boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]),
        "scores": torch.tensor([0.8]),
        "labels": torch.tensor([0]),
    }
    empty = {k: v[:0] for k, v in lone.items()}
    vote = merge_passes([lone, empty, empty, empty], "vote", 0.5, 100)
    assert vote["scores"].tolist() == pytest.approx([0.2])
    assert merge_passes([lone, empty], "nms", 0.5, 100)["scores"].tolist() == pytest.approx([0.8])


def test_config_knob_validates_and_wraps(tiny_demo):
    with pytest.raises(ConfigError, match="eval.tta.flips"):
        load_config("retinanet/demo", [*tiny_demo, "eval.tta={flips: [h, vh]}"])
    with pytest.raises(ConfigError, match="repeats a flip"):
        load_config("retinanet/demo", [*tiny_demo, "eval.tta={flips: [h, h]}"])
    cfg = load_config("retinanet/demo", [*tiny_demo, "eval.tta={flips: [h, v], merge: nms}"])
    wrapped = with_tta(BrightBlobDetector(), cfg)
    assert isinstance(wrapped, FlipTTA) and wrapped.flips == ["h", "v"]
    assert wrapped.merge == "nms" and wrapped.iou_thr == 0.5
    assert not isinstance(with_tta(BrightBlobDetector(), load_config("retinanet/demo")), FlipTTA)


def test_mask_detectors_refuse_tta():
    class Masks(BrightBlobDetector):
        needs_masks = True

    with pytest.raises(ValueError, match="eval.tta merges boxes, not masks"):
        FlipTTA(Masks(), ["h"])


def test_a_real_detector_keeps_only_boxes_of_its_own_passes(tiny_demo):
    from tunedet.models import build_detector

    cfg = load_config("retinanet/demo", [*tiny_demo, "model.score_thr=0.0"])
    torch.manual_seed(0)
    model = build_detector(cfg.model.model_dump()).eval()
    images = torch.randn(2, 3, 64, 64)
    sizes = torch.tensor([[64, 64], [48, 56]])
    tta = FlipTTA(model, ["h", "v"], merge="nms", max_dets=50)
    merged = tta.predict(images, sizes)
    plain = model.predict(images, sizes)
    padded = torch.tensor([[64, 64], [64, 64]])
    flipped = {f: model.predict(images.flip(d), padded) for f, d in (("h", -1), ("v", -2))}
    for i, (h, w) in enumerate(sizes.tolist()):
        got = merged[i]
        assert 0 < len(got["boxes"]) <= 50
        assert (got["boxes"][:, 0::2] <= w).all() and (got["boxes"][:, 1::2] <= h).all()
        assert (got["boxes"] >= 0).all()
        candidates = [plain[i]["boxes"]]
        scores = [plain[i]["scores"]]
        for flip, preds in flipped.items():
            back = flip_boxes_back(preds[i]["boxes"], flip, 64, 64)
            back[:, 0::2] = back[:, 0::2].clamp(0, w)
            back[:, 1::2] = back[:, 1::2].clamp(0, h)
            candidates.append(back)
            scores.append(preds[i]["scores"])
        candidates, scores = torch.cat(candidates), torch.cat(scores)
        # every merged detection is one pass's detection, box and score
        for box, score in zip(got["boxes"], got["scores"], strict=True):
            same = (candidates - box).abs().amax(dim=1) < 1e-4
            assert same.any() and (scores[same] - score).abs().min() < 1e-6
        assert got["scores"][0] == pytest.approx(scores.max().item())


def test_eval_and_infer_with_tta_from_the_command_line(tmp_path: Path, tiny_demo, capsys):
    run = tmp_path / "run"
    assert main(["train", "retinanet/demo", *tiny_demo, "--work-dir", str(run)]) == 0
    ckpt = sorted((run / "checkpoints").glob("*.pt"))[-1]
    capsys.readouterr()
    tta = "eval.tta={flips: [h, v, hv]}"
    assert (
        main(["eval", "retinanet/demo", *tiny_demo, tta, "--checkpoint", str(ckpt), "--json"]) == 0
    )
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0.0 <= report["AP50"] <= 1.0
    images = tmp_path / "images"
    images.mkdir()
    from PIL import Image

    Image.new("RGB", (60, 40), (200, 30, 30)).save(images / "a.png")
    out = tmp_path / "infer"
    sets = [arg for override in [*tiny_demo, tta] for arg in ("--set", override)]
    args = ["infer", "retinanet/demo", str(images), *sets, "--checkpoint", str(ckpt)]
    assert main([*args, "--out", str(out), "--score-thr", "0"]) == 0
    detections = json.loads((out / "detections.json").read_text())
    assert detections[0]["file"].endswith("a.png")
    for x0, y0, x1, y1 in detections[0]["boxes"]:
        assert 0 <= x0 < x1 <= 60 and 0 <= y0 < y1 <= 40
