"""``tunedet analyze augment`` and ``tunedet analyze dataset`` write PNGs with the right content."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from tunedet.analysis.augment import augmented_samples, plot_augmented
from tunedet.analysis.dataset import analyze_split, box_statistics, dataset_boxes
from tunedet.analysis.inputs import load_config
from tunedet.cli.main import main
from tunedet.data import SyntheticShapes

AUGMENT = (
    "data.train_transforms=["
    "{type: mosaic, size: 64, p: 0.5}, {type: multi_scale, sizes: [48, 64, 80]},"
    " {type: hflip}, {type: normalize}]"
)


def is_png(path) -> bool:
    with Image.open(path) as image:
        return image.format == "PNG" and image.size[0] > 100


def test_augmented_samples_are_the_training_batches_without_normalize(tiny_demo, tmp_path):
    cfg = load_config("retinanet/demo", [*tiny_demo, AUGMENT])
    samples, classes = augmented_samples(cfg, 6)
    assert len(samples) == 6 and classes == ["circle", "square", "triangle"]
    sides = [s["image"].shape[0] for s in samples]
    assert all(s["image"].dtype == np.uint8 for s in samples)  # pixels, not normalised
    assert sides[0::2] == sides[1::2]  # batch size 2: one multi-scale size per batch
    for s in samples:
        h, w = s["image"].shape[:2]
        assert (s["boxes"][:, 2] <= w).all() and (s["boxes"][:, 3] <= h).all()
    out = plot_augmented(samples, classes, tmp_path / "grid.png")
    assert is_png(out)


def test_analyze_augment_command_writes_the_png(tiny_demo, tmp_path, capsys):
    out = tmp_path / "aug.png"
    code = main(
        ["analyze", "augment", "retinanet/demo", *tiny_demo, AUGMENT, "-n", "4", "--out", str(out)]
    )
    assert code == 0 and is_png(out) and "4 samples" in capsys.readouterr().out


def test_box_statistics_of_synthetic_shapes_match_the_samples():
    ds = SyntheticShapes(num_images=5, image_size=48)
    boxes, labels = dataset_boxes(ds, 10)
    assert [b.tolist() for b in boxes] == [ds[i]["boxes"].tolist() for i in range(5)]
    stats = box_statistics(boxes, labels, 3)
    flat = np.concatenate(boxes).astype(np.float64)
    w, h = flat[:, 2] - flat[:, 0], flat[:, 3] - flat[:, 1]
    np.testing.assert_allclose(stats["size"], np.sqrt(w * h))
    np.testing.assert_allclose(stats["log2_aspect"], np.log2(w / h))
    assert stats["per_class"].tolist() == np.bincount(np.concatenate(labels), minlength=3).tolist()
    assert stats["per_image"].tolist() == [len(b) for b in boxes]


def write_voc(folder, stem, width, height, boxes):
    Image.fromarray(np.full((height, width, 3), 90, np.uint8)).save(folder / f"{stem}.png")
    objects = "".join(
        f"<object><name>tree</name><difficult>0</difficult><bndbox><xmin>{a}</xmin>"
        f"<ymin>{b}</ymin><xmax>{c}</xmax><ymax>{d}</ymax></bndbox></object>"
        for a, b, c, d in boxes
    )
    (folder / f"{stem}.xml").write_text(
        f"<annotation><filename>{stem}.png</filename><size><width>{width}</width>"
        f"<height>{height}</height><depth>3</depth></size>{objects}</annotation>"
    )


def test_analyze_dataset_writes_histograms_and_prints_bad_input(tiny_demo, tmp_path, capsys):
    write_voc(tmp_path, "a", 40, 30, [(2, 2, 12, 10), (30, 20, 55, 28)])  # the second is clipped
    write_voc(tmp_path, "b", 40, 30, [(5, 5, 9, 25)])
    spec = {"type": "voc", "root": str(tmp_path), "classes": ["tree"]}
    overrides = [*tiny_demo, "model.num_classes=1", f"data.train={json.dumps(spec)}"]
    cfg = load_config("retinanet/demo", overrides)
    path, summary = analyze_split(cfg, "train", 100, tmp_path / "out")
    assert is_png(path) and path.name == "dataset_train.png"
    assert "3 boxes" in summary and "tree 3" in summary
    assert "1 problem(s)" in summary and "box clipped" in summary
    code = main(
        [
            "analyze",
            "dataset",
            "retinanet/demo",
            *overrides,
            "--split",
            "train",
            "--out",
            str(tmp_path / "cli"),
        ]
    )
    assert code == 0 and is_png(tmp_path / "cli" / "dataset_train.png")
    assert "box clipped" in capsys.readouterr().out
