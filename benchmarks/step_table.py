"""Training step time of every shipped demo config in fp32, bf16 autocast, NHWC and
``torch.compile``, with the step's FLOPs and the fraction of the measured matmul peak it
reaches; and (``--accuracy``) the AP after each config's full schedule in fp32 and bf16.

    python benchmarks/step_table.py [--configs retinanet fcos ...] [--steps 30] [--threads 2]
    python benchmarks/step_table.py --accuracy [--seeds 0 1] [--work-dir /tmp/step_table_acc]
    python benchmarks/step_table.py --profile retinanet   # where a bf16 step's time goes

Step: one ``OptimizerStep`` of the trainer (loss, backward, gradient clip if configured,
``optimizer.step``) on batches of the config's own loader (prefetched, so data loading is
not timed), after ``--warmup`` steps; median of ``--steps`` steps. Variants: ``fp32``;
``bf16`` (``torch.autocast`` bf16, fp32 master weights, what ``train.amp: bf16`` runs);
``+nhwc`` (``train.channels_last``); ``+compile`` (``train.compile``: ``torch.compile`` of
the loss, whose one-off compilation time is shown apart). FLOPs per step: 3 × the
forward FLOPs of the loss computation counted by ``torch.utils.flop_counter`` (a
convolution's or matmul's backward is two products of the forward's size; counting the
backward directly would over-count grouped convolutions, see analysis/flops.py); sparse
products (the R-CNN family's RoIAlign matrices) are left out.
Peak: the median GFLOP/s of a 2048 × 2048 × 2048 ``torch.mm`` in that precision, measured
in the same run with the same threads. ``--accuracy`` trains each config for its full
schedule (``tunedet train``, amp none vs bf16, each seed; ``--jobs`` runs side by side
with ``--threads`` each) and prints COCO AP and AP50 with the per-config difference;
finished runs are reused from ``--work-dir``.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from tunedet.config.loader import builtin_config_names, load_config
from tunedet.data.build import build_dataset
from tunedet.engine import build
from tunedet.engine.step import DetectorLoss, OptimizerStep, compile_loss

VARIANTS = ("fp32", "bf16", "fp32+nhwc", "bf16+nhwc", "fp32+compile", "bf16+compile")


class DenseFlopCounter(FlopCounterMode):
    """``FlopCounterMode`` without products that have a sparse operand (the R-CNN
    family's sparse RoIAlign matrices would count as dense ones)."""

    def _count_flops(self, func_packet, out, args, kwargs):
        leaves = torch.utils._pytree.tree_leaves((args, kwargs))
        if any(isinstance(t, torch.Tensor) and t.layout != torch.strided for t in leaves):
            return out
        return super()._count_flops(func_packet, out, args, kwargs)


def demo_configs() -> list[str]:
    return sorted(name.split("/")[0] for name in builtin_config_names() if name.endswith("/demo"))


def matmul_peak(dtype: torch.dtype, size: int = 2048, repeats: int = 10) -> float:
    """Median GFLOP/s of ``size``³ matmuls in ``dtype`` (2 FLOPs per multiply-add)."""
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    for _ in range(3):
        torch.mm(a, b)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times) / 1e9


class StepBench:
    """One config's model, optimizer and prefetched batches; ``run(variant)`` times steps."""

    def __init__(self, name: str, num_batches: int = 8):
        self.name = name
        self.cfg = load_config(f"{name}/demo")
        torch.manual_seed(0)
        self.model = build.build_model(self.cfg, log=lambda *args: None)
        dataset = build_dataset(self.cfg.data.train)
        batches = iter(build.train_loader(self.cfg, dataset))
        self.batches = [next(batches) for _ in range(num_batches)]
        self.initial = copy.deepcopy(self.model.state_dict())

    def step_flops(self) -> float:
        """3 × forward FLOPs of the loss on one batch (module docstring)."""
        self.model.train()
        counter = DenseFlopCounter(display=False)
        with counter, torch.no_grad():
            DetectorLoss(self.model)(self.batches[0])
        return 3.0 * counter.get_total_flops()

    def make_step(self, variant: str) -> OptimizerStep:
        self.model.load_state_dict(self.initial)
        self.model.to(memory_format=torch.contiguous_format)
        nhwc = "nhwc" in variant
        if nhwc:
            self.model.to(memory_format=torch.channels_last)
        amp = "bf16" if variant.startswith("bf16") else "none"
        compiled = compile_loss(self.model) if "compile" in variant else None
        loss = DetectorLoss(self.model, amp, torch.device("cpu"), loss=compiled)
        optimizer = build.build_optimizer_for(self.cfg, self.model)
        return OptimizerStep(
            self.model,
            optimizer,
            loss,
            torch.device("cpu"),
            grad_clip=self.cfg.train.grad_clip,
            channels_last=nhwc,
        )

    def run(self, variant: str, warmup: int, steps: int) -> dict[str, float]:
        torch.manual_seed(0)
        step = self.make_step(variant)
        self.model.train()
        source = (self.batches[i % len(self.batches)] for i in range(10**9))
        start = time.perf_counter()
        for i in range(warmup):
            step(source, i)
        warm_seconds = time.perf_counter() - start
        times = []
        for i in range(steps):
            start = time.perf_counter()
            step(source, warmup + i)
            times.append(time.perf_counter() - start)
        median = statistics.median(times)
        return {"ms": 1000 * median, "warmup_s": warm_seconds - warmup * median}


def run_steps(args: argparse.Namespace) -> None:
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    print(
        f"matmul peak, {torch.get_num_threads()} threads: fp32 {peaks['fp32']:.0f} GFLOP/s, "
        f"bf16 {peaks['bf16']:.0f} GFLOP/s (2048³ torch.mm, median of 10)\n"
    )
    print("| config | GFLOP/step | variant | ms/step | × fp32 | GFLOP/s | % of peak | compile s |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.configs:
        bench = StepBench(name)
        gflop = bench.step_flops() / 1e9
        base = None
        for variant in args.variants:
            result = bench.run(variant, args.warmup, args.steps)
            base = base or result["ms"]
            rate = gflop / (result["ms"] / 1000)
            peak = peaks["bf16" if variant.startswith("bf16") else "fp32"]
            compile_s = f"{result['warmup_s']:.0f}" if "compile" in variant else ""
            print(
                f"| {name} | {gflop:.2f} | {variant} | {result['ms']:.1f} | "
                f"{base / result['ms']:.2f} | {rate:.0f} | {100 * rate / peak:.1f} | {compile_s} |",
                flush=True,
            )


def run_profile(name: str, variant: str, steps: int) -> None:
    """Self CPU time per op over ``steps`` steps of ``variant``, grouped by op name."""
    bench = StepBench(name)
    step = bench.make_step(variant)
    bench.model.train()
    source = (bench.batches[i % len(bench.batches)] for i in range(10**9))
    for i in range(5):
        step(source, i)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for i in range(steps):
            step(source, 5 + i)
    events = prof.key_averages()
    total = sum(event.self_cpu_time_total for event in events)
    rows = sorted(events, key=lambda event: event.self_cpu_time_total, reverse=True)
    print(f"{name} {variant}: {total / steps / 1000:.1f} ms of self CPU time per step")
    print("| op | ms/step | share |")
    print("|---|---|---|")
    for event in rows[:25]:
        share = event.self_cpu_time_total / total
        print(
            f"| {event.key} | {event.self_cpu_time_total / steps / 1000:.2f} | {100 * share:.1f}% |"
        )


def run_accuracy(args: argparse.Namespace) -> None:
    """Train every (config, seed, amp) not yet in ``--work-dir``, ``--jobs`` at a time
    (each with ``--threads``), then print the rows and the per-config comparison."""
    work = Path(args.work_dir)
    amps = ("none",) if args.fp32_only else ("none", "bf16")
    runs = [(name, seed, amp) for name in args.configs for seed in args.seeds for amp in amps]

    def train(run: tuple[str, int, str]) -> None:
        name, seed, amp = run
        folder = work / f"{name}_{amp}_s{seed}"
        if (folder / "metrics.json").exists():
            return
        command = [
            sys.executable, "-m", "tunedet", "train", f"{name}/demo",
            f"train.amp={amp}", f"seed={seed}", f"work_dir={folder}",
            "train.progress=false", f"threads={args.threads}",
        ]  # fmt: skip
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)

    if not args.no_train:
        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(train, runs))
    print("| config | amp | seed | AP | AP50 | train s |")
    print("|---|---|---|---|---|---|")
    summary: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for name, seed, amp in runs:
        folder = work / f"{name}_{amp}_s{seed}"
        if not (folder / "metrics.json").exists():  # --no-train: not run yet
            continue
        metrics = json.loads((folder / "metrics.json").read_text())
        rows = (folder / "metrics.jsonl").read_text().splitlines()
        seconds = max(json.loads(row).get("time", 0.0) for row in rows if row.strip())
        ap = metrics.get("AP", metrics.get("bbox/AP"))
        ap50 = metrics.get("AP50", metrics.get("bbox/AP50"))
        summary.setdefault(name, {}).setdefault(amp, []).append((ap, ap50))
        print(f"| {name} | {amp} | {seed} | {ap:.3f} | {ap50:.3f} | {seconds:.0f} |")
    print("\n| config | AP fp32 (mean) | AP bf16 (mean) | ΔAP | ΔAP50 | within ±0.01 |")
    print("|---|---|---|---|---|---|")
    for name, by_amp in summary.items():
        if "bf16" not in by_amp or "none" not in by_amp:
            continue
        fp32, bf16 = by_amp["none"], by_amp["bf16"]
        ap32, ap16 = statistics.mean(r[0] for r in fp32), statistics.mean(r[0] for r in bf16)
        d50 = statistics.mean(r[1] for r in bf16) - statistics.mean(r[1] for r in fp32)
        verdict = "yes" if ap16 >= ap32 - 0.01 else "no"
        print(f"| {name} | {ap32:.3f} | {ap16:.3f} | {ap16 - ap32:+.3f} | {d50:+.3f} | {verdict} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=demo_configs())
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--accuracy", action="store_true")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--jobs", type=int, default=1, help="--accuracy runs side by side")
    parser.add_argument("--no-train", action="store_true", help="--accuracy: table only")
    parser.add_argument("--fp32-only", action="store_true", help="--accuracy in fp32 only")
    parser.add_argument("--work-dir", default="/tmp/step_table_acc")
    parser.add_argument("--profile", metavar="CONFIG")
    parser.add_argument("--profile-variant", default="bf16", choices=VARIANTS)
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 configs, 3 steps")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.configs, args.steps, args.warmup = args.configs[:2], 3, 2
    if args.profile:
        run_profile(args.profile, args.profile_variant, args.steps)
    elif args.accuracy:
        run_accuracy(args)
    else:
        run_steps(args)


if __name__ == "__main__":
    main()
