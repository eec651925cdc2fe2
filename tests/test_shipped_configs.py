"""Every shipped experiment config validates, builds and trains one iteration.

Experiment configs are the YAML files under ``src/tunedet/configs`` whose content (after
``_base_``) has a ``model`` section; the rest (tuning search spaces: ``metric`` +
``params``) are skipped by that rule. Each is trained for one iteration on one batch of
two synthetic images (one thread, no validation, no pretrained weights), so configs added
later are covered without touching this file. The images are 64 px, or the fixed input
size a config declares (``input_size`` of its neck or anchor generator: SSD's 300/320);
two per batch because BatchNorm in train mode needs more than one value per channel on
the 1×1 top levels. The checkpoint is serialised to memory and loaded back with
``weights_only=True``: the large presets (YOLOv3-D53, SSD300-VGG16) would write several
hundred MB each, more than a CI machine's disk is sure to have free.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

from tunedet.config.loader import BUILTIN_CONFIG_DIR, load_raw, validate
from tunedet.config.registry import REGISTRIES
from tunedet.engine import trainer as trainer_module
from tunedet.engine.trainer import Trainer

CONFIG_FILES = sorted(BUILTIN_CONFIG_DIR.rglob("*.yaml"))
EXPERIMENTS = [p for p in CONFIG_FILES if "model" in load_raw(p)]

TINY_DATA = {
    "train": {"type": "synthetic", "num_images": 2, "image_size": 64, "seed": 0},
    "val": None,
    "train_transforms": [{"type": "normalize"}],
    "val_transforms": [{"type": "normalize"}],
    "batch_size": 2,
    "num_workers": 0,
}


def one_iteration(raw: dict) -> dict:
    """``raw`` with tiny synthetic data, one iteration, no pretrained weights."""
    raw = dict(raw)
    model = raw["model"]
    declared = [model.get(k, {}).get("input_size") for k in ("neck", "anchor_generator")]
    size = next((s for s in declared if s), 64)
    classes = min(3, model.get("num_classes") or 3)  # the synthetic set has 1..5 classes
    model = raw["model"] = {**model, "num_classes": classes}  # the data's count, or refused
    data = {
        **TINY_DATA,
        "train": {**TINY_DATA["train"], "image_size": size, "num_classes": classes},
    }
    if getattr(REGISTRIES["detector"].get(model["type"]).target, "needs_masks", False):
        data["train"]["masks"] = True  # a mask detector (mask_rcnn) trains on instance masks
    raw["data"] = {**data, "size_divisor": raw.get("data", {}).get("size_divisor", 32)}
    raw["train"] = {"max_iters": 1, "progress": False, "ckpt_every": 1, "eval_every": 0}
    raw["schedule"] = {**raw.get("schedule", {}), "warmup": {"type": "none"}}
    raw["threads"] = 1
    raw["device"] = "cpu"
    raw["load_from"] = None
    raw["work_dir"] = None
    backbone = model.get("backbone", {})
    if "init" in backbone:
        raw["model"] = {**model, "backbone": {**backbone, "init": "none"}}
    return raw


def test_the_rule_finds_the_experiment_configs():
    names = {str(p.relative_to(BUILTIN_CONFIG_DIR)) for p in EXPERIMENTS}
    assert {"retinanet/demo.yaml", "retinanet/tv_retinanet_resnet50_fpn.yaml"} <= names
    skipped = [p for p in CONFIG_FILES if p not in EXPERIMENTS]
    assert all("params" in load_raw(p) for p in skipped)  # only search spaces are skipped


@pytest.mark.parametrize(
    "path", EXPERIMENTS, ids=[str(p.relative_to(BUILTIN_CONFIG_DIR)) for p in EXPERIMENTS]
)
def test_shipped_config_trains_one_iteration(path: Path, tmp_path: Path, monkeypatch):
    saved: dict[str, dict] = {}

    def save_to_memory(target, state):
        buffer = io.BytesIO()
        torch.save(state, buffer)
        buffer.seek(0)
        saved[Path(target).name] = torch.load(buffer, weights_only=True)
        return Path(target)

    monkeypatch.setattr(trainer_module, "save_checkpoint", save_to_memory)
    monkeypatch.setattr(trainer_module, "link_checkpoint", lambda source, target: Path(target))
    threads = torch.get_num_threads()
    try:
        validate(load_raw(path), source=str(path))  # the config as shipped
        cfg = validate(one_iteration(load_raw(path)), source=str(path))
        trainer = Trainer(cfg, tmp_path / "run", log=lambda *a, **k: None)
        trainer.train()
    finally:
        torch.set_num_threads(threads)
    assert trainer.iteration == 1
    assert list(saved) == ["iter_0000001.pt"]
    state = saved["iter_0000001.pt"]
    assert state["iteration"] == 1
    assert state["model"].keys() == trainer.model.state_dict().keys()
