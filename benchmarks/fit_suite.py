"""The datasets ``tunedet fit`` is developed on: they differ in what its rules read.

| name | source | images (train / test) | classes | objects per image | object size | overhead |
|---|---|---|---|---|---|---|
| shapes | synthetic, 128 px | 400 / 150 | 3 | 1–6 | 8–90 px | no |
| small_dense | synthetic, 256 px | 200 / 80 | 2 | 1–25 | 6–20 px | symmetric shapes |
| large_few | synthetic, 192 px | 300 / 100 | 5 | 1–2 | 60–170 px | no |
| digits | scikit-learn's 8 × 8 digits on textured 160-px backgrounds | 300 / 100 | 10 | 1–4 | 14–40 px, tall | no |
| trees | ``../shared/data/trees``, benchmarks/trees_vs_yolo.py's patches | 22 / 3 | 1 | 10–90 | 8–107 px | yes |

Each is written once under ``ROOT/<name>/{train,test}/`` as PNG images with a COCO
``annotations.json`` (what ``tunedet fit`` and tunedet's recipes read) and YOLO txt
labels in ``labels/`` beside ``images/`` plus ``ROOT/<name>/data.yaml`` (what
ultralytics reads). ``test`` is never shown to ``fit``: fit holds its own validation
split out of ``train``. The digits need scikit-learn's bundled ``digits.csv.gz``
(scikit-learn installed or only unpacked: the file is read, the package not imported).

    python benchmarks/fit_suite.py /tmp/fit_suite            # write all of them
    python benchmarks/fit_suite.py /tmp/fit_suite --only digits
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np

from tunedet.data.coco_writer import write_coco
from tunedet.data.synthetic import SyntheticShapes

sys.path.insert(0, str(Path(__file__).resolve().parent))

HAND_RECIPES = {"shapes": "retinanet/demo", "trees": "trees/patches_fast"}


class DigitScenes:
    """scikit-learn's 8 × 8 digits (1797 images, 10 classes), each enlarged to 14–40 px
    high (nearest, aspect kept: the ink's tight box, taller than wide), drawn in a random
    dark colour on a smooth light two-colour background with pixel noise, 1–4 per image,
    not overlapping. Image ``i`` is a pure function of ``(seed, i)``."""

    def __init__(
        self, digits: tuple[np.ndarray, np.ndarray], num_images: int, seed: int, size: int = 160
    ):
        self.images, self.targets = digits
        self.num_images = num_images
        self.seed = seed
        self.size = size
        self.classes = [str(d) for d in range(10)]
        self._items = [self._make(i) for i in range(num_images)]

    def __len__(self) -> int:
        return self.num_images

    def _make(self, index: int) -> dict:
        rng = np.random.default_rng([self.seed, index])
        s = self.size
        low = rng.uniform(150, 255, (4, 4, 3))
        background = np.kron(low, np.ones((s // 4, s // 4, 1)))
        image = background + rng.normal(0, 12, (s, s, 3))
        boxes, labels = [], []
        for _ in range(int(rng.integers(1, 5))):
            k = int(rng.integers(len(self.images)))
            glyph = self.images[k] / 16.0
            rows, cols = np.nonzero(glyph > 0.2)
            glyph = glyph[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
            height = int(rng.integers(14, 41))
            factor = height / glyph.shape[0]
            width = max(2, int(round(glyph.shape[1] * factor)))
            ys = (np.arange(height) / factor).astype(int).clip(0, glyph.shape[0] - 1)
            xs = (np.arange(width) * glyph.shape[1] / width).astype(int).clip(0, glyph.shape[1] - 1)
            big = glyph[ys][:, xs]
            for _try in range(20):
                x0, y0 = int(rng.integers(0, s - width)), int(rng.integers(0, s - height))
                box = np.array([x0, y0, x0 + width, y0 + height], np.float32)
                if all(_disjoint(box, b) for b in boxes):
                    break
            else:
                continue
            colour = rng.uniform(0, 90, 3)
            patch = image[y0 : y0 + height, x0 : x0 + width]
            patch[:] = patch * (1 - big[..., None]) + colour * big[..., None]
            boxes.append(box)
            labels.append(int(self.targets[k]))
        return {
            "image": image.clip(0, 255).astype(np.uint8),
            "boxes": np.array(boxes, np.float32).reshape(-1, 4),
            "labels": np.array(labels, np.int64),
            "image_id": index + 1,
            "file": f"{index:06d}.png",
        }

    def __getitem__(self, index: int) -> dict:
        return self._items[index]

    def coco_ground_truth(self) -> dict:
        images, annotations = [], []
        for item in self._items:
            images.append(
                {
                    "id": item["image_id"],
                    "file_name": item["file"],
                    "width": self.size,
                    "height": self.size,
                }
            )
            for box, label in zip(item["boxes"].tolist(), item["labels"].tolist(), strict=True):
                w, h = box[2] - box[0], box[3] - box[1]
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": item["image_id"],
                        "category_id": label,
                        "bbox": [box[0], box[1], w, h],
                        "area": w * h,
                        "iscrowd": 0,
                    }
                )
        categories = [{"id": i, "name": n} for i, n in enumerate(self.classes)]
        return {"images": images, "annotations": annotations, "categories": categories}


def _disjoint(a: np.ndarray, b: np.ndarray) -> bool:
    return a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits: ((1797, 8, 8) values 0–16, (1797,) labels)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        raise SystemExit("the digits dataset needs scikit-learn (pip install scikit-learn)")
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
    with gzip.open(path, "rt") as handle:
        table = np.loadtxt(handle, delimiter=",")
    return table[:, :64].reshape(-1, 8, 8), table[:, 64].astype(np.int64)


def write_yolo_labels(split: Path) -> None:
    """``split/labels/<stem>.txt`` (class cx cy w h, normalised) from ``annotations.json``."""
    gt = json.loads((split / "annotations.json").read_text())
    labels = split / "labels"
    labels.mkdir(exist_ok=True)
    lines: dict[int, list[str]] = {img["id"]: [] for img in gt["images"]}
    size = {img["id"]: (img["width"], img["height"]) for img in gt["images"]}
    for ann in gt["annotations"]:
        w_img, h_img = size[ann["image_id"]]
        x, y, w, h = ann["bbox"]
        lines[ann["image_id"]].append(
            f"{ann['category_id']} {(x + w / 2) / w_img:.6f} {(y + h / 2) / h_img:.6f} "
            f"{w / w_img:.6f} {h / h_img:.6f}"
        )
    for img in gt["images"]:
        (labels / f"{Path(img['file_name']).stem}.txt").write_text("\n".join(lines[img["id"]]))


def trees_datasets() -> tuple:
    from trees_vs_yolo import TREES, make_patches

    from tunedet.data.voc import VOCDataset

    if not TREES.is_dir():
        raise SystemExit(f"the trees dataset needs {TREES}")
    patches = Path(__import__("tempfile").mkdtemp(prefix="fit_suite_trees_"))
    make_patches(patches)
    rename = {"Alive": "Tree", "Dead": "Tree"}
    train = VOCDataset(str(patches / "train"), classes=["Tree"], rename=rename)
    test = VOCDataset(str(patches / "heldout"), classes=["Tree"], rename=rename)
    return train, test


def datasets(names: list[str]) -> dict:
    """name -> (train dataset, test dataset), built on demand."""
    makers = {
        "shapes": lambda: (
            SyntheticShapes(num_images=400, image_size=128, seed=0, num_classes=3),
            SyntheticShapes(num_images=150, image_size=128, seed=1, num_classes=3),
        ),
        "small_dense": lambda: tuple(
            SyntheticShapes(
                num_images=n,
                image_size=256,
                seed=seed,
                num_classes=2,
                max_objects=25,
                min_size=6,
                max_size_frac=0.08,
            )  # fmt: skip
            for n, seed in ((200, 0), (80, 1))
        ),
        "large_few": lambda: tuple(
            SyntheticShapes(
                num_images=n,
                image_size=192,
                seed=seed,
                num_classes=5,
                max_objects=2,
                min_size=60,
                max_size_frac=0.9,
            )  # fmt: skip
            for n, seed in ((300, 0), (100, 1))
        ),
        "digits": lambda: (DigitScenes(load_digits(), 300, 0), DigitScenes(load_digits(), 100, 1)),
        "trees": trees_datasets,
    }
    unknown = set(names) - set(makers)
    if unknown:
        raise SystemExit(f"unknown suite datasets {sorted(unknown)}; choose from {sorted(makers)}")
    return {name: makers[name] for name in names}


NAMES = ["shapes", "small_dense", "large_few", "digits", "trees"]


def write_suite(root: Path, names: list[str]) -> dict[str, dict]:
    """Write the datasets (skipping those already written); returns name -> paths."""
    out = {}
    for name, make in datasets(names).items():
        folder = root / name
        if not (folder / "data.yaml").is_file():
            train, test = make()
            for split, dataset in (("train", train), ("test", test)):
                write_coco(dataset, folder / split)
                write_yolo_labels(folder / split)
            classes = list(train.classes)
            names_yaml = "".join(f"  {i}: '{c}'\n" for i, c in enumerate(classes))
            (folder / "data.yaml").write_text(
                f"path: {folder}\ntrain: train/images\nval: test/images\nnames:\n{names_yaml}"
            )
        out[name] = {
            "train": folder / "train" / "annotations.json",
            "test": folder / "test" / "annotations.json",
            "yolo": folder / "data.yaml",
            "hand": HAND_RECIPES.get(name),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(NAMES)}")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else NAMES
    for name, paths in write_suite(args.root, names).items():
        gt = json.loads(paths["train"].read_text())
        print(
            f"{name}: {len(gt['images'])} train images, {len(gt['annotations'])} boxes -> {paths['train'].parent.parent}"
        )


if __name__ == "__main__":
    main()
