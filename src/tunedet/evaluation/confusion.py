"""Detection confusion matrix with a background row and column.

Per image, the detections scoring >= `score_thr`, best first, each take the
free non-crowd GT they overlap most with IoU >= `iou_thr`, *whatever its
class* (so a right box with the wrong label shows up off the diagonal):
- matched pair: row = GT class, column = predicted class;
- detection without a GT: row "background", column = predicted class (a
  false positive); one lying on a crowd region (intersection / detection
  area >= `iou_thr`) is left out;
- GT left without a detection: row = GT class, column "background" (a miss).
The background/background cell is always 0. Rows: true class; columns: predicted.
"""

from __future__ import annotations

import numpy as np

from tunedet.evaluation.matching import DetectionSet, box_iou_with_crowd


def confusion_matrix(
    data: DetectionSet, score_thr: float = 0.5, iou_thr: float = 0.5
) -> np.ndarray:
    """(K + 1, K + 1) int64 counts; index K is background (rows: true, columns: predicted)."""
    k_bg = data.num_classes
    matrix = np.zeros((k_bg + 1, k_bg + 1), dtype=np.int64)
    confident = np.flatnonzero(data.det_score >= score_thr)
    # per image: detections best first (stable), GT in annotation order
    confident = confident[np.lexsort((-data.det_score[confident], data.det_image[confident]))]
    gt_order = np.argsort(data.gt_image, kind="stable")
    images = np.arange(data.num_images + 1)
    det_bounds = np.searchsorted(data.det_image[confident], images)
    gt_bounds = np.searchsorted(data.gt_image[gt_order], images)
    for image in range(data.num_images):
        dets = confident[det_bounds[image] : det_bounds[image + 1]]
        gts = gt_order[gt_bounds[image] : gt_bounds[image + 1]]
        crowd = data.gt_crowd[gts]
        iou = box_iou_with_crowd(data.det_boxes[dets], data.gt_boxes[gts], crowd)
        taken = np.zeros(len(gts), dtype=bool)
        for i, d in enumerate(dets):
            free = ~crowd & ~taken & (iou[i] >= iou_thr)
            if free.any():
                g = int(np.argmax(np.where(free, iou[i], -1.0)))
                taken[g] = True
                matrix[data.gt_class[gts[g]], data.det_class[d]] += 1
            elif not (crowd & (iou[i] >= iou_thr)).any():
                matrix[k_bg, data.det_class[d]] += 1
        missed = gts[~crowd & ~taken]
        np.add.at(matrix, (data.gt_class[missed], k_bg), 1)
    return matrix
