"""Inference latency and throughput of every shipped ``*/demo`` config, and of ultralytics'
YOLOv8n exported to ONNX at the same image size, on this machine's CPU.

    python benchmarks/inference_table.py [--threads 2] [--batch 16] [--repeats 20]
        [--score-thr 0.0] [--only retinanet,fcos] [--checkpoint retinanet/demo=CKPT]
        [--yolo-python /tmp/yv/bin/python] [--quick]

Per config, each path gets one image (batch 1: median milliseconds over ``--repeats``
calls) and one batch of ``--batch`` images (median img/s over a quarter as many calls),
timed in turns (round-robin over the paths, so machine noise hits them alike):

- ``eager fp32``: ``detector.predict(images, image_sizes)`` under ``torch.inference_mode``
  on the config's validation images (its val transforms already applied);
- ``eager bf16``: the same under ``torch.autocast(cpu, bfloat16)`` (post-processing
  casts back to float32);
- ``ORT raw``: the dense network exported as ``tunedet export --raw`` writes it
  (``deploy/export.py``) run in ONNX Runtime, post-processing in torch; checked equal to
  eager (count, labels, boxes and scores within 1e-3) before timing;
- ``ORT e2e``: the end-to-end graph of ``tunedet export`` (``deploy/end_to_end.py``:
  ``uint8 (H, W, 3)`` image in, resize + normalisation + network + decoding + NMS, final
  boxes out), one image per call (a batch is its images one after another); checked
  against eager on the first image.

A cell reads ``n/a`` where a detector has no such path, with the reason under the
table. Weights are random (the config's own initialisation, seed fixed) unless
``--checkpoint CONFIG=PATH`` gives a trained one; latency depends on the weights only
through the number of boxes that reach NMS, so every ``score_thr`` in the model is set
to ``--score-thr`` (default 0: every candidate passes, the detectors' ``max_dets`` cap
applies; the table's ``dets/img`` column shows how many came out).

YOLOv8n (ultralytics, AGPL, a benchmark-only dependency never imported by tunedet) is
built from ``yolov8n.yaml`` (80 classes, random init: pretrained weights need a download)
and exported by ultralytics' own exporter to ONNX at the demos' image size in a
subprocess of ``--yolo-python`` (a Python with ``ultralytics`` installed, e.g.
``python3 -m venv /tmp/yv && /tmp/yv/bin/pip install torch==2.14.1 torchvision==0.29.1
ultralytics onnx onnxruntime``); the graphs are then timed in this process's ONNX Runtime
with the same threads, in turns like tunedet's: the ``ORT raw`` column gets YOLOv8n's
dense graph (fixed-shape batch 1 and ``--batch`` graphs, no NMS), the ``ORT e2e`` column
its ``nms=True`` export (batch 1, NMS in the graph at conf ``--score-thr``, IoU 0.7, 100
detections; its float 0..1 input is letterboxed and scaled outside the graph, on random
pixels here).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from tunedet.config.loader import builtin_config_names, load_config
from tunedet.data.build import build_dataset
from tunedet.deploy.export import ExportedDetector, detections_equal, export_dense
from tunedet.engine.amp import autocast
from tunedet.engine.build import build_model, eval_loader, model_from_checkpoint

PATHS = ("eager fp32", "eager bf16", "ORT raw", "ORT e2e")
YOLO = "YOLOv8n (ultralytics)"
YOLO_MAX_DETS = 100  # the demos' max_dets
DEMO_SIZE = 128  # YOLOv8n's input size when no tunedet config runs (--only yolo)


def demo_configs() -> list[str]:
    """The shipped ``<detector>/demo`` configs, sorted."""
    return [name for name in builtin_config_names() if name.endswith("/demo")]


def set_score_threshold(model: torch.nn.Module, score_thr: float) -> int:
    """Set every ``score_thr`` attribute in ``model`` (the detector's, a RoI head's) to
    ``score_thr``; returns how many were set."""
    count = 0
    for module in model.modules():
        if isinstance(getattr(module, "score_thr", None), float):
            module.score_thr = score_thr
            count += 1
    return count


def onnx_session(path: str | Path, threads: int):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def tunedet_paths(
    model: torch.nn.Module,
    cfg,
    images: torch.Tensor,
    image_sizes: torch.Tensor,
    raw_images: list[np.ndarray],
    threads: int,
    work: Path,
) -> tuple[dict[str, Callable[[int], object]], dict[str, str], float]:
    """``(paths, reasons, detections per image)``: per path name a function of ``n`` that
    runs the first ``n`` images; ``reasons`` says why a path is missing."""
    size = int(images.shape[-1])
    paths: dict[str, Callable[[int], object]] = {}
    reasons: dict[str, str] = {}

    def eager(n: int):
        with torch.inference_mode():
            return model.predict(images[:n], image_sizes[:n])

    def bf16(n: int):
        with torch.inference_mode(), autocast("bf16", images.device):
            return model.predict(images[:n], image_sizes[:n])

    reference = eager(len(images))
    detections = sum(len(d["scores"]) for d in reference) / len(images)
    paths["eager fp32"], paths["eager bf16"] = eager, bf16
    try:
        dense = export_dense(model, work / "dense.onnx", "onnx", size)
        runner = ExportedDetector(model, dense, "onnx", size, threads=threads)
        equal, worst = detections_equal(reference, runner.predict(images, image_sizes))
        if not equal:
            raise ValueError(
                f"its torch post-processing gives other detections than eager's "
                f"(max diff {worst:.3g})"
            )
        paths["ORT raw"] = lambda n: runner.predict(images[:n], image_sizes[:n])
    except Exception as error:  # noqa: BLE001 - the table says why and goes on
        reasons["ORT raw"] = one_line(error)
    try:
        paths["ORT e2e"] = end_to_end_path(
            model, cfg, size, raw_images, reference[0], threads, work
        )
    except Exception as error:  # noqa: BLE001
        reasons["ORT e2e"] = one_line(error)
    return paths, reasons, detections


def end_to_end_path(model, cfg, size, raw_images, reference, threads, work: Path):
    """The end-to-end graph as a path, after checking its detections on the first image
    against eager's ``reference``."""
    from tunedet.deploy.end_to_end import export_end_to_end

    mean, std = next(
        (tuple(t.mean), tuple(t.std)) for t in cfg.data.val_transforms if t.type == "normalize"
    )
    path = export_end_to_end(model, work / "e2e.onnx", size, mean, std, {})
    session = onnx_session(path, threads)
    boxes, scores, labels = session.run(None, {"image": raw_images[0]})
    exported = {
        "boxes": torch.from_numpy(boxes),
        "scores": torch.from_numpy(scores),
        "labels": torch.from_numpy(labels),
    }
    equal, worst = detections_equal([reference], [exported])
    if not equal:
        raise ValueError(f"its detections differ from eager's (max diff {worst:.3g})")

    def run(n: int):
        return [session.run(None, {"image": image}) for image in raw_images[:n]]

    return run


def one_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:160]


def time_paths(
    paths: dict[str, Callable[[int], object]], batch: int, repeats: int
) -> dict[str, tuple[float, float]]:
    """Per path ``(median ms of one image, median img/s of a batch)``, timed in turns
    after one untimed call of each."""
    for run in paths.values():
        run(1), run(batch)
    single: dict[str, list[float]] = {name: [] for name in paths}
    batched: dict[str, list[float]] = {name: [] for name in paths}
    for step in range(repeats):
        for name, run in paths.items():
            single[name].append(seconds(lambda run=run: run(1)))
            if step % 4 == 0:
                batched[name].append(seconds(lambda run=run: run(batch)))
    return {
        name: (1000 * statistics.median(single[name]), batch / statistics.median(batched[name]))
        for name in paths
    }


def seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


YOLO_EXPORT = textwrap.dedent(
    """
    import json, os, torch
    torch.set_num_threads({threads})
    import ultralytics
    from ultralytics import YOLO
    out = {{"version": ultralytics.__version__}}
    for name, kwargs in {exports!r}:
        model = YOLO("yolov8n.yaml")
        try:
            path = model.export(format="onnx", imgsz={imgsz}, device="cpu", simplify=False,
                                opset=17, **kwargs)
            target = os.path.abspath(name.replace(" ", "_") + ".onnx")
            os.replace(path, target)  # every export is written as yolov8n.onnx
            out[name] = target
        except Exception as error:
            out[name] = "error: " + type(error).__name__ + ": " + str(error).splitlines()[0]
    json.dump(out, open("result.json", "w"))
    """
)


def export_yolo(
    python: str, imgsz: int, batch: int, conf: float, max_det: int, threads: int, work: Path
) -> dict[str, str]:
    """Export YOLOv8n (random init) with ultralytics' exporter in a subprocess of
    ``python``: returns ``{"version", "dense 1", "dense B", "nms 1"}`` (ONNX paths, or
    ``error: ...``)."""
    work.mkdir(parents=True, exist_ok=True)
    exports = [
        ("dense 1", {"batch": 1}),
        (f"dense {batch}", {"batch": batch}),
        ("nms 1", {"batch": 1, "nms": True, "conf": conf, "iou": 0.7, "max_det": max_det}),
    ]
    script = YOLO_EXPORT.format(threads=threads, exports=exports, imgsz=imgsz)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "YOLO_OFFLINE": "1"}
    done = subprocess.run([python, "-c", script], env=env, cwd=work, capture_output=True, text=True)
    result = work / "result.json"
    if done.returncode != 0 or not result.is_file():
        tail = (done.stderr or done.stdout).strip().splitlines()
        error = f"error: {python} failed ({tail[-1] if tail else done.returncode})"
        return {name: error for name, _ in exports}
    return json.loads(result.read_text())


def yolo_paths(files: dict, imgsz: int, batch: int, threads: int):
    """YOLOv8n's graphs as paths (``ORT raw``: dense batch-1 and batch graphs; ``ORT e2e``:
    the NMS graph one image per call) and the reasons for any missing one."""
    paths, reasons = {}, {}
    rng = np.random.default_rng(0)
    inputs = rng.random((batch, 3, imgsz, imgsz), dtype=np.float32)
    dense = [files.get("dense 1", "error: not exported"), files.get(f"dense {batch}", "")]
    if any(str(f).startswith("error") or not f for f in dense):
        reasons["ORT raw"] = next(str(f) for f in dense if str(f).startswith("error") or not f)
    else:
        one, many = onnx_session(dense[0], threads), onnx_session(dense[1], threads)
        name = one.get_inputs()[0].name

        def raw(n: int):
            session = one if n == 1 else many
            return session.run(None, {name: inputs[:n]})

        paths["ORT raw"] = raw
    nms = str(files.get("nms 1", "error: not exported"))
    if nms.startswith("error"):
        reasons["ORT e2e"] = nms
    else:
        session = onnx_session(nms, threads)
        name = session.get_inputs()[0].name
        paths["ORT e2e"] = lambda n: [
            session.run(None, {name: inputs[i : i + 1]}) for i in range(n)
        ]
    return paths, reasons


def yolo_detections(paths: dict, batch: int) -> str:
    """Detections per image of YOLOv8n's NMS graph (rows of ``(1, max_det, 6)`` with a
    positive score; the rest is padding), or "–" without that graph."""
    if "ORT e2e" not in paths:
        return "–"
    found = [int((out[0][0, :, 4] > 0).sum()) for out in paths["ORT e2e"](batch)]
    return f"{sum(found) / batch:.0f}"


def format_row(name: str, dets: str, timings: dict, reasons: dict, notes: list[str]) -> str:
    cells = [name, dets]
    for path in PATHS:
        if path in timings:
            ms, rate = timings[path]
            cells += [f"{ms:.1f}", f"{rate:.1f}"]
        elif path in reasons:
            notes.append(f"{name}, {path}: {reasons[path]}")
            cells += ["n/a", "n/a"]
        else:  # not a path of this row (YOLOv8n's eager model is not timed)
            cells += ["–", "–"]
    return "| " + " | ".join(cells) + " |"


def parse_checkpoints(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        config, sep, path = item.partition("=")
        if not sep or not path:
            raise ValueError(f"--checkpoint {item!r}: expected CONFIG=PATH")
        out[config] = path
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16, help="images per throughput call")
    parser.add_argument("--repeats", type=int, default=20, help="batch-1 calls per path")
    parser.add_argument("--score-thr", type=float, default=0.0)
    parser.add_argument(
        "--only", help="comma-separated detectors (default: every demo; yolo: YOLOv8n alone)"
    )
    parser.add_argument(
        "--checkpoint", action="append", default=[], metavar="CONFIG=PATH", help="trained weights"
    )
    parser.add_argument("--yolo-python", help="a Python with ultralytics (default: no YOLOv8n)")
    parser.add_argument("--work-dir", help="where the ONNX files go (default: a temporary folder)")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: retinanet and fcos, batch 4, 3 repeats"
    )
    args = parser.parse_args()
    if args.quick:
        args.batch, args.repeats = 4, 3
        args.only = args.only or "retinanet,fcos"
    checkpoints = parse_checkpoints(args.checkpoint)
    if args.yolo_python and not Path(args.yolo_python).is_file():
        parser.error(f"--yolo-python {args.yolo_python}: no such file")
    torch.set_num_threads(args.threads)
    configs = demo_configs()
    if args.only:
        wanted = {name.strip() for name in args.only.split(",")}
        known = {c.split("/")[0] for c in configs}
        if wanted - known - {"yolo"}:
            parser.error(f"--only {args.only}: choose from {', '.join(sorted(known))}, yolo")
        configs = [c for c in configs if c.split("/")[0] in wanted]
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="inference_table_"))
    import onnxruntime

    load = os.getloadavg()
    print(
        f"{args.threads} thread(s), batch 1 and {args.batch}, {args.repeats} repeats, "
        f"score_thr {args.score_thr:g}, torch {torch.__version__}, onnxruntime "
        f"{onnxruntime.__version__}, load average before {load[0]:.2f} {load[1]:.2f} "
        f"{load[2]:.2f}",
        flush=True,
    )
    rows, notes, sizes = [], [], set()
    for config in configs:
        cfg = load_config(config, ["device=cpu"])
        torch.manual_seed(cfg.seed)
        if config in checkpoints:
            model, _ = model_from_checkpoint(checkpoints[config], "cpu", cfg=cfg)
        else:
            model = build_model(cfg, log=lambda *_: None)
        model = model.eval()
        set_score_threshold(model, args.score_thr)
        dataset = build_dataset(cfg.data.val)
        batch = next(iter(eval_loader(cfg, dataset, batch_size=args.batch, num_workers=0)))
        raw_images = [dataset[i]["image"] for i in range(args.batch)]
        size = int(batch.images.shape[-1])
        sizes.add(size)
        folder = work / config.replace("/", "_")
        folder.mkdir(parents=True, exist_ok=True)
        paths, reasons, dets = tunedet_paths(
            model, cfg, batch.images, batch.image_sizes, raw_images, args.threads, folder
        )
        timings = time_paths(paths, args.batch, args.repeats)
        weights = "trained" if config in checkpoints else "random"
        row = format_row(f"{config} ({weights}, {size} px)", f"{dets:.0f}", timings, reasons, notes)
        print(row, flush=True)
        rows.append(row)
    if args.yolo_python:
        for size in sorted(sizes or {DEMO_SIZE}):
            files = export_yolo(
                args.yolo_python,
                size,
                args.batch,
                args.score_thr,
                YOLO_MAX_DETS,
                args.threads,
                work / f"yolo_{size}",
            )
            paths, reasons = yolo_paths(files, size, args.batch, args.threads)
            timings = time_paths(paths, args.batch, args.repeats)
            version = files.get("version", "?")
            dets = yolo_detections(paths, args.batch)
            row = format_row(f"{YOLO} {version} (random, {size} px)", dets, timings, reasons, notes)
            print(row, flush=True)
            rows.append(row)
    else:
        notes.append(f"{YOLO}: not run (pass --yolo-python, a Python with ultralytics)")

    load = os.getloadavg()
    print(f"\nload average after {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}\n")
    header = ["config", "dets/img"]
    for path in PATHS:
        header += [f"{path} ms", f"{path} img/s"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    print("\n".join(rows))
    if notes:
        print("\nn/a:")
        print("\n".join(f"- {note}" for note in notes))


if __name__ == "__main__":
    sys.exit(main())
