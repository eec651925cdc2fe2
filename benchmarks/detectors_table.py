"""Every detector's light preset at the same budget, on the synthetic data or on the trees.

``--data synthetic`` (default): trains each ``<detector>/demo`` config for the same number
of iterations (batch 16, 128-px synthetic shapes, seed 0, each preset's own recipe
otherwise), scores it on the same 200 validation images, and prints one Markdown table:
AP, AP50, parameters, GFLOPs of one 128-px forward pass (2 FLOPs per multiply-add), and
training img/s (images over the wall time of iterations 20..N, logged by the trainer; the
first iterations include one-off warm-up). Runs are sequential, with the same threads.

``--data trees``: the same presets (all but Mask R-CNN, which needs masks the trees lack)
with the trees recipe's data section (``trees/patches_fast``: random 256-px crops of the
400-px training patches of ``benchmarks/trees_vs_yolo.py``, flips and quarter turns,
batch 8; the table in docs/PERFORMANCE.md was printed when it used fixed 256-px tiles)
and its model keys (one class, max_dets), trained for the same iterations and scored by
the same COCO evaluator on the held-out 400-px patches; GFLOPs of one 400-px forward pass.
Each preset keeps its own model, assignment, losses, optimizer and schedule.

    python benchmarks/detectors_table.py --iters 1200 [--only retinanet,fcos]
    python benchmarks/detectors_table.py --data trees --iters 600 --threads 1 \\
        [--patches DIR]  # DIR/train, DIR/heldout as written by trees_vs_yolo.py
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from trees_vs_yolo import patches_folder  # benchmarks/, on sys.path when run as a script

from tunedet.analysis.flops import count_params_and_flops
from tunedet.config.loader import (
    ConfigError,
    load_config,
    load_raw,
    read_yaml,
    resolve_config_path,
)
from tunedet.engine.trainer import Trainer
from tunedet.models import build_detector

PRESETS = {
    "retinanet": "retinanet/demo",
    "atss": "atss/demo",
    "fcos": "fcos/demo",
    "onenet": "onenet/demo",
    "yolov3": "yolov3/demo",
    "ssd": "ssd/demo",
    "faster_rcnn": "faster_rcnn/demo",
    "mask_rcnn": "mask_rcnn/demo",
    "cornernet": "cornernet/demo",
    "fsaf": "fsaf/demo",
}
NEEDS_MASKS = {"mask_rcnn"}
TREES_RECIPE = "trees/patches_fast"


def available_presets() -> list[str]:
    """The presets whose config file exists."""
    names = []
    for name, config in PRESETS.items():
        try:
            resolve_config_path(config)
        except ConfigError:
            continue
        names.append(name)
    return names


def params_and_gflops(cfg, size: int) -> tuple[int, float]:
    model = build_detector(cfg.model.model_dump())
    images = torch.zeros(1, 3, size, size)
    sizes = torch.tensor([[size, size]])
    whole = count_params_and_flops(model, images, sizes, depth=0)[0]
    return int(whole["params"]), whole["flops"] / 1e9


def train_img_per_s(run: Path, batch_size: int) -> float:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    timed = [(r["step"], r["time"]) for r in rows if "time" in r and "loss" in r]
    (first_iter, first_time), (last_iter, last_time) = timed[0], timed[-1]
    if last_iter == first_iter:  # fewer iterations than two log intervals: no timing
        return float("nan")
    return batch_size * (last_iter - first_iter) / (last_time - first_time)


def trees_overrides(patches: Path) -> list[str]:
    """The trees recipe's data section on ``patches`` (train tiles, held-out patches)."""
    data = load_raw(TREES_RECIPE)["data"]
    data["train"]["root"] = str(patches / "train")
    data["val"] = {"type": "voc", "root": str(patches / "heldout")}
    return [
        *(f"data.{key}={json.dumps(value)}" for key, value in data.items()),
        "train.ckpt_every=0",
        "train.eval_every=0",
    ]


def trees_model_overrides(config: str) -> list[str]:
    """The model keys the trees recipe sets (one class, max_dets), where ``config`` has them
    (top level, or one level down: a two-stage detector's ``roi_head.max_dets``)."""
    model = load_raw(config)["model"]
    overrides = []
    for key, value in read_yaml(resolve_config_path(TREES_RECIPE)).get("model", {}).items():
        where = (
            [key]
            if key in model
            else [
                f"{name}.{key}"
                for name, section in model.items()
                if isinstance(section, dict) and key in section
            ]
        )
        if len(where) != 1:
            raise ValueError(f"{config}: cannot place the trees recipe's model.{key} ({where})")
        overrides.append(f"model.{where[0]}={json.dumps(value)}")
    return overrides


def count_boxes(cfg) -> tuple[int, int]:
    """(images, boxes) of the validation set."""
    from tunedet.data.build import build_dataset

    gt = build_dataset(cfg.data.val.model_dump()).coco_ground_truth()
    return len(gt["images"]), len(gt["annotations"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", choices=["synthetic", "trees"], default="synthetic")
    parser.add_argument("--iters", type=int, default=1200)
    parser.add_argument("--only", default=None, help="comma-separated presets (default: all)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--patches", default=None, help="trees: folder with train/, heldout/")
    args = parser.parse_args()

    names = args.only.split(",") if args.only else available_presets()
    unknown = [n for n in names if n not in PRESETS]
    if unknown:
        raise SystemExit(f"--only: unknown preset(s) {unknown}; known: {', '.join(PRESETS)}")
    extra: list[str] = []
    size = 128
    if args.data == "trees":
        names = [n for n in names if n not in NEEDS_MASKS]
        patches = patches_folder(args.patches)
        extra = trees_overrides(patches)
        size = 400
    rows, loads = [], []
    for name in names:
        overrides = [f"train.max_iters={args.iters}", "train.progress=false", *extra]
        if args.data == "trees":
            overrides += trees_model_overrides(PRESETS[name])
        if args.threads:
            overrides.append(f"threads={args.threads}")
        cfg = load_config(PRESETS[name], overrides)
        run = Path(tempfile.mkdtemp(prefix=f"det_{name}_"))
        try:
            metrics = Trainer(cfg, run, log=lambda *_: None).train()
            speed = train_img_per_s(run, cfg.data.batch_size)
        finally:
            shutil.rmtree(run, ignore_errors=True)
        params, gflops = params_and_gflops(cfg, size)
        loads.append(os.getloadavg()[0])
        row = (name, PRESETS[name], metrics["AP"], metrics["AP50"], params, gflops, speed)
        print(json.dumps([*row, f"load {loads[-1]:.1f}"]), flush=True)
        rows.append(row)

    if args.data == "trees":
        images, boxes = count_boxes(cfg)
        print(
            f"\n{args.iters} iterations of batch {cfg.data.batch_size}, 256-px tiles of the "
            f"400-px training patches (`{TREES_RECIPE}` data), seed 0; scored on {images} "
            f"held-out 400-px patches ({boxes} boxes). Load average (1 min) at the end of "
            f"the rows: {min(loads):.1f}-{max(loads):.1f}\n"
        )
    else:
        print(f"\n{args.iters} iterations of batch 16, 128-px synthetic shapes, seed 0\n")
    print(f"| detector | config | AP | AP50 | params | GFLOPs ({size} px) | train img/s |")
    print("|---|---|---|---|---|---|---|")
    for name, config, ap, ap50, params, gflops, speed in rows:
        print(
            f"| {name} | `{config}` | {ap:.3f} | {ap50:.3f} | {params / 1e6:.3f} M | "
            f"{gflops:.3f} | {speed:.1f} |"
        )


if __name__ == "__main__":
    main()
