"""The two rules of thumb, their verdicts, tables and report.

Pure analysis: numpy, scipy and matplotlib (Agg canvas, no pyplot state); no Ray, MLflow or torch.
The sweep hands over plain results (``BaselineResult``, ``TrialResult``) and gets back reports,
a markdown file with two plots, and the two verdict strings for the MLflow tags
``specialsam.verdict.baseline_rule`` / ``specialsam.verdict.data_rule``.

Definitions used throughout (the report repeats them next to the numbers they govern):

* **mIoU** is the mean of per-test-image IoU (see ``metrics``); per-image arrays of one task are
  aligned by test-image index, which is what makes the gain *paired*.
* **Gain CI** (``paired_gain_ci``): percentile bootstrap, 95%, resampling test images (the same
  indices for baseline and every seed) and, independently, seeds. The point estimate is the plain
  mean gain over seeds and images. The seed part is rescaled by sqrt(S / (S - 1)) against the
  bootstrap's variance shrinkage; even so, with 2-3 seeds the interval is honest about images and
  only approximate about seeds (a t-interval with 2 degrees of freedom would be wider still).
* **Configuration selection** (``select_config``): chosen on *validation* mIoU, never on test, so
  the reported test gain carries no selection bias. Trials group by (model, n_train, params minus
  seed/n_train); if the model has ``curve``-phase trials, the group is taken among those at their
  largest n_train, else among all trials; the group with the highest mean validation mIoU wins
  (ties: larger n_train, more seeds). All its seeds are used.
* **Baseline rule cell** (one per model x prompt strategy): the rule predicts a gain when the
  baseline is below the threshold and no gain at or above it. Observed: ``helps`` (CI > 0),
  ``hurts`` (CI < 0), ``unclear``. Below the threshold only ``helps`` matches; at or above it
  ``hurts`` matches and ``helps`` contradicts. Overall: ``contradicted`` if any decided cell
  contradicts, ``supported`` if decided cells exist and all match, else ``inconclusive``. CIs are
  per cell at 95%, without a multiplicity correction.
* **Crossover** (``fit_crossover``): weighted least squares gain = a + b * baseline over cells
  (weights 1/se^2, se from the CI half-width / 1.96, floored at a quarter of the median se so no
  cell dominates); x0 = -a/b; interval: percentile bootstrap over cells (case resampling, refit).
  Not estimable with fewer than 3 distinct baselines or a non-negative fitted slope.
* **Learning curve** (``data_rule``): per model, test mIoU (primary prompt) against n_train from
  the ``curve`` phase (all trials if there is none; at each n the params group with the best mean
  validation mIoU), fitted per seed with y = ymax - (ymax - y0) * exp(-n / tau), bounds
  0 <= ymax, y0 <= 1 and n_min/10 <= tau <= 10 n_max (profile grid over tau, then
  ``scipy.optimize.curve_fit``). **n_p** is the n at which the fitted curve has covered a fraction
  p of its rise from its n = 0 intercept y0 to the plateau ymax: n_p = tau * ln(1 / (1 - p)), so
  n90 = 2.30 tau and n95 = 3.00 tau. Intervals: bootstrap over seeds, refitting each replicate:
  every (n, seed) value is redrawn as its size's seed mean plus a seed deviation drawn from all
  sizes' deviations (pooled, since 3 seeds per size are too few to resample alone; scaled by
  sqrt(k / (k - 1))); with one seed per size, a residual bootstrap about the fit instead.
* **Data rule verdict** (per model; overall as for the baseline rule): ``contradicted`` when the
  plateau is reached inside the grid and well below the claim (n95 upper bound < claimed_n and
  <= the largest grid n) *and* some n < claimed_n beats the baseline (gain CI lower bound > 0);
  ``supported`` when the grid reaches claimed_n and the n95 lower bound is >= claimed_n; else
  ``inconclusive``. An extrapolated plateau never decides a verdict.
"""

from __future__ import annotations

import json
import math
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from scipy.optimize import curve_fit

SUPPORTED, CONTRADICTED, INCONCLUSIVE = "supported", "contradicted", "inconclusive"
VERDICTS: tuple[str, ...] = (SUPPORTED, CONTRADICTED, INCONCLUSIVE)
TAG_BASELINE_RULE = "specialsam.verdict.baseline_rule"
TAG_DATA_RULE = "specialsam.verdict.data_rule"

EXCLUDED_PARAM_KEYS = frozenset({"seed", "n_train", "model", "phase", "trial_id"})
"""Keys ignored when grouping trials into configurations (they are the trial's own axes)."""

LEVEL = 0.95


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def _as_iou_array(values: Any, what: str) -> np.ndarray:
    arr = np.asarray(values, dtype=float).ravel()
    if arr.size == 0:
        raise ValueError(f"{what}: empty per-image IoU array")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what}: per-image IoU contains NaN or inf")
    return arr


@dataclass(eq=False)
class BaselineResult:
    """Zero-shot per-test-image IoU of one (model, prompt strategy)."""

    model: str
    prompt: str
    per_image_iou: np.ndarray
    per_category: dict[str, float] = field(default_factory=dict)  # category -> mIoU
    extra_miou: dict[str, float] = field(default_factory=dict)  # extra test set -> mIoU (primary only)

    def __post_init__(self) -> None:
        self.per_image_iou = _as_iou_array(self.per_image_iou, f"baseline {self.model}/{self.prompt}")

    @property
    def miou(self) -> float:
        return float(self.per_image_iou.mean())


@dataclass(eq=False)
class TrialResult:
    """One fine-tuning trial: its axes, its test IoU per prompt strategy, its health."""

    trial_id: str
    model: str
    n_train: int
    seed: int
    params: dict[str, Any]
    per_image_iou: dict[str, np.ndarray]
    val_miou: float
    phase: str = "tune"
    health: str = "ok"
    retention_miou: float | None = None
    base_retention_miou: float | None = None
    per_category: dict[str, dict[str, float]] = field(default_factory=dict)  # prompt -> category -> mIoU
    extra_miou: dict[str, float] = field(default_factory=dict)  # extra test set -> mIoU (primary prompt)

    def __post_init__(self) -> None:
        self.n_train = int(self.n_train)
        self.val_miou = float(self.val_miou) if self.val_miou is not None else float("nan")
        self.per_image_iou = {
            p: _as_iou_array(v, f"trial {self.trial_id} prompt {p}") for p, v in self.per_image_iou.items()
        }

    @property
    def health_flags(self) -> list[str]:
        flags = [f.strip() for f in str(self.health or "ok").split(",") if f.strip()]
        return flags or ["ok"]

    def test_miou(self, prompt: str) -> float | None:
        arr = self.per_image_iou.get(prompt)
        return None if arr is None else float(arr.mean())


def config_key(params: Mapping[str, Any]) -> str:
    """Canonical string of a trial's hyperparameters (its own axes excluded)."""
    kept = {k: params[k] for k in sorted(params) if k not in EXCLUDED_PARAM_KEYS}
    return json.dumps(kept, sort_keys=True, default=str)


def _stable_seed(seed: int, *parts: object) -> int:
    """A per-cell RNG seed that does not depend on Python's salted hash()."""
    return (int(seed) * 1_000_003 + zlib.crc32("|".join(map(str, parts)).encode())) % (2**32)


def _check_alignment(baselines: Sequence[BaselineResult], trials: Sequence[TrialResult]) -> int | None:
    sizes = {b.per_image_iou.size for b in baselines}
    sizes |= {a.size for t in trials for a in t.per_image_iou.values()}
    if len(sizes) > 1:
        raise ValueError(
            "per-image IoU arrays of one task must be aligned by test-image index; "
            f"found lengths {sorted(sizes)}"
        )
    return sizes.pop() if sizes else None


# --------------------------------------------------------------------------------------------
# Bootstrap of the paired gain
# --------------------------------------------------------------------------------------------


class GainCI(NamedTuple):
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
    base = _as_iou_array(baseline, "baseline")
    if len(specialised) == 0:
        raise ValueError("paired_gain_ci needs at least one specialised array")
    spec = np.stack([_as_iou_array(s, "specialised") for s in specialised])
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


# --------------------------------------------------------------------------------------------
# Configuration selection (validation, never test)
# --------------------------------------------------------------------------------------------


@dataclass
class SelectedConfig:
    model: str
    n_train: int
    params: dict[str, Any]
    trials: list[TrialResult]
    val_miou: float
    how: str

    @property
    def seeds(self) -> list[int]:
        return [t.seed for t in self.trials]

    def arrays(self, prompt: str) -> list[np.ndarray]:
        return [t.per_image_iou[prompt] for t in self.trials if prompt in t.per_image_iou]

    def describe(self) -> str:
        params = {k: v for k, v in self.params.items() if k not in EXCLUDED_PARAM_KEYS}
        return f"n_train={self.n_train:,}, {_fmt_params(params)}"


def _fmt_params(params: Mapping[str, Any]) -> str:
    if not params:
        return "default settings"
    parts = []
    for k in sorted(params):
        v = params[k]
        parts.append(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}")
    return ", ".join(parts)


def _group(trials: Sequence[TrialResult]) -> dict[tuple[int, str], list[TrialResult]]:
    """Group trials by (n_train, params); one trial per seed (first seen wins)."""
    groups: dict[tuple[int, str], list[TrialResult]] = defaultdict(list)
    seen: set[tuple[int, str, int]] = set()
    for t in trials:
        if not math.isfinite(t.val_miou):
            continue
        key = (t.n_train, config_key(t.params))
        if (*key, t.seed) in seen:
            continue
        seen.add((*key, t.seed))
        groups[key].append(t)
    return groups


def _best_group(groups: Mapping[tuple[int, str], list[TrialResult]]) -> tuple[int, str] | None:
    if not groups:
        return None
    return max(
        groups,
        key=lambda k: (float(np.mean([t.val_miou for t in groups[k]])), k[0], len(groups[k]), k[1]),
    )


def select_config(trials: Sequence[TrialResult], model: str) -> SelectedConfig | None:
    """The configuration of ``model`` to report: best mean *validation* mIoU (see module doc)."""
    mine = [t for t in trials if t.model == model and math.isfinite(t.val_miou)]
    curve = [t for t in mine if t.phase == "curve"]
    if curve:
        n_top = max(t.n_train for t in curve)
        pool = [t for t in curve if t.n_train == n_top]
        how = f"curve phase at its largest n_train ({n_top:,}); params with the best mean validation mIoU"
    else:
        pool = mine
        how = "all trials; the (n_train, params) group with the best mean validation mIoU"
    groups = _group(pool)
    key = _best_group(groups)
    if key is None:
        return None
    members = sorted(groups[key], key=lambda t: t.seed)
    return SelectedConfig(
        model=model,
        n_train=key[0],
        params=dict(members[0].params),
        trials=members,
        val_miou=float(np.mean([t.val_miou for t in members])),
        how=how,
    )


# --------------------------------------------------------------------------------------------
# Baseline rule
# --------------------------------------------------------------------------------------------


@dataclass
class CrossoverFit:
    estimable: bool
    x0: float | None = None
    lo: float | None = None
    hi: float | None = None
    intercept: float | None = None
    slope: float | None = None
    n_cells: int = 0
    n_distinct: int = 0
    frac_negative_slope: float | None = None
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        if not self.estimable:
            return "crossover not estimable: " + "; ".join(self.notes)
        text = (
            f"gain turns negative at baseline mIoU x0 = {self.x0:.3f} "
            f"[95% CI {self.lo:.3f}, {self.hi:.3f}] "
            f"(gain = {self.intercept:+.3f} {self.slope:+.3f} x baseline, "
            f"{self.n_cells} cells, {self.n_distinct} distinct baselines)"
        )
        return text + ("; " + "; ".join(self.notes) if self.notes else "")


def _wls_rows(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row-wise weighted least squares y = a + b x; returns (a, b, sxx) per row."""
    sw = w.sum(axis=-1, keepdims=True)
    xm = (w * x).sum(axis=-1, keepdims=True) / sw
    ym = (w * y).sum(axis=-1, keepdims=True) / sw
    sxx = (w * (x - xm) ** 2).sum(axis=-1)
    sxy = (w * (x - xm) * (y - ym)).sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        b = np.where(sxx > 1e-15, sxy / np.where(sxx > 1e-15, sxx, 1.0), np.nan)
    a = ym[..., 0] - b * xm[..., 0]
    return a, b, sxx


def fit_crossover(
    baseline: Sequence[float],
    gain: Sequence[float],
    gain_se: Sequence[float] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = LEVEL,
) -> CrossoverFit:
    """Baseline mIoU where the fitted gain crosses zero, with a bootstrap-over-cells interval.

    Usable across tasks: concatenate the cells of several reports and fit once."""
    x = np.asarray(baseline, float)
    y = np.asarray(gain, float)
    n = x.size
    n_distinct = int(np.unique(np.round(x, 6)).size)
    if n_distinct < 3:
        return CrossoverFit(
            False,
            n_cells=n,
            n_distinct=n_distinct,
            notes=[f"only {n_distinct} distinct baseline value(s); need at least 3"],
        )
    if gain_se is None:
        se = np.ones(n)
    else:
        se = np.asarray(gain_se, float)
        se = np.maximum(se, max(1e-6, 0.25 * float(np.median(se))))
    w = 1.0 / se**2
    a, b, _ = _wls_rows(x[None], y[None], w[None])
    a, b = float(a[0]), float(b[0])
    if not (b < 0):
        return CrossoverFit(
            False,
            intercept=a,
            slope=b,
            n_cells=n,
            n_distinct=n_distinct,
            notes=[f"fitted slope {b:+.3f} is not negative: the gain does not fall as the baseline rises"],
        )
    x0 = -a / b
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    ab, bb, sxx = _wls_rows(x[idx], y[idx], w[idx])
    valid = np.isfinite(bb) & (sxx > 1e-15)
    neg = valid & (bb < 0)
    frac_neg = float(neg.sum() / max(valid.sum(), 1))
    x0s = -ab[neg] / bb[neg]
    alpha = (1.0 - level) / 2.0
    lo, hi = (float(v) for v in np.quantile(x0s, [alpha, 1 - alpha])) if x0s.size else (math.nan, math.nan)
    notes = []
    if frac_neg < 1.0 - alpha:
        notes.append(
            f"slope negative in only {frac_neg:.0%} of resamples: the interval is unreliable "
            "(the crossover may not exist)"
        )
    if not (x.min() <= x0 <= x.max()):
        notes.append(f"x0 extrapolated beyond the observed baselines [{x.min():.3f}, {x.max():.3f}]")
    return CrossoverFit(True, x0, lo, hi, a, b, n, n_distinct, frac_neg, notes)


@dataclass
class BaselineCell:
    model: str
    prompt: str
    baseline_miou: float
    specialised_miou: float | None
    gain: GainCI | None
    n_seeds: int
    n_images: int
    config: SelectedConfig | None
    predicted: str  # "gain" | "no gain"
    observed: str  # "helps" | "hurts" | "unclear" | "no trials"
    matched: bool | None
    verdict: str


@dataclass
class BaselineRuleReport:
    cells: list[BaselineCell]
    crossover: CrossoverFit
    verdict: str
    threshold: float
    primary_prompt: str
    selections: dict[str, SelectedConfig]
    notes: list[str] = field(default_factory=list)

    def cell(self, model: str, prompt: str) -> BaselineCell | None:
        return next((c for c in self.cells if c.model == model and c.prompt == prompt), None)


def predicted_outcome(baseline: float, threshold: float) -> str:
    """What the baseline rule predicts for a zero-shot mIoU: "gain" strictly below the threshold."""
    return "gain" if baseline < threshold else "no gain"


def _cell_verdict(
    baseline: float, gain: GainCI | None, threshold: float
) -> tuple[str, str, bool | None, str]:
    predicted = predicted_outcome(baseline, threshold)
    if gain is None:
        return predicted, "no trials", None, INCONCLUSIVE
    observed = gain.observed
    if observed == "unclear":
        return predicted, observed, None, INCONCLUSIVE
    matched = (observed == "helps") if predicted == "gain" else (observed == "hurts")
    return predicted, observed, matched, SUPPORTED if matched else CONTRADICTED


def _overall(verdicts: Sequence[str]) -> str:
    if CONTRADICTED in verdicts:
        return CONTRADICTED
    if SUPPORTED in verdicts:
        return SUPPORTED
    return INCONCLUSIVE


def baseline_rule(
    baselines: Sequence[BaselineResult],
    trials: Sequence[TrialResult],
    threshold: float = 0.75,
    primary_prompt: str = "center",
    n_boot: int = 2000,
    seed: int = 0,
) -> BaselineRuleReport:
    """Per (model, prompt strategy): baseline, validated best specialised, gain CI, rule check."""
    n_images = _check_alignment(baselines, trials) or 0
    models = sorted({b.model for b in baselines} | {t.model for t in trials})
    selections = {m: s for m in models if (s := select_config(trials, m)) is not None}
    cells: list[BaselineCell] = []
    for b in sorted(baselines, key=lambda r: (r.model, r.prompt != primary_prompt, r.prompt)):
        sel = selections.get(b.model)
        arrays = sel.arrays(b.prompt) if sel else []
        gain = (
            paired_gain_ci(b.per_image_iou, arrays, n_boot, _stable_seed(seed, "cell", b.model, b.prompt))
            if arrays
            else None
        )
        spec = float(np.mean([a.mean() for a in arrays])) if arrays else None
        predicted, observed, matched, verdict = _cell_verdict(b.miou, gain, threshold)
        cells.append(
            BaselineCell(
                b.model,
                b.prompt,
                b.miou,
                spec,
                gain,
                len(arrays),
                n_images,
                sel if arrays else None,
                predicted,
                observed,
                matched,
                verdict,
            )
        )
    fitted = [c for c in cells if c.gain is not None]
    crossover = fit_crossover(
        [c.baseline_miou for c in fitted],
        [c.gain.mean for c in fitted],
        [(c.gain.hi - c.gain.lo) / (2 * 1.96) for c in fitted],
        n_boot=n_boot,
        seed=_stable_seed(seed, "crossover"),
    )
    verdict = _overall([c.verdict for c in cells])
    notes = []
    decided = [c for c in cells if c.verdict != INCONCLUSIVE]
    below = any(c.baseline_miou < threshold for c in decided)
    above = any(c.baseline_miou >= threshold for c in decided)
    if decided and not (below and above):
        side = "below" if below else "at or above"
        notes.append(
            f"decided cells lie only {side} the {threshold:.0%} threshold: the threshold itself is not tested"
        )
    if not fitted:
        notes.append("no (model, prompt) has both a baseline and fine-tuned trials")
    return BaselineRuleReport(cells, crossover, verdict, threshold, primary_prompt, selections, notes)


# --------------------------------------------------------------------------------------------
# Data-volume rule
# --------------------------------------------------------------------------------------------


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
    reps = [_fit_saturating(n, centre + rng.choice(devs, size=n.size), bounds) for _ in range(n_boot)]
    reps_arr = np.array(reps)
    alpha = (1.0 - level) / 2.0
    q = lambda v: tuple(float(x) for x in np.quantile(v, [alpha, 1 - alpha]))  # noqa: E731
    taus = reps_arr[:, 2]
    n90s = taus * math.log(10.0)
    n95s = taus * math.log(20.0)
    notes = []
    if abs(ymax - y0) < 0.01:
        notes.append("the curve barely rises (|ymax - y0| < 0.01): n90/n95 carry little meaning")
    if tau >= bounds[1][2] * 0.99:
        notes.append("tau at its upper bound: no plateau in sight within the grid")
    if tau <= bounds[0][2] * 1.01:
        notes.append("tau at its lower bound: the curve is flat from the smallest n on")
    if n_fraction(tau, 0.95) > n_max:
        notes.append(f"n95 lies beyond the largest grid size ({n_max:,.0f}): extrapolated")
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
        groups = _group([t for t in pool if t.n_train == n])
        key = _best_group(groups)
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
    _check_alignment(baselines, trials)
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
                    base.per_image_iou, p.arrays, n_boot, _stable_seed(seed, "curve", m, p.n_train)
                )
                if smallest is None and p.gain.lo > 0:
                    smallest = p.n_train
        fit = fit_learning_curve(points, n_boot_curve, _stable_seed(seed, "fit", m))
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
        _overall([c.verdict for c in curves.values()]),
        claimed_n,
        primary_prompt,
        _grid_scope(all_ns, claimed_n),
    )


# --------------------------------------------------------------------------------------------
# Health and retention
# --------------------------------------------------------------------------------------------


@dataclass
class HealthSummary:
    n_trials: int
    counts: dict[str, int]  # flag -> number of trials carrying it ("ok" for clean trials)

    @property
    def n_flagged(self) -> int:
        return self.n_trials - self.counts.get("ok", 0)


UNCHANGED = "unchanged"
"""Health flag of a trial whose returned decoder equals the base decoder (``train.unchanged``):
its 'specialised' scores are the baseline's, so its gain is 0 by construction, not a measurement."""


def unchanged_warning(n_unchanged: int, n_trials: int) -> str | None:
    """The report's sentence on trials training did not change (None when there are none)."""
    if not n_unchanged:
        return None
    what = "every one" if n_unchanged == n_trials else f"{n_unchanged}"
    return (
        f"**Training did not change the decoder** in {what} of the {n_trials} trials (health flag "
        f"`{UNCHANGED}`): their specialised scores are the base decoder's, so their gain is 0 by "
        "construction and says nothing for or against fine-tuning. Look for an empty or unusable "
        "validation split, zero optimizer steps, or a learning rate too small to move the weights."
    )


def health_summary(trials: Sequence[TrialResult]) -> HealthSummary:
    counts: Counter[str] = Counter()
    for t in trials:
        for flag in set(t.health_flags):
            counts[flag] += 1
    return HealthSummary(len(trials), dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))))


@dataclass
class RetentionSummary:
    model: str
    config: str
    retention_miou: float | None  # fine-tuned decoder on the general-purpose set, mean over seeds
    base_retention_miou: float | None  # base decoder on the same set
    n_seeds: int

    @property
    def delta(self) -> float | None:
        if self.retention_miou is None or self.base_retention_miou is None:
            return None
        return self.retention_miou - self.base_retention_miou


def retention_summary(selections: Mapping[str, SelectedConfig]) -> dict[str, RetentionSummary]:
    """The price of specialising, for each model's selected configuration."""
    out = {}
    for m, sel in sorted(selections.items()):
        ret = [t.retention_miou for t in sel.trials if t.retention_miou is not None]
        base = [t.base_retention_miou for t in sel.trials if t.base_retention_miou is not None]
        out[m] = RetentionSummary(
            m,
            sel.describe(),
            float(np.mean(ret)) if ret else None,
            float(np.mean(base)) if base else None,
            len(ret),
        )
    return out


@dataclass
class BreakdownRow:
    """One (model, category or extra test set) line: base decoder vs the selected configuration."""

    model: str
    name: str
    base: float | None
    specialised: float | None  # mean over the selected configuration's seeds
    n_seeds: int

    @property
    def delta(self) -> float | None:
        return None if self.base is None or self.specialised is None else self.specialised - self.base


def _breakdown(
    selections: Mapping[str, SelectedConfig],
    base: Mapping[str, Mapping[str, float]],
    trial_values: Callable[[TrialResult], Mapping[str, float]],
) -> list[BreakdownRow]:
    rows = []
    for m, sel in sorted(selections.items()):
        names = sorted(set(base.get(m, {})) | {k for t in sel.trials for k in trial_values(t)})
        for name in names:
            vals = [trial_values(t)[name] for t in sel.trials if name in trial_values(t)]
            spec = float(np.mean(vals)) if vals else None
            rows.append(BreakdownRow(m, name, base.get(m, {}).get(name), spec, len(vals)))
    return rows


def category_breakdown(
    selections: Mapping[str, SelectedConfig], baselines: Sequence[BaselineResult], primary: str
) -> list[BreakdownRow]:
    """Per-category test mIoU (primary prompt), base vs each model's selected configuration."""
    base = {b.model: b.per_category for b in baselines if b.prompt == primary}
    rows = _breakdown(selections, base, lambda t: t.per_category.get(primary, {}))
    per_model = Counter(r.model for r in rows)
    return [r for r in rows if per_model[r.model] > 1]  # one category says nothing new


def extra_breakdown(
    selections: Mapping[str, SelectedConfig], baselines: Sequence[BaselineResult], primary: str
) -> list[BreakdownRow]:
    """Extra test sets (transfer sets, the other wood mode), base vs the selected configuration."""
    base = {b.model: b.extra_miou for b in baselines if b.prompt == primary}
    return _breakdown(selections, base, lambda t: t.extra_miou)


def _breakdown_table(rows: Sequence[BreakdownRow], what: str) -> list[str]:
    f3 = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    out = [f"| model | {what} | base decoder | specialised (seeds) | change |", "|---|---|---|---|---|"]
    for r in rows:
        delta = "-" if r.delta is None else f"{r.delta:+.3f}"
        out.append(f"| {r.model} | {r.name} | {f3(r.base)} | {f3(r.specialised)} ({r.n_seeds}) | {delta} |")
    return out


# --------------------------------------------------------------------------------------------
# Recommendation, tables, report
# --------------------------------------------------------------------------------------------


def scope_statement(data_kind: str = "real") -> str:
    text = (
        "Scope: decoder-only fine-tuning (frozen image encoder, cached embeddings); encoder, adapter and "
        "LoRA tuning were not compared, so a 'don't' here says nothing about them."
    )
    if data_kind == "procedural":
        text += (
            " Data: procedural stand-in; this run is a demonstration of the method, "
            "not evidence about real SAM on real data."
        )
    return text


def recommendation(
    baseline_report: BaselineRuleReport,
    data_report: DataRuleReport | None = None,
    retention: Mapping[str, RetentionSummary] | None = None,
    data_kind: str = "real",
    include_scope: bool = True,
    health: HealthSummary | None = None,
) -> str:
    """The actionable opening of the report: fine-tune (what, how) or don't (why), then its scope.

    The model is the one whose primary-prompt gain has the highest CI lower bound; its settings and
    sample count are the validation-selected configuration's. Trials training left unchanged
    (``health``, else the selected configurations' trials) are said first: when every trial is
    unchanged there is no recommendation at all, since a zero gain was never measured."""
    prompt = baseline_report.primary_prompt
    cells = [c for c in baseline_report.cells if c.gain is not None and c.prompt == prompt]
    if not cells:
        cells = [c for c in baseline_report.cells if c.gain is not None]
        prompt = "any prompt strategy"
    if health is None:
        health = health_summary([t for sel in baseline_report.selections.values() for t in sel.trials])
    n_unchanged = health.counts.get(UNCHANGED, 0)
    lines: list[str] = []
    if n_unchanged and n_unchanged == health.n_trials:
        lines.append("**No recommendation**: " + (unchanged_warning(n_unchanged, health.n_trials) or ""))
    elif not cells:
        lines.append("**No recommendation**: no model has both a zero-shot baseline and fine-tuned trials.")
    else:
        best = max(cells, key=lambda c: (c.gain.lo, c.gain.mean))
        sel = best.config
        assert sel is not None
        if best.gain.lo > 0:
            lines.append(
                f"**Fine-tune** the mask decoder of `{best.model}` with {sel.n_train:,} training samples and "
                f"{_fmt_params({k: v for k, v in sel.params.items() if k not in EXCLUDED_PARAM_KEYS})}: "
                f"expected mIoU gain {best.gain.fmt()} (95% CI) on the `{best.prompt}` prompt, "
                f"{best.baseline_miou:.3f} -> {best.specialised_miou:.3f} over {best.n_seeds} seed(s)."
            )
            curve = data_report.curves.get(best.model) if data_report else None
            if curve is not None:
                bits = []
                if curve.fit.ok:
                    lo95, hi95 = curve.fit.n95_ci
                    bits.append(
                        f"the learning curve covers 95% of its rise by n ~ {curve.fit.n95:,.0f} "
                        f"[{lo95:,.0f}, {hi95:,.0f}]"
                        + (f", so data beyond ~{hi95:,.0f} samples buys little" if hi95 < sel.n_train else "")
                    )
                if curve.smallest_beating_n is not None:
                    bits.append(
                        f"n = {curve.smallest_beating_n:,} is the smallest grid size that beats the baseline"
                    )
                if bits:
                    lines.append("Samples: " + "; ".join(bits) + ".")
            if best.n_seeds < 2:
                lines.append("Caution: a single seed; seed-to-seed variation is not in the interval.")
            flagged = Counter(f for t in sel.trials for f in t.health_flags if f != "ok")
            if flagged:
                lines.append(
                    f"Training health of this configuration ({len(sel.trials)} seed(s)): "
                    + ", ".join(f"{f} in {k}" for f, k in sorted(flagged.items()))
                    + "; inspect before relying on it."
                )
            others = [c for c in cells if c is not best and c.gain.lo > 0]
            if others:
                lines.append("Also helped: " + ", ".join(f"`{c.model}` {c.gain.fmt()}" for c in others) + ".")
        elif all(c.gain.hi < 0 for c in cells):
            lines.append(
                f"**Don't fine-tune**: specialising the decoder lowered mIoU for every model on {prompt} "
                f"(least bad: `{best.model}` {best.gain.fmt()} from a baseline of {best.baseline_miou:.3f})."
            )
        else:
            lines.append(
                "**Don't fine-tune (no demonstrated gain)**: "
                f"no model's gain on {prompt} has a 95% CI above 0 "
                f"(best: `{best.model}` {best.gain.fmt()} from a baseline of {best.baseline_miou:.3f}). "
                "More test images or seeds could narrow the interval."
            )
        if n_unchanged:  # right under the verdict it qualifies
            lines.insert(1, "Caution: " + (unchanged_warning(n_unchanged, health.n_trials) or ""))
        ret = (retention or {}).get(best.model)
        if ret is not None and ret.delta is not None:
            lines.append(
                f"Retention cost (`{best.model}`, selected configuration): general-purpose mIoU "
                f"{ret.retention_miou:.3f} vs {ret.base_retention_miou:.3f} for the base decoder "
                f"({ret.delta:+.3f})."
            )
        elif ret is not None or best.gain.lo > 0:
            lines.append("Retention cost: not measured for this configuration.")
    if include_scope:
        lines.append(scope_statement(data_kind))
    return "\n\n".join(lines)


def summary_rows(
    baseline_report: BaselineRuleReport, data_report: DataRuleReport | None = None
) -> list[dict[str, Any]]:
    """One row per model (primary prompt, else its first prompt) for the terminal."""
    rows = []
    for m in sorted({c.model for c in baseline_report.cells}):
        mine = [c for c in baseline_report.cells if c.model == m]
        c = next((x for x in mine if x.prompt == baseline_report.primary_prompt), mine[0])
        curve = data_report.curves.get(m) if data_report else None
        rows.append(
            {
                "model": m,
                "prompt": c.prompt,
                "baseline_miou": c.baseline_miou,
                "specialised_miou": c.specialised_miou,
                "gain": c.gain,
                "baseline_rule": c.verdict,
                "data_rule": curve.verdict if curve else "-",
            }
        )
    return rows


def format_summary(rows: Sequence[Mapping[str, Any]]) -> str:
    header = ("model", "prompt", "baseline", "specialised", "gain [95% CI]", "baseline rule", "data rule")
    body = [
        (
            r["model"],
            r["prompt"],
            f"{r['baseline_miou']:.3f}",
            "-" if r["specialised_miou"] is None else f"{r['specialised_miou']:.3f}",
            "-" if r["gain"] is None else r["gain"].fmt(),
            r["baseline_rule"],
            r["data_rule"],
        )
        for r in rows
    ]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(header)]
    fmt = lambda cols: "  ".join(s.ljust(w) for s, w in zip(cols, widths, strict=True)).rstrip()  # noqa: E731
    return "\n".join([fmt(header), fmt(tuple("-" * w for w in widths)), *map(fmt, body)])


@dataclass
class ReportFiles:
    report_md: Path
    gain_plot: Path
    curve_plot: Path
    verdict_baseline_rule: str
    verdict_data_rule: str
    baseline_report: BaselineRuleReport
    data_report: DataRuleReport
    summary: list[dict[str, Any]]

    @property
    def tags(self) -> dict[str, str]:
        return {TAG_BASELINE_RULE: self.verdict_baseline_rule, TAG_DATA_RULE: self.verdict_data_rule}


def _ci(ci: tuple[float, float] | None, fmt: str) -> str:
    return "-" if ci is None else f"[{ci[0]:{fmt}}, {ci[1]:{fmt}}]"


def _markdown(
    task: str,
    data_kind: str,
    br: BaselineRuleReport,
    dr: DataRuleReport,
    health: HealthSummary,
    retention: Mapping[str, RetentionSummary],
    protocol: Mapping[str, Any] | None,
    extras: Sequence[BreakdownRow] = (),
    categories: Sequence[BreakdownRow] = (),
) -> str:
    out = [f"# SpecialSAM report: task `{task}`", ""]
    if data_kind == "procedural":
        out += [
            "> **Procedural data**: the real dataset was absent; these numbers demonstrate the method only.",
            "",
        ]
    rec = recommendation(br, dr, retention, data_kind, include_scope=False, health=health)
    out += ["## Recommendation", "", rec, ""]
    out += ["## Scope and protocol", "", scope_statement(data_kind), ""]
    if protocol:
        out += ["| setting | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in protocol.items()), ""]
    out += [
        f"## Baseline rule: fine-tune only when the zero-shot mIoU is below {br.threshold:.0%}",
        "",
        f"**Verdict: {br.verdict}.** The rule predicts a gain below the threshold and none at or above it; "
        "a cell counts when its gain's 95% CI (bootstrap over test images and seeds, paired) excludes 0. "
        "Configurations are chosen by validation mIoU, never by test.",
        "",
        *(f"- {n}" for n in br.notes),
        "",
        "| model | prompt | baseline mIoU | specialised mIoU | gain [95% CI] | seeds | configuration | "
        "predicted | "
        "observed | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in br.cells:
        out.append(
            f"| {c.model} | {c.prompt} | {c.baseline_miou:.3f} | "
            f"{'-' if c.specialised_miou is None else f'{c.specialised_miou:.3f}'} | "
            f"{'-' if c.gain is None else c.gain.fmt()} | {c.n_seeds} | "
            f"{'-' if c.config is None else c.config.describe()} | "
            f"{c.predicted} | {c.observed} | {c.verdict} |"
        )
    out += ["", "Selected configurations:", ""]
    out += [
        f"- `{m}`: {s.describe()} (validation mIoU {s.val_miou:.3f}; {s.how})"
        for m, s in br.selections.items()
    ]
    out += ["", f"Crossover: {br.crossover.describe()}.", "", "![gain vs baseline](gain_vs_baseline.png)", ""]
    out += [
        f"## Data-volume rule: {dr.claimed_n:,}+ samples are needed",
        "",
        f"**Verdict: {dr.verdict}.** Prompt `{dr.primary_prompt}`. {dr.definition}",
        "",
        f"What the grid can conclude: {dr.grid_scope}",
        "",
    ]
    for m, cv in dr.curves.items():
        base = "-" if cv.baseline_miou is None else f"{cv.baseline_miou:.3f}"
        out += [
            f"### `{m}`: {cv.verdict}",
            "",
            f"Source: {cv.source}; baseline mIoU {base}; smallest n beating the baseline: "
            f"{'none' if cv.smallest_beating_n is None else f'{cv.smallest_beating_n:,}'}.",
            "",
            "| n_train | seeds | specialised mIoU (mean ± sd) | gain vs baseline [95% CI] | beats baseline |",
            "|---|---|---|---|---|",
        ]
        for p in cv.points:
            beats = {True: "yes", False: "no", None: "-"}[p.beats_baseline]
            out.append(
                f"| {p.n_train:,} | {len(p.per_seed)} | {p.mean:.3f} ± {p.sd:.3f} | "
                f"{'-' if p.gain is None else p.gain.fmt()} | {beats} |"
            )
        out += ["", f"Fit: {cv.fit.describe()}.", "", *(f"- {r}" for r in cv.reasons), ""]
    out += ["![learning curve](learning_curve.png)", ""]
    out += [
        "## Training health",
        "",
        f"{health.n_trials} trials, {health.n_flagged} flagged "
        f"(loss collapse < 0.01, loss spikes, train/val divergence, {UNCHANGED}: the returned decoder "
        "equals the base decoder).",
        "",
        *([w, ""] if (w := unchanged_warning(health.counts.get(UNCHANGED, 0), health.n_trials)) else []),
        "| flag | trials |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in health.counts.items()),
        "",
        "## Retention (the price of specialising)",
        "",
        "Fine-tuned decoder vs base decoder on a fixed general-purpose set, "
        "for each model's selected configuration.",
        "",
        "| model | configuration | seeds | retention mIoU | base decoder | change |",
        "|---|---|---|---|---|---|",
    ]
    for r in retention.values():
        f3 = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        delta = "-" if r.delta is None else f"{r.delta:+.3f}"
        out.append(
            f"| {r.model} | {r.config} | {r.n_seeds} | {f3(r.retention_miou)} | "
            f"{f3(r.base_retention_miou)} | {delta} |"
        )
    if extras:
        out += [
            "",
            "## Extra test sets",
            "",
            "Test sets the decoder never trained on (zero-shot transfer sets, or the other wood mode), "
            f"scored with the primary prompt ({br.primary_prompt}): does the gain carry over?",
            "",
            *_breakdown_table(extras, "test set"),
        ]
    if categories:
        out += [
            "",
            "## Per category",
            "",
            f"Test mIoU per category (primary prompt, {br.primary_prompt}): where the gain comes from.",
            "",
            *_breakdown_table(categories, "category"),
        ]
    return "\n".join(out) + "\n"


def write_report(
    out_dir: Path,
    task: str,
    data_kind: str,
    baselines: Sequence[BaselineResult],
    trials: Sequence[TrialResult],
    *,
    threshold: float = 0.75,
    primary_prompt: str = "center",
    claimed_n: int = 5000,
    n_boot: int = 2000,
    n_boot_curve: int = 300,
    seed: int = 0,
    protocol: Mapping[str, Any] | None = None,
) -> ReportFiles:
    """Analyse, then write ``report.md``, ``gain_vs_baseline.png`` and ``learning_curve.png``."""
    from specialsam.report import plots

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    br = baseline_rule(baselines, trials, threshold, primary_prompt, n_boot, seed)
    dr = data_rule(baselines, trials, primary_prompt, claimed_n, n_boot, n_boot_curve, seed)
    health = health_summary(trials)
    retention = retention_summary(br.selections)
    report_md = out_dir / "report.md"
    extras = extra_breakdown(br.selections, baselines, primary_prompt)
    categories = category_breakdown(br.selections, baselines, primary_prompt)
    report_md.write_text(
        _markdown(task, data_kind, br, dr, health, retention, protocol, extras, categories), encoding="utf-8"
    )
    gain_plot = plots.plot_gain_vs_baseline(
        br, out_dir / "gain_vs_baseline.png", title=f"{task}: gain vs baseline"
    )
    curve_plot = plots.plot_learning_curve(
        dr, out_dir / "learning_curve.png", title=f"{task}: learning curve"
    )
    return ReportFiles(report_md, gain_plot, curve_plot, br.verdict, dr.verdict, br, dr, summary_rows(br, dr))
