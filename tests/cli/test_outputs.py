"""eval / infer / export from a checkpoint alone, and the files they write for other tools."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tunedet.api import Detector
from tunedet.cli.main import main, new_numbered_dir
from tunedet.engine.checkpoint import latest_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_demo) -> Path:
    run = tmp_path_factory.mktemp("outputs_run")
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["train", "retinanet/demo", *tiny_demo, "--work-dir", str(run)]) == 0
    return latest_checkpoint(run)


@pytest.fixture(scope="module")
def coco_folder(tmp_path_factory) -> Path:
    """Four synthetic images as a COCO file whose category ids are 10, 20, 30."""
    folder = tmp_path_factory.mktemp("coco")
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["data", "synth", str(folder), "--num-images", "4", "--image-size", "64"]) == 0
    gt = json.loads((folder / "annotations.json").read_text())
    for item in [*gt["categories"], *gt["annotations"]]:
        key = "id" if "name" in item else "category_id"
        item[key] = (item[key] + 1) * 10
    (folder / "annotations.json").write_text(json.dumps(gt))
    return folder


def test_eval_from_the_checkpoint_alone_saves_coco_results_pycocotools_loads(
    checkpoint, coco_folder, tmp_path, capsys
):
    from pycocotools.coco import COCO

    results = tmp_path / "results.json"
    val = f"data.val={{type: coco, ann_file: {coco_folder / 'annotations.json'}, img_dir: {coco_folder / 'images'}}}"
    argv = ["eval", str(checkpoint), val, "model.score_thr=0.0", "--save-json", str(results)]
    assert main(argv) == 0
    assert "AP" in capsys.readouterr().out
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(coco_folder / "annotations.json"))
        dets = gt.loadRes(str(results))
    assert len(dets.getAnnIds()) > 0
    assert {a["category_id"] for a in dets.loadAnns(dets.getAnnIds())} <= {10, 20, 30}
    # an existing file is kept unless --force
    assert main(argv) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert main([*argv, "--force"]) == 0


def test_eval_infer_export_of_a_config_file_alone_is_refused_in_one_line(capsys, tmp_path):
    (tmp_path / "my.yaml").write_text("_base_: retinanet/demo\n")
    assert main(["eval", str(tmp_path / "my.yaml")]) == 2
    assert "is a config: pass the checkpoint too" in capsys.readouterr().err


def test_infer_writes_csv_coco_and_yolo_into_new_numbered_folders(checkpoint, tmp_path, capsys):
    rng = np.random.default_rng(0)
    images = tmp_path / "images"
    images.mkdir()
    for name, shape in (("a", (64, 64, 3)), ("b", (48, 80, 3))):
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(images / f"{name}.png")
    expected = Detector.from_checkpoint(checkpoint, "cpu", overrides=["model.score_thr=0"]).predict(
        [images / "a.png", images / "b.png"], score_thr=0.01
    )
    out = tmp_path / "infer"
    common = [
        str(checkpoint),
        str(images),
        "--out",
        str(out),
        "--score-thr",
        "0.01",
        "--set",
        "model.score_thr=0",
    ]
    for fmt in ("csv", "coco", "yolo"):
        assert main(["infer", *common, "--format", fmt]) == 0
    capsys.readouterr()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "infer", "infer2", "infer3"]
    assert new_numbered_dir(tmp_path / "exp1").name == "exp1"
    assert new_numbered_dir(tmp_path / "exp1").name == "exp1_2"

    with (out / "detections.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == sum(len(d) for d in expected) > 0
    first = [r for r in rows if r["file"].endswith("a.png")][0]
    assert [float(first[k]) for k in ("x1", "y1", "x2", "y2")] == pytest.approx(
        expected[0].boxes[0].tolist(), abs=0.01
    )
    assert first["name"] == expected[0].names[0]

    coco = json.loads((tmp_path / "infer2" / "annotations.json").read_text())
    assert [(i["width"], i["height"]) for i in coco["images"]] == [(64, 64), (80, 48)]
    assert [c["name"] for c in coco["categories"]] == ["circle", "square", "triangle"]
    assert len(coco["annotations"]) == len(rows)

    lines = (tmp_path / "infer3" / "labels" / "b.txt").read_text().splitlines()
    assert len(lines) == len(expected[1])
    label, cx, cy, w, h, score = (float(v) for v in lines[0].split())
    x1, y1, x2, y2 = expected[1].boxes[0]
    assert (label, cx, w, score) == pytest.approx(
        (expected[1].labels[0], (x1 + x2) / 2 / 80, (x2 - x1) / 80, expected[1].scores[0]),
        abs=1e-4,
    )
    assert (tmp_path / "infer3" / "classes.txt").read_text().split() == [
        "circle",
        "square",
        "triangle",
    ]


def test_export_never_writes_over_the_checkpoint_or_an_existing_file(checkpoint, tmp_path, capsys):
    before = checkpoint.read_bytes()
    argv = ["export", str(checkpoint), "--format", "torchscript"]
    assert main(argv) == 0  # next to the checkpoint, under another name
    assert checkpoint.read_bytes() == before
    written = checkpoint.with_suffix(".torchscript.pt")
    assert written.is_file()
    stamp = written.stat().st_mtime_ns
    assert main(argv) == 2  # the second time: refused, the first file kept
    assert "already exists; pass --force" in capsys.readouterr().err
    assert written.stat().st_mtime_ns == stamp
    assert main([*argv, "--out", str(checkpoint), "--force"]) == 2  # never the checkpoint
    assert "is the checkpoint itself" in capsys.readouterr().err
    assert checkpoint.read_bytes() == before
    written.unlink()
