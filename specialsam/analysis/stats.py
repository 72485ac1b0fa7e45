"""Bootstrap statistics: the paired gain of fine-tuned over zero-shot, with its interval.

**Gain CI** (``paired_gain_ci``): percentile bootstrap, 95%, resampling test images (the same indices
for baseline and every seed) and, independently, seeds. The point estimate is the plain mean gain
over seeds and images. The seed part is rescaled by sqrt(S / (S - 1)) against the bootstrap's
variance shrinkage; even so, with 2-3 seeds the interval is honest about images and only approximate
about seeds (a t-interval with 2 degrees of freedom would be wider still).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from specialsam.analysis.results import as_iou_array

LEVEL = 0.95
"""Confidence level of every interval in the analysis."""


class GainCI(NamedTuple):
    """Mean paired gain and its interval; ``observed`` reads it as helps / hurts / unclear."""

    mean: float
    lo: float
    hi: float

    @property
    def observed(self) -> str:
        return "helps" if self.lo > 0 else "hurts" if self.hi < 0 else "unclear"

    def fmt(self, digits: int = 3) -> str:
        return f"{self.mean:+.{digits}f} [{self.lo:+.{digits}f}, {self.hi:+.{digits}f}]"


def _resample_counts(rng: np.random.Generator, n_rep: int, n: int) -> np.ndarray:
    """(n_rep, n) draw counts of n-out-of-n sampling with replacement (one bootstrap replicate per row)."""
    flat = (np.arange(n_rep)[:, None] * n + rng.integers(0, n, size=(n_rep, n))).ravel()
    return np.bincount(flat, minlength=n_rep * n).reshape(n_rep, n).astype(float)


def paired_gain_ci(
    baseline: np.ndarray,
    specialised: Sequence[np.ndarray],
    n_boot: int = 2000,
    seed: int = 0,
    level: float = LEVEL,
) -> GainCI:
    """Mean mIoU gain of ``specialised`` (one per-image array per seed) over ``baseline``, with a
    percentile bootstrap CI resampling test images (paired) and seeds. Deterministic under ``seed``."""
    base = as_iou_array(baseline, "baseline")
    if len(specialised) == 0:
        raise ValueError("paired_gain_ci needs at least one specialised array")
    spec = np.stack([as_iou_array(s, "specialised") for s in specialised])
    if spec.shape[1] != base.size:
        raise ValueError(f"specialised arrays have {spec.shape[1]} images, baseline has {base.size}")
    diff = spec - base  # (S, N)
    n_seeds, n_img = diff.shape
    mean = float(diff.mean())
    rng = np.random.default_rng(seed)
    gains = np.empty(n_boot)
    chunk = max(1, min(n_boot, 4_000_000 // max(n_img, 1)))
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        img_w = _resample_counts(rng, b, n_img)  # (b, N): how often each image is drawn
        per_seed = img_w @ diff.T / n_img  # (b, S) per-seed mean gain on the resampled images
        if n_seeds > 1:
            # Resample seeds too; their spread about the mean is scaled by sqrt(S / (S - 1)) so the
            # bootstrap does not shrink the seed variance by (S - 1) / S (a third with 3 seeds).
            seed_w = _resample_counts(rng, b, n_seeds)
            centre = per_seed.mean(axis=1)
            drawn = (seed_w * per_seed).sum(axis=1) / n_seeds
            gains[start : start + b] = centre + math.sqrt(n_seeds / (n_seeds - 1)) * (drawn - centre)
        else:
            gains[start : start + b] = per_seed[:, 0]
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(gains, [alpha, 1.0 - alpha])
    return GainCI(mean, float(lo), float(hi))
