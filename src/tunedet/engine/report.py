"""A small run report: metrics table, loss curves, sample predictions, in ``report.html``.

Everything is a local file beside the HTML (no CDN), so it opens offline.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from tunedet.analysis.draw import draw_detections  # noqa: E402


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_training_curves(rows: list[dict[str, Any]], out: Path) -> Path | None:
    """Loss terms and learning rate against iteration, from the JSONL log."""
    train_rows = [r for r in rows if "loss" in r]
    if not train_rows:
        return None
    terms = [
        k for k in train_rows[0] if k not in ("step", "lr", "time") and not k.startswith("val/")
    ]
    steps = [r["step"] for r in train_rows]
    fig, (ax_loss, ax_lr) = plt.subplots(1, 2, figsize=(10, 3.5))
    for term in terms:
        ax_loss.plot(steps, [r.get(term, float("nan")) for r in train_rows], label=term)
    ax_loss.set_xlabel("iteration")
    ax_loss.set_ylabel("loss")
    ax_loss.set_yscale("log")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    ax_lr.plot(steps, [r["lr"] for r in train_rows], color="tab:purple")
    ax_lr.set_xlabel("iteration")
    ax_lr.set_ylabel("learning rate")
    ax_lr.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


@torch.no_grad()
def prediction_grid(
    trainer: Any, out: Path, num_images: int = 8, score_thr: float = 0.3
) -> Path | None:
    """Validation images with ground truth (thin white) and predictions (coloured, scored)."""
    from tunedet.data.build import build_loader

    dataset = trainer.val_set
    if dataset is None or len(dataset) == 0:
        return None
    cfg = trainer.cfg
    loader = build_loader(
        dataset,
        cfg.data.val_transforms,
        batch_size=min(num_images, len(dataset)),
        seed=cfg.seed,
        num_workers=0,
        size_divisor=cfg.data.size_divisor,
    )
    batch = next(iter(loader)).to(trainer.device)
    trainer.model.eval()
    predictions = trainer.model.predict(batch.images, batch.image_sizes)
    tiles = []
    for i, pred in enumerate(predictions):
        sample = dataset[batch.metas[i]["index"]] if "index" in batch.metas[i] else dataset[i]
        scale = batch.metas[i]["scale"]
        image = draw_detections(sample["image"], sample["boxes"], labels=None, width=1)
        keep = pred["scores"] >= score_thr
        image = draw_detections(
            image,
            (pred["boxes"][keep] / scale).cpu().tolist(),
            pred["scores"][keep].cpu().tolist(),
            pred["labels"][keep].cpu().tolist(),
            getattr(dataset, "classes", None),
        )
        tiles.append(image)
    size = max(max(t.size) for t in tiles)
    cols = min(4, len(tiles))
    rows = (len(tiles) + cols - 1) // cols
    grid = Image.new("RGB", (cols * size, rows * size), "white")
    for i, tile in enumerate(tiles):
        grid.paste(tile, ((i % cols) * size, (i // cols) * size))
    scale_up = max(1, 512 // size)
    grid = grid.resize((grid.width * scale_up, grid.height * scale_up), Image.NEAREST)
    grid.save(out)
    return out


def write_report(trainer: Any, metrics: dict[str, float]) -> Path:
    run_dir = Path(trainer.run_dir)
    rows = read_jsonl(run_dir / "metrics.jsonl")
    curves = plot_training_curves(rows, run_dir / "curves.png")
    grid = prediction_grid(trainer, run_dir / "predictions.png")
    table = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{v:.4f}</td></tr>" for k, v in metrics.items()
    )
    config = html.escape((run_dir / "config.yaml").read_text())
    images = "".join(
        f'<h2>{title}</h2><img src="{path.name}" alt="{title}">'
        for title, path in (("Training curves", curves), ("Validation predictions", grid))
        if path is not None
    )
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>tunedet run {html.escape(run_dir.name)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}
table{{border-collapse:collapse}}td{{border:1px solid #ccc;padding:2px 8px}}
img{{max-width:100%;border:1px solid #ddd}}pre{{background:#f6f6f6;padding:1em}}</style></head>
<body><h1>tunedet run: {html.escape(str(run_dir))}</h1>
<p>{trainer.iteration} iterations of {html.escape(trainer.cfg.model.type)}.</p>
<h2>Validation metrics</h2><table id="metrics">{table}</table>
{images}
<h2>Resolved config</h2><pre>{config}</pre></body></html>
"""
    out = run_dir / "report.html"
    out.write_text(page)
    return out
