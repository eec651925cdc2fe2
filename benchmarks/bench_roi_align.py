"""RoIAlign forward + backward: torchvision.ops.roi_align vs the sparse-matrix formulation.

    python benchmarks/bench_roi_align.py [--repeats 5] [--threads 1 2] [--rois 512]

The R-CNN stage's pooling at Faster R-CNN-FPN training sizes: 4 images of 320 px, P2–P5
(80², 40², 20², 10²) of 256 channels, ``--rois`` RoIs per image (side log-uniform in
16–320 px, inside the image), 7 × 7 bins, sampling ratio 2, levels by k0 = 4, s0 = 224
(``MultiLevelRoIAlign`` with ``impl`` torchvision or sparse). One step = forward,
then backward of a random linear function of the output into the features. Both
results are checked equal before timing; the implementations are timed in turns.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from tunedet.models.heads.roi_align import MultiLevelRoIAlign

STRIDES = [4, 8, 16, 32]


def inputs(num_images: int, size: int, rois_per_image: int, channels: int = 256):
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(num_images, channels, size // s, size // s, generator=g) for s in STRIDES]
    side = torch.exp(torch.empty(num_images * rois_per_image, 2).uniform_(2.77, 5.77, generator=g))
    corner = torch.rand(len(side), 2, generator=g) * (size - side)
    image = torch.arange(num_images).repeat_interleave(rois_per_image)[:, None].float()
    rois = torch.cat([image, corner, corner + side], dim=1)
    weights = torch.randn(len(rois), channels, 7, 7, generator=g)
    return feats, rois, weights


def step(pooler, feats, rois, weights):
    leaves = [f.detach().requires_grad_(True) for f in feats]
    out = pooler(leaves, rois)
    (out * weights).sum().backward()
    return out.detach(), [f.grad for f in leaves]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rois", type=int, default=512)
    parser.add_argument("--size", type=int, default=320)
    args = parser.parse_args()
    feats, rois, weights = inputs(4, args.size, args.rois)
    poolers = {
        impl: MultiLevelRoIAlign(7, 2, STRIDES, impl=impl) for impl in ("torchvision", "sparse")
    }
    reference, *candidates = (step(p, feats, rois, weights) for p in poolers.values())
    for candidate in candidates:
        torch.testing.assert_close(candidate[0], reference[0], rtol=1e-4, atol=1e-4)
        for a, b in zip(candidate[1], reference[1], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)
    load = os.getloadavg()
    print(
        f"RoIAlign 7×7 ratio 2, {len(rois)} RoIs, 4 × 256 × P2–P5 of {args.size} px, forward + "
        f"backward, torch {torch.__version__}; outputs and gradients equal (checked); load "
        f"average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    for threads in args.threads:
        torch.set_num_threads(threads)
        times = {name: [] for name in poolers}
        for pooler in poolers.values():  # warm-up
            step(pooler, feats, rois, weights)
        for _ in range(args.repeats):
            for name, pooler in poolers.items():
                start = time.perf_counter()
                step(pooler, feats, rois, weights)
                times[name].append(time.perf_counter() - start)
        base = statistics.median(times["torchvision"])
        for name, t in times.items():
            median = statistics.median(t)
            print(
                f"{threads} thread(s) {name:12s} {median * 1e3:8.1f} ms median "
                f"[{min(t) * 1e3:.1f}–{max(t) * 1e3:.1f}]  {base / median:5.2f}× torchvision's speed"
            )


if __name__ == "__main__":
    main()
