"""Sliced inference: detect on overlapping tiles of a large image, merge across tiles.

Images much larger than the network input (aerial tiles of 2000 px with 30-px
trees) lose their small objects when resized to the input size. Sliced
inference (Akyon et al., "Slicing Aided Hyper Inference", ICIP 2022) runs the
detector on tiles (`tunedet.data.tiling.make_tiles`, the same tiles as tiled
training), each through the validation transforms, maps every tile detection
back to full-image pixels (``box / tile_scale + (x0, y0)``) and merges the
duplicates that overlapping tiles produce, per class:

- ``merge: nms``: greedy non-maximum suppression -- a box is dropped when it
  matches a higher-scoring kept box;
- ``merge: nmm``: greedy non-maximum *merging* -- the matched boxes are merged
  into the kept one (their union; the score stays the kept box's), and the
  union is matched again until no more boxes join, so an object cut by tile
  edges and seen whole by a neighbouring tile comes back as one whole box
  whichever of its pieces scored higher. Only boxes of tiles that have not
  contributed yet can join (never the kept box's own tile): the detector's NMS
  already separated the objects within a tile, and dense objects (tree
  crowns) are not chained into one large box.

"Match" is ``match_metric >= match_thr`` with IoU, or IoS = intersection /
area of the smaller box (a partial box inside the whole one has IoS 1).
Configured by ``eval.sliced`` (`SlicedConfig`); ``tunedet eval`` and ``tunedet
infer`` use it when set.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torchvision.ops import batched_nms
from tqdm import tqdm

from tunedet.data.loader import collate_detection
from tunedet.data.tiling import make_tiles
from tunedet.engine.progress import bars_enabled

if TYPE_CHECKING:
    from tunedet.config.schema import SlicedConfig


def pairwise_match(box: torch.Tensor, boxes: torch.Tensor, metric: str) -> torch.Tensor:
    """IoU or IoS of one ``box (4,)`` with ``boxes (K, 4)`` xyxy -> ``(K,)``."""
    lt = torch.maximum(box[:2], boxes[:, :2])
    rb = torch.minimum(box[2:], boxes[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=1)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    if metric == "iou":
        denominator = area + areas - inter
    else:
        denominator = torch.minimum(area.expand_as(areas), areas)
    return inter / denominator.clamp(min=1e-12)


def merge_detections(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    merge: str = "nmm",
    match_metric: str = "ios",
    match_thr: float = 0.5,
    groups: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Greedy class-aware NMS or NMM of ``boxes (K, 4)`` (see the module docstring).

    ``groups (K,)`` (the tile of each box): a box only matches boxes of groups
    not yet among the kept box's matches -- the detector's own NMS already
    separated the boxes of one tile, and this stops the union from swallowing
    neighbouring objects of the same tile in dense scenes. Not used by the
    ``nms`` + ``iou`` case, which is `torchvision.ops.batched_nms`.

    Returns ``{"boxes", "scores", "labels"}`` of the kept detections, by
    decreasing score.
    """
    if merge == "nms" and match_metric == "iou":
        keep = batched_nms(boxes, scores, labels, match_thr)
        return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}
    if len(boxes) == 0:
        return {"boxes": boxes.reshape(0, 4), "scores": scores, "labels": labels}
    order = scores.argsort(descending=True)
    boxes, scores, labels = boxes[order], scores[order], labels[order]
    groups = torch.arange(len(boxes), device=boxes.device) if groups is None else groups[order]
    # Class-aware by moving each class to its own region of the plane.
    offset = labels.to(boxes.dtype)[:, None] * (boxes.max().clamp(min=0) + 1)
    moved = boxes + offset
    alive = torch.ones(len(boxes), dtype=torch.bool, device=boxes.device)
    kept, out_boxes = [], []
    for i in range(len(boxes)):
        if not alive[i]:
            continue
        free = alive[i:] & (groups[i:] != groups[i])
        match = pairwise_match(moved[i], moved[i:], match_metric) >= match_thr
        match &= free
        match[0] = True
        if merge == "nmm":  # match the growing union again until no box joins
            while True:
                members = moved[i:][match]
                union = torch.cat([members[:, :2].amin(0), members[:, 2:].amax(0)])
                free &= ~torch.isin(groups[i:], groups[i:][match])
                more = (pairwise_match(union, moved[i:], match_metric) >= match_thr) & free
                if not more.any():
                    break
                match |= more
            out_boxes.append(union - offset[i].repeat(4)[:4])
        else:
            out_boxes.append(boxes[i])
        alive[i:] &= ~match
        kept.append(i)
    index = torch.tensor(kept, dtype=torch.long, device=boxes.device)
    merged = torch.stack(out_boxes) if out_boxes else boxes.new_zeros((0, 4))
    return {"boxes": merged, "scores": scores[index], "labels": labels[index]}


@torch.no_grad()
def sliced_predict(
    model: Any,
    image: np.ndarray,
    transforms: Sequence[Callable[[dict, np.random.Generator], dict]],
    device: torch.device,
    tile: int = 512,
    overlap: float = 0.25,
    merge: str = "nmm",
    match_metric: str = "ios",
    match_thr: float = 0.5,
    batch_size: int = 8,
    max_dets: int = 300,
    size_divisor: int = 32,
) -> dict[str, torch.Tensor]:
    """Detections ``{"boxes" (K, 4) xyxy, "scores", "labels"}`` of one ``(H, W, 3)`` uint8
    image in its own pixels, from the detector's ``predict`` on overlapping tiles."""
    tiles = make_tiles(image.shape[:2], tile, overlap)
    rng = np.random.default_rng(0)  # validation transforms are deterministic
    boxes, scores, labels, tile_ids = [], [], [], []
    for start in range(0, len(tiles), batch_size):
        chunk = tiles[start : start + batch_size]
        samples = []
        for x0, y0, x1, y1 in chunk:
            sample = {
                "image": np.ascontiguousarray(image[y0:y1, x0:x1]),
                "boxes": np.zeros((0, 4), np.float32),
                "labels": np.zeros((0,), np.int64),
                "image_id": 0,
                "file": "",
                "orig_size": (y1 - y0, x1 - x0),
                "scale": 1.0,
            }
            for transform in transforms:
                sample = transform(sample, rng)
            samples.append(sample)
        batch = collate_detection(samples, size_divisor=size_divisor).to(device)
        for pred, meta, (x0, y0, _, _) in zip(
            model.predict(batch.images, batch.image_sizes), batch.metas, chunk, strict=True
        ):
            shift = torch.tensor([x0, y0, x0, y0], dtype=pred["boxes"].dtype, device=device)
            boxes.append(pred["boxes"] / meta["scale"] + shift)
            scores.append(pred["scores"])
            labels.append(pred["labels"])
            tile_ids.append(torch.full_like(pred["labels"], len(tile_ids)))
    merged = merge_detections(
        torch.cat(boxes),
        torch.cat(scores),
        torch.cat(labels),
        merge,
        match_metric,
        match_thr,
        torch.cat(tile_ids),
    )
    return {k: v[:max_dets] for k, v in merged.items()}


def sliced_predict_dataset(
    model: Any,
    dataset: Any,
    sliced: SlicedConfig,
    transforms: Sequence[Callable[[dict, np.random.Generator], dict]],
    device: torch.device,
    size_divisor: int = 32,
    score_thr: float | None = None,
    progress: bool = False,
    rank: int = 0,
    world_size: int = 1,
) -> list[dict]:
    """COCO-format results of ``dataset`` (whole images, in their pixels) by sliced
    inference with the settings of ``sliced`` (``eval.sliced``) and ``transforms`` (the
    validation transforms); detections scoring below ``score_thr`` dropped; ``progress``:
    a bar on a terminal (``train.progress``).

    With ``world_size > 1`` this rank does images ``rank, rank + world_size, ...``,
    each result tagged ``_batch`` (its local image number), as `predict_dataset`'s
    shards with batches of one image."""
    from tunedet.evaluation import detections_to_coco_results

    gt = dataset.coco_ground_truth()
    label_to_category = sorted(c["id"] for c in gt["categories"])
    model.eval()
    results: list[dict] = []
    indices = range(rank, len(dataset), world_size)
    show = bars_enabled(progress) and rank == 0  # no bar into a log file
    for local, index in enumerate(tqdm(indices, desc="sliced eval", leave=False, disable=not show)):
        sample = dataset[index]
        pred = sliced_predict(
            model,
            sample["image"],
            transforms,
            device,
            size_divisor=size_divisor,
            **sliced.model_dump(),
        )
        if score_thr is not None:
            pred = {k: v[pred["scores"] >= score_thr] for k, v in pred.items()}
        image_results = detections_to_coco_results(
            [pred], [sample["image_id"]], [1.0], label_to_category
        )
        if world_size > 1:
            image_results = [{**r, "_batch": local} for r in image_results]
        results.extend(image_results)
    return results
