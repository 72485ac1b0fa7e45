"""The data-volume rule: "you need 5,000+ samples", read off a fitted learning curve.

* **Learning curve** (``data_rule``): per model, test mIoU (primary prompt) against n_train from the
  ``curve`` phase (all trials if there is none; at each n the params group with the best mean
  validation mIoU), fitted per seed with y = ymax - (ymax - y0) * exp(-n / tau), bounds
  0 <= ymax, y0 <= 1 and n_min/10 <= tau <= 10 n_max (profile grid over tau, then
  ``scipy.optimize.curve_fit``). **n_p** is the n at which the fitted curve has covered a fraction p
  of its rise from its n = 0 intercept y0 to the plateau ymax: n_p = tau * ln(1 / (1 - p)), so
  n90 = 2.30 tau and n95 = 3.00 tau. Intervals: bootstrap over seeds, refitting each replicate:
  every (n, seed) value is redrawn as its size's seed mean plus a seed deviation drawn from all
  sizes' deviations (pooled, since 3 seeds per size are too few to resample alone; scaled by
  sqrt(k / (k - 1))); with one seed per size, a residual bootstrap about the fit instead.
* **Verdict** (per model; overall as for the baseline rule): ``contradicted`` when the plateau is
  reached inside the grid and well below the claim (n95 upper bound < claimed_n and <= the largest
  grid n) *and* some n < claimed_n beats the baseline (gain CI lower bound > 0); ``supported`` when
  the grid reaches claimed_n and the n95 lower bound is >= claimed_n; else ``inconclusive``. An
  extrapolated plateau never decides a verdict.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import curve_fit

from specialsam.analysis.results import (
    CONTRADICTED,
    INCONCLUSIVE,
    SUPPORTED,
    BaselineResult,
    TrialResult,
    check_alignment,
    overall_verdict,
    stable_seed,
)
from specialsam.analysis.selection import best_group, group_trials
from specialsam.analysis.stats import LEVEL, GainCI, paired_gain_ci


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
class CurvePoint:
    n_train: int
    per_seed: list[float]
    params: dict[str, Any]
    arrays: list[np.ndarray] = field(default_factory=list, repr=False)  # per-image IoU per seed
    gain: GainCI | None = None

    @property
    def mean(self) -> float:
        return float(np.mean(self.per_seed))

    @property
    def sd(self) -> float:
        return float(np.std(self.per_seed, ddof=1)) if len(self.per_seed) > 1 else 0.0

    @property
    def beats_baseline(self) -> bool | None:
        return None if self.gain is None else self.gain.lo > 0


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
    ymax: float, y0: float, tau: float, bounds: tuple[list[float], list[float]], n_max: float
) -> list[str]:
    """Why a fitted curve's n90/n95 may mean less than they seem."""
    notes = []
    if abs(ymax - y0) < 0.01:
        notes.append("the curve barely rises (|ymax - y0| < 0.01): n90/n95 carry little meaning")
    if tau >= bounds[1][2] * 0.99:
        notes.append("tau at its upper bound: no plateau in sight within the grid")
    if tau <= bounds[0][2] * 1.01:
        notes.append("tau at its lower bound: the curve is flat from the smallest n on")
    if n_fraction(tau, 0.95) > n_max:
        notes.append(f"n95 lies beyond the largest grid size ({n_max:,.0f}): extrapolated")
    return notes


def fit_learning_curve(
    points: Sequence[CurvePoint], n_boot: int = 300, seed: int = 0, level: float = LEVEL
) -> CurveFit:
    """Fit the saturating curve to per-seed values; bootstrap over seeds (or residuals)."""
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
    reps = [_fit_saturating(n, centre + rng.choice(devs, size=n.size), bounds) for _ in range(n_boot)]
    reps_arr = np.array(reps)
    alpha = (1.0 - level) / 2.0
    q = lambda v: tuple(float(x) for x in np.quantile(v, [alpha, 1 - alpha]))  # noqa: E731
    taus = reps_arr[:, 2]
    n90s = taus * math.log(10.0)
    n95s = taus * math.log(20.0)
    notes = _fit_notes(ymax, y0, tau, bounds, n_max)
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


@dataclass
class ModelCurve:
    model: str
    points: list[CurvePoint]
    fit: CurveFit
    baseline_miou: float | None
    smallest_beating_n: int | None
    verdict: str
    reasons: list[str]
    source: str


@dataclass
class DataRuleReport:
    curves: dict[str, ModelCurve]
    verdict: str
    claimed_n: int
    primary_prompt: str
    grid_scope: str
    definition: str = (
        "n90/n95: the training-set size at which the fitted curve y = ymax - (ymax - y0) exp(-n/tau) has "
        "covered 90% / 95% of its rise from its n = 0 intercept y0 to the plateau ymax "
        "(n_p = tau ln(1/(1-p))); intervals from a bootstrap over seeds. 'Beats baseline': the paired "
        "gain's 95% CI lower bound is above 0."
    )


def _curve_points(trials: Sequence[TrialResult], model: str, prompt: str) -> tuple[list[CurvePoint], str]:
    mine = [t for t in trials if t.model == model and prompt in t.per_image_iou and math.isfinite(t.val_miou)]
    curve = [t for t in mine if t.phase == "curve"]
    pool, source = (curve, "curve phase") if curve else (mine, "all trials (no curve phase)")
    points = []
    for n in sorted({t.n_train for t in pool}):
        groups = group_trials([t for t in pool if t.n_train == n])
        key = best_group(groups)
        if key is None:
            continue
        members = sorted(groups[key], key=lambda t: t.seed)
        arrays = [t.per_image_iou[prompt] for t in members]
        points.append(CurvePoint(n, [float(a.mean()) for a in arrays], dict(members[0].params), arrays))
    return points, source


def _grid_scope(ns: Sequence[int], claimed_n: int) -> str:
    if not ns:
        return "no fine-tuning results: the grid can conclude nothing."
    lo, hi = min(ns), max(ns)
    parts = []
    if len(set(ns)) < 3:
        parts.append(f"only {len(set(ns))} training-set size(s): no curve can be fitted")
    if hi < claimed_n:
        parts.append(
            f"grid tops at n = {hi:,} < {claimed_n:,}: cannot test the claim above {hi:,}; it can contradict "
            f"the claim (a plateau and a beaten baseline inside the grid) but never support it"
        )
    else:
        parts.append(
            f"grid spans n = {lo:,}-{hi:,}, reaching the claimed {claimed_n:,}: "
            "the claim is testable on both sides"
        )
    parts.append(f"nothing is known below n = {lo:,}")
    return "; ".join(parts) + "."


def _data_verdict(fit: CurveFit, smallest: int | None, n_max: int, claimed_n: int) -> tuple[str, list[str]]:
    if not fit.ok:
        return INCONCLUSIVE, list(fit.notes)
    lo95, hi95 = fit.n95_ci
    reasons = []
    if hi95 < claimed_n and hi95 <= n_max and smallest is not None and smallest < claimed_n:
        return CONTRADICTED, [
            f"95% of the plateau is reached by n <= {hi95:,.0f} (upper bound, inside the grid) and "
            f"n = {smallest:,} already beats the baseline, both below {claimed_n:,}"
        ]
    if lo95 >= claimed_n and n_max >= claimed_n:
        return SUPPORTED, [
            f"the n95 lower bound {lo95:,.0f} is at or above {claimed_n:,}: the curve still rises there"
        ]
    if hi95 >= claimed_n:
        reasons.append(f"the n95 interval reaches {hi95:,.0f} >= {claimed_n:,}")
    elif hi95 > n_max:
        reasons.append(f"the n95 upper bound {hi95:,.0f} lies beyond the grid (n <= {n_max:,}): extrapolated")
    if smallest is None:
        reasons.append("no grid size beats the baseline with a CI above 0")
    elif smallest >= claimed_n:
        reasons.append(f"the baseline is first beaten only at n = {smallest:,}")
    if lo95 >= claimed_n and n_max < claimed_n:
        reasons.append(f"the n95 lower bound is >= {claimed_n:,} but the grid stops at {n_max:,}")
    return INCONCLUSIVE, reasons or ["the evidence falls between the two verdicts"]


def data_rule(
    baselines: Sequence[BaselineResult],
    trials: Sequence[TrialResult],
    primary_prompt: str = "center",
    claimed_n: int = 5000,
    n_boot: int = 2000,
    n_boot_curve: int = 300,
    seed: int = 0,
) -> DataRuleReport:
    """Learning curve, plateau, n90/n95, smallest n beating the baseline, and the verdict per model."""
    check_alignment(baselines, trials)
    base_by_model = {b.model: b for b in baselines if b.prompt == primary_prompt}
    models = sorted({t.model for t in trials})
    curves: dict[str, ModelCurve] = {}
    all_ns: list[int] = []
    for m in models:
        points, source = _curve_points(trials, m, primary_prompt)
        if not points:
            continue
        base = base_by_model.get(m)
        smallest = None
        for p in points:
            if base is not None:
                p.gain = paired_gain_ci(
                    base.per_image_iou, p.arrays, n_boot, stable_seed(seed, "curve", m, p.n_train)
                )
                if smallest is None and p.gain.lo > 0:
                    smallest = p.n_train
        fit = fit_learning_curve(points, n_boot_curve, stable_seed(seed, "fit", m))
        n_max = max(p.n_train for p in points)
        verdict, reasons = _data_verdict(fit, smallest, n_max, claimed_n)
        if base is None:
            reasons.append(
                f"no baseline for prompt '{primary_prompt}': cannot say when the baseline is beaten"
            )
        all_ns += [p.n_train for p in points]
        curves[m] = ModelCurve(
            m, points, fit, base.miou if base else None, smallest, verdict, reasons, source
        )
    return DataRuleReport(
        curves,
        overall_verdict([c.verdict for c in curves.values()]),
        claimed_n,
        primary_prompt,
        _grid_scope(all_ns, claimed_n),
    )
