"""``train.amp: auto`` (bf16 only with native bf16 and a measured family) and ``train.compile``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tunedet.config.loader import load_config
from tunedet.engine import amp
from tunedet.engine.step import CAPTURE_DATA_DEPENDENT
from tunedet.engine.trainer import Trainer

TINY = (
    "data.train.num_images=8",
    "data.train.image_size=64",
    "data.batch_size=4",
    "data.val=null",
    "train.ckpt_every=0",
    "device=cpu",
)


def native_cpu(monkeypatch, amx: bool, avx512_bf16: bool) -> None:
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)


@pytest.mark.parametrize(
    ("amx", "avx512_bf16", "expected"),
    [(True, False, "bf16"), (False, True, "bf16"), (False, False, "none")],
)
def test_auto_uses_bf16_only_on_a_cpu_with_native_bf16(monkeypatch, amx, avx512_bf16, expected):
    native_cpu(monkeypatch, amx, avx512_bf16)
    mode, why = amp.resolve_amp("auto", torch.device("cpu"), "retinanet")
    assert mode == expected
    assert why.startswith("auto: ")
    if expected == "none":
        assert "no native bf16" in why


def test_auto_keeps_fp32_for_a_family_not_measured_in_bf16(monkeypatch):
    native_cpu(monkeypatch, True, True)
    unmeasured = "a_detector_type_nobody_measured"
    assert unmeasured not in amp.BF16_FAMILIES
    mode, why = amp.resolve_amp("auto", torch.device("cpu"), unmeasured)
    assert mode == "none" and unmeasured in why


@pytest.mark.parametrize("mode", ["none", "bf16", "fp16"])
def test_an_explicit_mode_is_kept_whatever_the_hardware(monkeypatch, mode):
    native_cpu(monkeypatch, False, False)
    assert amp.resolve_amp(mode, torch.device("cpu"), "retinanet") == (mode, "set in train.amp")


def test_auto_is_the_default_and_the_trainer_prints_and_applies_its_choice(
    tmp_path: Path, monkeypatch
):
    native_cpu(monkeypatch, True, False)
    cfg = load_config("retinanet/demo", [*TINY, "train.max_iters=1"])
    assert cfg.train.amp == "auto"
    lines: list[str] = []
    trainer = Trainer(
        cfg, tmp_path / "bf16", log=lambda *a, **k: lines.append(" ".join(map(str, a)))
    )
    assert trainer.amp == "bf16"
    assert any(line.startswith("precision: bf16 autocast (auto: the CPU has AMX") for line in lines)
    seen = []
    original = trainer.model.head.forward
    trainer.model.head.forward = lambda feats: seen.append(original(feats)) or seen[-1]
    trainer.train()
    assert seen[0][0].dtype == torch.bfloat16

    native_cpu(monkeypatch, False, False)
    lines.clear()
    trainer = Trainer(
        cfg, tmp_path / "fp32", log=lambda *a, **k: lines.append(" ".join(map(str, a)))
    )
    assert trainer.amp == "none"
    assert any(
        line.startswith("precision: fp32 (auto: the CPU has no native bf16") for line in lines
    )


def test_compile_makes_every_step_run_the_compiled_loss(tmp_path: Path, monkeypatch):
    # torch.compile itself (seconds to minutes of compilation) is timed and compared with
    # eager in benchmarks/step_table.py; here: the trainer compiles model.loss and uses it.
    compiled_from, calls = [], []

    def recording_compile(fn, *args, **kwargs):
        compiled_from.append(fn)

        def call(*a, **k):
            calls.append(1)
            return fn(*a, **k)

        return call

    monkeypatch.setattr(torch, "compile", recording_compile)
    cfg = load_config("retinanet/demo", [*TINY, "train.max_iters=3", "train.compile=true"])
    trainer = Trainer(cfg, tmp_path, log=lambda *a: None)
    trainer.train()
    assert compiled_from == [trainer.model.loss]
    assert len(calls) == 3

    plain = Trainer(load_config("retinanet/demo", [*TINY, "train.max_iters=1"]), tmp_path / "b")
    assert plain.compiled_loss is None


def test_compiled_loss_is_one_graph_without_breaks():
    # Boolean-mask selections (assignment, positives) have data-dependent sizes: without
    # capturing them, Dynamo splits RetinaNet's loss into 12 graphs.
    from tunedet.data.build import build_dataset
    from tunedet.engine import build

    cfg = load_config("retinanet/demo", [*TINY, "train.max_iters=1"])
    model = build.build_model(cfg, log=lambda *a: None)
    batch = next(iter(build.train_loader(cfg, build_dataset(cfg.data.train))))
    model.train()
    with torch._dynamo.config.patch(**CAPTURE_DATA_DEPENDENT):
        explained = torch._dynamo.explain(model.loss)(batch.images, batch.gt_boxes, batch.gt_labels)
    assert explained.graph_break_count == 0, [r.reason for r in explained.break_reasons]
    assert explained.graph_count == 1


def test_a_compiler_failure_on_the_first_batch_is_one_line_and_training_goes_on(
    tmp_path: Path, monkeypatch
):
    calls = []

    def failing_compile(fn, *args, **kwargs):
        def call(*a, **k):
            calls.append(1)
            raise torch._dynamo.exc.TorchDynamoException("cannot lower u5\nmore detail")

        return call

    monkeypatch.setattr(torch, "compile", failing_compile)
    lines: list[str] = []
    cfg = load_config("retinanet/demo", [*TINY, "train.max_iters=3", "train.compile=true"])
    trainer = Trainer(cfg, tmp_path, log=lambda *a, **k: lines.append(" ".join(map(str, a))))
    trainer.train()
    assert trainer.iteration == 3 and len(calls) == 1
    failed = [line for line in lines if line.startswith("train.compile: ")]
    assert failed == [
        "train.compile: torch.compile failed on RetinaNet's loss (TorchDynamoException: "
        "cannot lower u5); training continues uncompiled"
    ]
