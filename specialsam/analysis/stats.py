"""Bootstrap statistics: paired differences of per-image IoU, their intervals, p-values and Holm.

**Paired difference** (``paired_difference``): percentile bootstrap resampling test images (the same
indices for both groups and every seed) and, independently within each group, seeds. The point
estimate is the plain difference of means over seeds and images. The seed part is rescaled by
sqrt(S / (S - 1)) against the bootstrap's variance shrinkage; even so, with 2-3 seeds the interval
is honest about images and only approximate about seeds (a t-interval with 2 degrees of freedom
would be wider still; ``python -m specialsam.calibrate`` measures what that costs the verdicts).
**Gain CI** (``paired_gain_ci``): the difference of a fine-tuned model's seeds against its zero-shot
baseline (one array, no seed variance), 95%. **Equivalence** (``PairedBootstrap.p_equivalent``): two
one-sided tests at ``ALPHA`` each, i.e. the (1 - 2 ALPHA) = 90% interval inside [-margin, +margin].
**Holm** (``holm``): step-down adjusted p-values, so a verdict that any one of several cells can
decide keeps its family-wise error rate at ``ALPHA``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from specialsam.analysis.results import as_iou_array

LEVEL = 0.95
"""Confidence level of every two-sided interval in the analysis."""
ALPHA = 0.05
"""Family-wise error rate of each verdict (Holm), and the level of each one-sided test (TOST)."""


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


class PairedBootstrap(NamedTuple):
    """Bootstrap replicates of a paired mean difference: intervals at any level and one-sided p-values.

    Intervals are percentile ones. p-values use the bootstrap standard error with a normal reference,
    p = P(Z > (mean - x) / se): a mean over tens of images and a few seeds is close to normal, and
    unlike counting replicates this has no floor of 1 / n_boot, which Holm's multiplication by the
    number of cells would otherwise turn into a verdict no data can reach."""

    mean: float
    reps: np.ndarray

    def ci(self, level: float = LEVEL) -> GainCI:
        alpha = (1.0 - level) / 2.0
        lo, hi = np.quantile(self.reps, [alpha, 1.0 - alpha])
        return GainCI(self.mean, float(lo), float(hi))

    @property
    def se(self) -> float:
        return float(np.std(self.reps, ddof=1)) if self.reps.size > 1 else 0.0

    def _sf(self, z: float) -> float:
        return 0.5 * math.erfc(z / math.sqrt(2.0))

    def p_greater(self, x: float = 0.0) -> float:
        """p-value against H0: difference <= x (small when the difference is clearly above x)."""
        if self.se <= 0:
            return 0.0 if self.mean > x else 1.0
        return self._sf((self.mean - x) / self.se)

    def p_less(self, x: float = 0.0) -> float:
        """p-value against H0: difference >= x (small when the difference is clearly below x)."""
        if self.se <= 0:
            return 0.0 if self.mean < x else 1.0
        return self._sf((x - self.mean) / self.se)

    def p_two_sided(self, x: float = 0.0) -> float:
        return min(1.0, 2.0 * min(self.p_greater(x), self.p_less(x)))

    def p_equivalent(self, margin: float) -> float:
        """Two one-sided tests: p-value against 'the difference lies outside [-margin, +margin]'."""
        return max(self.p_greater(-margin), self.p_less(margin))


def _seed_draws(rng: np.random.Generator, per_seed: np.ndarray) -> np.ndarray:
    """(b,) resampled seed means of per-seed values (b, S), seed spread rescaled by sqrt(S / (S - 1))."""
    b, n_seeds = per_seed.shape
    if n_seeds == 1:
        return per_seed[:, 0]
    # Resample seeds; their spread about the mean is scaled by sqrt(S / (S - 1)) so the bootstrap
    # does not shrink the seed variance by (S - 1) / S (a third with 3 seeds).
    seed_w = _resample_counts(rng, b, n_seeds)
    centre = per_seed.mean(axis=1)
    drawn = (seed_w * per_seed).sum(axis=1) / n_seeds
    return centre + math.sqrt(n_seeds / (n_seeds - 1)) * (drawn - centre)


def _stack(arrays: Sequence[np.ndarray], what: str) -> np.ndarray:
    if len(arrays) == 0:
        raise ValueError(f"{what}: needs at least one per-image array")
    return np.stack([as_iou_array(a, what) for a in arrays])


def paired_difference(
    first: Sequence[np.ndarray], second: Sequence[np.ndarray], n_boot: int = 2000, seed: int = 0
) -> PairedBootstrap:
    """Mean mIoU of ``first`` minus that of ``second`` (each one per-image array per seed).

    Paired over test images: every replicate draws one set of image indices for both groups; the
    seeds of each group are resampled independently (different training runs). A group of one
    array (a zero-shot baseline) contributes no seed variance. Deterministic under ``seed``."""
    a, b = _stack(first, "first group"), _stack(second, "second group")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"per-image arrays differ in length: {a.shape[1]} images vs {b.shape[1]} images")
    n_img = a.shape[1]
    rng = np.random.default_rng(seed)
    reps = np.empty(n_boot)
    chunk = max(1, min(n_boot, 4_000_000 // max(n_img, 1)))
    for start in range(0, n_boot, chunk):
        k = min(chunk, n_boot - start)
        img_w = _resample_counts(rng, k, n_img)  # (k, N): how often each image is drawn
        draw_a = _seed_draws(rng, img_w @ a.T / n_img)
        draw_b = _seed_draws(rng, img_w @ b.T / n_img)
        reps[start : start + k] = draw_a - draw_b
    return PairedBootstrap(float(a.mean() - b.mean()), reps)


def paired_gain_ci(
    baseline: np.ndarray,
    specialised: Sequence[np.ndarray],
    n_boot: int = 2000,
    seed: int = 0,
    level: float = LEVEL,
) -> GainCI:
    """Mean mIoU gain of ``specialised`` (one per-image array per seed) over ``baseline``, with a
    percentile bootstrap CI resampling test images (paired) and seeds. Deterministic under ``seed``."""
    if len(specialised) == 0:
        raise ValueError("paired_gain_ci needs at least one specialised array")
    return paired_difference(specialised, [baseline], n_boot, seed).ci(level)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values: reject hypothesis i at family-wise level a when adj[i] <= a.

    Controls the chance of *any* false rejection among the family, whatever the dependence between
    the tests; less conservative than Bonferroni (the smallest p is multiplied by m, the next by
    m - 1, ...)."""
    p = np.asarray(p_values, float)
    m = p.size
    order = np.argsort(p, kind="stable")
    adj = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adj[i] = running
    return [float(v) for v in adj]
