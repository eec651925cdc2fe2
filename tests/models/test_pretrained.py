"""Starting from pretrained weights: the backbone ``init`` knob (ImageNet through torch's hub
cache, offline error, local files), ``load_from`` with another class count and with a
checkpoint of another model, ``tunedet convert torchvision``, freezing by pattern and the
backbone lr multiplier. Every weights file is made by the test itself."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision

from tunedet.cli.main import main
from tunedet.config.loader import load_config
from tunedet.engine.checkpoint import CheckpointError, save_checkpoint
from tunedet.engine.trainer import Trainer
from tunedet.models import build_detector
from tunedet.models.convert import coco80_indices
from tunedet.models.pretrained import (
    PretrainedWeightsError,
    freeze_parameters,
    imagenet_weights_file,
    load_detector_weights,
)

# RetinaNet on a ResNet-18, shrunk to train one 64-px iteration in a second or two
SMALL = [
    "model.backbone={type: resnet18, frozen_stages: 1, norm_eval: true}",
    "model.neck.out_channels=16",
    "model.head.feat_channels=16",
    "model.head.stacked_convs=1",
    "data.train.num_images=4",
    "data.train.image_size=64",
    "data.val=null",
    "data.batch_size=2",
    "train.progress=false",
    "train.max_iters=1",
    "schedule.warmup.iters=1",
    "threads=1",
]


@pytest.fixture
def offline_hub(tmp_path, monkeypatch) -> Path:
    """An empty torch hub cache in ``tmp_path`` and no network: downloads raise URLError."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return tmp_path / "torch_home" / "hub" / "checkpoints"


def small_config(*overrides: str):
    return load_config("retinanet/demo", [*SMALL, *overrides])


def quiet(*_args, **_kwargs) -> None:
    pass


def test_imagenet_init_offline_without_cache_names_file_and_folder(offline_hub):
    cfg = small_config("model.backbone.init=imagenet")
    with pytest.raises(PretrainedWeightsError) as err:
        build_detector(cfg.model.model_dump())
    message = str(err.value)
    assert "resnet18-f37072fd.pth" in message and str(offline_hub) in message
    assert "\n" not in message
    assert imagenet_weights_file("resnet18") == offline_hub / "resnet18-f37072fd.pth"


def test_imagenet_init_loads_the_cached_file_and_training_starts(offline_hub, tmp_path):
    torch.manual_seed(3)
    reference = torchvision.models.resnet18(weights=None)
    offline_hub.mkdir(parents=True)
    torch.save(reference.state_dict(), offline_hub / "resnet18-f37072fd.pth")

    trainer = Trainer(small_config("model.backbone.init=imagenet"), tmp_path / "run", log=quiet)
    backbone = trainer.model.backbone
    for name in ("conv1.weight", "bn1.running_var", "layer3.1.conv2.weight"):
        torch.testing.assert_close(backbone.state_dict()[name], reference.state_dict()[name])
    trainer.train()
    assert trainer.iteration == 1


def test_backbone_init_from_a_detector_checkpoint_file(tmp_path):
    torch.set_num_threads(1)
    source = build_detector(small_config().model.model_dump())
    path = save_checkpoint(tmp_path / "det.pt", {"model": source.state_dict(), "iteration": 5})
    model = build_detector(small_config(f"model.backbone.init={path}").model.model_dump())
    for key, value in source.backbone.state_dict().items():
        torch.testing.assert_close(model.backbone.state_dict()[key], value)
    with pytest.raises(PretrainedWeightsError, match="no such file"):
        build_detector(small_config("model.backbone.init=missing.pth").model.model_dump())


def test_load_from_with_another_class_count_reinitialises_only_the_class_logits(tmp_path):
    torch.set_num_threads(1)
    source = build_detector(small_config().model.model_dump())  # demo: 3 classes
    path = save_checkpoint(tmp_path / "det.pt", {"model": source.state_dict()})
    model = build_detector(small_config("data.train.num_classes=5").model.model_dump())
    fresh_logits = model.head.cls_logits.weight.detach().clone()
    lines: list[str] = []
    summary = load_detector_weights(model, path, log=lines.append)

    assert [k for k, _, _ in summary.reinitialised] == [
        "head.cls_logits.weight",
        "head.cls_logits.bias",
    ]
    assert summary.missing == [] and summary.unexpected == []
    assert len(lines) == 1 and "head.cls_logits.weight (3, 16, 3, 3)→(5, 16, 3, 3)" in lines[0]
    torch.testing.assert_close(model.head.cls_logits.weight, fresh_logits)
    torch.testing.assert_close(model.head.box_deltas.weight, source.head.box_deltas.weight)
    torch.testing.assert_close(model.backbone.conv1.weight, source.backbone.conv1.weight)


def test_trainer_applies_load_from_before_training_and_logs_one_summary(tmp_path):
    source = build_detector(small_config().model.model_dump())
    path = save_checkpoint(tmp_path / "det.pt", {"model": source.state_dict()})
    lines: list[str] = []
    cfg = small_config(f"load_from={path}", "data.train.num_classes=5")
    trainer = Trainer(cfg, tmp_path / "run", log=lines.append)
    torch.testing.assert_close(trainer.model.head.box_deltas.weight, source.head.box_deltas.weight)
    summaries = [line for line in lines if line.startswith("load_from")]
    assert len(summaries) == 1 and "re-initialised (shape differs): head.cls_logits" in summaries[0]
    trainer.train()
    assert trainer.iteration == 1


def test_load_from_a_checkpoint_of_another_model_fails_naming_key_and_shapes(tmp_path):
    torch.set_num_threads(1)
    source = build_detector(small_config().model.model_dump())
    path = save_checkpoint(tmp_path / "det.pt", {"model": source.state_dict()})
    other = build_detector(small_config("model.neck.out_channels=32").model.model_dump())
    with pytest.raises(CheckpointError) as err:
        load_detector_weights(other, path, log=quiet)
    message = str(err.value)
    assert "'neck.output_convs.0.conv.weight'" in message
    assert "(16, 16, 3, 3)" in message and "(32, 32, 3, 3)" in message and "\n" not in message

    unrelated = save_checkpoint(tmp_path / "other.pt", {"model": {"fc.weight": torch.zeros(2)}})
    with pytest.raises(CheckpointError, match="none of its 1 tensors"):
        load_detector_weights(other, unrelated, log=quiet)


def test_torchvision_checkpoint_via_load_from_and_convert(tmp_path, capsys):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    tv_model = torchvision.models.detection.retinanet_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=91
    )
    tv_file = tmp_path / "tv_retinanet.pth"
    torch.save(tv_model.state_dict(), tv_file)
    config = "retinanet/tv_retinanet_resnet50_fpn"
    # weights=None gives plain BatchNorm (with num_batches_tracked) like v2's backbone
    overrides = ["model.backbone.norm=bn", "model.backbone.norm_eps=1e-5"]

    # load_from reads torchvision's file as it is: 4 classes re-initialise the class logits
    cfg = load_config(config, ["model.backbone.init=none", "model.num_classes=4", *overrides])
    model = build_detector(cfg.model.model_dump())
    summary = load_detector_weights(model, tv_file, log=quiet)
    assert "torchvision retinanet_resnet50_fpn" in summary.source
    assert [k for k, _, _ in summary.reinitialised] == [
        "head.cls_logits.weight",
        "head.cls_logits.bias",
    ]
    assert summary.missing == [] and summary.unexpected == []
    torch.testing.assert_close(
        model.neck.extra_convs[0].conv.weight, tv_model.backbone.fpn.extra_blocks.p6.weight
    )

    # tunedet convert --coco80: the 80 real COCO classes in category-id order (tunedet's
    # coco labels); the written checkpoint loads with nothing re-initialised
    out80 = tmp_path / "converted80.pt"
    args = ["convert", "torchvision", str(tv_file), str(out80), "--config", config, "--coco80"]
    assert main([*args, *overrides]) == 0
    assert "retinanet_resnet50_fpn" in capsys.readouterr().out
    cfg80 = load_config(config, ["model.backbone.init=none", "model.num_classes=80", *overrides])
    model80 = build_detector(cfg80.model.model_dump())
    summary80 = load_detector_weights(model80, out80, log=quiet)
    assert summary80.reinitialised == [] and summary80.missing == []
    feats = [torch.randn(1, 256, 4, 4), torch.randn(1, 256, 2, 2)]
    with torch.no_grad():
        expected = tv_model.head.classification_head(feats)  # (1, N, 91), ids 0..90
        logits, _ = model80.head(feats)
    torch.testing.assert_close(logits, expected[..., coco80_indices()])
    assert coco80_indices()[:3] == [1, 2, 3] and len(coco80_indices()) == 80


def test_freeze_patterns_keep_parameters_out_of_the_optimizer(tmp_path):
    cfg = small_config("freeze=[backbone.layer2.*, neck.lateral_convs]", "load_from=null")
    trainer = Trainer(cfg, tmp_path / "run", log=quiet)
    named = dict(trainer.model.named_parameters())
    frozen = {n for n, p in named.items() if not p.requires_grad}
    assert (
        "backbone.layer2.0.conv1.weight" in frozen and "neck.lateral_convs.0.conv.weight" in frozen
    )
    assert "backbone.layer3.0.conv1.weight" not in frozen
    in_optimizer = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert not any(id(named[n]) in in_optimizer for n in frozen)
    with pytest.raises(ValueError, match="freeze: pattern 'backbone.layer9.\\*' matches no"):
        freeze_parameters(trainer.model, ["backbone.layer9.*"])


def test_backbone_lr_multiplier_gives_a_tenth_of_the_lr(tmp_path):
    cfg = small_config("optim={type: sgd, lr: 0.01, param_multipliers: {backbone: {lr: 0.1}}}")
    trainer = Trainer(cfg, tmp_path / "run", log=quiet)
    trainer.train()
    lrs = {g["name"]: g["lr"] for g in trainer.optimizer.param_groups}
    assert lrs["backbone/decay"] == pytest.approx(0.1 * lrs["decay"]) and lrs["decay"] > 0
    backbone_ids = {id(p) for p in trainer.model.backbone.parameters()}
    for group in trainer.optimizer.param_groups:
        inside = {id(p) in backbone_ids for p in group["params"]}
        assert inside == {group["name"].startswith("backbone/")}


def test_eval_of_a_checkpoint_needs_no_imagenet_file(offline_hub, tmp_path, capsys):
    torch.set_num_threads(1)
    source = build_detector(small_config().model.model_dump())
    path = save_checkpoint(tmp_path / "det.pt", {"model": source.state_dict()})
    overrides = [
        *SMALL,
        "model.backbone.init=imagenet",  # as in a run's config.yaml: not needed to evaluate
        "data.val={type: synthetic, num_images: 2, image_size: 64}",
    ]
    assert main(["eval", "retinanet/demo", *overrides, "--checkpoint", str(path), "--json"]) == 0
    assert "AP50" in capsys.readouterr().out
