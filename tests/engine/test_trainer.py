"""The training loop: exact resume (with EMA), the non-finite loss guard, run-directory
contents, gradient accumulation, bf16 autocast, channels_last, early stopping, frozen stages."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from tunedet.config.loader import load_config, validate
from tunedet.engine.checkpoint import (
    CheckpointError,
    checkpoint_class_names,
    checkpoint_config,
    load_checkpoint,
)
from tunedet.engine.finite_guard import NonFiniteLossError
from tunedet.engine.trainer import Trainer

TINY = [
    "model.backbone.widths=[8, 8, 16, 16, 16]",
    "model.neck.out_channels=16",
    "model.head.feat_channels=16",
    "model.head.stacked_convs=1",
    "data.train.num_images=16",
    "data.train.image_size=64",
    "data.val.num_images=4",
    "data.val.image_size=64",
    "data.batch_size=2",
    "train.progress=false",
    "train.log_every=1",
    "schedule.warmup.iters=2",
    "threads=1",  # two threads on two shared cores are many times slower than one
]


def tiny_config(*overrides: str):
    return load_config("retinanet/demo", [*TINY, *overrides])


def quiet(*_args, **_kwargs) -> None:
    pass


def test_resume_continues_bit_for_bit_with_ema(tmp_path: Path):
    # A constant main policy makes "stop at 4, then extend to 8" the same run as 8 straight.
    common = (
        "train.ckpt_every=4",
        "data.val=null",
        "schedule.policy.type=constant",
        "train.ema={decay: 0.9, tau: 2.0}",
    )
    straight = Trainer(tiny_config("train.max_iters=8", *common), tmp_path / "a", log=quiet)
    straight.train()

    first = Trainer(tiny_config("train.max_iters=4", *common), tmp_path / "b", log=quiet)
    first.train()
    # Re-running with the longer budget in the same directory resumes from iteration 4.
    resumed = Trainer(tiny_config("train.max_iters=8", *common), tmp_path / "b", log=quiet)
    resumed.train()
    assert resumed.iteration == 8
    for (name, a), (_, b) in zip(
        straight.model.state_dict().items(), resumed.model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    assert resumed.ema.updates == straight.ema.updates == 8
    for (name, a), (_, b) in zip(
        straight.ema.module.state_dict().items(),
        resumed.ema.module.state_dict().items(),
        strict=True,
    ):
        assert torch.equal(a, b), f"ema {name}"
    assert resumed.eval_model is resumed.ema.module


def test_run_directory_has_resolved_config_metrics_and_checkpoint(tmp_path: Path):
    trainer = Trainer(tiny_config("train.max_iters=3"), tmp_path, log=quiet)
    metrics = trainer.train()
    assert set(metrics) >= {"AP", "AP50"}
    assert (tmp_path / "checkpoints" / "iter_0000003.pt").is_file()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3]
    assert any("val/AP50" in r for r in rows)
    assert list((tmp_path / "tb").iterdir())
    reloaded = load_config(tmp_path / "config.yaml")
    assert reloaded.model_dump() == trainer.cfg.model_dump()


def test_checkpoint_carries_resolved_config_class_names_and_run_id(tmp_path: Path):
    trainer = Trainer(tiny_config("train.max_iters=2", "data.val=null"), tmp_path, log=quiet)
    trainer.train()
    state = load_checkpoint(tmp_path / "checkpoints" / "iter_0000002.pt")
    config = checkpoint_config(state)
    assert type(config) is dict and validate(config).model_dump() == trainer.cfg.model_dump()
    assert (
        state["class_names"] == list(trainer.train_set.classes) == ["circle", "square", "triangle"]
    )
    assert checkpoint_class_names(state) == state["class_names"]
    assert re.fullmatch(r"[0-9a-f]{12}", state["run_id"]) and state["run_id"] == trainer.run_id
    # a checkpoint without a config is refused in one line naming it
    with pytest.raises(CheckpointError, match="other.pt carries no config"):
        checkpoint_config({"model": {}}, "other.pt")


def test_nan_loss_stops_with_iteration_terms_and_checkpoint(tmp_path: Path, monkeypatch):
    trainer = Trainer(
        tiny_config("train.max_iters=6", "train.ckpt_every=2", "data.val=null"), tmp_path, log=quiet
    )
    original = trainer.model.loss

    def poisoned(images, gt_boxes, gt_labels):
        terms = original(images, gt_boxes, gt_labels)
        if trainer.iteration == 3:
            terms["cls"] = terms["cls"] * float("nan")
        return terms

    monkeypatch.setattr(trainer.model, "loss", poisoned)
    with pytest.raises(NonFiniteLossError) as info:
        trainer.train()
    message = str(info.value)
    assert "iteration 3" in message
    assert "cls=nan" in message
    assert "iter_0000002.pt" in message


def test_nan_loss_can_skip_the_step(tmp_path: Path, monkeypatch):
    trainer = Trainer(
        tiny_config("train.max_iters=4", "train.on_nonfinite=skip", "data.val=null"),
        tmp_path,
        log=quiet,
    )
    original = trainer.model.loss

    def poisoned(images, gt_boxes, gt_labels):
        terms = original(images, gt_boxes, gt_labels)
        if trainer.iteration == 1:
            terms["box"] = terms["box"] * float("inf")
        return terms

    monkeypatch.setattr(trainer.model, "loss", poisoned)
    trainer.train()
    assert trainer.iteration == 4
    assert trainer.skipped_steps == 1
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def mean_square_loss(model):
    """A per-image mean loss (the detector's own divides by the batch's positives, which
    differ between a batch of 8 and four of 2)."""

    def loss(images, gt_boxes, gt_labels):
        cls_logits, box_deltas, _, _ = model(images)
        return {"cls": cls_logits.float().pow(2).mean(), "box": box_deltas.float().abs().mean()}

    return loss


def first_step_gradients(trainer) -> dict[str, torch.Tensor]:
    grads: dict[str, torch.Tensor] = {}
    step = trainer.optimizer.step

    def recording_step(*args, **kwargs):
        if not grads:
            grads.update({n: p.grad.clone() for n, p in trainer.model.named_parameters()})
        return step(*args, **kwargs)

    trainer.optimizer.step = recording_step
    return grads


def test_accumulating_four_batches_of_two_gives_the_gradients_of_a_batch_of_eight(
    tmp_path: Path, monkeypatch
):
    # GroupNorm everywhere (backbone overridden, head already gn): no batch statistics,
    # so the per-image mean loss has the same gradient however the batch is split.
    common = (
        "train.max_iters=1",
        "data.val=null",
        "model.backbone.norm=gn",
        "train.ckpt_every=0",
        "train.amp=none",  # an fp32 identity; bf16 rounds each batch size differently
    )
    grads = {}
    for name, batch, accumulate in (("split", 2, 4), ("whole", 8, 1)):
        trainer = Trainer(
            tiny_config(*common, f"data.batch_size={batch}", f"train.accumulate={accumulate}"),
            tmp_path / name,
            log=quiet,
        )
        monkeypatch.setattr(trainer.model, "loss", mean_square_loss(trainer.model))
        grads[name] = first_step_gradients(trainer)
        trainer.train()
    assert grads["split"].keys() == grads["whole"].keys()
    for name, g in grads["whole"].items():
        torch.testing.assert_close(grads["split"][name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_bf16_autocast_trains_two_iterations_on_cpu(tmp_path: Path):
    trainer = Trainer(
        tiny_config("train.max_iters=2", "train.amp=bf16", "data.val=null", "device=cpu"),
        tmp_path,
        log=quiet,
    )
    seen = []
    original = trainer.model.head.forward

    def recording_forward(feats):
        out = original(feats)
        seen.append(out[0].dtype)
        return out

    trainer.model.head.forward = recording_forward
    trainer.train()
    assert trainer.iteration == 2
    assert seen == [torch.bfloat16, torch.bfloat16]
    assert all(
        p.dtype == torch.float32 and torch.isfinite(p).all() for p in trainer.model.parameters()
    )


def test_channels_last_trains_the_same_weights_in_nhwc_memory(tmp_path: Path):
    common = ("train.max_iters=3", "data.val=null", "device=cpu", "train.amp=none")
    plain = Trainer(tiny_config(*common), tmp_path / "a", log=quiet)
    plain.train()
    nhwc = Trainer(tiny_config(*common, "train.channels_last=true"), tmp_path / "b", log=quiet)
    seen = []
    original = nhwc.model.loss

    def recording_loss(images, *args, **kwargs):
        seen.append(images.is_contiguous(memory_format=torch.channels_last))
        return original(images, *args, **kwargs)

    nhwc.model.loss = recording_loss
    nhwc.train()
    assert seen == [True, True, True]
    conv = nhwc.model.backbone.layers[0][0].conv.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    for (name, a), (_, b) in zip(
        plain.model.state_dict().items(), nhwc.model.state_dict().items(), strict=True
    ):  # the same arithmetic in another order: equal to float rounding
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


def test_fp16_without_cuda_is_refused_with_a_hint(tmp_path: Path):
    with pytest.raises(ValueError, match="bf16"):
        Trainer(
            tiny_config("train.max_iters=1", "train.amp=fp16", "device=cpu"), tmp_path, log=quiet
        )


def test_early_stopping_stops_after_patience_evaluations_without_improvement(
    tmp_path: Path, monkeypatch
):
    trainer = Trainer(
        tiny_config(
            "train.max_iters=10",
            "train.eval_every=1",
            "train.ckpt_every=0",
            "train.early_stop={metric: AP50, patience: 2}",
        ),
        tmp_path,
        log=quiet,
    )
    scores = iter([0.1, 0.3, 0.3, 0.2, 0.9])  # 0.3 at iteration 2, then two without gain
    monkeypatch.setattr(trainer, "evaluate", lambda dataset=None: {"AP50": next(scores)})
    metrics = trainer.train()
    assert trainer.iteration == 4
    assert metrics == {"AP50": 0.2}
    assert trainer.early_stop.best == 0.3 and trainer.early_stop.best_iteration == 2
    # the stop is in the checkpoint: a re-run in the same directory does not continue
    again = Trainer(trainer.cfg, tmp_path, log=quiet)
    monkeypatch.setattr(again, "evaluate", lambda dataset=None: {"AP50": 0.0})
    again.train()
    assert again.iteration == 4


def test_early_stopping_names_a_missing_metric(tmp_path: Path, monkeypatch):
    trainer = Trainer(
        tiny_config("train.max_iters=2", "train.eval_every=1", "train.early_stop={metric: mAP}"),
        tmp_path,
        log=quiet,
    )
    monkeypatch.setattr(trainer, "evaluate", lambda dataset=None: {"AP50": 0.1})
    with pytest.raises(KeyError, match="mAP.*AP50"):
        trainer.train()


def test_frozen_stages_keep_weights_and_bn_statistics_through_training(tmp_path: Path):
    trainer = Trainer(
        tiny_config(
            "train.max_iters=2",
            "data.val=null",
            "train.ckpt_every=0",
            "model.backbone.frozen_stages=1",
            "optim.weight_decay=0.5",  # decay would move frozen weights if they were stepped
        ),
        tmp_path,
        log=quiet,
    )
    backbone = trainer.model.backbone
    frozen = {f"stem.{k}": v.clone() for k, v in backbone.stem.state_dict().items()}
    frozen |= {f"stage1.{k}": v.clone() for k, v in backbone.layers[0].state_dict().items()}
    free = {k: v.clone() for k, v in backbone.layers[1].state_dict().items()}
    assert any("running_mean" in k for k in frozen)
    trainer.train()
    after = {f"stem.{k}": v for k, v in backbone.stem.state_dict().items()}
    after |= {f"stage1.{k}": v for k, v in backbone.layers[0].state_dict().items()}
    for key, value in frozen.items():
        assert torch.equal(after[key], value), key
    moved = backbone.layers[1].state_dict()
    assert not torch.equal(moved["0.norm.running_mean"], free["0.norm.running_mean"])
    assert not all(torch.equal(moved[k], free[k]) for k in free if "weight" in k)
    assert all(not m.training for m in backbone.stem.modules())


def test_norm_eval_keeps_every_backbone_bn_statistic_while_weights_train(tmp_path: Path):
    trainer = Trainer(
        tiny_config(
            "train.max_iters=2",
            "data.val=null",
            "train.ckpt_every=0",
            "model.backbone.norm_eval=true",
        ),
        tmp_path,
        log=quiet,
    )
    backbone = trainer.model.backbone
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    trainer.train()
    after = backbone.state_dict()
    stats = [k for k in before if "running_" in k or "num_batches_tracked" in k]
    assert stats and all(torch.equal(after[k], before[k]) for k in stats)
    assert not all(torch.equal(after[k], before[k]) for k in before if k.endswith("conv.weight"))
