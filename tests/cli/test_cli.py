"""The command line, as a user runs it: one-line errors, list, train/eval/infer, evaluate, data synth."""

from __future__ import annotations

import contextlib
import io
import json
import signal
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tunedet.cli.main import main


def test_config_typo_is_one_line_error_with_exit_code_2(capsys):
    assert main(["train", "retinanet/demo", "optim.lrr=0.1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "optim.lrr" in err and "did you mean 'lr'" in err


def test_list_assigners_and_configs(capsys):
    assert main(["list", "assigners"]) == 0
    out = capsys.readouterr().out
    assert "max_iou" in out and "atss" in out
    assert main(["list", "configs"]) == 0
    assert "retinanet/demo" in capsys.readouterr().out
    assert main(["list", "assignrs"]) == 2
    assert "did you mean 'assigners'" in capsys.readouterr().err


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_demo) -> Path:
    run = tmp_path_factory.mktemp("run")
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["train", "retinanet/demo", *tiny_demo, "--work-dir", str(run)]) == 0
    return run


def test_train_then_eval_and_infer_from_the_saved_config(trained_run: Path, tmp_path: Path, capsys):
    checkpoint = trained_run / "checkpoints" / "iter_0000002.pt"
    assert checkpoint.is_file()
    config = str(trained_run / "config.yaml")
    # Overrides may also follow the options.
    assert main(["eval", config, "--checkpoint", str(checkpoint), "--json", "threads=1"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0.0 <= metrics["AP50"] <= 1.0

    images = tmp_path / "images"
    assert main(["data", "synth", str(images), "--num-images", "2", "--image-size", "64"]) == 0
    pngs = sorted(images.rglob("*.png"))
    assert len(pngs) == 2
    out = tmp_path / "infer"
    args = [
        "infer",
        config,
        *map(str, pngs),
        "--checkpoint",
        str(checkpoint),
        "--out",
        str(out),
        "--score-thr",
        "0",
    ]
    assert main(args) == 0
    detections = json.loads((out / "detections.json").read_text())
    assert [Path(d["file"]).name for d in detections] == [p.name for p in pngs]
    assert all(len(d["boxes"]) == len(d["scores"]) == len(d["labels"]) for d in detections)
    assert (out / f"{pngs[0].stem}.png").is_file()


def test_eval_rejects_checkpoint_of_another_model(trained_run: Path, capsys):
    checkpoint = trained_run / "checkpoints" / "iter_0000002.pt"
    config = str(trained_run / "config.yaml")
    assert (
        main(["eval", config, "model.head.feat_channels=24", "--checkpoint", str(checkpoint)]) == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "shape" in err


def test_evaluate_command_equals_pycocotools(tmp_path: Path, capsys):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rng = np.random.default_rng(0)
    images, annotations, results = [], [], []
    for image_id in range(1, 21):
        images.append({"id": image_id, "width": 200, "height": 200})
        for _ in range(rng.integers(1, 6)):
            x, y = rng.uniform(0, 150, 2)
            w, h = rng.uniform(5, 50, 2)
            category = int(rng.integers(1, 3))
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": category,
                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0,
            })  # fmt: skip
            jitter = rng.normal(0, 4, 4)
            results.append({
                "image_id": image_id, "category_id": category,
                "bbox": [x + jitter[0], y + jitter[1], max(1, w + jitter[2]), max(1, h + jitter[3])],
                "score": float(rng.uniform()),
            })  # fmt: skip
        results.append(
            {"image_id": image_id, "category_id": 1, "bbox": [10, 10, 30, 30], "score": 0.3}
        )
    gt = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    }
    gt_path, dets_path = tmp_path / "gt.json", tmp_path / "dets.json"
    gt_path.write_text(json.dumps(gt))
    dets_path.write_text(json.dumps(results))

    assert main(["evaluate", "--gt", str(gt_path), "--dets", str(dets_path), "--json"]) == 0
    ours = json.loads(capsys.readouterr().out)["stats"]

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt_path))
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(str(dets_path)), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    names = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]
    for name, value in zip(names, evaluator.stats, strict=True):
        assert ours[name] == pytest.approx(value, abs=1e-6), name


def test_evaluate_malformed_results_file_is_one_line_error(tmp_path: Path, capsys):
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    dets = tmp_path / "dets.json"
    dets.write_text('[{"image_id": 1,')
    assert main(["evaluate", "--gt", str(gt), "--dets", str(dets)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "dets.json" in err


def test_eval_writes_pngs_and_json_of_all_metrics(trained_run: Path, tmp_path: Path, capsys):
    checkpoint = trained_run / "checkpoints" / "iter_0000002.pt"
    config = str(trained_run / "config.yaml")
    out = tmp_path / "eval"
    args = ["eval", config, "model.score_thr=0.0", "--checkpoint", str(checkpoint)]
    assert main([*args, "--out", str(out), "--score-thr", "0.2", "--recall", "0.5"]) == 0
    text = capsys.readouterr().out
    assert "Average Precision" in text and "P@R0.5" in text and "circle" in text
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["AP50"] <= 1.0  # the config's metric at the top level, as before
    assert set(metrics["per_class_ap"]) == {"circle", "square", "triangle"}
    detection = metrics["detection"]
    assert detection["score_thr"] == 0.2 and detection["target_recall"] == 0.5
    assert detection["confusion_matrix"]["labels"][-1] == "background"
    for name in ("pr_curves.png", "confusion_matrix.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"


def test_evaluate_prints_tables_and_writes_out_dir(tmp_path: Path, capsys):
    gt = {
        "images": [{"id": 1}, {"id": 2}],
        "categories": [{"id": 1, "name": "cat"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10]},
            {"id": 2, "image_id": 2, "category_id": 1, "bbox": [0, 0, 10, 10]},
        ],
    }
    dets = [
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9},
        {"image_id": 2, "category_id": 1, "bbox": [50, 50, 10, 10], "score": 0.8},
    ]
    gt_path, dets_path = tmp_path / "gt.json", tmp_path / "dets.json"
    gt_path.write_text(json.dumps(gt))
    dets_path.write_text(json.dumps(dets))
    out = tmp_path / "eval"
    assert (
        main(["evaluate", "--gt", str(gt_path), "--dets", str(dets_path), "--out", str(out)]) == 0
    )
    text = capsys.readouterr().out
    assert "Average Precision" in text and "AP50" in text
    # score >= 0.5: 1 TP, 1 FP over 2 images -> P 0.5, R 0.5, F1 0.5, FPPI 0.5
    row = next(line for line in text.splitlines() if line.startswith("all "))
    assert row.split()[2:5] == ["0.500", "0.500", "0.500"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["detection"]["all"]["fppi"] == 0.5
    assert (out / "pr_curves.png").is_file() and (out / "confusion_matrix.png").is_file()
    assert (
        main(["evaluate", "--gt", str(gt_path), "--dets", str(dets_path), "--metric", "voc07"]) == 0
    )
    assert "mAP" in capsys.readouterr().out


def test_infer_passes_amp_to_the_detector(trained_run: Path, tmp_path: Path, capsys):
    """``--amp`` reaches the detector: bf16 runs on the CPU, fp16 is refused there."""
    checkpoint = str(trained_run / "checkpoints" / "iter_0000002.pt")
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(image)
    args = ["infer", checkpoint, str(image), "--no-draw"]
    assert main([*args, "--out", str(tmp_path / "bf16"), "--amp", "bf16"]) == 0
    assert (tmp_path / "bf16" / "detections.json").is_file()
    assert main([*args, "--out", str(tmp_path / "fp16"), "--amp", "fp16"]) == 2
    assert "--amp=fp16 needs a CUDA device" in capsys.readouterr().err  # the flag, not a key


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_fit_interrupted_in_its_training_ends_in_one_line(monkeypatch, capsys, signum):
    """``fit`` does not catch the trainer's interruption itself: the CLI turns it into one
    line and ``128 + signal``; the trial workers' interruption keeps its signal too."""
    import tunedet.tuning.fit as fit_module
    from tunedet.engine.interrupt import TrainingInterrupted
    from tunedet.tuning.trial_workers import WorkersInterrupted

    def stopped_in_training(*_args, **_kwargs):
        raise TrainingInterrupted(signum, 7, "runs/fit/final/last.pt")

    monkeypatch.setattr(fit_module, "fit", stopped_in_training)
    assert main(["fit", "data.yaml"]) == 128 + signum
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert captured.err.strip() == (
        f"tunedet fit: {signal.Signals(signum).name} at iteration 7: saved "
        "runs/fit/final/last.pt; run the same command again to resume"
    )

    def stopped_in_search(*_args, **_kwargs):
        raise WorkersInterrupted(signum)

    monkeypatch.setattr(fit_module, "fit", stopped_in_search)
    assert main(["fit", "data.yaml"]) == 128 + signum
    assert capsys.readouterr().err.strip() == "tunedet fit: interrupted"
