"""Do the tests catch a broken line? Apply critical one-line mutations one at a time and
run the tests that cover them; print which mutations are killed and which survive.

    python benchmarks/mutation_test.py                 # every mutation
    python benchmarks/mutation_test.py --area losses   # one area
    python benchmarks/mutation_test.py --list

Each mutation replaces one exact snippet of ``src/tunedet`` (it must occur exactly once:
a stale mutation is an error, not a survivor) in a temporary copy of ``src``; the
working tree is never modified, so others may run the tests meanwhile. The tests run
with ``PYTHONPATH`` pointing at the copy. A mutation is *killed* when a test fails
(pytest exit 1), *survives* when they pass; a collection error is reported as an error.
The unmutated copy is checked to pass first (``--skip-baseline`` to skip).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    area: str
    name: str
    file: str  # under src/tunedet
    original: str
    mutated: str
    tests: tuple[str, ...]


MUTATIONS = [
    # --- assigners
    Mutation("assigners", "max_iou: positives need IoU > pos_iou_thr, not >=", "assigners/max_iou.py",
             "positive = best_iou >= thresholds.pos_iou_thr",
             "positive = best_iou > thresholds.pos_iou_thr",
             ("tests/assigners/test_max_iou.py",)),
    Mutation("assigners", "max_iou: negatives at IoU <= neg_iou_thr", "assigners/max_iou.py",
             "matched[best_iou < thresholds.neg_iou_thr] = 0",
             "matched[best_iou <= thresholds.neg_iou_thr] = 0",
             ("tests/assigners/test_max_iou.py",)),
    Mutation("assigners", "atss: threshold mean only (no std)", "assigners/atss.py",
             "threshold = candidate_ious.mean(dim=2) + candidate_ious.std(dim=2)",
             "threshold = candidate_ious.mean(dim=2)",
             ("tests/assigners/test_atss.py",)),
    Mutation("assigners", "yolov3 grid: positional IoU instead of centred", "assigners/grid.py",
             "shape_iou = _centred_iou(gt_boxes[:, :, None, :], anchors[candidates])",
             "shape_iou = aligned_anchor_iou(gt_boxes[:, :, None, :], anchors[candidates])",
             ("tests/assigners/test_grid.py",)),
    Mutation("assigners", "hungarian: GIoU rewarded with the wrong sign", "assigners/hungarian.py",
             "return self.cls_weight * cls + self.l1_weight * l1 - self.giou_weight * giou",
             "return self.cls_weight * cls + self.l1_weight * l1 + self.giou_weight * giou",
             ("tests/assigners/test_hungarian.py",)),
    # --- losses
    Mutation("losses", "focal: alpha weighs the negatives", "losses/focal.py",
             "ce = ce * (alpha * targets + (1 - alpha) * (1 - targets))",
             "ce = ce * ((1 - alpha) * targets + alpha * (1 - targets))",
             ("tests/losses/test_focal.py",)),
    Mutation("losses", "focal: no (1 - p_t)^gamma modulation", "losses/focal.py",
             "ce = ce * one_minus_pt**gamma", "ce = ce * one_minus_pt",
             ("tests/losses/test_focal.py",)),
    Mutation("losses", "giou: enclosing-area penalty dropped", "boxes/iou.py",
             "return iou - (enclose_area - union) / (enclose_area + eps)", "return iou",
             ("tests/losses/test_box_losses.py", "tests/boxes/test_iou.py")),
    Mutation("losses", "ciou: aspect term added instead of subtracted", "boxes/iou.py",
             "return diou - alpha * v", "return diou + alpha * v",
             ("tests/losses/test_box_losses.py", "tests/boxes/test_iou.py")),
    Mutation("losses", "smooth L1: quadratic part not divided by beta", "losses/smooth_l1.py",
             "loss = torch.where(diff < beta, 0.5 * diff**2 / beta, diff - 0.5 * beta)",
             "loss = torch.where(diff < beta, 0.5 * diff**2, diff - 0.5 * beta)",
             ("tests/losses/test_box_losses.py", "tests/losses/test_loss_references.py")),
    # --- LR schedule
    Mutation("lr_schedule", "cosine: half a period too short", "engine/lr_policies.py",
             "c = 0.5 * (1.0 + math.cos(math.pi * t / self.decay_steps))",
             "c = 0.5 * (1.0 + math.cos(2 * math.pi * t / self.decay_steps))",
             ("tests/engine/test_lr_schedule.py",)),
    Mutation("lr_schedule", "step: decays one step late", "engine/lr_policies.py",
             "return self.gamma ** (it // self.step_size)",
             "return self.gamma ** ((it - 1) // self.step_size)",
             ("tests/engine/test_lr_schedule.py",)),
    Mutation("lr_schedule", "linear warmup: starts from 0, not factor", "engine/lr_schedule.py",
             "return self.start_factor + (1.0 - self.start_factor) * it / self.iters",
             "return it / self.iters",
             ("tests/engine/test_lr_schedule.py",)),
    Mutation("lr_schedule", "momentum correction: every change counts as large",
             "engine/lr_schedule.py",
             "if ratio > self.threshold:", "if ratio > 0:",
             ("tests/engine/test_lr_schedule.py",)),
    # --- NMS
    Mutation("nms", "soft-NMS linear: decays below the threshold too", "boxes/nms.py",
             "return torch.where(iou >= iou_threshold, 1 - iou, torch.ones_like(iou))",
             "return 1 - iou",
             ("tests/boxes/test_soft_nms.py",)),
    Mutation("nms", "soft-NMS gaussian: exp(-u/sigma)", "boxes/nms.py",
             "return torch.exp(-(iou * iou) / sigma)", "return torch.exp(-iou / sigma)",
             ("tests/boxes/test_soft_nms.py",)),
    Mutation("nms", "post-processing: class-agnostic NMS", "models/postprocess.py",
             "keep = batched_nms(boxes, scores, groups, nms_iou)",
             "keep = batched_nms(boxes, scores, groups * 0, nms_iou)",
             ("tests/models/test_postprocess.py",)),
    # --- evaluation
    Mutation("evaluation", "VOC12 AP without the precision envelope", "evaluation/voc.py",
             "mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # precision envelope",
             "mpre = mpre  # precision envelope",
             ("tests/evaluation/test_voc_eval.py",)),
    Mutation("evaluation", "VOC07 11-point: recall strictly above t", "evaluation/voc.py",
             "reached = rec[None, :] >= thresholds[:, None]  # (11, N)",
             "reached = rec[None, :] > thresholds[:, None]  # (11, N)",
             ("tests/evaluation/test_voc_eval.py",)),
    Mutation("evaluation", "COCO-style interpolated precision without envelope",
             "evaluation/pr_metrics.py",
             "envelope = np.maximum.accumulate(curve.precision[::-1])[::-1]",
             "envelope = curve.precision",
             ("tests/evaluation/test_detection_metrics.py",)),
    # --- the trainer's wiring
    Mutation("trainer", "L1 penalty not applied", "engine/step.py",
             "        apply_l1_penalty(self.optimizer)\n", "",
             ("tests/engine/test_wiring.py",)),
    Mutation("trainer", "gradient clipping not applied", "engine/step.py",
             "            clip_gradients(self.model, self.grad_clip)\n", "            pass\n",
             ("tests/engine/test_wiring.py",)),
    Mutation("trainer", "loss not divided by accumulate", "engine/step.py",
             "scaled = total / self.accumulate", "scaled = total",
             ("tests/engine/test_trainer.py",)),
    Mutation("trainer", "momentum correction not applied", "engine/hooks.py",
             "            self.momentum_correction.apply(trainer.optimizer, previous, lr)\n", "",
             ("tests/engine/test_wiring.py",)),
    Mutation("trainer", "EMA never updated", "engine/hooks.py",
             "            trainer.ema.update(trainer.model)\n", "            pass\n",
             ("tests/engine/test_trainer.py", "tests/engine/test_ema.py")),
    Mutation("trainer", "effective batch ignores world size", "engine/build.py",
             "return cfg.data.batch_size * world_size * cfg.train.accumulate",
             "return cfg.data.batch_size * cfg.train.accumulate",
             ("tests/engine/test_build.py",)),
    Mutation("trainer", "checkpoint loader takes the raw weights, not the EMA", "engine/build.py",
             'ema = state.get("ema")', "ema = None",
             ("tests/engine/test_build.py",)),
]  # fmt: skip


def run_tests(src: Path, tests: tuple[str, ...], timeout: float) -> tuple[int, float]:
    """``(pytest exit code, seconds)`` on ``tests`` with ``src`` first on the path (0: all
    passed, 1: a test failed, 2 and above: collection or usage errors)."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    start = time.monotonic()
    try:
        done = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return 1, time.monotonic() - start  # a hang counts as caught
    return done.returncode, time.monotonic() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--area", action="append", help="only these areas (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per test run")
    parser.add_argument(
        "--skip-baseline", action="store_true", help="do not first check the unmutated tests pass"
    )
    args = parser.parse_args()
    chosen = [m for m in MUTATIONS if not args.area or m.area in args.area]
    if args.list:
        for m in chosen:
            print(f"{m.area:12} {m.name}  ({m.file})")
        return 0
    with tempfile.TemporaryDirectory(prefix="tunedet_mutation_") as tmp:
        src = Path(tmp) / "src"
        shutil.copytree(ROOT / "src", src, ignore=shutil.ignore_patterns("__pycache__"))
        for m in chosen:  # every snippet must exist exactly once before anything runs
            count = (src / "tunedet" / m.file).read_text().count(m.original)
            if count != 1:
                print(f"stale mutation '{m.name}': snippet found {count} times in {m.file}")
                return 2
        baseline = sorted({t for m in chosen for t in m.tests})
        if not args.skip_baseline:
            code, seconds = run_tests(src, tuple(baseline), args.timeout)
            if code != 0:
                print(f"the unmutated tests fail ({' '.join(baseline)}): fix them first")
                return 2
            print(f"unmutated: {len(baseline)} test files pass ({seconds:.0f} s)\n")
        rows = []
        for m in chosen:
            path = src / "tunedet" / m.file
            original = path.read_text()
            path.write_text(original.replace(m.original, m.mutated))
            try:
                code, seconds = run_tests(src, m.tests, args.timeout)
            finally:
                path.write_text(original)
            # only a failing test kills a mutation; a collection error is reported as such
            result = {0: "SURVIVED", 1: "killed"}.get(code, f"ERROR (pytest exit {code})")
            rows.append((m, result, seconds))
            print(f"{rows[-1][1]:8}  {m.area:12} {m.name}  ({seconds:.0f} s)", flush=True)
    print("\n| area | mutation | file | tests | result |")
    print("|---|---|---|---|---|")
    for m, result, _ in rows:
        tests = ", ".join(Path(t).name for t in m.tests)
        print(f"| {m.area} | {m.name} | `{m.file}` | {tests} | {result} |")
    survivors = sum(result == "SURVIVED" for _, result, _ in rows)
    killed = sum(result == "killed" for _, result, _ in rows)
    errors = len(rows) - survivors - killed
    print(f"\n{killed} killed, {survivors} survived, {errors} errors")
    return 1 if survivors or errors else 0


if __name__ == "__main__":
    sys.exit(main())
