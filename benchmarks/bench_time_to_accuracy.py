"""Time to AP50 0.5 on the synthetic validation split: tunedet's demo recipe vs torchvision.

    python benchmarks/bench_time_to_accuracy.py [--eval-every 100] [--cap-minutes 20]
        [--target 0.5] [--threads 2] [--only tunedet|torchvision]

Both sides train on the same synthetic shapes (``retinanet/demo``'s ``data.train``: 128 px,
hflip + normalize, batch 16, the same batches from ``engine.build.train_loader``) and are
scored every ``--eval-every`` iterations on the same 200 validation images with the same
COCO evaluator; the clock counts training only (evaluation time is printed beside it).

- tunedet: the demo recipe unchanged (``tunedet demo``: tiny CNN + FPN 64 P3–P5, GN head,
  1 anchor per cell, ATSS, focal + GIoU, AdamW 2e-3, warmup 100 + cosine over 1200
  iterations), through ``Trainer``, stopped at the first evaluation with AP50 ≥ target.
- torchvision: ``torchvision.models.detection.RetinaNet`` with its own defaults on the
  same small backbone family: the demo's tiny CNN (C3–C5) + torchvision
  ``FeaturePyramidNetwork`` 64 ch (P3–P5, no extra levels), torchvision's
  ``RetinaNetHead`` (4 convs, no norm), its anchors for those levels (sizes 32/64/128 ×
  2^(0, 1/3, 2/3), ratios 0.5/1/2: 9 per cell), its Matcher (0.5/0.4, low-quality
  matches), focal + L1 loss, score 0.05 / NMS 0.5 / 300 dets; trained like torchvision's
  detection reference: SGD lr 0.01 momentum 0.9 weight decay 1e-4, linear warmup from
  0.001 over 1000 iterations, then constant (its step decays come at epoch 16 of 26).
  Its transform neither resizes (min = max = 128) nor re-normalises (mean 0, std 1):
  both models see the same tensors. Capped at ``--cap-minutes`` of training.
"""

from __future__ import annotations

import argparse
import os
import time
from collections import OrderedDict

import torch
from torch import nn
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import FeaturePyramidNetwork

from tunedet.config.loader import load_config
from tunedet.data.build import build_dataset
from tunedet.engine.build import eval_settings, train_loader
from tunedet.engine.evaluator import evaluate_results, predict_dataset
from tunedet.engine.trainer import Trainer
from tunedet.models.backbones.tiny_cnn import TinyCNN


class TinyFPNBackbone(nn.Module):
    """The demo's tiny CNN (C3–C5) + torchvision FPN → OrderedDict of P3–P5 (torchvision API)."""

    def __init__(self, widths: tuple[int, ...], out_channels: int = 64):
        super().__init__()
        self.body = TinyCNN(widths=widths, out_indices=(2, 3, 4))
        self.fpn = FeaturePyramidNetwork(self.body.out_channels, out_channels)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict:
        feats = OrderedDict((str(i), f) for i, f in enumerate(self.body(x)))
        return self.fpn(feats)


class TorchvisionDetector(nn.Module):
    """torchvision RetinaNet behind tunedet's ``loss`` / ``predict`` calls (padded batches)."""

    def __init__(self, net: RetinaNet):
        super().__init__()
        self.net = net

    def loss(self, images, gt_boxes, gt_labels):
        targets = [
            {"boxes": boxes[labels >= 0], "labels": labels[labels >= 0]}
            for boxes, labels in zip(gt_boxes, gt_labels, strict=True)
        ]
        return self.net(list(images), targets)

    @torch.no_grad()
    def predict(self, images, image_sizes):
        crops = [img[:, :h, :w] for img, (h, w) in zip(images, image_sizes.tolist(), strict=True)]
        return self.net(crops)


def torchvision_retinanet(num_classes: int, widths: tuple[int, ...], size: int) -> RetinaNet:
    sizes = tuple((s, int(s * 2 ** (1 / 3)), int(s * 2 ** (2 / 3))) for s in (32, 64, 128))
    anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
    return RetinaNet(
        TinyFPNBackbone(widths),
        num_classes=num_classes,
        min_size=size,
        max_size=size,
        image_mean=[0.0, 0.0, 0.0],
        image_std=[1.0, 1.0, 1.0],
        anchor_generator=anchors,
    )


def run_tunedet(cfg, eval_every: int, target: float, cap_s: float) -> dict:
    cfg.train.eval_every = eval_every
    cfg.train.progress = False
    cfg.train.ckpt_every = 0
    cfg.train.resume = False
    state = {"eval_s": 0.0, "history": []}
    start = time.monotonic()
    trainer = Trainer(cfg, f"/tmp/bench_tta_tunedet_{os.getpid()}", log=lambda *_: None)
    evaluate = trainer.evaluate

    def timed_evaluate(dataset=None):
        t0 = time.monotonic()
        metrics = evaluate(dataset)
        state["eval_s"] += time.monotonic() - t0
        return metrics

    def on_evaluate(iteration, metrics):
        train_s = time.monotonic() - start - state["eval_s"]
        state["history"].append((iteration, train_s, metrics["AP50"]))
        print(
            f"  tunedet     iter {iteration:5d}  train {train_s:7.1f} s  AP50 {metrics['AP50']:.3f}"
        )
        return metrics["AP50"] >= target or train_s >= cap_s

    trainer.evaluate = timed_evaluate
    trainer.on_evaluate = on_evaluate
    start = time.monotonic()
    trainer.train()
    return state


def run_torchvision(cfg, eval_every: int, target: float, cap_s: float) -> dict:
    cfg.train.progress = False
    torch.manual_seed(cfg.seed)
    widths = tuple(cfg.model.backbone.widths)
    model = TorchvisionDetector(
        torchvision_retinanet(cfg.model.num_classes, widths, cfg.data.train.image_size)
    )
    train_set, val_set = build_dataset(cfg.data.train), build_dataset(cfg.data.val)
    loader = iter(train_loader(cfg, train_set))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4)
    warmup_iters, warmup_factor = 1000, 0.001
    state = {"eval_s": 0.0, "history": []}
    train_s, iteration = 0.0, 0
    model.train()
    while True:
        t0 = time.monotonic()
        alpha = min(1.0, iteration / warmup_iters)
        for group in optimizer.param_groups:
            group["lr"] = 0.01 * (warmup_factor * (1 - alpha) + alpha)
        batch = next(loader)
        losses = model.loss(batch.images, batch.gt_boxes, batch.gt_labels)
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizer.step()
        iteration += 1
        train_s += time.monotonic() - t0
        if iteration % eval_every == 0:
            t0 = time.monotonic()
            metrics = evaluate_results(
                val_set.coco_ground_truth(),
                predict_dataset(model, val_set, eval_settings(cfg), "cpu"),
                "coco",
            )
            model.train()
            state["eval_s"] += time.monotonic() - t0
            state["history"].append((iteration, train_s, metrics["AP50"]))
            print(
                f"  torchvision iter {iteration:5d}  train {train_s:7.1f} s  "
                f"AP50 {metrics['AP50']:.3f}",
                flush=True,
            )
            if metrics["AP50"] >= target or train_s >= cap_s:
                return state


def summary(name: str, state: dict, target: float, cap_min: float) -> tuple[str, float | None]:
    history = state["history"]
    reached = next((h for h in history if h[2] >= target), None)
    best = max((h[2] for h in history), default=float("nan"))
    if reached is None:
        last = history[-1] if history else (0, 0.0, float("nan"))
        text = (
            f"{name:12s} not reached in {last[1] / 60:.1f} min ({last[0]} iterations, cap "
            f"{cap_min:g} min); best AP50 {best:.3f}; evaluation {state['eval_s']:.0f} s"
        )
        return text, None
    it, secs, ap50 = reached
    text = (
        f"{name:12s} {secs / 60:6.2f} min  at iteration {it:5d}  AP50 {ap50:.3f}  "
        f"(evaluation {state['eval_s']:.0f} s not counted)"
    )
    return text, secs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--cap-minutes", type=float, default=20.0)
    parser.add_argument("--target", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", choices=["tunedet", "torchvision"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load = os.getloadavg()
    print(
        f"time to AP50 {args.target} on retinanet/demo's synthetic data, {args.threads} threads, "
        f"torch {torch.__version__}, load average before {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    cfg = load_config("retinanet/demo", [f"threads={args.threads}"])
    cap_s = args.cap_minutes * 60
    rows = {}
    if args.only in (None, "tunedet"):
        rows["tunedet demo"] = run_tunedet(cfg, args.eval_every, args.target, cap_s)
    if args.only in (None, "torchvision"):
        cfg = load_config("retinanet/demo", [f"threads={args.threads}"])
        rows["torchvision"] = run_torchvision(cfg, args.eval_every, args.target, cap_s)
    print()
    print(f"{'':12s} training wall time to AP50 ≥ {args.target}")
    seconds = {}
    for name, state in rows.items():
        text, secs = summary(name, state, args.target, args.cap_minutes)
        seconds[name] = secs
        print(text)
    if len(seconds) == 2 and seconds["tunedet demo"] is not None:
        tv = seconds["torchvision"]
        if tv is None:  # torchvision trained this long without reaching the target
            trained = rows["torchvision"]["history"][-1][1] if rows["torchvision"]["history"] else 0
            print(
                f"ratio tunedet / torchvision: < {seconds['tunedet demo'] / max(trained, 1e-9):.2f} "
                f"(torchvision did not reach the target in its {trained / 60:.1f} min)"
            )
        else:
            print(f"ratio tunedet / torchvision: {seconds['tunedet demo'] / tv:.2f} (target ≤ 0.5)")
    load = os.getloadavg()
    print(f"load average after {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
