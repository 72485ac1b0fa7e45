"""The learning curve as a description: a saturating fit of test mIoU against n_train, and n90/n95.

It decides nothing (``data_rule`` decides by direct paired comparisons): a 3-parameter fit to 4
sizes x 3 seeds is too fragile for a verdict, so n90/n95 are shown, flagged when extrapolated
beyond the grid or when the curve rises less than the rule's margin. See ``data_rule``'s docstring
for the model and the bootstrap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from scipy.optimize import curve_fit

from specialsam.analysis.stats import LEVEL

if TYPE_CHECKING:
    from specialsam.analysis.data_rule import CurvePoint


def saturating_curve(n: np.ndarray, ymax: float, y0: float, tau: float) -> np.ndarray:
    """y = ymax - (ymax - y0) * exp(-n / tau)."""
    return ymax - (ymax - y0) * np.exp(-np.asarray(n, float) / tau)


def _curve_jac(n: np.ndarray, ymax: float, y0: float, tau: float) -> np.ndarray:
    e = np.exp(-n / tau)
    return np.stack([1 - e, e, -(ymax - y0) * e * n / tau**2], axis=1)


def n_fraction(tau: float, p: float) -> float:
    """n at which the fitted curve has covered fraction p of its rise y0 -> ymax."""
    return float(tau * math.log(1.0 / (1.0 - p)))


def _fit_saturating(n: np.ndarray, y: np.ndarray, bounds: tuple[list[float], list[float]]) -> np.ndarray:
    """Profile grid over tau (the model is linear in ymax, y0 for fixed tau), then curve_fit."""
    lo, hi = bounds
    taus = np.geomspace(lo[2], hi[2], 160)
    e = np.exp(-n[None, :] / taus[:, None])  # (T, K)
    c1, c2 = 1 - e, e
    s11, s12, s22 = (c1 * c1).sum(1), (c1 * c2).sum(1), (c2 * c2).sum(1)
    t1, t2 = (c1 * y).sum(1), (c2 * y).sum(1)
    det = s11 * s22 - s12**2 + 1e-12
    ymax = np.clip((s22 * t1 - s12 * t2) / det, lo[0], hi[0])
    y0 = np.clip((s11 * t2 - s12 * t1) / det, lo[1], hi[1])
    sse = ((ymax[:, None] * c1 + y0[:, None] * c2 - y) ** 2).sum(1)
    i = int(np.argmin(sse))
    p0 = np.array([ymax[i], y0[i], taus[i]])
    eps = 1e-9
    p0 = np.clip(p0, np.array(lo) + eps * (1 + np.abs(lo)), np.array(hi) - eps * (1 + np.abs(hi)))
    try:
        popt, _ = curve_fit(saturating_curve, n, y, p0=p0, bounds=bounds, jac=_curve_jac, maxfev=2000)
        if ((saturating_curve(n, *popt) - y) ** 2).sum() <= sse[i] + 1e-15:
            return popt
    except (RuntimeError, ValueError):
        pass
    return p0


@dataclass
class CurveFit:
    ok: bool
    ymax: float | None = None
    y0: float | None = None
    tau: float | None = None
    ymax_ci: tuple[float, float] | None = None
    n90: float | None = None
    n90_ci: tuple[float, float] | None = None
    n95: float | None = None
    n95_ci: tuple[float, float] | None = None
    bootstrap: str = ""
    notes: list[str] = field(default_factory=list)

    def predict(self, n: np.ndarray) -> np.ndarray:
        return saturating_curve(n, self.ymax, self.y0, self.tau)

    def describe(self) -> str:
        if not self.ok:
            return "no fit: " + "; ".join(self.notes)
        text = (
            f"y = {self.ymax:.3f} - ({self.ymax:.3f} - {self.y0:.3f}) exp(-n / {self.tau:,.0f}); "
            f"plateau {self.ymax:.3f} [{self.ymax_ci[0]:.3f}, {self.ymax_ci[1]:.3f}]; "
            f"n90 = {self.n90:,.0f} [{self.n90_ci[0]:,.0f}, {self.n90_ci[1]:,.0f}]; "
            f"n95 = {self.n95:,.0f} [{self.n95_ci[0]:,.0f}, {self.n95_ci[1]:,.0f}] "
            f"({self.bootstrap} bootstrap)"
        )
        return text + ("; " + "; ".join(self.notes) if self.notes else "")


def _bootstrap_parts(
    points: Sequence[CurvePoint], n: np.ndarray, y: np.ndarray, fitted: tuple[float, float, float]
) -> tuple[bool, np.ndarray, np.ndarray]:
    """(seed bootstrap?, centre, deviations): a replicate is centre + deviations drawn with replacement."""
    ymax, y0, tau = fitted
    multi = any(len(p.per_seed) > 1 for p in points)
    if multi:
        # Seed bootstrap: every (n, seed) value = its size's seed mean + a seed deviation drawn from
        # all sizes' deviations (pooled: 3 seeds alone give far too few to resample), each scaled by
        # sqrt(k / (k - 1)) to undo the bootstrap's variance shrinkage.
        centre = np.concatenate([np.full(len(p.per_seed), np.mean(p.per_seed)) for p in points])
        devs = np.concatenate(
            [
                (np.asarray(p.per_seed) - np.mean(p.per_seed))
                * math.sqrt(len(p.per_seed) / (len(p.per_seed) - 1))
                for p in points
                if len(p.per_seed) > 1
            ]
        )
    else:
        # One seed per size: residual bootstrap about the fitted curve (df-corrected).
        centre = saturating_curve(n, ymax, y0, tau)
        devs = (y - centre) * math.sqrt(n.size / max(n.size - 3, 1))
    return multi, centre, devs


def _fit_notes(
    fitted: tuple[float, float, float],
    bounds: tuple[list[float], list[float]],
    n_max: float,
    n95_hi: float,
    margin: float,
) -> list[str]:
    """Why a fitted curve's n90/n95 may mean less than they seem (flags shown beside them)."""
    ymax, y0, tau = fitted
    notes = []
    if abs(ymax - y0) < margin:
        notes.append(
            f"the curve barely rises (|ymax - y0| = {abs(ymax - y0):.3f} < the margin {margin:g}): "
            "n90/n95 carry little meaning"
        )
    if tau >= bounds[1][2] * 0.99:
        notes.append("tau at its upper bound: no plateau in sight within the grid")
    if tau <= bounds[0][2] * 1.01:
        notes.append("tau at its lower bound: the curve is flat from the smallest n on")
    if n_fraction(tau, 0.95) > n_max:
        notes.append(f"n95 lies beyond the largest grid size ({n_max:,.0f}): extrapolated")
    elif n95_hi > n_max:
        notes.append(f"the n95 interval reaches beyond the largest grid size ({n_max:,.0f}): extrapolated")
    return notes


def fit_learning_curve(
    points: Sequence[CurvePoint], n_boot: int = 300, seed: int = 0, level: float = LEVEL, margin: float = 0.01
) -> CurveFit:
    """Fit the saturating curve to per-seed values; bootstrap over seeds (or residuals). Descriptive."""
    ns = sorted({p.n_train for p in points})
    if len(ns) < 3:
        return CurveFit(False, notes=[f"only {len(ns)} training-set size(s); need at least 3 to fit a curve"])
    n = np.concatenate([np.full(len(p.per_seed), p.n_train, float) for p in points])
    y = np.concatenate([np.asarray(p.per_seed, float) for p in points])
    n_min, n_max = float(min(ns)), float(max(ns))
    bounds = ([0.0, 0.0, n_min / 10], [1.0, 1.0, n_max * 10])
    ymax, y0, tau = (float(v) for v in _fit_saturating(n, y, bounds))
    rng = np.random.default_rng(seed)
    multi, centre, devs = _bootstrap_parts(points, n, y, (ymax, y0, tau))
    reps = [_fit_saturating(n, centre + rng.choice(devs, size=n.size), bounds) for _ in range(max(n_boot, 1))]
    reps_arr = np.array(reps)
    alpha = (1.0 - level) / 2.0
    q = lambda v: tuple(float(x) for x in np.quantile(v, [alpha, 1 - alpha]))  # noqa: E731
    taus = reps_arr[:, 2]
    n90s = taus * math.log(10.0)
    n95s = taus * math.log(20.0)
    notes = _fit_notes((ymax, y0, tau), bounds, n_max, q(n95s)[1], margin)
    return CurveFit(
        True,
        ymax,
        y0,
        tau,
        q(reps_arr[:, 0]),
        n_fraction(tau, 0.90),
        q(n90s),
        n_fraction(tau, 0.95),
        q(n95s),
        "seed" if multi else "residual",
        notes,
    )
