"""engine/build.py: the one loader of a checkpoint's model (EMA weights, the config it
carries), the effective batch, base LR and run length every tool shares."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from tunedet.config.loader import config_to_yaml, load_config
from tunedet.engine import build
from tunedet.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from tunedet.engine.trainer import Trainer

TINY = [
    "model.backbone.widths=[8, 8, 16, 16, 16]",
    "model.neck.out_channels=16",
    "model.head.feat_channels=16",
    "model.head.stacked_convs=1",
    "data.train.num_images=8",
    "data.train.image_size=64",
    "data.val.num_images=2",
    "data.val.image_size=64",
    "data.batch_size=2",
    "train.progress=false",
    "schedule.warmup.iters=1",
    "threads=1",
]


def tiny_config(*overrides: str):
    return load_config("retinanet/demo", [*TINY, *overrides])


def quiet(*_args, **_kwargs) -> None:
    pass


@pytest.fixture(scope="module")
def ema_checkpoint(tmp_path_factory) -> tuple[Path, object]:
    """A 3-iteration run with EMA: its checkpoint holds different raw and EMA weights."""
    cfg = tiny_config("train.max_iters=3", "data.val=null", "train.ema={decay: 0.5, tau: 1.0}")
    trainer = Trainer(cfg, tmp_path_factory.mktemp("ema_run"), log=quiet)
    trainer.train()
    return Path(trainer.last_checkpoint), cfg


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_model_from_checkpoint_takes_the_ema_weights(ema_checkpoint):
    path, cfg = ema_checkpoint
    state = load_checkpoint(path)
    assert not same_weights(state["model"], state["ema"]["model"])  # the test can tell them apart
    model, _ = build.model_from_checkpoint(path, cfg=cfg)
    assert same_weights(model.state_dict(), state["ema"]["model"])
    assert not model.training
    assert model.classes == state["class_names"]


def test_model_from_checkpoint_takes_the_raw_weights_without_ema(tmp_path: Path, ema_checkpoint):
    path, cfg = ema_checkpoint
    state = load_checkpoint(path)
    del state["ema"]
    save_checkpoint(tmp_path / "no_ema.pt", state)
    model, _ = build.model_from_checkpoint(tmp_path / "no_ema.pt", cfg=cfg)
    assert same_weights(model.state_dict(), state["model"])


@pytest.mark.parametrize("form", ["yaml", "dict"])
def test_model_from_checkpoint_reads_the_config_the_checkpoint_carries(
    tmp_path: Path, ema_checkpoint, form: str
):
    path, cfg = ema_checkpoint
    state = load_checkpoint(path)
    text = config_to_yaml(cfg)
    state["config"] = text if form == "yaml" else yaml.safe_load(text)
    save_checkpoint(tmp_path / "carries.pt", state)
    model, loaded = build.model_from_checkpoint(tmp_path / "carries.pt", overrides=["seed=7"])
    assert loaded.seed == 7 and loaded.model == cfg.model
    assert same_weights(model.state_dict(), state["ema"]["model"])


def test_a_checkpoint_trained_on_a_gpu_loads_where_there_is_none(tmp_path: Path, ema_checkpoint):
    """The saved ``device: cuda`` is the training machine's: reading the checkpoint on a
    CPU-only machine must not be refused by the config's device check."""
    path, cfg = ema_checkpoint
    state = load_checkpoint(path)
    raw = yaml.safe_load(config_to_yaml(cfg))
    raw["device"] = "cuda:7"  # a card no machine running the tests has
    state["config"] = raw
    save_checkpoint(tmp_path / "gpu.pt", state)
    model, loaded = build.model_from_checkpoint(tmp_path / "gpu.pt")
    assert loaded.device == "auto"
    assert same_weights(model.state_dict(), state["ema"]["model"])
    _, chosen = build.model_from_checkpoint(tmp_path / "gpu.pt", overrides=["device=cpu"])
    assert chosen.device == "cpu"


def test_model_from_checkpoint_without_any_config_names_the_file(tmp_path: Path, ema_checkpoint):
    path, _ = ema_checkpoint
    state = load_checkpoint(path)
    del state["config"]
    save_checkpoint(tmp_path / "bare.pt", state)
    with pytest.raises(CheckpointError, match="bare.pt carries no config"):
        build.model_from_checkpoint(tmp_path / "bare.pt")


def test_analyze_errors_and_eval_score_the_same_ema_weights(ema_checkpoint, monkeypatch):
    """Both commands hand ``predict_dataset`` the checkpoint's EMA weights."""
    from tunedet.cli.main import main

    path, cfg = ema_checkpoint
    ema = load_checkpoint(path)["ema"]["model"]
    seen: list[dict] = []

    class Scored(Exception):
        pass

    def record(model, *_args, **_kwargs):
        seen.append({k: v.clone() for k, v in model.state_dict().items()})
        raise Scored

    monkeypatch.setattr("tunedet.engine.evaluator.predict_dataset", record)
    args = ["retinanet/demo", *TINY]
    for command in (["eval", *args, "--checkpoint", str(path)],
                    ["analyze", "errors", *args, "--checkpoint", str(path)]):  # fmt: skip
        with pytest.raises(Scored):
            main(command)
    assert len(seen) == 2
    assert same_weights(seen[0], ema) and same_weights(seen[1], ema)


def test_effective_batch_base_lr_and_run_length_count_every_process():
    cfg = load_config(
        "retinanet/demo",
        ["train.max_iters=null", "train.epochs=3", "data.batch_size=4", "train.accumulate=2"]
        + ["optim.auto_scale_lr=true", "optim.base_batch=16", "optim.lr=0.01"],
    )
    assert build.effective_batch(cfg, world_size=2) == 4 * 2 * 2
    assert build.base_lr(cfg, world_size=2) == pytest.approx(0.01 * 16 / 16)
    assert build.base_lr(cfg) == pytest.approx(0.01 * 8 / 16)
    # 100 images, global batch 8: 12 batches per epoch, 6 steps; 3 epochs = 18 steps
    length = build.run_length(cfg, 100, world_size=2)
    assert (length.batches_per_epoch, length.iters_per_epoch, length.max_iters) == (12, 6, 18)
    assert build.run_length(cfg, 100).max_iters == 3 * 25 // 2


def test_optimizer_lr_equals_base_lr(ema_checkpoint):
    _, cfg = ema_checkpoint
    cfg = tiny_config("optim.auto_scale_lr=true", "optim.base_batch=3", "train.accumulate=2")
    model = build.build_model(cfg, log=quiet)
    for world_size in (1, 3):
        optimizer = build.build_optimizer_for(cfg, model, world_size)
        assert optimizer.defaults["lr"] == pytest.approx(build.base_lr(cfg, world_size))
        assert optimizer.defaults["lr"] == pytest.approx(0.002 * 2 * world_size * 2 / 3)


def test_eval_settings_unpack_the_config_for_the_evaluator():
    cfg = tiny_config(
        "data.val_batch_size=3", "eval.score_thr=0.2", "eval.metric=voc12", "eval.tta={flips: [v]}"
    )
    settings = build.eval_settings(cfg)
    assert settings.batch_size == 3 and settings.score_thr == 0.2 and settings.metric == "voc12"
    assert settings.tta.flips == ["v"] and settings.sliced is None and settings.progress is False
    assert settings.transforms == list(cfg.data.val_transforms)
    assert (settings.seed, settings.size_divisor) == (cfg.seed, cfg.data.size_divisor)
    sliced = build.eval_settings(tiny_config("data.val_batch_size=null", "eval.sliced={tile: 64}"))
    assert sliced.batch_size == 2 and sliced.sliced.tile == 64 and sliced.tta is None
