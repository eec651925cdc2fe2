"""Bad configs and data from the command line: one line naming the file or key, exit
code 2, no traceback."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tunedet.cli.main import main


def one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in captured.err + captured.out
    return err


def test_num_classes_that_contradicts_listed_classes(capsys):
    err = one_line_error(capsys, ["train", "retinanet/demo", "model.num_classes=2"])
    assert "model.num_classes is 2 but data.train (synthetic) has 3 classes" in err


def test_num_classes_that_contradicts_a_coco_file_is_refused_before_training(
    tmp_path: Path, capsys, tiny_demo
):
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "a.png")
    doc = {
        "images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 64}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 5, "bbox": [4, 4, 20, 20]}],
        "categories": [{"id": i, "name": f"c{i}"} for i in (1, 3, 5)],
    }
    (tmp_path / "ann.json").write_text(json.dumps(doc))
    train = f"{{type: coco, ann_file: {tmp_path / 'ann.json'}, img_dir: {tmp_path}}}"
    run = tmp_path / "run"
    argv = ["train", "retinanet/demo", *tiny_demo, "model.num_classes=2", f"data.train={train}"]
    err = one_line_error(capsys, [*argv, "data.val=null", "--work-dir", str(run)])
    assert "model.num_classes is 2 but data.train (coco" in err and "has 3 classes" in err
    assert not list(run.rglob("*.pt"))  # refused before any training


def test_missing_data_path_and_bad_base_name_the_file(tmp_path: Path, capsys):
    err = one_line_error(capsys, ["train", "retinanet/demo", f"data={tmp_path / 'no.yaml'}"])
    assert "no.yaml: no such dataset file or folder" in err
    config = tmp_path / "mine.yaml"
    config.write_text("_base_: retinanet/dmeo\n")
    err = one_line_error(capsys, ["train", str(config)])
    assert "mine.yaml: _base_ 'retinanet/dmeo' not found" in err
    assert "did you mean 'retinanet/demo'" in err


def test_alias_bomb_device_and_absurd_num_classes(tmp_path: Path, capsys):
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    for i in range(1, 9):
        prev, name = chr(ord("a") + i - 1), chr(ord("a") + i)
        lines.append(f"{name}: &{name} [{','.join(['*' + prev] * 9)}]")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    started = time.perf_counter()
    err = one_line_error(capsys, ["train", str(bomb)])
    assert time.perf_counter() - started < 5 and len(err) < 300
    err = one_line_error(capsys, ["train", "retinanet/demo", "device=gpu7"])
    assert "device: not a device: 'gpu7'" in err
    err = one_line_error(capsys, ["train", "retinanet/demo", "model.num_classes=100000000"])
    assert "model.num_classes" in err


@pytest.mark.parametrize("config", ["retinanet/demo", "trees/retinanet_tiles"])
def test_a_directory_as_ann_file_is_one_line(config: str, tmp_path: Path, capsys):
    train = f"{{type: coco, ann_file: {tmp_path}, img_dir: {tmp_path}}}"
    err = one_line_error(capsys, ["train", config, "model.num_classes=null", f"data.train={train}"])
    assert "cannot read annotation file (Is a directory)" in err


def test_a_model_too_large_for_memory_is_refused_before_allocation(monkeypatch, capsys):
    import tunedet.models.build as model_build

    monkeypatch.setattr(model_build, "memory_bytes", lambda device: 2**20)  # a 1 MiB machine
    err = one_line_error(capsys, ["train", "retinanet/demo", "train.max_iters=1"])
    assert "model: 992,535 parameters need" in err and "GiB to train" in err


def test_deeply_nested_detections_json_is_one_line(tmp_path: Path, capsys):
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    dets = tmp_path / "dets.json"
    dets.write_text("[" * 100_000 + "]" * 100_000)
    err = one_line_error(capsys, ["evaluate", "--gt", str(gt), "--dets", str(dets)])
    assert "dets.json: nested too deeply" in err
