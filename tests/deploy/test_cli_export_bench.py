"""``tunedet export`` and ``tunedet bench`` on a tiny demo model (smoke tests)."""

from __future__ import annotations

import torch

from tunedet.cli.main import main
from tunedet.config.loader import load_config
from tunedet.engine.checkpoint import save_checkpoint
from tunedet.models import build_detector


def tiny_checkpoint(tmp_path, tiny_demo) -> str:
    cfg = load_config("retinanet/demo", [*tiny_demo, "threads=1"])
    torch.manual_seed(0)
    model = build_detector(cfg.model.model_dump())
    path = tmp_path / "tiny.pt"
    save_checkpoint(path, {"model": model.state_dict(), "classes": ["a", "b", "c"]})
    return str(path)


def test_export_raw_onnx_and_torchscript_print_the_difference(tmp_path, tiny_demo, capsys):
    ckpt = tiny_checkpoint(tmp_path, tiny_demo)
    for fmt, name in (("onnx", "m.onnx"), ("torchscript", "m.pt")):
        out = tmp_path / name
        argv = ["export", "retinanet/demo", *tiny_demo, "threads=1", "--checkpoint", ckpt]
        assert main([*argv, "--format", fmt, "--raw", "--out", str(out), "--fold-bn"]) == 0
        assert out.is_file() and out.stat().st_size > 0
        printed = capsys.readouterr().out
        diff = float(printed.split("max abs difference vs eager (cls_logits, box_deltas): ")[1])
        assert diff < 1e-3


def test_export_fails_above_tolerance(tmp_path, tiny_demo, capsys):
    ckpt = tiny_checkpoint(tmp_path, tiny_demo)
    argv = ["export", "retinanet/demo", *tiny_demo, "threads=1", "--checkpoint", ckpt]
    out = str(tmp_path / "m.onnx")
    code = main([*argv, "--raw", "--out", out, "--tolerance", "0", "--fold-bn"])
    err = capsys.readouterr().err
    assert code == 2 and "differ from eager" in err


def test_bench_prints_train_and_three_inference_paths(tiny_demo, capsys):
    argv = ["bench", "retinanet/demo", *tiny_demo, "threads=1", "model.score_thr=0.0"]
    assert main([*argv, "--repeats", "1", "--batch-size", "2"]) == 0
    out = capsys.readouterr().out
    for row in (
        "train (loss+backward+step)",
        "infer eager",
        "infer folded + channels_last",
        "infer onnxruntime",
    ):
        assert row in out


def test_bench_amp_bf16_adds_an_autocast_row_compared_with_eager(tiny_demo, capsys):
    argv = ["bench", "retinanet/demo", *tiny_demo, "threads=1", "model.score_thr=0.0"]
    assert main([*argv, "--repeats", "1", "--batch-size", "2", "--no-onnx", "--amp", "bf16"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if "bf16" in line)
    assert row.startswith("infer eager + bf16 autocast")
    assert " vs " in row and "detections, max diff" in row


def test_bench_says_why_a_detector_has_no_onnx_row(tiny_demo, capsys):
    """FCOS decodes points and centerness, not RetinaNet's anchors: its ONNX row is n/a
    with the reason, and the other rows are still timed (it used to stop with an error)."""
    argv = ["bench", "fcos/demo", *tiny_demo, "threads=1"]
    assert main([*argv, "--repeats", "1", "--batch-size", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("infer folded + channels_last") for line in lines)
    row = next(line for line in lines if line.startswith("infer onnxruntime"))
    assert "n/a" in row and "FCOS: the dense graph's torch post-processing is RetinaNet's" in row
