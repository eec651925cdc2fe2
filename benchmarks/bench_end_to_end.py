"""Per-image latency: ``tunedet.Detector.predict`` (eager) vs the end-to-end ONNX graph.

    python benchmarks/bench_end_to_end.py [--config retinanet/demo] [--checkpoint CKPT]
        [--input-size 512] [--repeats 5] [--threads 2]

Both take a uint8 RGB image and return the final detections in its pixels: eager runs
the config's validation transforms with ``resize`` to ``--input-size`` (PIL), the network
and the torch post-processing; the ONNX graph (``tunedet export``, ``deploy/end_to_end.py``)
does the resize as two dense matrix products, so its cost grows with the image's pixels
times the input size. Median milliseconds over ``--repeats`` per image size, in turns.
Without ``--checkpoint`` the weights are random.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from tunedet.api import Detector
from tunedet.config.loader import load_config
from tunedet.deploy.end_to_end import export_end_to_end
from tunedet.engine.build import build_model, model_from_checkpoint

SIZES = ((512, 512), (480, 640), (1080, 1920), (3000, 4000))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="retinanet/demo")
    parser.add_argument("--checkpoint")
    parser.add_argument("--input-size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import onnxruntime

    torch.set_num_threads(args.threads)
    size = args.input_size
    resize = f"data.val_transforms=[{{type: resize, size: {size}}}, {{type: normalize}}]"
    cfg = load_config(args.config, [resize])
    torch.manual_seed(cfg.seed)
    if args.checkpoint:
        model, _ = model_from_checkpoint(args.checkpoint, "cpu", cfg=cfg)
    else:
        model = build_model(cfg, log=lambda *_: None).eval()
    eager = Detector(model, cfg, torch.device("cpu"))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"
        mean, std = cfg.data.val_transforms[-1].mean, cfg.data.val_transforms[-1].std
        export_end_to_end(model, path, size, tuple(mean), tuple(std), {})
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
    load = os.getloadavg()
    print(
        f"{args.config} ({'weights ' + args.checkpoint if args.checkpoint else 'random init'}), "
        f"input {size} px, {args.threads} thread(s), torch {torch.__version__}, onnxruntime "
        f"{onnxruntime.__version__}, load average before {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    print(f"{'image (h × w)':<16}{'eager ms':>12}{'onnx e2e ms':>14}{'speed-up':>10}")
    rng = np.random.default_rng(0)
    for height, width in SIZES:
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        runs = {
            "eager": lambda image=image: eager.predict(image),
            "onnx": lambda image=image: session.run(None, {"image": image}),
        }
        times: dict[str, list[float]] = {name: [] for name in runs}
        for run in runs.values():
            run()  # warm-up
        for _ in range(args.repeats):
            for name, run in runs.items():
                start = time.perf_counter()
                run()
                times[name].append((time.perf_counter() - start) * 1000)
        e, o = statistics.median(times["eager"]), statistics.median(times["onnx"])
        print(f"{f'{height} × {width}':<16}{e:>12.1f}{o:>14.1f}{e / o:>9.2f}×")


if __name__ == "__main__":
    main()
