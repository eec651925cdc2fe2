"""What moves the trees recipe's number (issue #12): its parts toggled one at a time.

The baseline is ``trees/patches_fast`` trained for a fixed number of iterations on the
training patches of ``benchmarks/trees_vs_yolo.py`` and scored by the COCO evaluator on
its held-out 400-px patches. Each row changes one part of the baseline alone (the
machinery of ``tunedet ablate``, ``tunedet.tuning.ablation``):

- ``no_upscale``: no ``resize`` (training and evaluation at the patches' own scale);
- ``no_random_crop``: whole (resized) patches instead of random 256-px crops of them;
- ``tiles``: fixed 256-px tiles (overlap 0.5) instead of random 256-px crops;
- ``no_rot90``: no quarter turns; ``no_vflip``: no vertical flips (horizontal flips kept);
- ``atss``: max-IoU assigner (0.5 / 0.4) instead of ATSS (built-in trick);
- ``giou``: smooth L1 on deltas (weight 1) instead of GIoU (weight 2) (built-in trick);
- ``warmup``: no linear warmup (built-in trick);
- ``fitted_anchors``: the grid's per-level base sizes and ratio replaced by the proposal
  of ``tunedet analyze anchors`` (k-means on the training tiles' boxes, 1 - IoU); left
  out when the recipe's anchors already are that proposal.
- ``no_tta``: the baseline's own weights scored without ``eval.tta`` (single pass); no
  extra training.

Prints the anchor fit, then one Markdown table (AP, AP50, Δ against the baseline; mean ±
std over the seeds); writes ``OUT/ablation.md``, ``OUT/ablation.json``, ``OUT/ablation.png``.

    python benchmarks/trees_ablation.py --iters 600 --seeds 0,1 --threads 1 --jobs 2 \\
        [--only no_upscale,no_rot90] \\
        [--patches DIR]  # DIR/train, DIR/heldout as written by trees_vs_yolo.py
        [--validation]   # or score on the validation split, for choosing a recipe
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from trees_vs_yolo import patches_folder  # benchmarks/, on sys.path when run as a script

from tunedet.analysis.anchors import analyze_anchors, dataset_box_sizes
from tunedet.config.loader import load_config
from tunedet.models import build_detector
from tunedet.tuning.ablation import (
    Trick,
    format_table,
    plan_runs,
    plot_ablation,
    resolve_tricks,
    run_all,
    summarize,
)

RECIPE = "trees/patches_fast"


def fitted_anchor_trick(cfg) -> Trick | None:
    """The anchor proposal for the training tiles' boxes, or None when the recipe has it."""
    generator = build_detector(cfg.model.model_dump()).anchor_generator
    report = analyze_anchors(dataset_box_sizes(cfg, "train"), generator)
    current, proposed = report["current"], report["proposed"]
    print(
        f"anchors on {report['num_boxes']} training boxes: mean best IoU "
        f"{current['mean_best_iou']:.3f} -> {proposed['mean_best_iou']:.3f}, recall@0.5 "
        f"{current['recall']:.3f} -> {proposed['recall']:.3f}; recipe base sizes "
        f"{list(generator.base_sizes)} ratios {list(generator.ratios)} -> proposed "
        f"{proposed['base_sizes']} ratios {proposed['ratios']}",
        flush=True,
    )
    same = (
        list(generator.base_sizes) == proposed["base_sizes"]
        and list(generator.ratios) == proposed["ratios"]
    )
    if same:
        return None
    return Trick(
        "fitted_anchors",
        (
            f"model.anchor_generator.base_sizes={json.dumps(proposed['base_sizes'])}",
            f"model.anchor_generator.ratios={json.dumps(proposed['ratios'])}",
        ),
        "+fitted anchors",
    )


def rescore(run_dir: Path, overrides: list[str]) -> dict[str, float]:
    """COCO metrics of ``run_dir``'s final weights under its config plus ``overrides``."""
    from tunedet.data.build import build_dataset
    from tunedet.engine.build import eval_settings, model_from_checkpoint, resolve_device
    from tunedet.engine.checkpoint import latest_checkpoint
    from tunedet.engine.evaluator import evaluate_results, predict_dataset

    cfg = load_config(run_dir / "config.yaml", overrides)
    device = resolve_device(cfg.device)
    model, _ = model_from_checkpoint(latest_checkpoint(run_dir), device, cfg=cfg)
    dataset = build_dataset(cfg.data.val)
    results = predict_dataset(model, dataset, eval_settings(cfg), device)
    return evaluate_results(dataset.coco_ground_truth(), results, "coco")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iters", type=int, default=600)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time")
    parser.add_argument("--patches", default=None, help="folder with train/, heldout/")
    parser.add_argument(
        "--validation",
        action="store_true",
        help="write the validation split (trees_vs_yolo.make_patches): score on patches "
        "of the training part, never on the held-out third",
    )
    parser.add_argument("--out", default="runs/ablate/trees_patches_fast")
    parser.add_argument("--only", default=None, help="comma-separated trick names to run")
    args = parser.parse_args()
    if args.validation and args.patches:  # the table would call DIR's patches validation
        parser.error("--validation writes its own patches: leave out --patches")

    seeds = [int(s) for s in args.seeds.split(",")]
    patches = patches_folder(args.patches, args.validation)
    base = [
        f"data.train.root={patches / 'train'}",
        f"data.val={{type: voc, root: {patches / 'heldout'}}}",
    ]
    baseline = load_config(RECIPE, base)
    transforms = [t.model_dump() for t in baseline.data.train_transforms]
    types = [t["type"] for t in transforms]
    if not {"random_crop", "rot90", "vflip"} <= set(types):
        raise SystemExit(f"{RECIPE} no longer has random_crop, rot90 and vflip: update this")

    def without(kind: str) -> str:
        return f"data.train_transforms={json.dumps([t for t in transforms if t['type'] != kind])}"

    tiles = ("data.train.tile_size=256", "data.train.tile_overlap=0.5", without("random_crop"))
    tricks = [
        Trick("no_random_crop", (without("random_crop"),), "-random crop"),
        Trick("tiles", tiles, "tiles for crops"),
        Trick("no_rot90", (without("rot90"),), "-rot90"),
        Trick("no_vflip", (without("vflip"),), "-vflip"),
        *resolve_tricks("atss,giou,warmup", baseline, args.iters),
    ]
    if "resize" in types:  # the enlargement, in training and in evaluation
        val = [t.model_dump() for t in baseline.data.val_transforms if t.type != "resize"]
        no_resize = (without("resize"), f"data.val_transforms={json.dumps(val)}")
        tricks.insert(0, Trick("no_upscale", no_resize, "-resize (native scale)"))
    anchors = fitted_anchor_trick(baseline)
    if anchors is not None:
        tricks.append(anchors)
    if args.only:
        wanted = args.only.split(",")
        unknown = sorted(set(wanted) - {t.name for t in tricks} - {"no_tta"})
        if unknown:
            raise SystemExit(f"--only: no trick {', '.join(unknown)} here")
        tricks = [t for t in tricks if t.name in wanted]
    out = Path(args.out)
    runs = plan_runs(RECIPE, base, tricks, seeds, args.iters, out, args.threads)
    for trick in tricks:
        print(f"{trick.change:>16}: {' '.join(trick.overrides)}", flush=True)
    print(f"{len(runs)} runs of {args.iters} iterations, {args.jobs} at a time in {out}")
    results = run_all(RECIPE, runs, args.jobs)
    if baseline.eval.tta is not None:  # the same weights, one pass: no training needed
        tricks.append(Trick("no_tta", ("eval.tta=null",), "-TTA (same weights)"))
        for run in (r for r in runs if r.name == "baseline"):
            results[("no_tta", run.seed)] = rescore(Path(run.run_dir), ["eval.tta=null"])

    rows = summarize(results, tricks, seeds)
    gt_images = len(list((patches / "heldout").glob("*.xml")))
    table = format_table(rows, seeds, args.iters)
    scored = "validation" if args.validation else "held-out"
    print(
        f"\n`{RECIPE}`, batch {baseline.data.batch_size}, scored on the {gt_images} {scored} "
        f"patches of {patches}\n"
    )
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ablation.md").write_text(table + "\n")
    per_run = [{"name": n, "seed": s, **m} for (n, s), m in results.items()]
    (out / "ablation.json").write_text(json.dumps({"rows": rows, "runs": per_run}, indent=1))
    print(f"bar chart: {plot_ablation(rows, len(seeds), out / 'ablation.png')}")


if __name__ == "__main__":
    main()
