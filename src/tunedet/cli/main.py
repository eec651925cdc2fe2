"""The ``tunedet`` command line.

Every subcommand turns an expected failure (bad config, bad data, bad
checkpoint) into one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

COMMANDS = ("train", "eval", "infer", "evaluate", "demo", "list", "analyze", "data")


def _load(config: str, overrides: list[str]):
    from tunedet.config.loader import load_config

    return load_config(config, overrides)


def run_dir_for(cfg, config: str, work_dir: str | None) -> Path:
    if work_dir:
        return Path(work_dir)
    if cfg.work_dir:
        return Path(cfg.work_dir)
    return Path("runs") / Path(config).stem


def write_run_report(trainer: Any, metrics: dict[str, float]) -> Path:
    """``analysis.report.write_report`` of a finished ``trainer``: its run folder, model
    type and iterations, and the validation set's results and first images by its
    evaluated weights (the EMA when kept)."""
    from tunedet.analysis.report import write_report
    from tunedet.engine.build import eval_loader

    val_set = trainer.val_set
    results = batch = None
    if val_set is not None and len(val_set):
        results = trainer.predict(val_set)
        loader = eval_loader(trainer.cfg, val_set, batch_size=min(8, len(val_set)), num_workers=0)
        batch = next(iter(loader)).to(trainer.device)
    return write_report(
        trainer.run_dir,
        metrics,
        trainer.cfg.model.type,
        trainer.iteration,
        model=trainer.eval_model,
        val_set=val_set,
        val_results=results,
        val_batch=batch,
    )


def cmd_train(args: argparse.Namespace) -> int:
    """Train; under ``torchrun`` (``WORLD_SIZE`` > 1) every process runs this, joined in one
    process group (gloo on CPU, NCCL on CUDA), and rank 0 alone prints and reports."""
    from tunedet.engine import distributed
    from tunedet.engine.build import resolve_device
    from tunedet.engine.interrupt import TrainingInterrupted
    from tunedet.engine.trainer import Trainer

    cfg = _load(args.config, args.overrides)
    run_dir = run_dir_for(cfg, args.config, args.work_dir)
    check_run_dir(run_dir, checkpoints=False)  # the folder given; the one chosen below
    distributed.init_from_env(resolve_device(cfg.device))
    try:
        trainer = Trainer(cfg, run_dir, must_resume=args.resume)
        check_run_dir(Path(trainer.run_dir))  # before any training
        if trainer.is_main:
            print(f"run directory: {trainer.run_dir} ({trainer.world_size} process(es))")
        try:
            metrics = trainer.train()
        except TrainingInterrupted as stop:
            if trainer.is_main:
                print(f"tunedet train: {stop}", file=sys.stderr)
            return stop.exit_code
        if trainer.is_main:
            if metrics:
                print(json.dumps({k: round(v, 4) for k, v in metrics.items()}))
            print(f"report: {write_run_report(trainer, metrics)}")
    finally:
        distributed.shutdown()
    return 0


def _model_from_checkpoint(cfg, checkpoint: str):
    """``(model, device)``: ``engine.build.model_on_device`` (EMA weights when the run kept
    them, as training evaluates)."""
    from tunedet.engine.build import model_on_device

    return model_on_device(cfg, checkpoint)


def _print_evaluation(
    report: dict,
    args: argparse.Namespace,
    coco_stats: dict | None,
    per_class: tuple = (),
    segm_stats: dict | None = None,
) -> None:
    """Print an evaluation (JSON, or tables: COCO stats and `per_class` = (AP, AP50) by class
    when `coco_stats` is given, a mask detector's `segm_stats`, then the operating-point
    metrics) and write --out files."""
    from tunedet.evaluation import (
        format_coco_table,
        format_detection_metrics,
        format_per_class_ap,
        to_json_ready,
        write_evaluation,
    )

    if args.out:
        paths = write_evaluation(report, args.out, report["detection"])
    if args.json:
        print(json.dumps(to_json_ready(report)))
    else:
        if coco_stats is not None:
            print(format_coco_table(coco_stats))
            print()
            print(format_per_class_ap(*per_class))
            if segm_stats is not None:
                print()
                print("masks (segm):")
                print(format_coco_table(segm_stats))
        else:
            rest = {k: v for k, v in report.items() if k not in ("detection", "counts")}
            print(json.dumps(to_json_ready(rest), indent=2))
        print()
        print(format_detection_metrics(report["detection"]))
    if args.out:
        print(f"wrote {', '.join(str(p) for p in paths.values())}", file=sys.stderr)


def cmd_eval(args: argparse.Namespace) -> int:
    from tunedet.data.build import build_dataset
    from tunedet.engine.build import config_for_checkpoint, eval_settings
    from tunedet.engine.evaluator import evaluate_results, predict_dataset
    from tunedet.evaluation import detection_metrics
    from tunedet.evaluation.coco import (
        coco_evaluate,
        per_class_ap_from_eval,
        run_coco_eval,
        stats_from_eval,
    )

    checkpoint, config = checkpoint_and_config(args)
    if args.save_json:
        refuse_existing(Path(args.save_json), args.force, checkpoint)
    cfg = config_for_checkpoint(checkpoint, config, args.overrides)
    if args.voc_dir:
        # Keep the recipe's VOC settings (tiling, class renames) and read another folder.
        keep = (
            cfg.data.val.model_dump()
            if cfg.data.val is not None and cfg.data.val.type == "voc"
            else {}
        )
        keep.update(type="voc", root=args.voc_dir, files=None, exclude=None)
        overrides = [*args.overrides, f"data.val={json.dumps(keep)}"]
        cfg = config_for_checkpoint(checkpoint, config, overrides)
    if cfg.data.val is None:
        raise ValueError("the config has no data.val; pass --voc-dir or data.val=...")
    model, device = _model_from_checkpoint(cfg, checkpoint)
    dataset = build_dataset(cfg.data.val)
    results = predict_dataset(model, dataset, eval_settings(cfg), device)
    if args.save_json:
        _write_json(Path(args.save_json), coco_results_in_file_ids(results, cfg.data.val, dataset))
        print(
            f"wrote {len(results)} detections (COCO results) to {args.save_json}", file=sys.stderr
        )
    gt = dataset.coco_ground_truth()
    # The config's metric at the top level (as training logs it), then the details.
    if cfg.eval.metric == "coco":
        evaluator = run_coco_eval(gt, results)
        report: dict = stats_from_eval(evaluator)
        report["per_class_ap"] = per_class_ap_from_eval(evaluator)
        report["per_class_ap50"] = per_class_ap_from_eval(evaluator, iou_thr=0.5)
        coco_stats = stats_from_eval(evaluator)
    else:
        report, coco_stats = dict(evaluate_results(gt, results, cfg.eval.metric)), None
    segm_stats = None
    if getattr(model, "needs_masks", False):  # a mask detector: COCO's mask stats too
        segm_stats = coco_evaluate(gt, results, iou_type="segm")
        report.update({f"segm_{name}": value for name, value in segm_stats.items()})
    report["detection"] = detection_metrics(gt, results, args.score_thr, args.recall)
    per_class = (report.get("per_class_ap", {}), report.get("per_class_ap50", {}))
    _print_evaluation(report, args, coco_stats, per_class, segm_stats)
    return 0


def coco_results_in_file_ids(results: list[dict], spec, dataset) -> list[dict]:
    """``results`` (category id = 0-based label, as the dataset's own GT numbers them) with
    the category ids of the annotation file for a COCO dataset (matched by class name), so
    that they load against that file (pycocotools' ``loadRes``); other datasets' ids stay
    the labels."""
    if getattr(spec, "type", None) != "coco":
        return results
    from tunedet.data.coco import load_coco_json

    file_ids: dict[str, int] = {}
    for category in load_coco_json(spec.ann_file).get("categories") or []:
        file_ids.setdefault(str(category["name"]), int(category["id"]))
    ids = [file_ids[name] for name in dataset.classes]
    return [{**r, "category_id": ids[r["category_id"]]} for r in results]


def cmd_infer(args: argparse.Namespace) -> int:
    from tunedet.analysis.draw import draw_detections
    from tunedet.api import Detector, load_model, read_rgb
    from tunedet.data.build import IMAGE_SUFFIXES
    from tunedet.engine.amp import check_amp

    checkpoint, config = checkpoint_and_config(args)
    files: list[Path] = []
    for name in args.images:
        path = Path(name)
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such image file or folder")
    model, cfg, device = load_model(checkpoint, config, args.overrides)
    check_amp(args.amp, device, name="--amp")  # the flag's name in the message
    detector = Detector(model, cfg, device, amp=args.amp)
    out_dir = new_numbered_dir(Path(args.out))
    found = []
    for path in files:
        image = read_rgb(path)
        detections = detector.predict(image, score_thr=args.score_thr)[0]
        found.append((path, image.shape[:2], detections))
        if not args.no_draw:
            draw_detections(
                image,
                detections.boxes.tolist(),
                detections.scores.tolist(),
                detections.labels.tolist(),
                detector.class_names or None,
            ).save(out_dir / f"{path.stem}.png")
    written = write_detections(out_dir, found, detector.class_names, args.format)
    print(f"wrote {len(found)} images ({args.format}: {written.name}) to {out_dir}")
    return 0


def new_numbered_dir(base: Path) -> Path:
    """Create and return ``base``, or ``base2``, ``base3``, ... the first that does not exist
    (``mkdir`` without ``exist_ok``: two runs at once never share one); a name ending in a
    digit takes ``_`` as run directories do (``exp1``, ``exp1_2``)."""
    from tunedet.engine.run_dir import numbered_path

    base.parent.mkdir(parents=True, exist_ok=True)
    for number in range(1, 10_000):
        path = numbered_path(base, number)
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise ValueError(f"{base}: 9999 numbered directories already exist")


def write_detections(out_dir: Path, found: list, class_names: list[str], fmt: str) -> Path:
    """Write ``found = [(path, (height, width), Detections)]`` in ``out_dir`` as

    - ``json``: ``detections.json``, per image ``file``, ``boxes`` xyxy px, ``scores``,
      0-based ``labels`` and their ``names``;
    - ``coco``: ``annotations.json``, a COCO file (``images`` with ``file_name``, ``width``,
      ``height``; ``categories`` with id ``label + 1``; ``annotations`` with ``bbox``
      [x, y, w, h] and ``score``);
    - ``csv``: ``detections.csv``, one row per box: file, x1, y1, x2, y2, score, label, name;
    - ``yolo``: ``labels/<image stem>.txt``, one line per box ``label cx cy w h score``
      (normalised by the image's size, as ultralytics' ``save_txt`` with ``save_conf``),
      and ``classes.txt``.
    Returns the file (or folder) written."""
    import csv

    def name(label: int) -> str:
        return class_names[label] if 0 <= label < len(class_names) else str(label)

    if fmt == "json":
        rows = [
            {
                "file": str(path),
                "boxes": d.boxes.tolist(),
                "scores": d.scores.tolist(),
                "labels": d.labels.tolist(),
                "names": list(d.names),
            }
            for path, _, d in found
        ]
        return _write_json(out_dir / "detections.json", rows)
    if fmt == "coco":
        num_labels = max(
            [len(class_names), *(int(d.labels.max()) + 1 for *_, d in found if len(d))]
        )
        coco = {
            "images": [
                {"id": i, "file_name": str(path), "height": int(h), "width": int(w)}
                for i, (path, (h, w), _) in enumerate(found, start=1)
            ],
            "categories": [{"id": label + 1, "name": name(label)} for label in range(num_labels)],
            "annotations": [],
        }
        for image_id, (_, _, d) in enumerate(found, start=1):
            for box, score, label in zip(
                d.boxes.tolist(), d.scores.tolist(), d.labels.tolist(), strict=True
            ):
                w, h = box[2] - box[0], box[3] - box[1]
                coco["annotations"].append(
                    {
                        "id": len(coco["annotations"]) + 1,
                        "image_id": image_id,
                        "category_id": int(label) + 1,
                        "bbox": [box[0], box[1], w, h],
                        "area": w * h,
                        "iscrowd": 0,
                        "score": score,
                    }
                )
        return _write_json(out_dir / "annotations.json", coco)
    if fmt == "csv":
        path = out_dir / "detections.csv"
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["file", "x1", "y1", "x2", "y2", "score", "label", "name"])
            for file, _, d in found:
                for box, score, label in zip(
                    d.boxes.tolist(), d.scores.tolist(), d.labels.tolist(), strict=True
                ):
                    writer.writerow(
                        [str(file), *(f"{v:.2f}" for v in box), f"{score:.5f}", label, name(label)]
                    )
        return path
    if fmt == "yolo":
        folder = out_dir / "labels"
        folder.mkdir()
        for file, (h, w), d in found:
            lines = [
                f"{label} {(b[0] + b[2]) / 2 / w:.6f} {(b[1] + b[3]) / 2 / h:.6f} "
                f"{(b[2] - b[0]) / w:.6f} {(b[3] - b[1]) / h:.6f} {score:.5f}"
                for b, score, label in zip(
                    d.boxes.tolist(), d.scores.tolist(), d.labels.tolist(), strict=True
                )
            ]
            (folder / f"{Path(file).stem}.txt").write_text("".join(f"{line}\n" for line in lines))
        (out_dir / "classes.txt").write_text("".join(f"{n}\n" for n in class_names))
        return folder
    raise ValueError(f"unknown detections format '{fmt}' (choices: json, coco, csv, yolo)")


def _write_json(path: Path, value) -> Path:
    """Write ``value`` as JSON to ``path`` through a temporary file (whole or not at all)."""
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(value))
    os.replace(partial, path)
    return path


def refuse_existing(path: Path, force: bool, checkpoint: str | None = None) -> None:
    """Refuse to write ``path`` over the checkpoint (ever) or over any existing file
    (unless ``force``)."""
    if checkpoint is not None and path.exists() and path.resolve() == Path(checkpoint).resolve():
        raise ValueError(f"{path}: is the checkpoint itself; choose another output path")
    if path.exists() and not force:
        raise ValueError(f"{path}: already exists; pass --force to overwrite it")


def checkpoint_and_config(args: argparse.Namespace) -> tuple[str, str | None]:
    """``(checkpoint, config or None)`` from ``TARGET [--checkpoint CKPT] [--config CFG]``:
    ``tunedet CMD CKPT`` (the checkpoint's own config, or --config) or the older
    ``tunedet CMD CONFIG --checkpoint CKPT``."""
    if args.checkpoint:
        if args.config:
            raise ValueError(
                "give the config once: CONFIG --checkpoint CKPT, or CKPT --config CONFIG"
            )
        return args.checkpoint, args.target
    if Path(args.target).suffix.lower() in (".yaml", ".yml"):
        raise ValueError(f"{args.target} is a config: pass the checkpoint too (--checkpoint CKPT)")
    return args.target, args.config


def cmd_evaluate(args: argparse.Namespace) -> int:
    from tunedet.evaluation import evaluate_files

    report = evaluate_files(args.gt, args.dets, args.metric, args.score_thr, args.recall)
    coco = args.metric == "coco"
    per_class = (report["per_class"], report["per_class_ap50"]) if coco else ()
    _print_evaluation(report, args, report["stats"] if coco else None, per_class)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from tunedet.engine.trainer import Trainer

    cfg = _load("retinanet/demo", args.overrides)
    run_dir = Path(args.work_dir or "runs/demo")
    start = time.monotonic()
    trainer = Trainer(cfg, run_dir)
    print(
        f"tunedet demo: training {cfg.model.type} on the built-in synthetic shapes "
        f"in {trainer.run_dir}"
    )
    metrics = trainer.train()
    report = write_run_report(trainer, metrics)
    minutes = (time.monotonic() - start) / 60
    print(f"demo finished in {minutes:.1f} min: AP={metrics['AP']:.3f} AP50={metrics['AP50']:.3f}")
    print(f"report: {report}")
    return 0


def plural(kind: str) -> str:
    """English plural of a registry kind: ``box_loss`` -> ``box_losses``, ``lr_policy`` ->
    ``lr_policies``, ``head`` -> ``heads``."""
    if kind.endswith(("s", "x", "ch", "sh")):
        return kind + "es"
    if kind.endswith("y") and kind[-2:-1] not in "aeiou":
        return kind[:-1] + "ies"
    return kind + "s"


def cmd_list(args: argparse.Namespace) -> int:
    from tunedet.config.registry import REGISTRIES
    from tunedet.config.schema import import_components

    import_components()
    kinds = {"config": "configs", "configs": "configs"}
    for k in REGISTRIES:
        kinds.update({k: k, plural(k): k})
    if args.kind is None:
        print("kinds: " + ", ".join(sorted({plural(k) for k in REGISTRIES} | {"configs"})))
        return 0
    kind = kinds.get(args.kind.strip().lower().replace("-", "_"))
    if kind is None:
        from tunedet.config.registry import unknown_name_message

        raise ValueError(unknown_name_message("kind", args.kind, sorted(kinds)))
    if kind == "configs":
        from tunedet.config.loader import BUILTIN_CONFIG_DIR

        for path in sorted(BUILTIN_CONFIG_DIR.rglob("*.yaml")):
            print(path.relative_to(BUILTIN_CONFIG_DIR).with_suffix(""))
        return 0
    for name in REGISTRIES[kind].names():
        entry = REGISTRIES[kind].get(name)
        print(f"{name:<18} {entry.description}")
    return 0


def cmd_data_split(args: argparse.Namespace) -> int:
    from tunedet.data.split import split_dataset

    names = [n.strip() for n in args.names.split(",")] if args.names else None
    counts = split_dataset(
        args.source, args.out, args.val, args.seed, args.img_dir, names, args.copy
    )
    print(
        f"wrote {counts['train']} train and {counts['val']} val images to {args.out} "
        f"(train with data={args.out})"
    )
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from tunedet.data.coco_writer import write_coco
    from tunedet.data.synthetic import SyntheticShapes

    dataset = SyntheticShapes(
        num_images=args.num_images, image_size=args.image_size, seed=args.seed
    )
    write_coco(dataset, args.out)
    print(f"wrote {len(dataset)} images and annotations.json to {args.out}")
    return 0


def _add_evaluation_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--out", metavar="DIR", help="write metrics.json, pr_curves.png, confusion_matrix.png"
    )
    p.add_argument(
        "--score-thr", type=float, default=0.5, help="score threshold of P/R/F1/FPPI (0.5)"
    )
    p.add_argument(
        "--recall", type=float, default=0.9, help="report the precision at this recall (0.9)"
    )


def add_checkpoint_target(p: argparse.ArgumentParser) -> None:
    """``TARGET`` is a checkpoint (its own config is used, or --config), or a config with
    ``--checkpoint CKPT`` (the older form)."""
    p.add_argument("target", metavar="CKPT", help="checkpoint (or a config with --checkpoint)")
    p.add_argument("--checkpoint", help="the checkpoint, when CKPT is a config")
    p.add_argument("--config", help="config to use instead of the checkpoint's own")


def _add_command_modules(sub: argparse._SubParsersAction) -> None:
    """Subcommands that live in their own module: each module of ``tunedet.cli`` (besides
    ``main`` and ``analyze``) that defines ``add_command(subparsers)`` adds one parser and
    sets ``func(args) -> int`` as its default (``tune``, ``ablate``, ``export``, ...)."""
    import importlib
    import pkgutil

    import tunedet.cli

    for info in sorted(pkgutil.iter_modules(tunedet.cli.__path__), key=lambda m: m.name):
        if info.name in ("main", "analyze"):
            continue
        module = importlib.import_module(f"tunedet.cli.{info.name}")
        add = getattr(module, "add_command", None)
        if add is not None:
            add(sub)


def version_line() -> str:
    """``tunedet X (torch Y, torchvision Z)``, read from the installed metadata (no import)."""
    from importlib import metadata

    import tunedet

    def installed(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    return (
        f"tunedet {tunedet.__version__} "
        f"(torch {installed('torch')}, torchvision {installed('torchvision')})"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tunedet",
        description="Object-detection training where every knob is a typed config key.",
    )
    parser.add_argument("--version", action="version", version=version_line())
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train from a config (path or built-in name)")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="dotted overrides: optim.lr=0.02 data.batch_size=8")
    p.add_argument(
        "--work-dir",
        help="run directory (default: work_dir of the config, else runs/<config name>); a "
        "folder holding a run of another config gives a numbered one (runs/demo2)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in the run directory; refused when its config differs",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint on its config's validation data")
    add_checkpoint_target(p)
    p.add_argument("overrides", nargs="*")
    p.add_argument("--voc-dir", help="evaluate on this Pascal VOC folder instead of data.val")
    p.add_argument("--json", action="store_true", help="print metrics as JSON")
    p.add_argument(
        "--save-json", metavar="PATH", help="write the detections as a COCO results file"
    )
    p.add_argument("--force", action="store_true", help="overwrite an existing --save-json file")
    _add_evaluation_options(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("infer", help="detect objects in images; writes detections and drawn PNGs")
    add_checkpoint_target(p)
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument(
        "--out",
        default="runs/infer",
        help="output folder; a new numbered one (runs/infer2, ...) when it exists",
    )
    p.add_argument(
        "--format",
        choices=["json", "coco", "csv", "yolo"],
        default="json",
        help="detections file: json (default), coco, csv or yolo txt",
    )
    p.add_argument("--score-thr", type=float, default=0.3)
    p.add_argument("--no-draw", action="store_true", help="do not write drawn PNGs")
    p.add_argument(
        "--amp",
        choices=["none", "bf16", "fp16"],
        default="none",
        help="run the network under autocast: bf16 (CPU or CUDA) or fp16 (CUDA); "
        "default none (float32)",
    )
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=cmd_infer)

    p = sub.add_parser("evaluate", help="score a COCO results file against COCO ground truth")
    p.add_argument("--gt", required=True)
    p.add_argument("--dets", required=True)
    p.add_argument("--metric", choices=["coco", "voc07", "voc12"], default="coco")
    p.add_argument("--json", action="store_true", help="print metrics as JSON")
    _add_evaluation_options(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("demo", help="train and evaluate the demo recipe on synthetic shapes")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--work-dir")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("list", help="list registered components of a kind (assigners, ...)")
    p.add_argument("kind", nargs="?")
    p.set_defaults(func=cmd_list)

    from tunedet.cli.analyze import add_analyze_parser

    add_analyze_parser(sub)

    _add_command_modules(sub)

    p = sub.add_parser("data", help="dataset utilities")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    q = data_sub.add_parser("synth", help="write the synthetic dataset as PNG images + COCO JSON")
    q.add_argument("out")
    q.add_argument("--num-images", type=int, default=64)
    q.add_argument("--image-size", type=int, default=128)
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(func=cmd_data)
    q = data_sub.add_parser(
        "split", help="seeded train/val split of a COCO file, VOC folder or YOLO folder"
    )
    q.add_argument("source", help="COCO .json, VOC folder, YOLO folder or ultralytics data.yaml")
    q.add_argument("out", help="new folder: OUT/train + OUT/val (data=OUT reads it)")
    q.add_argument("--val", type=float, default=0.2, help="fraction of images for val (0.2)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--img-dir", help="COCO: the images' folder (default: the JSON's folder)")
    q.add_argument("--names", help="YOLO folder without data.yaml: class names, a,b,...")
    q.add_argument("--copy", action="store_true", help="copy the images (default: symlinks)")
    q.set_defaults(func=cmd_data_split)
    return parser


MAX_MESSAGE = 400  # characters of an error's one line


def is_out_of_memory(error: BaseException) -> bool:
    """A failed allocation: MemoryError, or torch's RuntimeError for CPU and CUDA memory."""
    text = str(error).lower()
    return isinstance(error, MemoryError) or any(
        key in text for key in ("out of memory", "can't allocate memory", "not enough memory")
    )


def one_line_error(error: BaseException) -> str:
    """The message of an expected error on one line: an ``OSError`` as ``PATH: reason``, a
    ``RecursionError`` and memory errors in words, the first line of anything else, each cut
    to ``MAX_MESSAGE`` characters."""
    if isinstance(error, RecursionError):
        text = "the input is nested too deeply to read (Python's recursion limit)"
    elif is_out_of_memory(error):
        first = (str(error).strip().splitlines() or [""])[0]
        text = f"out of memory{': ' + first if first else ''}; use smaller images, batch or model"
    elif isinstance(error, OSError) and error.strerror:
        where = f"{error.filename}: " if error.filename is not None else ""
        other = f" -> {error.filename2}" if error.filename2 is not None else ""
        text = f"{where}{error.strerror}{other}"
        if isinstance(error, (FileExistsError, NotADirectoryError)):
            text += " (a file stands where a folder is needed)"
    else:
        text = (str(error).strip().splitlines() or [""])[0] or type(error).__name__
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def check_run_dir(run_dir: Path, checkpoints: bool = True) -> None:
    """Refuse, before any training, a run directory that cannot hold the run: a file in
    place of the folder, of a parent or (``checkpoints``) of ``checkpoints/``, or a folder
    without write permission (otherwise found at the first checkpoint, after the training
    it loses)."""
    import os

    folders = (run_dir, *run_dir.parents)
    for folder in (run_dir / "checkpoints", *folders) if checkpoints else folders:
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"{folder} is a file, not a folder: pick another --work-dir")
    existing = next(p for p in (run_dir, *run_dir.parents, Path(".")) if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(13, "no write permission for the run directory", str(existing))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse stops filling the ``overrides`` positional at the first option, so
    # ``key=value`` overrides given after an option (``--checkpoint X a.b=1``) land here.
    stray = [
        a for a in extra if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")
    ]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    from tunedet.config.loader import ConfigError
    from tunedet.engine.checkpoint import CheckpointError
    from tunedet.engine.finite_guard import NonFiniteLossError
    from tunedet.engine.interrupt import TrainingInterrupted

    expected = (
        ConfigError,
        CheckpointError,
        NonFiniteLossError,
        ValueError,
        OSError,  # and its family: permissions, a file where a folder should be, a full disk
        RecursionError,  # input nested deeper than Python's stack
        MemoryError,
    )
    try:
        return args.func(args)
    except expected as error:
        print(f"tunedet {args.command}: error: {one_line_error(error)}", file=sys.stderr)
        return 2
    except RuntimeError as error:  # torch reports a failed allocation as a RuntimeError
        if not is_out_of_memory(error):
            raise
        print(f"tunedet {args.command}: error: {one_line_error(error)}", file=sys.stderr)
        return 2
    except TrainingInterrupted as stop:  # where the command itself does not say more (fit)
        print(f"tunedet {args.command}: {stop}", file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt as stop:  # trial workers' interruption carries its signal
        print(f"tunedet {args.command}: interrupted", file=sys.stderr)
        return getattr(stop, "exit_code", 130)


if __name__ == "__main__":
    sys.exit(main())
