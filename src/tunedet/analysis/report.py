"""The run report: ``report.html`` in the run directory, written at the end of every run.

Sections: validation metrics (table ``id="metrics"``), per-class AP with P/R/F1
at the score threshold with the best F1 (stated), F1 against score, PR curves and
the confusion matrix at IoU 0.5, training curves (one panel per quantity), a grid
of validation predictions and the resolved config. Pictures
are PNG files beside the HTML (``eval/`` holds the evaluation's PNGs and its
``metrics.json``); nothing is fetched from the network, so it opens offline.
A small inline script marks ``<body data-images-loaded="true">`` once every
image has loaded (what the browser test reads).
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from tunedet.analysis.curves import plot_run_curves, read_metrics_log
from tunedet.analysis.draw import draw_detections, overlay_masks

TILE = 280  # px per image in the prediction grid


@torch.no_grad()
def prediction_grid(
    model: Any, batch: Any, dataset: Any, out: Path, score_thr: float = 0.3
) -> Path | None:
    """Validation images with ground truth (thin white) and ``model``'s predictions
    (coloured, scored). ``batch``: the first images of ``dataset`` in order, one
    `DetectionBatch` on the model's device."""
    if batch is None or len(batch) == 0:
        return None
    model.eval()
    predictions = model.predict(batch.images, batch.image_sizes)
    classes = getattr(dataset, "classes", None)
    tiles = []
    for i, pred in enumerate(predictions):
        sample = dataset[i]  # the batch holds the dataset's first images, in order
        image = Image.fromarray(sample["image"])
        # draw on an enlarged image (~TILE px) so that text stays small and boxes sharp
        zoom = TILE / max(image.size)
        image = image.resize(
            (round(image.width * zoom), round(image.height * zoom)),
            Image.NEAREST if zoom >= 1 else Image.BILINEAR,
        )
        keep = pred["scores"] >= score_thr
        if "masks" in pred and bool(keep.any()):  # a mask detector: its masks under the boxes
            masks = torch.nn.functional.interpolate(
                pred["masks"][keep][None].float(),
                size=(image.height, image.width),
                mode="bilinear",
                align_corners=False,
            )[0]
            image = overlay_masks(
                image, (masks >= 0.5).cpu().numpy(), pred["labels"][keep].tolist()
            )
        image = draw_detections(image, sample["boxes"] * zoom, width=1, colour=(255, 255, 255))
        factor = zoom / batch.metas[i]["scale"]
        image = draw_detections(
            image,
            (pred["boxes"][keep] * factor).cpu().tolist(),
            pred["scores"][keep].cpu().tolist(),
            pred["labels"][keep].cpu().tolist(),
            classes,
        )
        tiles.append(image)
    gap = 4
    cols = min(4, len(tiles))
    rows = (len(tiles) + cols - 1) // cols
    cell_w = max(t.width for t in tiles) + gap
    cell_h = max(t.height for t in tiles) + gap
    grid = Image.new("RGB", (cols * cell_w - gap, rows * cell_h - gap), "white")
    for i, tile in enumerate(tiles):
        grid.paste(tile, ((i % cols) * cell_w, (i // cols) * cell_h))
    grid.save(out)
    return out


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if value != value or value == -1.0:  # NaN, or COCO's -1: nothing to measure
            return "n/a"
        return f"{value:.4f}"
    return html.escape(str(value))


def _table(header: list[str], rows: list[list[Any]], table_id: str) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _figure(src: str, alt: str, caption: str) -> str:
    return (
        f'<figure><img src="{html.escape(src)}" alt="{html.escape(alt)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


IMAGES_LOADED_SCRIPT = """<script>
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var ok = images.every(function (im) { return im.complete && im.naturalWidth > 0; });
  document.body.setAttribute("data-images-loaded", ok ? "true" : "false");
  document.body.setAttribute("data-image-count", String(images.length));
});
</script>"""


def operating_point(gt: dict, results: list[dict], iou_thr: float = 0.5) -> dict[str, Any]:
    """The best-F1 score threshold of all classes pooled, with the F1-vs-score curve:
    ``{"score_thr", "f1", "curve": (score, precision, recall, f1)}``."""
    from tunedet.evaluation import detection_set, match_detections, pr_curve
    from tunedet.evaluation.pr_metrics import best_f1_threshold, f1_by_score

    pooled = pr_curve(match_detections(detection_set(gt, results), iou_thr=iou_thr))
    score_thr, f1 = best_f1_threshold(pooled)
    return {"score_thr": score_thr, "f1": f1, "curve": f1_by_score(pooled)}


def evaluation_section(
    gt: dict, results: list[dict], run_dir: Path, score_thr: float | None = None
) -> str:
    """Per-class table, F1 against score, PR curves and confusion matrix of the validation
    set (COCO ground truth ``gt``, COCO-format ``results``; IoU 0.5). P/R/F1 and the
    confusion matrix are taken at ``score_thr``, by default the score with the best F1 of
    all classes pooled (stated in the report)."""
    from tunedet.evaluation import evaluation_summary, write_evaluation
    from tunedet.evaluation.plots import plot_f1_by_score

    point = operating_point(gt, results)
    chosen = point["score_thr"] if score_thr is None else score_thr
    summary = evaluation_summary(gt, results, score_thr=chosen)
    summary["operating_point"] = {"score_thr": chosen, "best_f1": point["f1"]}
    paths = write_evaluation(summary, run_dir / "eval")
    f1_png = plot_f1_by_score(
        *point["curve"], (point["score_thr"], point["f1"]), run_dir / "eval" / "f1_score.png"
    )
    det = summary["detection"]
    rows = [
        [
            name,
            summary["per_class_ap"].get(name, float("nan")),
            summary["per_class_ap50"].get(name, float("nan")),
            m["precision"],
            m["recall"],
            m["f1"],
            m["npos"],
            m["tp"],
            m["fp"],
            m["fppi"],
        ]
        for name, m in [*det["per_class"].items(), ("all", det["all"])]
    ]
    rows[-1][1:3] = [summary["coco"]["AP"], summary["coco"]["AP50"]]
    header = ["class", "AP", "AP50", "P", "R", "F1", "GT", "TP", "FP", "FPPI"]
    if score_thr is None and point["f1"] > 0:
        how = (
            f"the score with the best F1 of all classes pooled ({point['f1']:.3f}; "
            "see the F1 curve below)"
        )
    elif score_thr is None:
        how = "no detection is a true positive yet, so no F1 above 0: the default"
    else:
        how = "given"
    return (
        "<h2>Per-class results</h2>"
        f'<p id="score-threshold">Score threshold {chosen:.3f}: {how}. '
        "AP: COCO AP@[.50:.95]; AP50 at IoU 0.5. P, R, F1, TP, FP and false positives "
        f"per image (FPPI) count the detections scoring &ge; {chosen:.3f} matched at IoU 0.5; "
        "the last row pools all classes.</p>"
        + _table(header, rows, "per-class")
        + "<h2>F1 against score, precision-recall curves and confusion matrix</h2>"
        + _figure(
            f"eval/{f1_png.name}",
            "F1 against score",
            "F1, precision and recall of all classes pooled at each score threshold "
            "(IoU 0.5); the dashed line marks the threshold with the best F1.",
        )
        + _figure(
            f"eval/{paths['pr_curves'].name}",
            "PR curves",
            "Interpolated precision vs recall at IoU 0.5, per class and their mean "
            "(the area under each curve is its AP50).",
        )
        + _figure(
            f"eval/{paths['confusion_matrix'].name}",
            "confusion matrix",
            f"Rows: true class, columns: predicted class, at score \u2265 {chosen:.3f} and "
            "IoU \u2265 0.5; the background row counts false positives, the background "
            "column missed objects. All numbers: eval/metrics.json.",
        )
    )


def write_report(
    run_dir: str | Path,
    metrics: dict[str, float],
    model_type: str,
    iterations: int,
    model: Any = None,
    val_set: Any = None,
    val_results: list[dict] | None = None,
    val_batch: Any = None,
    score_thr: float | None = None,
) -> Path:
    """Write ``report.html`` (and its PNGs) in ``run_dir``; returns its path.

    ``metrics``: the final validation metrics (``Trainer.train``'s return); ``model_type``
    and ``iterations``: what ran, for the heading; ``model``: the weights evaluated (the
    EMA when kept); ``val_set``: the validation dataset (None: no evaluation sections),
    ``val_results`` its COCO-format results by ``model``, ``val_batch`` its first images
    as one batch on the model's device (the prediction grid); ``score_thr`` fixes the
    operating point (default: the best F1's score). ``cli.main.write_run_report`` takes
    them from a trainer.
    """
    run_dir = Path(run_dir)
    sections = []
    numeric = [[k, float(v)] for k, v in metrics.items() if isinstance(v, int | float)]
    if numeric:
        sections.append(
            "<h2>Validation metrics</h2>" + _table(["metric", "value"], numeric, "metrics")
        )
    else:
        sections.append(
            '<h2>Validation metrics</h2><table id="metrics"><tr><td>no validation set</td></tr>'
            "</table>"
        )
    if val_set is not None and len(val_set) and val_results is not None:
        gt = val_set.coco_ground_truth()
        sections.append(evaluation_section(gt, val_results, run_dir, score_thr))
    curves = plot_run_curves(read_metrics_log(run_dir / "metrics.jsonl"), run_dir / "curves.png")
    if curves is not None:
        sections.append(
            "<h2>Training curves</h2>"
            + _figure(
                curves.name,
                "training curves",
                "Loss terms, learning rate and "
                "validation metrics against iteration (from metrics.jsonl).",
            )  # fmt: skip
        )
    grid = None
    if model is not None and val_set is not None and len(val_set):
        grid = prediction_grid(model, val_batch, val_set, run_dir / "predictions.png", 0.3)
    if grid is not None:
        sections.append(
            "<h2>Validation predictions</h2>"
            + _figure(
                grid.name,
                "validation predictions",
                "Ground truth: thin white boxes; "
                "predictions scoring \u2265 0.3: coloured boxes with class and score.",
            )  # fmt: skip
        )
    config_file = run_dir / "config.yaml"
    config = html.escape(config_file.read_text()) if config_file.is_file() else ""
    title = f"tunedet run {run_dir.name}"
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}
table{{border-collapse:collapse;margin-bottom:1em}}
td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}}
td:first-child,th:first-child{{text-align:left}}th{{background:#f0f0f0}}
figure{{margin:1em 0}}figcaption{{color:#555;font-size:90%}}
img{{max-width:100%;border:1px solid #ddd}}pre{{background:#f6f6f6;padding:1em;overflow:auto}}
</style></head>
<body><h1>{html.escape(title)}</h1>
<p>{html.escape(str(run_dir))}: {iterations} iterations of
{html.escape(model_type)}.</p>
{"".join(sections)}
<h2>Resolved config</h2><pre>{config}</pre>
{IMAGES_LOADED_SCRIPT}
</body></html>
"""
    out = run_dir / "report.html"
    out.write_text(page)
    return out
