"""Segmentation metrics on binary masks at the ground truth's resolution.

mIoU in this project is always the mean of per-image IoU (not a dataset-level pooled IoU), as in
the study; an empty prediction on an empty ground truth counts as a perfect 1.0.

Beyond IoU/Dice the module carries the salient/camouflaged-object metrics (MAE, S-alpha, E-phi,
weighted F-beta) so camouflage results are comparable with that literature, plus a boundary F1 that
rewards tight contours, which IoU on large objects hardly sees. The SOD metrics follow the
reference implementation ``py_sod_metrics`` (checked in tests/test_metrics.py) with three
deliberate differences, all in degenerate cases or of order 1/(H*W):

* predictions are used as given, never min-max rescaled (py_sod_metrics' ``normalize=True`` does
  MATLAB's ``mapminmax``, which would turn a 0.1..0.3 probability map into 0..1);
* E-phi is the mean of the enhanced alignment matrix (divides by H*W as in the paper, not H*W-1 as
  the MATLAB code does), so a perfect prediction scores exactly 1.0;
* an empty ground truth follows this module's convention (empty prediction = 1.0) where the
  reference returns 0 (weighted F-beta always, E-phi via its adaptive threshold collapsing to 0).

Predictions are HxW arrays, bool or float in [0, 1]; a float prediction is binarised as
``pred > 0.5`` (``BINARY_THRESHOLD``, SAM's logit > 0) for the region/contour metrics, while MAE,
S-alpha and weighted F-beta use the continuous values as the SOD literature does.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy.ndimage import distance_transform_edt

BINARY_THRESHOLD = 0.5
"""A float prediction counts as foreground where ``pred > 0.5`` (sigmoid of SAM's logit > 0)."""

BOUNDARY_TOLERANCE_FRACTION = 0.0075
"""Default boundary-F1 tolerance as a fraction of the image diagonal. Close to DAVIS's 0.008 and
the 0.75% used in the BF-score literature: ~3 px at 256 px, ~11 px at 1024 px (a SAM mask upsampled
from 256x256 low-res logits is ~4 px uncertain at 1024 px, so tighter would mostly score noise)."""

_EPS = float(np.spacing(1))  # MATLAB's eps, as the reference implementations use it
_CROSS = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
METRIC_KEYS: tuple[str, ...] = ("iou", "dice", "boundary_f1", "mae", "s_alpha", "e_phi", "wf_beta")
"""The keys of ``all_metrics``; MAE is the only one where lower is better."""


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


# ----------------------------------------------------------------------------- input handling


def _prepare(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(float64 prediction in [0, 1], bool GT), refusing shapes or ranges that would silently
    produce a wrong number (a 0..255 mask would otherwise give MAE > 1)."""
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.ndim != 2 or pred.shape != gt.shape:
        raise ValueError(f"pred and gt must be HxW of the same shape, got {pred.shape} and {gt.shape}")
    p = pred.astype(np.float64, copy=False)
    if pred.dtype != bool and p.size and not (p.min() >= 0.0 and p.max() <= 1.0):
        raise ValueError("pred must be bool or float in [0, 1] (got values outside, or NaN)")
    return p, gt.astype(bool, copy=False)


def _binary(p: np.ndarray) -> np.ndarray:
    return p > BINARY_THRESHOLD


# ----------------------------------------------------------------------------- boundary F1


def default_boundary_tolerance(shape: tuple[int, int]) -> int:
    """Tolerance in pixels: 0.75% of the diagonal, rounded half up, at least 1 px."""
    h, w = shape[:2]
    return max(1, int(np.floor(BOUNDARY_TOLERANCE_FRACTION * np.hypot(h, w) + 0.5)))


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """Mask pixels with a 4-neighbour outside the mask. The image frame does not count as outside:
    a mask cut by the frame has no drawn contour there, so it must not earn or cost boundary hits."""
    m = np.asarray(mask, np.uint8)
    return m.astype(bool) & ~cv2.erode(m, _CROSS, borderType=cv2.BORDER_REPLICATE).astype(bool)


def _distance_to(boundary: np.ndarray) -> np.ndarray:
    """Exact Euclidean distance of every pixel to the nearest pixel of ``boundary`` (non-empty)."""
    return cv2.distanceTransform((~boundary).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)


def _bbox_slices(mask: np.ndarray, pad: int) -> tuple[slice, slice]:
    """Bounding box of a non-empty mask grown by ``pad`` and clipped to the image: distance work is
    done there only, which is exact whenever every feature pixel lies inside it."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    h, w = mask.shape
    return (
        slice(max(rows[0] - pad, 0), min(rows[-1] + pad + 1, h)),
        slice(max(cols[0] - pad, 0), min(cols[-1] + pad + 1, w)),
    )


def _boundary_f1(pb: np.ndarray, g: np.ndarray, tolerance: int | None) -> float:
    tol = default_boundary_tolerance(g.shape) if tolerance is None else tolerance
    bp, bg = boundary_map(pb), boundary_map(g)
    n_p, n_g = int(bp.sum()), int(bg.sum())
    if n_p == 0 or n_g == 0:
        return 1.0 if n_p == n_g else 0.0  # both without contour (empty/full) agree perfectly
    crop = _bbox_slices(bp | bg, 1)  # distances between boundary pixels never leave their bbox
    bp, bg = bp[crop], bg[crop]
    precision = np.count_nonzero(_distance_to(bg)[bp] <= tol) / n_p
    recall = np.count_nonzero(_distance_to(bp)[bg] <= tol) / n_g
    if precision + recall == 0:
        return 0.0
    return float(2 * precision * recall / (precision + recall))


def boundary_f1(pred: np.ndarray, gt: np.ndarray, tolerance: int | None = None) -> float:
    """F-measure of contour precision/recall: a boundary pixel is matched when the other mask's
    boundary lies within ``tolerance`` px (Euclidean; default ``default_boundary_tolerance``)."""
    p, g = _prepare(pred, gt)
    return _boundary_f1(_binary(p), g, tolerance)


# ----------------------------------------------------------------------------- MAE


def _mae(p: np.ndarray, g: np.ndarray) -> float:
    return float(np.abs(p - g).mean())


def mae(pred: np.ndarray, gt: np.ndarray) -> float:
    """Mean absolute error between the (soft) prediction and the binary GT; 0 is perfect."""
    p, g = _prepare(pred, gt)
    return _mae(p, g)


# ----------------------------------------------------------------------------- S-alpha


def _s_object(x: np.ndarray) -> float:
    mean = float(x.mean())
    std = float(x.std(ddof=1)) if x.size > 1 else 0.0
    return 2 * mean / (mean**2 + 1 + std + _EPS)


def _ssim(p: np.ndarray, g: np.ndarray) -> float:
    """SSIM of one quadrant as in Fan et al.'s code (whole-region statistics, no window)."""
    n = p.size
    x, y = p.mean(), g.mean()
    dp, dg = p - x, g - y
    sxx = (dp * dp).sum() / (n - 1 + _EPS)
    syy = (dg * dg).sum() / (n - 1 + _EPS)
    sxy = (dp * dg).sum() / (n - 1 + _EPS)
    a = 4 * x * y * sxy
    b = (x**2 + y**2) * (sxx + syy)
    if a != 0:
        return float(a / (b + _EPS))
    return 1.0 if b == 0 else 0.0


def _s_alpha(p: np.ndarray, g: np.ndarray, alpha: float = 0.5) -> float:
    y = g.mean()
    if y == 0:
        return float(1 - p.mean())
    if y == 1:
        return float(p.mean())
    obj = _s_object(p[g]) * y + _s_object(1 - p[~g]) * (1 - y)
    h, w = g.shape
    cy, cx = (int(v) + 1 for v in np.argwhere(g).mean(0).round())  # +1: MATLAB's 1:X includes X
    gf = g.astype(np.float64)
    region = 0.0
    for rows in (slice(0, cy), slice(cy, h)):
        for cols in (slice(0, cx), slice(cx, w)):
            pq = p[rows, cols]
            if pq.size:  # the reference yields NaN for an empty quadrant; its weight is 0 anyway
                region += _ssim(pq, gf[rows, cols]) * (pq.size / (h * w))
    return float(max(0.0, alpha * obj + (1 - alpha) * region))


def s_alpha(pred: np.ndarray, gt: np.ndarray, alpha: float = 0.5) -> float:
    """Structure measure (Fan et al., ICCV 2017): object- and region-level structural similarity,
    the standard headline metric for camouflaged-object detection; 1 is perfect."""
    p, g = _prepare(pred, gt)
    return _s_alpha(p, g, alpha)


# ----------------------------------------------------------------------------- E-phi


def _e_phi(pb: np.ndarray, g: np.ndarray) -> float:
    n = g.size
    n_gt = int(np.count_nonzero(g))
    n_pred = int(np.count_nonzero(pb))
    if n_gt == 0:
        return float((n - n_pred) / n)
    if n_gt == n:
        return float(n_pred / n)
    tp = int(np.count_nonzero(pb & g))
    fp = n_pred - tp
    fn = n_gt - tp
    tn = n - n_pred - fn
    mp, mg = n_pred / n, n_gt / n
    total = 0.0
    for count, a, b in ((tp, 1 - mp, 1 - mg), (fp, 1 - mp, -mg), (fn, -mp, 1 - mg), (tn, -mp, -mg)):
        align = 2 * a * b / (a * a + b * b + _EPS)
        total += count * (align + 1) ** 2 / 4
    return float(total / n)


def e_phi(pred: np.ndarray, gt: np.ndarray) -> float:
    """Enhanced-alignment measure (Fan et al., IJCAI 2018) of the binarised prediction: pixel-level
    agreement combined with image-level statistics; on a binary mask this is the literature's
    "adaptive" E-measure. 1 is perfect. Computed from the confusion counts, so it is O(H*W)."""
    p, g = _prepare(pred, gt)
    return _e_phi(_binary(p), g)


# ----------------------------------------------------------------------------- weighted F-beta


def _gauss7() -> np.ndarray:
    """MATLAB's fspecial('gaussian', 7, 5), the kernel Margolin et al. use."""
    y, x = np.ogrid[-3:4, -3:4]
    k = np.exp(-(x * x + y * y) / (2 * 5.0**2))
    return k / k.sum()


_GAUSS7 = _gauss7()


def _wf_beta(p: np.ndarray, g: np.ndarray, beta2: float = 1.0) -> float:
    if not g.any():
        return 0.0 if _binary(p).any() else 1.0
    err = np.abs(p - g)
    # Background pixels take the error of their nearest GT pixel (MATLAB's [Dst, IDXT] =
    # bwdist(GT)) before the 7x7 blur; only the blur's footprint around the GT reads those values,
    # so the nearest-pixel indices are computed in the GT's bbox + 3 px (exact: every GT pixel is
    # inside it); the distance itself is needed everywhere and is cheap without indices.
    dst = cv2.distanceTransform((~g).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    ys, xs = _bbox_slices(g, 3)
    iy, ix = distance_transform_edt(~g[ys, xs], return_distances=False, return_indices=True)
    et = np.zeros_like(err)
    et[ys, xs] = err[ys, xs][iy, ix]
    ea = cv2.filter2D(et, -1, _GAUSS7, borderType=cv2.BORDER_CONSTANT)
    min_e_ea = np.where(g & (ea < err), ea, err)
    weight = np.where(g, 1.0, 2 - np.exp(np.log(0.5) / 5 * dst.astype(np.float64)))
    ew = min_e_ea * weight
    ew_fg = ew[g]
    tpw = g.sum() - ew_fg.sum()
    fpw = ew[~g].sum()
    recall = 1 - ew_fg.mean()
    precision = tpw / (tpw + fpw + _EPS)
    return float((1 + beta2) * recall * precision / (recall + beta2 * precision + _EPS))


def wf_beta(pred: np.ndarray, gt: np.ndarray, beta2: float = 1.0) -> float:
    """Weighted F-beta (Margolin et al., CVPR 2014): errors weighted by their neighbourhood and by
    distance from the object, so a near miss costs less than a far false alarm; 1 is perfect."""
    p, g = _prepare(pred, gt)
    return _wf_beta(p, g, beta2)


# ----------------------------------------------------------------------------- all at once


def all_metrics(pred: np.ndarray, gt: np.ndarray, tolerance: int | None = None) -> dict[str, float]:
    """Every metric of one prediction, validating and converting the inputs once."""
    p, g = _prepare(pred, gt)
    pb = _binary(p)
    return {
        "iou": iou(pb, g),
        "dice": dice(pb, g),
        "boundary_f1": _boundary_f1(pb, g, tolerance),
        "mae": _mae(p, g),
        "s_alpha": _s_alpha(p, g),
        "e_phi": _e_phi(pb, g),
        "wf_beta": _wf_beta(p, g),
    }
