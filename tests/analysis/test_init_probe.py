"""``tunedet analyze init``: the class branch's statistics against their closed forms."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tunedet.analysis.init_probe import (
    ClassBranch,
    branch_statistics,
    find_class_branches,
    probe_init,
)
from tunedet.cli.main import main


def test_sigmoid_statistics_of_zero_logits_are_the_closed_form():
    layer = nn.Conv2d(4, 3, 1)
    nn.init.zeros_(layer.bias)
    branch = ClassBranch("cls", layer, "sigmoid", 1, slice(None))
    s = branch_statistics(branch, torch.zeros(600, 1), images=3)
    assert s["bias_prior"] == 0.5 and s["p_mean"] == 0.5
    assert s["bce_per_output"] == pytest.approx(math.log(2))
    assert s["bce_per_image"] == pytest.approx(200 * math.log(2))
    # focal, all negatives: (1 − α)·p^γ·(−log(1 − p)) = 0.75 · 0.25 · log 2 per output
    assert s["focal_per_image"] == pytest.approx(200 * 0.75 * 0.25 * math.log(2))
    assert s["frac_p_above_half"] == 0.0 and s["locations"] == 200


def test_prior_bias_gives_prior_probability_and_its_loss():
    prior = 0.01
    layer = nn.Conv2d(4, 2, 1)
    nn.init.constant_(layer.bias, -math.log((1 - prior) / prior))
    branch = ClassBranch("cls", layer, "sigmoid", 1, slice(None))
    logits = layer.bias.detach().repeat(50)[:, None]
    s = branch_statistics(branch, logits, images=1)
    assert s["bias_prior"] == pytest.approx(prior) and s["p_mean"] == pytest.approx(prior)
    assert s["bce_per_output"] == pytest.approx(-math.log(1 - prior))


def test_softmax_statistics_of_zero_logits_are_uniform():
    layer = nn.Linear(8, 4)
    nn.init.zeros_(layer.bias)
    branch = ClassBranch("cls_score", layer, "softmax", 4, slice(None))
    s = branch_statistics(branch, torch.zeros(10, 4), images=2)
    assert s["p_background"] == pytest.approx(0.25) and s["p_mean"] == pytest.approx(0.25)
    assert s["ce_per_output"] == pytest.approx(math.log(4))
    assert s["ce_per_image"] == pytest.approx(5 * math.log(4))
    assert s["bias_prior"] == pytest.approx(0.25)


def test_conv_outputs_are_split_into_anchor_groups_and_class_channels():
    # a YOLO-style layout: per anchor (tx, ty, tw, th, obj, c0, c1); value = channel in group
    branch = ClassBranch("predictors.0", nn.Conv2d(1, 14, 1), "sigmoid", 7, slice(4, None))
    out = torch.arange(7.0).repeat(2)[None, :, None, None].expand(2, 14, 3, 5)
    logits = branch.logits(out)
    assert logits.shape == (2 * 3 * 5 * 2, 3)
    assert (logits == torch.tensor([4.0, 5.0, 6.0])).all()


@pytest.mark.parametrize("prior", [0.01, 0.2])
def test_probe_of_retinanet_reports_its_prior_and_the_heads_own_probabilities(tiny_demo, prior):
    from tunedet.config.loader import load_config
    from tunedet.data.build import build_dataset, build_loader
    from tunedet.models import build_detector

    cfg = load_config("retinanet/demo", [*tiny_demo, f"model.head.prior_prob={prior}"])
    torch.manual_seed(0)
    model = build_detector(cfg.model.model_dump()).eval()
    (branch,) = find_class_branches(model)
    assert branch.name == "head.cls_logits"
    loader = build_loader(
        build_dataset(cfg.data.val), cfg.data.val_transforms, seed=0, batch_size=4
    )
    batch = next(iter(loader))
    report = probe_init(model, [batch])["head.cls_logits"]
    assert report["bias_prior"] == pytest.approx(prior)
    with torch.no_grad():  # the reference: the head's own class logits
        cls_logits = model(batch.images)[0]
    p = torch.sigmoid(cls_logits.double())
    assert report["locations"] == cls_logits[0].numel()
    assert report["p_mean"] == pytest.approx(p.mean().item(), rel=1e-6)
    assert report["bce_per_image"] == pytest.approx(-torch.log1p(-p).sum().item() / 4, rel=1e-6)


def test_analyze_init_prints_every_class_branch(capsys, tiny_demo):
    assert main(["analyze", "init", "retinanet/demo", *tiny_demo, "--images", "2"]) == 0
    out = capsys.readouterr().out
    assert "head.cls_logits (sigmoid" in out and "sigmoid(b) = 0.0100" in out


def test_a_model_without_a_known_class_layer_is_refused():
    with pytest.raises(ValueError, match="no classification layer"):
        find_class_branches(nn.Sequential(nn.Conv2d(3, 3, 1)))


def test_cornernet_heatmaps_are_probed_with_their_prior():
    from tunedet.config.loader import load_config
    from tunedet.models import build_detector

    cfg = load_config("cornernet/demo")
    model = build_detector(cfg.model.model_dump())
    branches = find_class_branches(model)
    assert [b.name for b in branches] == ["head.tl_heat", "head.br_heat"]
    prior = cfg.model.head.prior_prob
    s = branch_statistics(branches[0], torch.zeros(4, 1), images=1)
    assert s["bias_prior"] == pytest.approx(prior)
