"""Train and inference throughput of a detector, each deployment step checked then timed.

Inference paths (post-processing in torch after the dense network for all of them):
``eager`` (``detector.predict``), ``folded + channels_last`` (conv-BN folded, NHWC
weights and input) and ``onnxruntime`` (the dense network exported to ONNX). Each path's
detections are compared with eager's before anything is timed.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from tunedet.deploy.export import ExportedDetector, detections_equal, export_dense
from tunedet.deploy.fold import fold_conv_bn, to_channels_last
from tunedet.engine.amp import autocast


def time_calls(fn: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def describe(times: list[float], images: int) -> str:
    """``median img/s [min–max]`` over the timed calls."""
    rates = sorted(images / t for t in times)
    return f"{statistics.median(rates):7.1f} img/s [{rates[0]:.1f}–{rates[-1]:.1f}]"


def train_step_times(
    detector: nn.Module,
    images: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    repeats: int,
    gt_masks: Tensor | None = None,
) -> list[float]:
    """Seconds per training step (loss, backward, SGD step) on one fixed batch; a mask
    detector (``needs_masks``) also gets ``gt_masks``."""
    detector.train()
    optimizer = torch.optim.SGD(detector.parameters(), lr=1e-4, momentum=0.9)
    masks = {"gt_masks": gt_masks} if getattr(detector, "needs_masks", False) else {}

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        sum(detector.loss(images, gt_boxes, gt_labels, **masks).values()).backward()
        optimizer.step()

    times = time_calls(step, repeats)
    detector.eval()
    return times


def inference_paths(
    detector: nn.Module,
    image_size: int,
    threads: int | None = None,
    work_dir: str | Path | None = None,
    onnx: bool = True,
    amp: str = "none",
) -> dict[str, Callable[[Tensor, Tensor], list[dict[str, Tensor]]]]:
    """The inference paths by name, each ``(images, image_sizes) -> detections``; with
    ``amp`` "bf16" or "fp16" also ``eager + <amp> autocast`` (`amp_path_name`)."""
    detector = detector.eval()
    fast, _ = fold_conv_bn(detector)
    fast = to_channels_last(fast)

    def eager(images, sizes):
        with torch.inference_mode():
            return detector.predict(images, sizes)

    def folded(images, sizes):
        with torch.inference_mode():
            return fast.predict(images.contiguous(memory_format=torch.channels_last), sizes)

    def autocast_eager(images, sizes):
        with torch.inference_mode(), autocast(amp, images.device):
            return detector.predict(images, sizes)

    paths = {"eager": eager, "folded + channels_last": folded}
    if amp != "none":
        paths[amp_path_name(amp)] = autocast_eager
    if onnx:
        folder = Path(work_dir or tempfile.mkdtemp(prefix="tunedet_bench_"))
        path = export_dense(detector, folder / "model.onnx", "onnx", image_size)
        runner = ExportedDetector(detector, path, "onnx", image_size, threads=threads)
        paths["onnxruntime"] = runner.predict
    return paths


def amp_path_name(amp: str) -> str:
    """The name of the autocast inference path of ``inference_paths``."""
    return f"eager + {amp} autocast"


def inference_speeds(
    paths: dict[str, Callable],
    images: Tensor,
    image_sizes: Tensor,
    repeats: int,
    atol: float = 1e-3,
    approximate: tuple[str, ...] = (),
) -> dict[str, dict]:
    """Check every path's detections against the first path's, then time them in turns.

    Returns per path ``{"times": [s], "equal": bool, "max_diff": float, "detections":
    int}``; raises ValueError naming the path when its detections differ (count, labels,
    or boxes and scores by more than ``atol``), except for the paths named in
    ``approximate`` (reduced precision), whose difference is only reported.
    """
    names = list(paths)
    reference = paths[names[0]](images, image_sizes)
    rows = {}
    for name in names:
        found = paths[name](images, image_sizes)
        equal, worst = detections_equal(reference, found, atol)
        rows[name] = {
            "equal": equal,
            "max_diff": worst,
            "detections": sum(len(d["scores"]) for d in found),
        }
        if not equal and name not in approximate:
            raise ValueError(f"{name}: detections differ from {names[0]} (max diff {worst:.3g})")
    for name in names:  # warm-up, then round-robin so that machine noise hits all paths alike
        paths[name](images, image_sizes)
        rows[name]["times"] = []
    for _ in range(repeats):
        for name in names:
            rows[name]["times"] += time_calls(
                lambda n=name: paths[n](images, image_sizes), 1, warmup=0
            )
    return rows
