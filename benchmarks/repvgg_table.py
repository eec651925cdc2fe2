"""RepVGG re-parameterisation: parameters, CPU latency and output difference of the
training-time (multi-branch) and the folded (one 3×3 conv per block) backbone.

For each width/depth preset the backbone is built, its BatchNorm statistics moved by a
few training-mode batches, then timed in eval mode before and after
``models/reparam.reparameterize``; latency is the fastest of ``--repeats`` forward passes
of one ``--size``-px image (after warm-up), with ``--threads`` threads.

    python benchmarks/repvgg_table.py [--size 224] [--repeats 20] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch

from tunedet.config.registry import build
from tunedet.models.reparam import reparameterize

PRESETS = {
    "RepVGG-A0 (48, 48, 96, 192, 1280; 1, 2, 4, 14, 1)": {},
    "tiny (8, 8, 16, 16, 32; 1, 2, 1, 2, 1)": {
        "widths": [8, 8, 16, 16, 32],
        "depths": [1, 2, 1, 2, 1],
    },
}


def latency_ms(model: torch.nn.Module, image: torch.Tensor, repeats: int) -> float:
    with torch.no_grad():
        for _ in range(3):
            model(image)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(image)
            times.append((time.perf_counter() - start) * 1000)
    return min(times)  # the least disturbed pass: robust to other processes on the CPU


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("| backbone | params train | params folded | ms train | ms folded | max abs diff |")
    print("|---|---|---|---|---|---|")
    for name, spec in PRESETS.items():
        torch.manual_seed(0)
        model = build("backbone", {"type": "repvgg", "out_indices": [4], **spec}).train()
        with torch.no_grad():
            for _ in range(3):
                model(torch.randn(4, 3, 64, 64))
        model.eval()
        image = torch.randn(1, 3, args.size, args.size)
        params_train = sum(p.numel() for p in model.parameters())
        with torch.no_grad():
            before = model(image)[-1]
        ms_train = latency_ms(model, image, args.repeats)
        reparameterize(model)
        with torch.no_grad():
            diff = float((model(image)[-1] - before).abs().max())
        ms_folded = latency_ms(model, image, args.repeats)
        params_folded = sum(p.numel() for p in model.parameters())
        print(
            f"| {name} | {params_train / 1e6:.3f} M | {params_folded / 1e6:.3f} M | "
            f"{ms_train:.1f} | {ms_folded:.1f} | {diff:.1e} |"
        )


if __name__ == "__main__":
    main()
