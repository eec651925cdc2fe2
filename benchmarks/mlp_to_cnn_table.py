"""From an MLP to a CNN, one change per row, on scikit-learn's bundled 8×8 digits.

The steps of Nielsen's "Neural Networks and Deep Learning", chapter 6 (MNIST: a sigmoid
MLP at 97.8%, convolutions, ReLU, expanded data, dropout), on a dataset that ships with a
package: ``sklearn.datasets.load_digits`` (1797 images, 8×8, 10 classes; 1347 train /
450 test, stratified, the same split for every row). Each row adds one change to the row
above:

1. MLP: 64 → 100 sigmoid → 10, softmax cross-entropy, SGD lr 0.1, batch 10
2. + ReLU (lr 0.03, as Nielsen drops it with ReLU)
3. + Adam (lr 1e-3)
4. + CNN: two 5×5 conv layers (20 and 40 maps, ReLU, 2×2 max-pool) before the 100 units
5. + BatchNorm after each conv and the hidden layer
6. + dropout 0.5 on the hidden layer
7. + augmentation: each training image shifted by up to 1 px in x and y (zero fill)

Test accuracy after ``--epochs`` epochs, mean ± std over ``--seeds`` seeds (the seed sets
the initialisation, the batch order, dropout and the shifts). Needs scikit-learn (for the
data only; not a tunedet dependency): ``pip install scikit-learn``.

    python benchmarks/mlp_to_cnn_table.py [--epochs 30] [--seeds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from torch import nn

ROWS = [
    "MLP (sigmoid, SGD)",
    "+ ReLU",
    "+ Adam",
    "+ CNN",
    "+ BatchNorm",
    "+ dropout",
    "+ augmentation",
]


def load_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.images / 16.0, dtype=torch.float32)[:, None]  # (N, 1, 8, 8)
    y = torch.tensor(digits.target, dtype=torch.long)
    tr, te = train_test_split(
        np.arange(len(y)), test_size=450, stratify=digits.target, random_state=0
    )
    return x[tr], y[tr], x[te], y[te]


def build(step: int) -> nn.Module:
    """The network of row ``step`` (0-based)."""
    act = nn.Sigmoid() if step == 0 else nn.ReLU()
    if step < 3:
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 100), act, nn.Linear(100, 10))
    bn = step >= 4
    layers: list[nn.Module] = []
    for cin, cout in ((1, 20), (20, 40)):
        layers += [nn.Conv2d(cin, cout, 5, padding=2)]
        layers += [nn.BatchNorm2d(cout)] if bn else []
        layers += [nn.ReLU(), nn.MaxPool2d(2)]
    layers += [nn.Flatten(), nn.Linear(40 * 2 * 2, 100)]
    layers += [nn.BatchNorm1d(100)] if bn else []
    layers += [nn.ReLU()]
    layers += [nn.Dropout(0.5)] if step >= 5 else []
    layers += [nn.Linear(100, 10)]
    return nn.Sequential(*layers)


def shift(images: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Each image moved by (dy, dx) ∈ {-1, 0, 1}², zeros shifted in."""
    out = torch.zeros_like(images)
    d = torch.randint(-1, 2, (len(images), 2), generator=g)
    for i, (dy, dx) in enumerate(d.tolist()):
        src = images[i, :, max(0, -dy) : 8 - max(0, dy), max(0, -dx) : 8 - max(0, dx)]
        out[i, :, max(0, dy) : 8 - max(0, -dy), max(0, dx) : 8 - max(0, -dx)] = src
    return out


def train_and_test(step: int, seed: int, epochs: int, data: tuple) -> float:
    x_train, y_train, x_test, y_test = data
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = build(step)
    if step == 0:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    elif step == 1:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.03)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(y_train), generator=g)
        for start in range(0, len(order), 10):
            idx = order[start : start + 10]
            images = x_train[idx]
            if step >= 6:
                images = shift(images, g)
            loss = loss_fn(model(images), y_train[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        return (model(x_test).argmax(1) == y_test).double().mean().item()


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_split()
    print(f"sklearn digits 8x8: {len(data[1])} train / {len(data[3])} test images, "
          f"{args.epochs} epochs, batch 10, {args.seeds} seeds")  # fmt: skip
    print("| step | test accuracy (%) | min–max | s per run |")
    print("|---|---|---|---|")
    for step, name in enumerate(ROWS):
        start = time.perf_counter()
        accs = [100 * train_and_test(step, seed, args.epochs, data) for seed in range(args.seeds)]
        per_run = (time.perf_counter() - start) / args.seeds
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        print(f"| {name} | {statistics.mean(accs):.2f} ± {std:.2f} | "
              f"{min(accs):.2f}–{max(accs):.2f} | {per_run:.1f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    run()
