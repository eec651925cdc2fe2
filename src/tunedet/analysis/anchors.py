"""``tunedet analyze anchors CONFIG``: do the anchors fit the boxes? k-means proposes better ones.

Boxes are read as the model sees them (the config's validation transforms,
which resize) from ``data.train`` (or ``--split val``). Shape fit ignores
position: a box and an anchor are compared centre on centre, so
``IoU = min(w) min(h) / (w h + w' h' - min(w) min(h))``; the best IoU of a
box over all anchor shapes is the best any anchor on the grid can do (the
``assign`` tool shows the real positives, position included).

Proposal (as YOLOv2's dimension clusters, with distance 1 - IoU):
1. drop extreme boxes (a side under ``min_side`` px, or area or aspect ratio
   outside the ``trim`` / ``1 - trim`` quantiles) so they cannot pull a centre;
2. k-means on (w, h) with k = levels x scales per octave, starting from the
   means of k equal-count groups of boxes sorted by area (deterministic),
   each box going to the centre of highest IoU, centres moving to the mean
   (w, h) of their boxes, until no box changes centre;
3. turn the centres, sorted by area, into the grid generator's knobs: level l
   takes the next ``scales_per_octave`` centres and its ``base_size`` is their
   geometric-mean size divided by the mean of the scales 2^(i/S); ``ratios``
   (h / w) are the geometric mean of the centres' aspect ratios when the
   config has one ratio, else evenly spaced quantiles of the boxes' ratios.
   A YOLO generator (explicit (w, h) per level) takes k = levels x anchors per level and
   the centres sorted by area as its ``sizes``, the smallest on the finest level; other
   generators (SSD's priors) get the coverage of their shapes and of k-means with one
   centre per level, and no proposal.
Mean best IoU and recall at IoU 0.5 are reported for the config's anchors,
the k-means centres and the proposed grid; the proposal is written as a
config fragment (``model.anchor_generator``) to merge with ``_base_``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from tunedet.analysis.inputs import (
    add_config_arguments,
    load_config,
    model_samples,
    plt,
    save_figure,
    split_dataset,
    spread_indices,
)


def dataset_box_sizes(cfg: Any, split: str = "train", max_images: int = 500) -> np.ndarray:
    """(N, 2) widths and heights (px of the model's input) of up to `max_images` images."""
    dataset = split_dataset(cfg, split)
    sizes = []
    for batch, _ in model_samples(cfg, dataset, spread_indices(len(dataset), max_images)):
        boxes = batch.gt_boxes[batch.gt_labels >= 0]
        sizes.append((boxes[:, 2:] - boxes[:, :2]).double().numpy())
    return np.concatenate(sizes) if sizes else np.zeros((0, 2))


def wh_iou(wh: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """(N, 2) x (K, 2) -> (N, K) IoU of centre-aligned boxes."""
    inter = np.minimum(wh[:, None, 0], anchors[None, :, 0]) * np.minimum(
        wh[:, None, 1], anchors[None, :, 1]
    )
    union = wh[:, None].prod(-1) + anchors[None, :].prod(-1) - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def drop_extreme_boxes(wh: np.ndarray, trim: float = 0.01, min_side: float = 2.0) -> np.ndarray:
    """Boolean mask of the boxes kept for clustering (see the module docstring)."""
    keep = wh.min(axis=1) >= min_side
    if keep.sum() == 0 or trim <= 0:
        return keep
    area = np.log(wh[:, 0] * wh[:, 1] + 1e-12)
    aspect = np.log((wh[:, 1] + 1e-12) / (wh[:, 0] + 1e-12))
    for values in (area, aspect):
        lo, hi = np.quantile(values[keep], [trim, 1 - trim])
        keep &= (values >= lo) & (values <= hi)
    return keep


def kmeans_wh(wh: np.ndarray, k: int, max_iter: int = 300) -> np.ndarray:
    """(k, 2) cluster centres of (w, h) with distance 1 - IoU, sorted by area."""
    if len(wh) < k:
        raise ValueError(f"k-means needs at least k = {k} boxes, got {len(wh)}")
    groups = np.array_split(np.argsort(wh.prod(axis=1), kind="stable"), k)
    centres = np.stack([wh[g].mean(axis=0) for g in groups])
    assignment = None
    for _ in range(max_iter):
        new = wh_iou(wh, centres).argmax(axis=1)
        if assignment is not None and np.array_equal(new, assignment):
            break
        assignment = new
        for j in range(k):
            members = wh[assignment == j]
            if len(members):
                centres[j] = members.mean(axis=0)
    return centres[np.argsort(centres.prod(axis=1), kind="stable")]


def coverage(wh: np.ndarray, anchors: np.ndarray, iou_thr: float = 0.5) -> dict[str, float]:
    """Mean best IoU of the boxes over `anchors` shapes and the fraction with best IoU >= thr."""
    if len(wh) == 0:
        return {"mean_best_iou": float("nan"), "recall": float("nan")}
    best = wh_iou(wh, anchors).max(axis=1)
    return {"mean_best_iou": float(best.mean()), "recall": float((best >= iou_thr).mean())}


def generator_shapes(generator: Any) -> np.ndarray:
    """(A, 2) (w, h) of every anchor shape of every level of an anchor generator."""
    levels = range(len(generator.strides))
    boxes = torch.cat([generator.base_anchors(level) for level in levels]).double().numpy()
    return boxes[:, 2:] - boxes[:, :2]


def generator_family(generator: Any) -> str:
    """``"grid"`` (base sizes x scales x ratios), ``"yolo"`` (explicit (w, h) per level) or
    ``"fixed"`` (any other generator, e.g. SSD's priors: coverage only, no proposal)."""
    from tunedet.anchors.grid import GridAnchorGenerator
    from tunedet.anchors.yolo import YOLOAnchorGenerator

    if isinstance(generator, YOLOAnchorGenerator):
        return "yolo"
    if type(generator) is GridAnchorGenerator:
        return "grid"
    return "fixed"


def default_k(generator: Any) -> int:
    """Clusters the proposal needs: levels x scales per octave (grid), every (w, h) (yolo);
    one per level for a generator the tool does not propose for."""
    family = generator_family(generator)
    if family == "grid":
        return len(generator.strides) * generator.scales_per_octave
    if family == "yolo":
        return len(generator.strides) * generator.num_anchors_per_location
    return len(generator.strides)


def propose_yolo(centres: np.ndarray, generator: Any) -> dict[str, list]:
    """``{"sizes": per level ((w, h), ...)}``: the centres sorted by area, the smallest to the
    finest level, as YOLOv3 distributes its 9 clusters over strides 8, 16, 32."""
    per_level = generator.num_anchors_per_location
    if len(centres) != len(generator.strides) * per_level:
        raise ValueError(f"need {len(generator.strides) * per_level} centres, got {len(centres)}")
    ordered = centres[np.argsort(centres.prod(axis=1), kind="stable")]
    sizes = [
        [[round(float(w), 1), round(float(h), 1)] for w, h in ordered[i : i + per_level]]
        for i in range(0, len(ordered), per_level)
    ]
    return {"sizes": sizes}


def propose_grid(centres: np.ndarray, wh: np.ndarray, generator: Any) -> dict[str, list[float]]:
    """``{"base_sizes": per level, "ratios": h / w}`` for the grid generator (docstring, step 3)."""
    levels, per_level = len(generator.strides), generator.scales_per_octave
    if len(centres) != levels * per_level:
        raise ValueError(f"need {levels * per_level} centres, got {len(centres)}")
    sizes = np.sqrt(centres.prod(axis=1)).reshape(levels, per_level)
    mean_scale = np.exp(np.mean(np.log(generator.scales)))
    base_sizes = np.exp(np.log(sizes).mean(axis=1)) / mean_scale
    log_aspect = np.log(wh[:, 1] / wh[:, 0])
    num_ratios = len(generator.ratios)
    if num_ratios == 1:
        ratios = [float(np.exp(np.mean(np.log(centres[:, 1] / centres[:, 0]))))]
    else:
        ratios = np.exp(np.quantile(log_aspect, (np.arange(num_ratios) + 0.5) / num_ratios))
    return {
        "base_sizes": [round(float(s), 2) for s in base_sizes],
        "ratios": [round(float(r), 3) for r in ratios],
    }


def analyze_anchors(
    wh: np.ndarray, generator: Any, k: int | None = None, trim: float = 0.01
) -> dict[str, Any]:
    """The report behind the tool: coverage of current, k-means and proposed anchors.

    `generator` is the config's anchor generator; `k` defaults to what the proposal needs
    (``default_k``). A grid generator gets new ``base_sizes`` / ``ratios``, a YOLO one new
    ``sizes``; other generators (SSD priors) get the coverage of their shapes and of the
    k-means centres, without a proposal.
    """
    from tunedet.anchors.grid import GridAnchorGenerator
    from tunedet.anchors.yolo import YOLOAnchorGenerator

    family = generator_family(generator)
    keep = drop_extreme_boxes(wh, trim=trim)
    k_needed = default_k(generator)
    centres = kmeans_wh(wh[keep], k or k_needed)
    current = generator_shapes(generator)
    out: dict[str, Any] = {
        "family": family,
        "num_boxes": int(len(wh)),
        "num_clustered": int(keep.sum()),
        "current": {"shapes": current.tolist(), **coverage(wh, current)},
        "kmeans": {"shapes": centres.tolist(), **coverage(wh, centres)},
    }
    if len(centres) != k_needed or family == "fixed":
        return out
    if family == "grid":
        proposal = propose_grid(centres, wh[keep], generator)
        proposed = GridAnchorGenerator(
            strides=generator.strides,
            scales_per_octave=generator.scales_per_octave,
            ratios=tuple(proposal["ratios"]),
            base_sizes=tuple(proposal["base_sizes"]),
            center_offset=generator.center_offset,
            scale_major=generator.scale_major,
        )
    else:
        proposal = propose_yolo(centres, generator)
        proposed = YOLOAnchorGenerator(
            strides=generator.strides,
            sizes=tuple(tuple(map(tuple, level)) for level in proposal["sizes"]),
            center_offset=generator.center_offset,
        )
    shapes = generator_shapes(proposed)
    out["proposed"] = {**proposal, "shapes": shapes.tolist(), **coverage(wh, shapes)}
    return out


def config_fragment(report: dict[str, Any], source: str, section: tuple[str, ...] = ()) -> str:
    """YAML text of ``model.[section.]anchor_generator`` with the proposed sizes, numbers in
    comments (``section=("rpn",)`` for a two-stage detector's RPN anchors)."""
    cur, new = report["current"], report["proposed"]
    header = (
        f"# Anchors proposed by `tunedet analyze anchors` for {source}\n"
        f"# from {report['num_boxes']} boxes ({report['num_clustered']} clustered), "
        "k-means on (w, h) with distance 1 - IoU.\n"
        f"# mean best IoU: current {cur['mean_best_iou']:.3f} -> proposed "
        f"{new['mean_best_iou']:.3f}; recall at IoU 0.5: current {cur['recall']:.3f} -> "
        f"proposed {new['recall']:.3f}\n"
        "# Use: `_base_: <your config>` followed by this fragment.\n"
    )
    knobs = ("sizes",) if report.get("family") == "yolo" else ("base_sizes", "ratios")
    body: dict[str, Any] = {"anchor_generator": {key: new[key] for key in knobs}}
    for key in reversed(("model", *section)):
        body = {key: body}
    return header + yaml.safe_dump(body, default_flow_style=None, sort_keys=False)


def plot_anchor_fit(wh: np.ndarray, report: dict[str, Any], out: str | Path) -> Path:
    """Left: box (w, h) with anchor shapes; right: best-IoU histograms, current vs proposed."""
    fig, (ax_wh, ax_hist) = plt.subplots(1, 2, figsize=(12, 5))
    ax_wh.scatter(wh[:, 0], wh[:, 1], s=6, alpha=0.35, color="grey", label="GT boxes")
    styles = {
        "current": dict(marker="x", s=70, color="tab:red"),
        "kmeans": dict(marker="D", s=110, color="tab:green", facecolors="none", zorder=3),
        "proposed": dict(marker="*", s=110, color="tab:blue"),
    }
    names = {
        "current": "config's anchors",
        "kmeans": "k-means centres",
        "proposed": "proposed grid",
    }
    bins = np.linspace(0, 1, 41)
    for key in ("current", "kmeans", "proposed"):
        if key not in report:
            continue
        shapes = np.asarray(report[key]["shapes"])
        label = (
            f"{names[key]}: mean IoU {report[key]['mean_best_iou']:.3f}, "
            f"recall@0.5 {report[key]['recall']:.3f}"
        )
        ax_wh.scatter(shapes[:, 0], shapes[:, 1], label=label, **styles[key])
        if key != "kmeans":
            best = wh_iou(wh, shapes).max(axis=1) if len(wh) else np.zeros(0)
            ax_hist.hist(best, bins=bins, alpha=0.55, color=styles[key]["color"], label=label)
    ax_wh.set_xscale("log")
    ax_wh.set_yscale("log")
    ax_wh.set_xlabel("width (px, model input)")
    ax_wh.set_ylabel("height (px, model input)")
    ax_wh.set_title(f"Box sizes ({report['num_boxes']} boxes) and anchor shapes")
    ax_wh.grid(alpha=0.3, which="both")
    ax_wh.legend(fontsize=8, loc="upper left")
    ax_hist.axvline(0.5, color="black", linestyle="--", linewidth=1, label="IoU 0.5")
    ax_hist.set_xlabel("best IoU of a box with any anchor shape (centres aligned)")
    ax_hist.set_ylabel("number of boxes")
    ax_hist.set_title("How well the anchor shapes fit the boxes")
    ax_hist.legend(fontsize=8, loc="upper left")
    ax_hist.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, out)


def run(args: argparse.Namespace) -> int:
    from tunedet.models import build_detector
    from tunedet.models.pretrained import skip_backbone_init

    cfg = load_config(args.config, args.overrides)
    model = build_detector(skip_backbone_init(cfg.model.model_dump()))  # anchors only
    # a two-stage detector's anchors are its RPN's (model.rpn.anchor_generator)
    section = ("rpn",) if hasattr(model, "rpn") else ()
    generator = getattr(model.rpn if section else model, "anchor_generator", None)
    if generator is None:
        raise ValueError(
            f"analyze anchors fits anchor shapes; model.type {cfg.model.type} has no anchors"
        )
    wh = dataset_box_sizes(cfg, args.split, args.max_images)
    report = analyze_anchors(wh, generator, k=args.k, trim=args.trim)
    out_dir = Path(args.out)
    png = plot_anchor_fit(wh, report, out_dir / "anchors.png")
    for key in ("current", "kmeans", "proposed"):
        if key in report:
            r = report[key]
            print(f"{key:>8}: mean best IoU {r['mean_best_iou']:.3f}, recall@0.5 {r['recall']:.3f}")
    print(f"wrote {png}")
    if report["family"] == "fixed":
        print(
            f"no proposal: the tool proposes grid and YOLO anchors, not {type(generator).__name__}"
        )
    if "proposed" in report:
        fragment = out_dir / "anchors.yaml"
        fragment.write_text(config_fragment(report, args.config, section))
        print(f"wrote {fragment}")
    return 0


def add_analyze_command(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "anchors", help="anchor fit to the dataset's boxes; k-means (1 - IoU) proposes sizes"
    )
    add_config_arguments(p)
    p.add_argument("--split", choices=["train", "val"], default="train")
    p.add_argument("--max-images", type=int, default=500)
    p.add_argument("--k", type=int, help="clusters (default: what the proposal needs)")
    p.add_argument("--trim", type=float, default=0.01, help="quantile of extremes dropped")
    p.add_argument("--out", default="runs/analyze", help="folder for anchors.png / anchors.yaml")
    p.set_defaults(func=run)
