"""Batched, vectorised Soft-NMS against the classic one-box-per-step loop.

    python benchmarks/bench_soft_nms.py [--boxes 5000] [--repeats 3] [--threads 1]

Two box sets of ``--boxes`` boxes in a 1000 × 1000 image, one class, distinct scores:
"clustered" (100 objects, ~50 jittered boxes each: a detector's raw output) and
"independent" (uniform positions, sides 2–100 px). Linear (N_t 0.3) and Gaussian
(σ 0.5) Soft-NMS, score threshold 0.001. The classic loops (Bodla et al. 2017,
Algorithm 1: select the best remaining box, decay the others, drop those below the
threshold) in two common forms:

- "per-box loop, Python": the paper's loop, IoU and decay box by box;
- "per-box loop, NumPy inner": the same outer loop, the decay of all remaining boxes
  vectorised with NumPy per selected box (the widespread ``py_cpu_softnms`` form).

Before timing, every implementation's kept set and final scores are checked against
the first loop's (scores to 1e-5 relative). Prints median time over ``--repeats``
(min–max) and the speed-up of ``tunedet.boxes.nms.batched_soft_nms``.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics

import numpy as np
import torch

from tunedet.boxes.nms import batched_soft_nms
from tunedet.deploy.speed import time_calls

REQUIRED_SPEEDUP = 20.0


def box_sets(num: int, seed: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(num, 2, generator=g) * 950
    wh = torch.rand(num, 2, generator=g) * 98 + 2
    independent = torch.cat([xy, xy + wh], dim=1)
    centres = torch.rand(100, 2, generator=g) * 900 + 50
    sizes = torch.rand(100, 2, generator=g) * 120 + 10
    which = torch.randint(0, 100, (num,), generator=g)
    wh = sizes[which] * (1 + 0.15 * torch.randn(num, 2, generator=g)).clamp(min=0.3)
    xy = centres[which] - wh / 2 + 0.08 * sizes[which] * torch.randn(num, 2, generator=g)
    clustered = torch.cat([xy, xy + wh], dim=1)
    scores = (torch.randperm(num, generator=g).float() + 1) / (num + 1)
    return {"clustered": (clustered, scores), "independent": (independent, scores.flip(0))}


def classic_python(boxes, scores, method, nt=0.3, sigma=0.5, thr=0.001):
    """The paper's loop, one box and one pair at a time."""
    boxes = boxes.tolist()
    current = scores.tolist()
    remaining = [i for i in range(len(boxes)) if current[i] >= thr]
    keep, kept = [], []
    while remaining:
        best = max(remaining, key=current.__getitem__)
        remaining.remove(best)
        keep.append(best)
        kept.append(current[best])
        bx1, by1, bx2, by2 = boxes[best]
        area = (bx2 - bx1) * (by2 - by1)
        survivors = []
        for i in remaining:
            x1, y1, x2, y2 = boxes[i]
            w = min(bx2, x2) - max(bx1, x1)
            h = min(by2, y2) - max(by1, y1)
            if w > 0 and h > 0:
                inter = w * h
                u = inter / (area + (x2 - x1) * (y2 - y1) - inter)
                if method == "linear":
                    current[i] *= 1 - u if u >= nt else 1.0
                else:
                    current[i] *= math.exp(-u * u / sigma)
            if current[i] >= thr:
                survivors.append(i)
        remaining = survivors
    return keep, kept


def classic_numpy(boxes, scores, method, nt=0.3, sigma=0.5, thr=0.001):
    """The same loop with the decay of all remaining boxes vectorised per selected box."""
    b = boxes.numpy().astype(np.float32)
    s = scores.numpy().astype(np.float32).copy()
    areas = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    remaining = np.nonzero(s >= thr)[0]
    keep, kept = [], []
    while remaining.size:
        j = remaining[np.argmax(s[remaining])]
        keep.append(int(j))
        kept.append(float(s[j]))
        remaining = remaining[remaining != j]
        w = np.maximum(
            0, np.minimum(b[j, 2], b[remaining, 2]) - np.maximum(b[j, 0], b[remaining, 0])
        )
        h = np.maximum(
            0, np.minimum(b[j, 3], b[remaining, 3]) - np.maximum(b[j, 1], b[remaining, 1])
        )
        inter = w * h
        u = inter / (areas[j] + areas[remaining] - inter)
        linear = np.where(u >= nt, 1 - u, 1.0)
        s[remaining] *= linear if method == "linear" else np.exp(-(u * u) / sigma)
        remaining = remaining[s[remaining] >= thr]
    return keep, kept


def batched(boxes, scores, method):
    keep, kept = batched_soft_nms(boxes, scores, None, method, 0.3, 0.5, 0.001)
    return keep.tolist(), kept.tolist()


def check_equal(reference, other, name):
    ref = dict(zip(*reference, strict=True))
    got = dict(zip(*other, strict=True))
    if set(ref) != set(got):
        raise SystemExit(f"{name}: kept set differs ({len(ref)} vs {len(got)} boxes)")
    worst = max(abs(got[i] - ref[i]) / max(abs(ref[i]), 1e-12) for i in ref)
    if worst > 1e-5:
        raise SystemExit(f"{name}: scores differ (worst relative {worst:.2e})")
    return worst


def describe(times):
    med = statistics.median(times) * 1e3
    return f"{med:9.1f} ms [{min(times) * 1e3:.1f}–{max(times) * 1e3:.1f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--boxes", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load = os.getloadavg()
    print(
        f"Soft-NMS on {args.boxes} boxes, one class, torch {torch.__version__}, "
        f"{args.threads} thread(s), load average before {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    print(
        f"{'boxes':12s} {'method':9s} {'kept':>5s}  {'per-box loop, Python':>30s}  "
        f"{'per-box loop, NumPy inner':>30s}  {'batched (tunedet)':>30s}  vs Python  vs NumPy"
    )
    worst_ratio = math.inf
    for set_name, (boxes, scores) in box_sets(args.boxes).items():
        for method in ("linear", "gaussian"):
            impls = {
                "python": lambda b=boxes, s=scores, m=method: classic_python(b, s, m),
                "numpy": lambda b=boxes, s=scores, m=method: classic_numpy(b, s, m),
                "batched": lambda b=boxes, s=scores, m=method: batched(b, s, m),
            }
            reference = impls["python"]()
            for name in ("numpy", "batched"):
                check_equal(reference, impls[name](), f"{set_name}/{method}/{name}")
            times = {name: time_calls(fn, args.repeats, warmup=0) for name, fn in impls.items()}
            med = {name: statistics.median(t) for name, t in times.items()}
            vs_python = med["python"] / med["batched"]
            vs_numpy = med["numpy"] / med["batched"]
            worst_ratio = min(worst_ratio, vs_python)
            print(
                f"{set_name:12s} {method:9s} {len(reference[0]):5d}  {describe(times['python']):>30s}  "
                f"{describe(times['numpy']):>30s}  {describe(times['batched']):>30s}  "
                f"{vs_python:8.1f}×  {vs_numpy:6.1f}×"
            )
    load = os.getloadavg()
    verdict = "ok" if worst_ratio >= REQUIRED_SPEEDUP else "BELOW TARGET"
    print(
        f"kept sets equal and scores within 1e-5 (checked before timing); smallest speed-up "
        f"over the Python per-box loop {worst_ratio:.1f}× (target ≥ {REQUIRED_SPEEDUP:.0f}×: "
        f"{verdict}); load average after {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )


if __name__ == "__main__":
    main()
