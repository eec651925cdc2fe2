"""``tunedet fit`` against fixed recipes on the suite's datasets (benchmarks/fit_suite.py),
at the same wall budget, scored on each dataset's test split (never seen by fit).

Rows per dataset and seed:

- ``fit``: ``tunedet fit TRAIN --budget B`` (no knob set by hand); the budget covers
  everything up to its final model (split, probes, LR finder, search, training);
  scored with the TTA its rule kept;
- ``demo``: ``retinanet/demo`` unchanged but for the data, ``model.num_classes`` and the
  length: ``train.max_minutes=B`` with no ``max_iters`` (its schedule fills the budget);
- ``hand``: the best hand-written tunedet recipe for that data (``trees/patches_fast``
  for the trees; for the synthetic shapes it is the demo itself, so the row is left out),
  also filling the budget, scored with its own ``eval.tta``;
- ``yolov8n`` (with ``--yolo-python``): ultralytics YOLOv8n from ``yolov8n.yaml`` (no
  pretrained weights) with its defaults (``time=`` B, which re-plans its epochs), imgsz
  ``--yolo-imgsz``, scored by the same COCO evaluator.

    python benchmarks/fit_table.py --root /tmp/fit_suite --budget 15 --seeds 0,1 \\
        [--only trees,digits] [--yolo-python /tmp/yv/bin/python] [--threads 2]

Each finished row is kept in its run folder (``row.json``, with the budget and threads it
was measured at) and reused by a later run of the same command, so the table can be
filled over several sessions (``--cached-only`` prints what is kept and runs nothing); a
verdict table per dataset follows the rows.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fit_suite import NAMES, write_suite  # noqa: E402


def coco_spec(ann_file: Path) -> dict:
    return {"type": "coco", "ann_file": str(ann_file), "img_dir": str(ann_file.parent / "images")}


def flow(spec: dict) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in spec.items()) + "}"


def num_classes(ann_file: Path) -> int:
    return len(json.loads(ann_file.read_text())["categories"])


def score(cfg, model, test: Path) -> dict:
    """COCO AP / AP50 of ``model`` on the test split with ``cfg``'s evaluation settings."""
    import torch

    from tunedet.data.build import build_dataset
    from tunedet.engine.build import eval_settings
    from tunedet.engine.evaluator import evaluate_results, predict_dataset

    dataset = build_dataset(coco_spec(test))
    results = predict_dataset(model, dataset, eval_settings(cfg), torch.device("cpu"))
    metrics = evaluate_results(dataset.coco_ground_truth(), results, "coco")
    return {"AP": metrics["AP"], "AP50": metrics["AP50"]}


def run_recipe(
    config: str, paths: dict, run: Path, minutes: float, seed: int, threads: int
) -> dict:
    from tunedet.config.loader import load_config
    from tunedet.engine.trainer import Trainer

    train = coco_spec(paths["train"])
    if config == "trees/patches_fast":  # a VOC recipe: its one class, from the COCO files
        train["classes"] = ["Tree"]
    cfg = load_config(
        config,
        [
            f"data.train={flow(train)}",
            "data.val=null",
            f"model.num_classes={num_classes(paths['train'])}",
            "train.max_iters=null",
            f"train.max_minutes={minutes}",
            "train.eval_every=0",
            "train.ckpt_every=0",
            "train.progress=false",
            "train.resume=false",
            f"seed={seed}",
            f"threads={threads}",
        ],
    )
    start = time.monotonic()
    trainer = Trainer(cfg, run, log=lambda *_: None)
    trainer.train()
    wall = (time.monotonic() - start) / 60
    return {
        **score(cfg, trainer.eval_model, paths["test"]),
        "iters": trainer.iteration,
        "min": wall,
    }


def run_fit(paths: dict, run: Path, minutes: float, seed: int, threads: int) -> dict:
    from tunedet.config.loader import load_config
    from tunedet.engine.build import model_from_checkpoint
    from tunedet.tuning.fit import fit

    start = time.monotonic()
    result = fit(
        paths["train"], budget=minutes, out=run, seed=seed, threads=threads, log=lambda *_: None
    )
    wall = (time.monotonic() - start) / 60
    cfg = load_config(str(result.recipe), ["train.progress=false"])
    model, _ = model_from_checkpoint(result.checkpoint, "cpu", cfg=cfg)  # as tunedet eval
    used = sum(result.timings.values()) / 60
    return {
        **score(cfg, model, paths["test"]),
        "iters": cfg.train.max_iters,
        "min": used,
        "wall": wall,
    }


YOLO_SCRIPT = textwrap.dedent(
    """
    import json, torch
    torch.set_num_threads({threads})
    from ultralytics import YOLO
    model = YOLO("yolov8n.yaml")
    model.train(data={data!r}, imgsz={imgsz}, epochs=10000, time={hours!r}, device="cpu",
                workers=0, seed={seed}, deterministic=False, pretrained=False, amp=False,
                plots=False, val=False, batch=16, project={project!r}, name="yolo",
                exist_ok=True, verbose=False)
    model = YOLO({project!r} + "/yolo/weights/last.pt")
    out = []
    for result in model.predict(source={images!r}, imgsz={imgsz}, conf=0.001, iou=0.7,
                                max_det=300, device="cpu", verbose=False, stream=True):
        b = result.boxes
        out.append({{"file": result.path, "boxes": b.xyxy.tolist(), "scores": b.conf.tolist(),
                    "classes": b.cls.tolist()}})
    json.dump(out, open({result_file!r}, "w"))
    """
)


def run_yolo(
    python: str, paths: dict, run: Path, minutes: float, seed: int, threads: int, imgsz: int
) -> dict:
    from tunedet.evaluation import coco_evaluate

    run.mkdir(parents=True, exist_ok=True)
    images = sorted(str(p) for p in (paths["test"].parent / "images").glob("*.png"))
    result_file = run / "predictions.json"
    script = YOLO_SCRIPT.format(
        threads=threads, imgsz=imgsz, data=str(paths["yolo"]), hours=minutes / 60, seed=seed,
        project=str(run), images=images, result_file=str(result_file),
    )  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "YOLO_OFFLINE": "1"}
    start = time.monotonic()
    subprocess.run([python, "-c", script], check=True, env=env, cwd=run)
    wall = (time.monotonic() - start) / 60
    gt = json.loads(paths["test"].read_text())
    ids = {Path(im["file_name"]).stem: im["id"] for im in gt["images"]}
    results = [
        {
            "image_id": ids[Path(item["file"]).stem],
            "category_id": int(c),
            "bbox": [x0, y0, x1 - x0, y1 - y0],
            "score": s,
        }
        for item in json.loads(result_file.read_text())
        for (x0, y0, x1, y1), s, c in zip(
            item["boxes"], item["scores"], item["classes"], strict=True
        )
    ]
    metrics = coco_evaluate(gt, results)
    return {"AP": metrics["AP"], "AP50": metrics["AP50"], "iters": None, "min": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("/tmp/fit_suite"))
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/fit_table"))
    parser.add_argument("--budget", type=float, default=15.0, help="wall minutes per run")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(NAMES)}")
    parser.add_argument("--methods", default="fit,demo,hand,yolov8n")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--yolo-python", help="a Python with ultralytics (else no YOLOv8n rows)")
    parser.add_argument("--yolo-imgsz", type=int, default=416)
    parser.add_argument(
        "--rank-check",
        action="store_true",
        help="train each fit run's trials again at its final length and print Spearman's rho",
    )
    parser.add_argument(
        "--cached-only",
        action="store_true",
        help="print the rows measured before (row.json) and run nothing",
    )
    args = parser.parse_args()
    names = args.only.split(",") if args.only else NAMES
    methods = args.methods.split(",")
    suite = write_suite(args.root, names)
    print("| dataset | seed | method | AP | AP50 | iterations | minutes |", flush=True)
    print("|---|---|---|---|---|---|---|", flush=True)
    rows = []
    for name, paths in suite.items():
        for seed in (int(s) for s in args.seeds.split(",")):
            for method in methods:
                row = cached_row(method, name, paths, seed, args)
                if row is None:
                    continue
                rows.append({**row, "dataset": name, "seed": seed, "method": method})
                iters = "" if row["iters"] is None else str(row["iters"])
                print(
                    f"| {name} | {seed} | {method} | {row['AP']:.3f} | {row['AP50']:.3f} | "
                    f"{iters} | {row['min']:.1f} |",
                    flush=True,
                )
                if row.get("note"):
                    print(f"<!-- {name} seed {seed}: {row['note']} -->", flush=True)
    print_verdict(rows)
    print_seed_spread(rows)
    if args.rank_check:
        print_rank_check(rows, args)


def cached_row(method: str, name: str, paths: dict, seed: int, args: argparse.Namespace):
    """A row measured before at this budget and thread count (``row.json`` in its run
    folder, so the table can be filled over several sessions), else measured now."""
    cache = args.work_dir / name / str(seed) / method / "row.json"
    key = {"budget": args.budget, "threads": args.threads}
    if cache.exists():
        saved = json.loads(cache.read_text())
        if saved.get("key") == key:
            return saved["row"]
    if args.cached_only:
        return None
    row = run_method(method, name, paths, seed, args)
    if row is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"key": key, "row": row}))
    return row


def print_verdict(rows: list[dict]) -> None:
    """The issue's targets per dataset (means over the seeds run): fit ≥ demo, fit within
    5 % of the hand recipe, fit ≥ YOLOv8n; and fit / YOLOv8n AP over the datasets."""
    means: dict[tuple[str, str], dict[str, float]] = {}
    for dataset, method in {(r["dataset"], r["method"]) for r in rows}:
        mine = [r for r in rows if r["dataset"] == dataset and r["method"] == method]
        means[dataset, method] = {
            key: sum(r[key] for r in mine) / len(mine) for key in ("AP", "AP50")
        }
    print(
        "\n| dataset | fit AP | ≥ demo | within 5 % of hand | ≥ YOLOv8n | fit / YOLOv8n AP "
        "| fit / YOLOv8n AP50 |"
    )
    print("|---|---|---|---|---|---|---|")
    ratios = []
    for dataset in sorted({r["dataset"] for r in rows}):
        fit = means.get((dataset, "fit"))
        if fit is None:
            continue
        checks = []
        for method, factor in (("demo", 1.0), ("hand", 0.95), ("yolov8n", 1.0)):
            other = means.get((dataset, method))
            checks.append(
                "—" if other is None else "yes" if fit["AP"] >= factor * other["AP"] else "no"
            )
        ratio = ratio50 = ""
        yolo = means.get((dataset, "yolov8n"))
        if yolo is not None and yolo["AP"] > 0:
            ratios.append(fit["AP"] / yolo["AP"])
            ratio = f"{ratios[-1]:.2f}"
        if yolo is not None and yolo["AP50"] > 0:
            ratio50 = f"{fit['AP50'] / yolo['AP50']:.2f}"
        print(f"| {dataset} | {fit['AP']:.3f} | {' | '.join(checks)} | {ratio} | {ratio50} |")
    if ratios:
        print(
            f"\nfit / YOLOv8n AP over {len(ratios)} datasets: mean {sum(ratios) / len(ratios):.2f}, "
            f"median {statistics.median(ratios):.2f} (a dataset where YOLOv8n learned almost nothing dominates the "
            "mean)"
        )


def print_seed_spread(rows: list[dict]) -> None:
    """Mean ± sample std over the seeds run, per dataset and method, and fit / YOLOv8n
    AP50 in each seed (the trees target holds in both seeds or not at all)."""
    seeds = sorted({r["seed"] for r in rows})
    if len(seeds) < 2:
        return
    print(
        "\n| dataset | method | seeds | AP mean ± std | AP50 mean ± std | fit / YOLOv8n AP50 per seed |"
    )
    print("|---|---|---|---|---|---|")
    by_key = {(r["dataset"], r["method"], r["seed"]): r for r in rows}
    for dataset in sorted({r["dataset"] for r in rows}):
        for method in ("fit", "demo", "hand", "yolov8n"):
            mine = [by_key[dataset, method, s] for s in seeds if (dataset, method, s) in by_key]
            if not mine:
                continue
            cells = []
            for key in ("AP", "AP50"):
                values = [r[key] for r in mine]
                std = f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else ""
                cells.append(f"{statistics.fmean(values):.3f}{std}")
            ratios = ""
            if method == "fit":
                ratios = ", ".join(
                    f"seed {s}: {by_key[dataset, 'fit', s]['AP50'] / yolo['AP50']:.2f}"
                    for s in seeds
                    if (dataset, "fit", s) in by_key
                    and (yolo := by_key.get((dataset, "yolov8n", s))) is not None
                    and yolo["AP50"] > 0
                )
            print(f"| {dataset} | {method} | {len(mine)} | {' | '.join(cells)} | {ratios} |")


def print_rank_check(rows: list[dict], args: argparse.Namespace) -> None:
    """Spearman's ρ between each fit run's short trials and the same recipes trained at
    the final run's length (``tunedet.tuning.fit.rank_agreement``; kept in the run's
    ``fit.json``, measured once)."""
    from tunedet.tuning.fit import rank_agreement

    print("\n| dataset | seed | trials | iterations | Spearman ρ |")
    print("|---|---|---|---|---|")
    for row in rows:
        if row["method"] != "fit":
            continue
        run = args.work_dir / row["dataset"] / str(row["seed"]) / "fit"
        rank = json.loads((run / "fit.json").read_text()).get("rank_agreement")
        if rank is None and args.cached_only:
            continue
        if rank is None:
            rank = rank_agreement(run, log=lambda *_: None)
        print(
            f"| {row['dataset']} | {row['seed']} | {len(rank['runs'])} | {rank['iterations']} | "
            f"{rank['spearman']:.2f} |",
            flush=True,
        )


def run_method(method: str, name: str, paths: dict, seed: int, args: argparse.Namespace):
    """One row's figures, or None when the method has no row for this dataset."""
    run = args.work_dir / name / str(seed) / method
    if method == "fit":
        return run_fit(paths, run, args.budget, seed, args.threads)
    if method == "demo":
        return run_recipe("retinanet/demo", paths, run, args.budget, seed, args.threads)
    if method == "hand":
        hand = paths["hand"]
        if not hand or hand == "retinanet/demo":
            return None
        return run_recipe(hand, paths, run, args.budget, seed, args.threads)
    if method == "yolov8n":
        if not args.yolo_python:
            return None
        return run_yolo(
            args.yolo_python, paths, run, args.budget, seed, args.threads, args.yolo_imgsz
        )
    raise SystemExit(f"unknown method {method!r} (fit, demo, hand, yolov8n)")


if __name__ == "__main__":
    main()
