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
    rescale_batch,
    vote_scores,
    weighted_boxes_fusion,
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


def wbf_reference(passes, iou_thr):
    """Weighted boxes fusion written from the paper's steps, one label at a time, in
    Python floats: (box, score, label) triples."""
    total = len(passes)
    items = [
        (p["boxes"][j].tolist(), float(p["scores"][j]), int(p["labels"][j]))
        for p in passes
        for j in range(len(p["boxes"]))
    ]
    out = []
    for label in sorted({lab for _, _, lab in items}):
        members = sorted((it for it in items if it[2] == label), key=lambda it: -it[1])
        clusters, fused = [], []
        for box, score, _ in members:
            ious = [box_iou(torch.tensor([box]), torch.tensor([f])).item() for f in fused]
            best = max(range(len(ious)), key=ious.__getitem__) if ious else None
            if best is None or ious[best] <= iou_thr:
                clusters.append([(box, score)])
                fused.append(box)
                continue
            clusters[best].append((box, score))
            weight = sum(s for _, s in clusters[best])
            fused[best] = [sum(s * b[c] for b, s in clusters[best]) / weight for c in range(4)]
        for members_k, box in zip(clusters, fused, strict=True):
            mean = sum(s for _, s in members_k) / len(members_k)
            out.append((box, mean * min(len(members_k), total) / total, label))
    return out


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_weighted_boxes_fusion_equals_a_brute_force_reference(seed):
    g = torch.Generator().manual_seed(seed)
    base = _random_pass(g, 12)
    passes = []
    for _ in range(4):  # jittered copies of the same objects, some dropped, some extra
        keep = torch.rand(12, generator=g) < 0.8
        jitter = torch.randn(12, 4, generator=g, dtype=torch.float64) * 1.5
        extra = _random_pass(g, 3)
        passes.append(
            {
                "boxes": torch.cat([(base["boxes"] + jitter)[keep], extra["boxes"]]),
                "scores": torch.cat([torch.rand(12, generator=g, dtype=torch.float64)[keep],
                                     extra["scores"]]),
                "labels": torch.cat([base["labels"][keep], extra["labels"]]),
            }
        )  # fmt: skip
    got = weighted_boxes_fusion(passes, 0.55)
    want = sorted(wbf_reference(passes, 0.55), key=lambda it: -it[1])
    assert len(got["boxes"]) == len(want) < sum(len(p["boxes"]) for p in passes)
    torch.testing.assert_close(
        got["scores"], torch.tensor([w[1] for w in want], dtype=torch.float64)
    )
    torch.testing.assert_close(
        got["boxes"], torch.tensor([w[0] for w in want], dtype=torch.float64)
    )
    assert got["labels"].tolist() == [w[2] for w in want]


def test_weighted_boxes_fusion_closed_form_for_two_passes():
    a = {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "scores": torch.tensor([0.9]),
         "labels": torch.tensor([1])}  # fmt: skip
    b = {"boxes": torch.tensor([[1.0, 1.0, 11.0, 11.0]]), "scores": torch.tensor([0.3]),
         "labels": torch.tensor([1])}  # fmt: skip
    fused = merge_passes([a, b, {k: v[:0] for k, v in a.items()}], "wbf", 0.5, 100)
    # weights 0.9 and 0.3: x0 = 0.3·1/1.2 = 0.25; score = mean 0.6 · min(2, 3) / 3 = 0.4
    torch.testing.assert_close(fused["boxes"], torch.tensor([[0.25, 0.25, 10.25, 10.25]]))
    assert fused["scores"].tolist() == pytest.approx([0.4])
    other_label = {**b, "labels": torch.tensor([0])}
    assert len(merge_passes([a, other_label], "wbf", 0.5, 100)["boxes"]) == 2


def test_rescale_batch_pads_to_the_divisor_and_reports_its_factors():
    images = torch.rand(2, 3, 64, 96)
    scaled, sy, sx = rescale_batch(images, 1.3, 32)
    assert scaled.shape[-2:] == (96, 128)
    assert (sy, sx) == (83 / 64, 125 / 96)
    assert scaled[..., 83:, :].abs().sum() == 0 and scaled[..., 125:].abs().sum() == 0


@pytest.mark.parametrize("merge", ["nms", "vote", "wbf"])
def test_scaled_passes_map_back_onto_the_image(merge):
    class Checked(BrightBlobDetector):
        calls = []

        def predict(self, images, image_sizes):
            assert images.shape[-1] % 32 == 0 and images.shape[-2] % 32 == 0
            self.calls.append(tuple(images.shape[-2:]))
            return super().predict(images, image_sizes)

    images = torch.zeros(1, 3, 64, 96)
    images[0, :, 10:30, 30:62] = 0.9
    sizes = torch.tensor([[64, 90]])
    tta = FlipTTA(Checked(), ["h"], merge=merge, scales=[0.5, 1.0, 2.0])
    merged = tta.predict(images, sizes)[0]
    assert sorted(set(Checked.calls)) == [(32, 64), (64, 96), (128, 192)]
    assert len(Checked.calls) == 6  # 3 scales x (plain + h)
    assert len(merged["boxes"]) == 1
    torch.testing.assert_close(
        merged["boxes"][0], torch.tensor([30.0, 10.0, 62.0, 30.0], dtype=torch.float64),
        atol=1.0, rtol=0,
    )  # fmt: skip


def test_config_knob_validates_and_wraps(tiny_demo):
    with pytest.raises(ConfigError, match="eval.tta.flips"):
        load_config("retinanet/demo", [*tiny_demo, "eval.tta={flips: [h, vh]}"])
    with pytest.raises(ConfigError, match="repeats a flip"):
        load_config("retinanet/demo", [*tiny_demo, "eval.tta={flips: [h, h]}"])
    with pytest.raises(ConfigError, match="no pass besides"):
        load_config("retinanet/demo", [*tiny_demo, "eval.tta={flips: []}"])
    with pytest.raises(ConfigError, match="eval.tta.scales"):
        load_config("retinanet/demo", [*tiny_demo, "eval.tta={scales: [0]}"])
    cfg = load_config(
        "retinanet/demo", [*tiny_demo, "eval.tta={flips: [], scales: [1, 1.5], merge: wbf}"]
    )
    wrapped = with_tta(BrightBlobDetector(), cfg.eval.tta, cfg.data.size_divisor)
    assert wrapped.scales == [1.0, 1.5] and wrapped.merge == "wbf" and wrapped.flips == []
    cfg = load_config("retinanet/demo", [*tiny_demo, "eval.tta={flips: [h, v], merge: nms}"])
    wrapped = with_tta(BrightBlobDetector(), cfg.eval.tta, cfg.data.size_divisor)
    assert isinstance(wrapped, FlipTTA) and wrapped.flips == ["h", "v"]
    assert wrapped.merge == "nms" and wrapped.iou_thr == 0.5
    assert not isinstance(
        with_tta(BrightBlobDetector(), load_config("retinanet/demo").eval.tta), FlipTTA
    )


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
