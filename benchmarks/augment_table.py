"""AP50 of the augmentations at the same budget: the demo recipe, and the trees recipe.

Demo table (``retinanet/demo``, synthetic shapes, seed fixed): the recipe's
transforms (hflip + normalize) against the same plus Mosaic, MixUp,
multi-scale training or copy-paste, each trained ``--iters`` iterations of
batch 16 and scored on the same 200 validation images (COCO AP50).

Trees table (``trees/retinanet_tiles``): the detector trained on the two
training images resized whole (longer side ``--full-size``, batch = the 2
images) and evaluated on the held-out image OSBS_029 resized the same way,
against the recipe (256-px tiles, batch 8) evaluated on the whole OSBS_029
image by sliced inference (256-px tiles, overlap 0.25, merged across tiles).
Both are scored against the same full-image ground truth.

    python benchmarks/augment_table.py --iters 600 [--only demo,tiles_sliced] [--threads 1]

One run per row, one seed: differences of a point or two are within seed noise.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

from tunedet.config.loader import load_config
from tunedet.engine.trainer import Trainer

HFLIP_NORM = "{type: hflip, p: 0.5}, {type: normalize}"
DEMO_VARIANTS: dict[str, tuple[str, str]] = {
    "baseline": ("hflip + normalize (the recipe)", f"[{HFLIP_NORM}]"),
    "mosaic": (
        "+ mosaic (p 0.5, 128-px canvas)",
        f"[{{type: mosaic, size: 128, p: 0.5}}, {HFLIP_NORM}]",
    ),
    "mixup": (
        "+ mixup (p 0.5, λ ~ Beta(1.5, 1.5))",
        f"[{{type: mixup, p: 0.5, alpha: 1.5}}, {HFLIP_NORM}]",
    ),
    "multi_scale": (
        "+ multi-scale (96–160 px per batch)",
        f"[{{type: multi_scale, sizes: [96, 112, 128, 144, 160]}}, {HFLIP_NORM}]",
    ),
    "copy_paste": (
        "+ copy-paste (p 0.5, up to 4 box crops)",
        f"[{{type: copy_paste, p: 0.5, max_objects: 4}}, {HFLIP_NORM}]",
    ),
}

TREES_VAL_FULL = {
    "type": "voc",
    "root": "../shared/data/trees",
    "files": ["OSBS_029"],
    "rename": {"Alive": "Tree", "Dead": "Tree"},
    "tile_size": None,  # overrides merge into the recipe's spec: untile explicitly
}


def trees_variants(full_size: int) -> dict[str, tuple[str, list[str]]]:
    train_full = {
        "type": "voc",
        "root": "../shared/data/trees",
        "files": ["2019_YELL_2_541000_4977000_image_crop", "SOAP_061"],
        "rename": {"Alive": "Tree", "Dead": "Tree"},
        "tile_size": None,
    }
    resize = f"{{type: resize, size: {full_size}}}"
    return {
        "full_resize": (
            f"whole images resized to {full_size} px (batch 2), evaluated resized",
            [
                f"data.train={json.dumps(train_full)}",
                f"data.val={json.dumps(TREES_VAL_FULL)}",
                f"data.train_transforms=[{resize}, {{type: hflip}}, {{type: vflip}}, {{type: normalize}}]",
                f"data.val_transforms=[{resize}, {{type: normalize}}]",
                "data.batch_size=2",
            ],
        ),
        "tiles_sliced": (
            "256-px tiles (batch 8, the recipe), evaluated by sliced inference (256, overlap 0.25)",
            [
                f"data.val={json.dumps(TREES_VAL_FULL)}",
                "eval.sliced={tile: 256, overlap: 0.25}",
            ],
        ),
    }


def train_and_score(
    config: str, overrides: list[str], iters: int, threads: int, work: Path
) -> dict:
    cfg = load_config(
        config,
        [
            f"train.max_iters={iters}",
            "train.progress=false",
            "train.ckpt_every=0",
            "train.eval_every=0",
            f"threads={threads}",
            *overrides,
        ],
    )
    start = time.monotonic()
    metrics = Trainer(cfg, work, log=lambda *_: None).train()
    metrics["minutes"] = (time.monotonic() - start) / 60
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iters", type=int, default=600)
    parser.add_argument(
        "--only",
        help="comma-separated tables (demo, trees) or rows (baseline, mosaic, mixup, "
        "multi_scale, copy_paste, full_resize, tiles_sliced)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--full-size", type=int, default=512, help="trees: whole-image resize")
    args = parser.parse_args()
    only = set(args.only.split(",")) if args.only else {"demo", "trees"}
    demo_rows = [n for n in DEMO_VARIANTS if {"demo", n} & only]
    trees = trees_variants(args.full_size)
    trees_rows = [n for n in trees if {"trees", n} & only]
    work = Path(tempfile.mkdtemp(prefix="tunedet_augment_"))
    print(f"torch {torch.__version__}, {args.threads} threads, {args.iters} iterations per run")
    try:
        if demo_rows:
            print("\nDemo recipe (synthetic shapes, 200 validation images), batch 16:\n")
            print("| transforms | AP | AP50 | Δ AP50 vs first row | minutes |")
            print("|---|---|---|---|---|")
            base = None
            for name in demo_rows:
                label, transforms = DEMO_VARIANTS[name]
                m = train_and_score(
                    "retinanet/demo",
                    [f"data.train_transforms={transforms}"],
                    args.iters,
                    args.threads,
                    work / name,
                )
                base = m["AP50"] if base is None else base
                print(
                    f"| {label} | {m['AP']:.3f} | {m['AP50']:.3f} | {m['AP50'] - base:+.3f} "
                    f"| {m['minutes']:.1f} |",
                    flush=True,
                )
        if trees_rows:
            print("\nTrees recipe, held-out image OSBS_029 (full-image ground truth):\n")
            print("| training / evaluation | AP | AP50 | minutes |")
            print("|---|---|---|---|")
            for name in trees_rows:
                label, overrides = trees[name]
                m = train_and_score(
                    "trees/retinanet_tiles", overrides, args.iters, args.threads, work / name
                )
                print(
                    f"| {label} | {m['AP']:.3f} | {m['AP50']:.3f} | {m['minutes']:.1f} |",
                    flush=True,
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
