"""Predicting a dataset and scoring the predictions, in one process or sharded over ranks.

``predict_dataset`` gives COCO-format results (boxes in original image pixels) of a
model on a dataset, through ``eval.tta`` and ``eval.sliced`` when set; under torchrun
each rank predicts every ``world_size``-th batch of the sequential order
(``evaluation_batches``) and ``merge_shards`` restores the 1-process order, so the
union is scored exactly as in one process. ``evaluate_results`` scores results with
the config's metric: COCO's 12 statistics, or VOC mAP (``voc07``: 11-point, ``voc12``:
area under the precision envelope). ``predict_dataset`` and ``evaluate_model`` take an
`EvalSettings` (``engine.build.eval_settings`` unpacks a config into it), not the config.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from tqdm import tqdm

from tunedet.data.build import build_loader
from tunedet.engine import distributed
from tunedet.engine.progress import bars_enabled
from tunedet.engine.sliced_inference import sliced_predict_dataset
from tunedet.evaluation import coco_evaluate, format_coco_table, voc_evaluate

if TYPE_CHECKING:
    from tunedet.config.schema import SlicedConfig, TTAConfig


@dataclass(frozen=True)
class EvalSettings:
    """How a dataset is predicted and scored: the validation loader's settings and the
    config's ``eval`` section (``engine.build.eval_settings`` fills it from a config).

    ``transforms``: the ``data.val_transforms`` specs; ``batch_size``: ``data.val_batch_size
    or data.batch_size``; ``metric``, ``score_thr``, ``tta``, ``sliced``: ``eval.*``;
    ``progress``: ``train.progress`` (a bar on a terminal)."""

    transforms: list[Any]
    batch_size: int
    size_divisor: int = 32
    num_workers: int = 0
    seed: int = 0
    metric: str = "coco"
    score_thr: float | None = None
    tta: TTAConfig | None = None
    sliced: SlicedConfig | None = None
    progress: bool = True


def evaluate_model(
    model: Any,
    dataset: Any,
    settings: EvalSettings,
    device: torch.device,
    log: Any = print,
    segm: bool = False,
) -> dict[str, float]:
    """Metrics of ``model`` on ``dataset``, logged as a table. Called by every rank: each
    predicts its shard of the batches, rank 0 scores their union (the same results, in
    the same order, as a 1-process run) and shares the metrics."""
    rank, world_size = distributed.rank(), distributed.world_size()
    shard = predict_dataset(model, dataset, settings, device, rank, world_size)
    results = merge_shards(distributed.gather_objects(shard)) if world_size > 1 else shard
    metrics = None
    if rank == 0:
        metrics = evaluate_results(dataset.coco_ground_truth(), results, settings.metric, segm)
        if settings.metric == "coco":
            log(format_coco_table(metrics))
        else:
            log(json.dumps({k: v for k, v in metrics.items() if k[:5] != "segm_"}))
        if segm:
            masks = {k[5:]: v for k, v in metrics.items() if k[:5] == "segm_"}
            log("segm:\n" + format_coco_table(masks))
    return distributed.broadcast_object(metrics)


def evaluation_batches(num_images: int, batch_size: int, rank: int, world_size: int) -> list:
    """Batch ``b`` of the sequential order (``batch_size`` images) goes to rank
    ``b % world_size``: each batch is padded and predicted exactly as in 1 process."""
    starts = range(rank * batch_size, num_images, world_size * batch_size)
    return [list(range(s, min(s + batch_size, num_images))) for s in starts]


def merge_shards(shards: list[list[dict]]) -> list[dict]:
    """The union of the ranks' ``predict_dataset`` shards in 1-process order: rank ``r``'s
    ``k``-th batch is global batch ``k · world_size + r``."""
    world = len(shards)
    by_batch: dict[int, list[dict]] = {}
    for r, shard in enumerate(shards):
        for result in shard:
            by_batch.setdefault(result["_batch"] * world + r, []).append(result)
    return [
        {k: v for k, v in result.items() if k != "_batch"}
        for b in sorted(by_batch)
        for result in by_batch[b]
    ]


@torch.no_grad()
def predict_dataset(
    model: Any,
    dataset: Any,
    settings: EvalSettings,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
) -> list[dict]:
    """COCO-format results of ``model`` on ``dataset`` (sequential batches of
    ``settings.batch_size``), through ``settings.tta`` and ``settings.sliced`` when set.
    With ``world_size > 1`` only this rank's batches (``evaluation_batches``), each result
    tagged ``_batch`` (its local batch number) for ``merge_shards``."""
    from tunedet.data.build import build_transforms
    from tunedet.engine.test_time_augmentation import with_tta
    from tunedet.evaluation import detections_to_coco_results

    model = with_tta(model, settings.tta, settings.size_divisor)  # the image's flips too
    if settings.sliced is not None:  # whole images through tiles (engine/sliced_inference.py)
        return sliced_predict_dataset(
            model,
            dataset,
            settings.sliced,
            build_transforms(settings.transforms),
            device,
            size_divisor=settings.size_divisor,
            score_thr=settings.score_thr,
            progress=settings.progress,
            rank=rank,
            world_size=world_size,
        )
    batches = None
    if world_size > 1:
        batches = evaluation_batches(len(dataset), settings.batch_size, rank, world_size)
    loader = build_loader(
        dataset,
        settings.transforms,
        seed=settings.seed,
        batch_sampler=batches,
        batch_size=None if batches is not None else settings.batch_size,
        num_workers=settings.num_workers,
        size_divisor=settings.size_divisor,
    )
    gt = dataset.coco_ground_truth()
    label_to_category = sorted(c["id"] for c in gt["categories"])
    model.eval()
    results: list[dict] = []
    show = bars_enabled(settings.progress) and rank == 0  # no bar into a log file
    for index, batch in enumerate(tqdm(loader, desc="eval", leave=False, disable=not show)):
        batch = batch.to(device)
        predictions = model.predict(batch.images, batch.image_sizes)
        if settings.score_thr is not None:
            predictions = [
                {k: v[p["scores"] >= settings.score_thr] for k, v in p.items()} for p in predictions
            ]
        batch_results = detections_to_coco_results(
            predictions,
            [m["image_id"] for m in batch.metas],
            [m["scale"] for m in batch.metas],
            label_to_category,
            orig_sizes=[m["orig_size"] for m in batch.metas],
        )
        if world_size > 1:
            batch_results = [{**r, "_batch": index} for r in batch_results]
        results.extend(batch_results)
    return results


def evaluate_results(
    gt: dict, results: list[dict], metric: str, segm: bool = False
) -> dict[str, float]:
    """The box metrics of ``eval.metric`` (COCO's 12 stats, or VOC mAP and AP per class);
    with ``segm`` (a mask detector's results) also the 12 COCO mask stats as ``segm_AP``,
    ``segm_AP50``, ..."""
    if metric == "coco":
        out = coco_evaluate(gt, results)
    else:
        summary = voc_evaluate(gt, results, iou_thr=0.5, use_07_metric=metric == "voc07")
        out = {"mAP": float(summary["mAP"])}
        out.update({f"AP/{name}": float(ap) for name, ap in summary["per_class"].items()})
    if segm:
        stats = coco_evaluate(gt, results, iou_type="segm")
        out.update({f"segm_{name}": value for name, value in stats.items()})
    return out
