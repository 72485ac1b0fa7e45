"""Segmentation metrics on binary masks at the ground truth's resolution.

mIoU in this project is always the mean of per-image IoU (not a dataset-level pooled IoU), as in
the study; an empty prediction on an empty ground truth counts as a perfect 1.0.
"""

from __future__ import annotations

import numpy as np


def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
    union = np.logical_or(pred, gt).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(pred, gt).sum() / union)


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
    total = pred.sum() + gt.sum()
    if total == 0:
        return 1.0
    return float(2 * np.logical_and(pred, gt).sum() / total)
