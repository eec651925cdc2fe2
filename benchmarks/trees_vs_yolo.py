"""tunedet's trees recipe vs ultralytics YOLOv8n on the trees data: same patches, same
wall-clock budget, same CPU threads, scored by the same COCO evaluator.

Data (``../shared/data/trees``, Pascal VOC): 400 x 400 patches. Held out: the right third
of ``2019_YELL_2_541000_4977000_image_crop.png`` (x >= 2/3 of its width), cut into
400-px patches flush with the right edge (x from W - 400; rows at y = 0, (H - 400) / 2,
H - 400; they overlap, and each patch is scored on its own). Training: 400-px patches
(stride 200) of the left two thirds of that image (windows end before x = 2/3 W, so no
held-out pixel is seen), plus the whole of ``OSBS_029`` and ``SOAP_061`` (400 x 400 each;
SOAP's Alive/Dead are renamed Tree). A box is kept in a patch when at least half of it is
inside (then clipped). The same patch files feed both tools (VOC XML for tunedet, YOLO
txt for ultralytics).

ultralytics (AGPL) is a benchmark-only dependency, never imported by tunedet: it runs in a
subprocess of ``--yolo-python`` (a Python with ``ultralytics`` installed; default: this
one). Both trainers get ``--threads`` (OMP_NUM_THREADS and torch.set_num_threads) and
``--minutes`` of training wall time (tunedet: ``train.max_minutes``, a cap on the
recipe's own length: a recipe without ``max_iters`` re-plans its schedule to fill the
budget, one with ``max_iters`` stops there if it is reached first; ultralytics: ``time=``
hours, which re-plans its epochs and LR schedule to fit). Prediction and
scoring are not in the budget. YOLOv8n is built from ``yolov8n.yaml``, no pretrained
weights, ``imgsz`` 416 by default (the 400-px patches padded; ``--yolo-imgsz`` enlarges them,
as the tunedet recipe does), its default augmentation.

Each side is scored twice: as plain single-pass inference, and with its test-time
augmentation (tunedet: the recipe's ``eval.tta``, or flips h/v/hv with score voting when
the recipe has none; ultralytics: ``predict(augment=True)``, its flip + scale TTA). The
table gives the AP50 ratio for both, plain against plain and TTA against TTA.

    python benchmarks/trees_vs_yolo.py --minutes 15 --seeds 0,1 --yolo-python /tmp/yv/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from PIL import Image

from tunedet.config.schema import TTAConfig
from tunedet.data.build import build_dataset
from tunedet.data.tiling import crop_to_tile, make_tiles
from tunedet.evaluation import coco_evaluate

TREES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "trees"
YELL = "2019_YELL_2_541000_4977000_image_crop"
PATCH = 400


def _crop(image, boxes, x0, y0, size, min_visible=0.5):
    """The ``size`` px window at ``(x0, y0)`` and its boxes (``data.tiling.crop_to_tile``:
    clipped, shifted, kept when at least ``min_visible`` of a box is inside)."""
    labels = np.zeros(len(boxes), np.int64)
    tile = crop_to_tile(boxes, labels, (x0, y0, x0 + size, y0 + size), min_visible)
    return image[y0 : y0 + size, x0 : x0 + size], tile.boxes[tile.keep]


def _write_patch(folder: Path, name: str, image: np.ndarray, boxes: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(folder / f"{name}.png")
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = f"{name}.png"
    size = ET.SubElement(root, "size")
    for tag, value in (("width", image.shape[1]), ("height", image.shape[0]), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    for box in boxes:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = "Tree"
        ET.SubElement(obj, "difficult").text = "0"
        bndbox = ET.SubElement(obj, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), box, strict=True):
            ET.SubElement(bndbox, tag).text = f"{value:.1f}"
    ET.ElementTree(root).write(folder / f"{name}.xml")
    # the same patch as YOLO txt (class cx cy w h, normalised) for ultralytics
    h, w = image.shape[:2]
    lines = [
        f"0 {(b[0] + b[2]) / 2 / w:.6f} {(b[1] + b[3]) / 2 / h:.6f} "
        f"{(b[2] - b[0]) / w:.6f} {(b[3] - b[1]) / h:.6f}"
        for b in boxes
    ]
    (folder / f"{name}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))


def _full_image(stem: str):
    dataset = build_dataset(
        {
            "type": "voc",
            "root": str(TREES),
            "files": [stem],
            "rename": {"Alive": "Tree", "Dead": "Tree"},
        }
    )
    sample = dataset[0]
    return sample["image"], sample["boxes"]


def make_patches(out: Path, validation: bool = False) -> dict[str, int]:
    """Write ``out/train`` and ``out/heldout`` (png + VOC xml + YOLO txt); returns counts.

    ``validation``: a split for choosing a recipe without looking at the held-out patches.
    Its ``heldout/`` is three 400-px patches flush with the *left* edge of the held-out
    third (x from 2/3 W - 400, the rows as above), and its ``train/`` keeps only the YELL
    windows that end before them (plus OSBS and SOAP). No pixel of the real held-out third
    is in either folder.
    """
    counts = {"train_patches": 0, "train_boxes": 0, "heldout_patches": 0, "heldout_boxes": 0}
    image, boxes = _full_image(YELL)
    height, width = image.shape[:2]
    split_x = int(round(width * 2 / 3))
    scored_x = width - PATCH
    if validation:
        scored_x = split_x - PATCH
        split_x = scored_x
    # windows overlapping by half, the last flush with the edge (data.tiling.make_tiles)
    for x0, y0, _, _ in make_tiles((height, split_x), PATCH, overlap=0.5):
        crop, crop_boxes = _crop(image, boxes, x0, y0, PATCH)
        _write_patch(out / "train", f"yell_{x0}_{y0}", crop, crop_boxes)
        counts["train_patches"] += 1
        counts["train_boxes"] += len(crop_boxes)
    # scored: flush with the held-out third's right edge (or, for validation, the
    # training part's), three rows
    for y0 in sorted({0, (height - PATCH) // 2, height - PATCH}):
        crop, crop_boxes = _crop(image, boxes, scored_x, y0, PATCH)
        _write_patch(out / "heldout", f"yell_{scored_x}_{y0}", crop, crop_boxes)
        counts["heldout_patches"] += 1
        counts["heldout_boxes"] += len(crop_boxes)
    for stem in ("OSBS_029", "SOAP_061"):
        image, boxes = _full_image(stem)
        crop, crop_boxes = _crop(image, boxes, 0, 0, PATCH)
        _write_patch(out / "train", stem, crop, crop_boxes)
        counts["train_patches"] += 1
        counts["train_boxes"] += len(crop_boxes)
    return counts


def patches_folder(patches: str | None, validation: bool = False) -> Path:
    """``patches`` (a folder with train/ and heldout/ written by ``make_patches``), or
    freshly written ones (the ``validation`` split if asked) in a new temporary folder."""
    if patches:
        folder = Path(patches)
        for split in ("train", "heldout"):
            if not (folder / split).is_dir():
                raise ValueError(f"--patches {folder}: no {split}/ folder of VOC patches")
        return folder
    folder = Path(tempfile.mkdtemp(prefix="trees_patches_"))
    print(f"patches in {folder}: {make_patches(folder, validation)}", flush=True)
    return folder


def heldout_ground_truth(patches: Path) -> dict:
    return build_dataset({"type": "voc", "root": str(patches / "heldout")}).coco_ground_truth()


def train_tunedet(
    config: str,
    patches: Path,
    run: Path,
    minutes: float,
    seed: int,
    threads: int,
    overrides: list[str],
) -> dict:
    from tunedet.config.loader import load_config
    from tunedet.engine.trainer import Trainer

    cfg = load_config(
        config,
        [
            f"data.train.root={patches / 'train'}",
            f"data.val={{type: voc, root: {patches / 'heldout'}}}",
            f"train.max_minutes={minutes}",
            "train.eval_every=0",
            f"seed={seed}",
            f"threads={threads}",
            *overrides,
        ],
    )
    torch_threads(threads)
    start = time.monotonic()
    trainer = Trainer(cfg, run, log=lambda *_: None)
    trainer.train()
    wall = (time.monotonic() - start) / 60
    tta = cfg.eval.tta or TTAConfig(flips=["h", "v", "hv"], merge="vote")
    return {
        **plain_and_tta(score_tunedet(trainer, cfg, None), score_tunedet(trainer, cfg, tta)),
        "iterations": trainer.iteration,
        "wall_min": wall,
    }


def plain_and_tta(plain: dict, tta: dict) -> dict:
    """AP and AP50 of the single-pass and the TTA scoring, side by side."""
    return {"AP": plain["AP"], "AP50": plain["AP50"], "AP_tta": tta["AP"], "AP50_tta": tta["AP50"]}


def score_tunedet(trainer, cfg, tta) -> dict:
    """COCO metrics of the trained model (EMA weights when enabled) on the held-out
    patches, with ``eval.tta`` set to ``tta`` (None: a single pass)."""
    from tunedet.engine.build import eval_settings
    from tunedet.engine.evaluator import evaluate_results, predict_dataset

    cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"tta": tta})})
    results = predict_dataset(
        trainer.eval_model, trainer.val_set, eval_settings(cfg), trainer.device
    )
    return evaluate_results(trainer.val_set.coco_ground_truth(), results, "coco")


def torch_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


YOLO_SCRIPT = textwrap.dedent(
    """
    import json, sys, torch
    torch.set_num_threads({threads})
    from ultralytics import YOLO
    model = YOLO("yolov8n.yaml")
    model.train(data={data!r}, imgsz={imgsz}, epochs=10000, time={hours!r}, device="cpu",
                workers=0, seed={seed}, deterministic=False, pretrained=False, amp=False,
                plots=False, val=False, batch=16, project={project!r}, name="yolo",
                exist_ok=True, verbose=False)
    model = YOLO({project!r} + "/yolo/weights/last.pt")
    out = {{}}
    for augment in (False, True):
        out[str(augment)] = []
        for result in model.predict(source={images!r}, imgsz={imgsz}, conf=0.001, iou=0.7,
                                    max_det=300, device="cpu", verbose=False, stream=True,
                                    augment=augment):
            boxes = result.boxes
            out[str(augment)].append({{"file": result.path, "boxes": boxes.xyxy.tolist(),
                                       "scores": boxes.conf.tolist()}})
    json.dump(out, open({result_file!r}, "w"))
    """
)


def train_yolo(
    python: str,
    patches: Path,
    run: Path,
    minutes: float,
    seed: int,
    threads: int,
    gt: dict,
    imgsz: int = 416,
) -> dict:
    data = run / "data.yaml"
    run.mkdir(parents=True, exist_ok=True)
    data.write_text(f"path: {patches}\ntrain: train\nval: heldout\nnames:\n  0: Tree\n")
    images = sorted(str(p) for p in (patches / "heldout").glob("*.png"))
    result_file = run / "predictions.json"
    script = YOLO_SCRIPT.format(
        threads=threads,
        imgsz=imgsz,
        data=str(data),
        hours=minutes / 60,
        seed=seed,
        project=str(run),
        images=images,
        result_file=str(result_file),
    )
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "YOLO_OFFLINE": "1"}
    start = time.monotonic()
    subprocess.run([python, "-c", script], check=True, env=env, cwd=run)
    wall = (time.monotonic() - start) / 60
    predictions = json.loads(result_file.read_text())
    plain = coco_evaluate(gt, yolo_results(predictions["False"], gt))
    tta = coco_evaluate(gt, yolo_results(predictions["True"], gt))
    return {**plain_and_tta(plain, tta), "wall_min": wall}


def yolo_results(predictions: list[dict], gt: dict) -> list[dict]:
    """ultralytics' per-file xyxy boxes as COCO results on ``gt``'s image ids."""
    ids = {Path(im["file_name"]).stem: im["id"] for im in gt["images"]}
    category = gt["categories"][0]["id"]
    results = []
    for item in predictions:
        image_id = ids[Path(item["file"]).stem]
        for (x0, y0, x1, y1), score in zip(item["boxes"], item["scores"], strict=True):
            results.append(
                {
                    "image_id": image_id,
                    "category_id": category,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "score": score,
                }
            )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="trees/patches_fast")
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--yolo-python", default=sys.executable)
    parser.add_argument(
        "--yolo-imgsz",
        type=int,
        default=416,
        help="YOLOv8n's train and predict size (the issue's 416 pads the 400-px patches; "
        "a larger one enlarges them, as the tunedet recipe does)",
    )
    parser.add_argument("--skip-yolo", action="store_true")
    parser.add_argument("--skip-tunedet", action="store_true")
    parser.add_argument("--work-dir", default=None)
    parser.add_argument("overrides", nargs="*", help="extra overrides of the tunedet recipe")
    args = parser.parse_args()

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="trees_vs_yolo_"))
    patches = work / "patches"
    counts = make_patches(patches)
    gt = heldout_ground_truth(patches)
    print(f"patches in {patches}: {counts}", flush=True)
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        ours = None
        if not args.skip_tunedet:
            ours = train_tunedet(
                args.config,
                patches,
                work / f"tunedet_{seed}",
                args.minutes,
                seed,
                args.threads,
                args.overrides,
            )
            print(f"seed {seed} tunedet: {ours}", flush=True)
        theirs = None
        if not args.skip_yolo:
            theirs = train_yolo(
                args.yolo_python,
                patches,
                work / f"yolo_{seed}",
                args.minutes,
                seed,
                args.threads,
                gt,
                args.yolo_imgsz,
            )
            print(f"seed {seed} YOLOv8n: {theirs}", flush=True)
        rows.append((seed, ours, theirs))

    print(
        f"\n{args.minutes:g} min training, {args.threads} threads, held-out patches: "
        f"{counts['heldout_patches']} ({counts['heldout_boxes']} boxes), YOLOv8n imgsz "
        f"{args.yolo_imgsz}\n"
    )
    print(
        "| seed | inference | tunedet AP | tunedet AP50 | YOLOv8n AP | YOLOv8n AP50 | AP50 ratio |"
    )
    print("|---|---|---|---|---|---|---|")
    for seed, ours, theirs in rows:
        for label, suffix in (("single pass", ""), ("TTA", "_tta")):
            ap, ap50 = f"AP{suffix}", f"AP50{suffix}"
            cells = [
                f"{m[ap]:.3f} | {m[ap50]:.3f}" if m is not None else "– | –" for m in (ours, theirs)
            ]
            ratio = "–"
            if ours is not None and theirs is not None:
                ratio = f"{ours[ap50] / theirs[ap50]:.2f}×" if theirs[ap50] > 0 else "inf"
            print(f"| {seed} | {label} | {cells[0]} | {cells[1]} | {ratio} |")


if __name__ == "__main__":
    main()
