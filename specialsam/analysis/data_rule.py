"""The data-volume rule: "you need 5,000+ samples", decided by direct paired comparisons.

* **Verdict** (per model, primary prompt; ``data_rule``): the *reference* is the best size at or above
  ``claimed_n`` (highest mean validation mIoU; never chosen on test). Each smaller size n is compared
  with it on the same test images (``stats.paired_difference``: images paired, each size's seeds
  resampled). With delta the practical margin (``rules.margin``, default 0.01 mIoU):

  - ``contradicted`` when some n < claimed_n beats the baseline (paired gain 95% CI above 0) **and**
    is equivalent to the reference within +-delta (the difference's 90% CI inside [-delta, +delta]:
    two one-sided tests);
  - ``supported`` when the grid reaches claimed_n, the reference beats the baseline, and every
    n < claimed_n falls short of the reference by more than delta (90% CI of the difference below
    -delta). The issue's "... or fails to beat the baseline" is deliberately left out: see
    ``_support_p`` for the calibration that showed it wrong in up to 43% of simulated sweeps;
  - otherwise ``inconclusive``, naming the condition that failed and what would change it.

* **Cells into the overall verdict: Holm, not a primary cell.** Either verdict can be reached by any
  of several tests: "contradicted" by any (model, n < claimed_n) pair, "supported" by any model. Each
  test gets one p-value (contradicted: max of the gain's and the equivalence test's p, an
  intersection-union test; supported: max of the reference's gain p and each smaller size's
  shortfall p), and Holm's step-down adjustment over the family (all pairs, resp. all models) keeps
  the chance of *any* false verdict at ``stats.ALPHA`` = 5%. A pre-declared primary cell would be as
  safe but would waste the other models' data, and no model is a natural primary one (the sweep
  compares them); Holm uses every cell and needs no extra setting. The overall verdict is then
  "contradicted" if any model is, else "supported" if any model is, else "inconclusive" (the claim
  is general: one clear counter-example contradicts it).
* **Learning curve** (``fit_learning_curve``, a description only, it decides nothing): test mIoU
  against n_train from the ``curve`` phase (all trials if there is none; at each n the params group
  with the best mean validation mIoU), fitted per seed with y = ymax - (ymax - y0) * exp(-n / tau),
  bounds 0 <= ymax, y0 <= 1 and n_min/10 <= tau <= 10 n_max (profile grid over tau, then
  ``scipy.optimize.curve_fit``). **n_p** = tau * ln(1 / (1 - p)) is the n at which the curve has
  covered a fraction p of its rise y0 -> ymax (n90 = 2.30 tau, n95 = 3.00 tau); intervals from a
  bootstrap over seeds, refitting each replicate (every (n, seed) value redrawn as its size's seed
  mean plus a seed deviation drawn from all sizes' pooled deviations, scaled by sqrt(k / (k - 1));
  with one seed per size, a residual bootstrap about the fit). n90/n95 are flagged when
  extrapolated beyond the grid or when the curve rises less than the margin: a 3-parameter fit to
  4 sizes x 3 seeds is too fragile to decide a verdict, which is why it no longer does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from specialsam.analysis.curve_fit import CurveFit, fit_learning_curve
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
from specialsam.analysis.stats import ALPHA, LEVEL, GainCI, PairedBootstrap, holm, paired_difference


@dataclass
class CurvePoint:
    n_train: int
    per_seed: list[float]
    params: dict[str, Any]
    arrays: list[np.ndarray] = field(default_factory=list, repr=False)  # per-image IoU per seed
    gain: GainCI | None = None
    val_miou: float = float("nan")  # mean validation mIoU of its seeds (picks the reference)
    p_beat: float | None = None  # two-sided p of the gain over the baseline (None: no baseline)
    vs_reference: SizeComparison | None = None  # n < claimed_n only

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
class SizeComparison:
    """One size n < claimed_n against the reference size: the paired difference and its tests."""

    reference_n: int
    diff: GainCI  # n minus reference, (1 - 2 ALPHA) = 90% interval
    margin: float
    p_equivalent: float  # TOST: against |difference| >= margin
    p_short: float  # against difference >= -margin (small: n falls short by more than margin)
    p_contradict: float = 1.0  # max(gain p, equivalence p): this size contradicts the claim
    p_contradict_holm: float = 1.0

    @property
    def equivalent(self) -> bool:
        return -self.margin < self.diff.lo and self.diff.hi < self.margin

    @property
    def short(self) -> bool:
        return self.diff.hi < -self.margin

    def reading(self) -> str:
        if self.equivalent:
            return f"within ±{self.margin:g}"
        if self.short:
            return f"short by > {self.margin:g}"
        return "undecided"


@dataclass
class ModelCurve:
    model: str
    points: list[CurvePoint]
    fit: CurveFit
    baseline_miou: float | None
    smallest_beating_n: int | None
    verdict: str
    reasons: list[str]  # which condition decided the verdict, or which failed
    source: str
    reference_n: int | None = None
    smallest_equivalent_n: int | None = None  # smallest n < claimed_n within +-margin of the reference
    p_support: float | None = None  # None: the support test cannot be run (no reference, baseline...)
    p_support_holm: float = 1.0
    would_change: list[str] = field(default_factory=list)  # what evidence would change the verdict


COMBINATION = (
    "Models combine by Holm's method: each model is one contradiction test (its largest size below "
    "{claimed:,} against the reference; smaller sizes follow in a fixed sequence, largest first, and "
    "only set the smallest size shown within the margin) and one support test, and Holm's step-down "
    "adjustment keeps the chance of any false 'contradicted' (resp. 'supported') at {alpha:.0%} "
    "across the models ({n_c} contradiction test(s), {n_s} support test(s) here). The overall "
    "verdict is 'contradicted' if any model is, else 'supported' if any model is."
)


@dataclass
class DataRuleReport:
    curves: dict[str, ModelCurve]
    verdict: str
    claimed_n: int
    primary_prompt: str
    grid_scope: str
    margin: float = 0.01
    combination: str = ""
    definition: str = (
        "Decided by direct paired comparisons on the same test images: each size below the claim "
        "against the reference (the best size at or above it by validation mIoU), with a practical "
        "margin delta. 'Beats baseline': the paired gain's 95% CI lower bound is above 0. 'Within "
        "±delta': the difference's 90% CI lies inside [-delta, +delta] (two one-sided tests). 'Short by "
        "> delta': the difference's 90% CI lies below -delta. The fitted curve and its n90/n95 (the "
        "size at which y = ymax - (ymax - y0) exp(-n/tau) has covered 90% / 95% of its rise, "
        "n_p = tau ln(1/(1-p)), bootstrap over seeds) describe the curve; they decide nothing."
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
        val = float(np.mean([t.val_miou for t in members]))
        points.append(
            CurvePoint(n, [float(a.mean()) for a in arrays], dict(members[0].params), arrays, None, val)
        )
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
            f"grid tops at n = {hi:,} < {claimed_n:,}: cannot test the claim above {hi:,}; with no size "
            f"at or above {claimed_n:,} to compare against, it can neither support nor contradict it"
        )
    elif lo >= claimed_n:
        parts.append(f"every grid size is >= {claimed_n:,}: nothing below the claim to compare")
    else:
        parts.append(
            f"grid spans n = {lo:,}-{hi:,}, reaching the claimed {claimed_n:,}: "
            "the claim is testable on both sides"
        )
    parts.append(f"nothing is known below n = {lo:,}")
    return "; ".join(parts) + "."


def _reference(points: Sequence[CurvePoint], claimed_n: int) -> CurvePoint | None:
    """The best size at or above the claim, by validation (ties: the larger n); never by test."""
    above = [p for p in points if p.n_train >= claimed_n]
    if not above:
        return None
    return max(above, key=lambda p: (p.val_miou if math.isfinite(p.val_miou) else -math.inf, p.n_train))


def _compare_sizes(
    model: str,
    points: Sequence[CurvePoint],
    ref: CurvePoint,
    claimed_n: int,
    margin: float,
    n_boot: int,
    seed: int,
) -> None:
    """Fill ``vs_reference`` of each size below the claim: its paired difference to the reference."""
    for p in points:
        if p.n_train >= claimed_n:
            continue
        boot = paired_difference(
            p.arrays, ref.arrays, n_boot, stable_seed(seed, "vs-ref", model, p.n_train, ref.n_train)
        )
        p.vs_reference = SizeComparison(
            ref.n_train,
            boot.ci(1.0 - 2.0 * ALPHA),
            margin,
            boot.p_equivalent(margin),
            boot.p_less(-margin),
        )
        if p.p_beat is not None:
            p.vs_reference.p_contradict = max(p.p_beat, p.vs_reference.p_equivalent)


def _gain_p(boot: PairedBootstrap) -> float:
    """Two-sided p of 'gain > 0' read the way the 95% CI is: the lower bound above 0 iff p < 0.05."""
    return min(1.0, 2.0 * boot.p_greater(0.0))


def _support_p(points: Sequence[CurvePoint], ref: CurvePoint | None, claimed_n: int) -> float | None:
    """p of the support test (intersection-union): the reference beats the baseline and every size
    below the claim falls short of it by more than the margin.

    The issue's wording also let a size pass by merely failing to beat the baseline. The calibration
    showed why not: failing to beat the baseline is only absence of evidence, so an under-powered
    small size whose true gain is within the margin of the reference then counts for the claim
    (a curve rising by 0.014 from n = 2,000 to 8,000 was called 'supported' in 43% of simulated
    sweeps at margin 0.02, and a small plateau in 5% at 0.01). A size that truly gives nothing
    falls short of a reference that beats the baseline anyway, when the reference gains > margin."""
    small = [p for p in points if p.n_train < claimed_n and p.vs_reference is not None]
    if ref is None or ref.p_beat is None or not small:
        return None  # not testable
    return max([ref.p_beat, *(p.vs_reference.p_short for p in small)])


def _gain_text(p: CurvePoint) -> str:
    return "no baseline" if p.gain is None else f"gain {p.gain.fmt()} (95% CI)"


def _diff_text(p: CurvePoint) -> str:
    c = p.vs_reference
    return f"difference to n = {c.reference_n:,} {c.diff.fmt()} (90% CI)"


def _contradicted(cv: ModelCurve, hits: Sequence[CurvePoint], n_tests: int) -> None:
    first = max(hits, key=lambda p: p.n_train)
    c = first.vs_reference
    cv.smallest_equivalent_n = min(p.n_train for p in hits)
    cv.reasons = [
        f"decided by n = {first.n_train:,}, the largest size below the claim: it beats the baseline "
        f"({_gain_text(first)}) and is within ±{c.margin:g} of n = {c.reference_n:,} ({_diff_text(first)}); "
        f"Holm-adjusted p = {c.p_contradict_holm:.3g} <= {ALPHA:g} over {n_tests} model(s)"
        + (
            f"; smaller sizes down to n = {cv.smallest_equivalent_n:,} are shown within the margin too"
            if cv.smallest_equivalent_n < first.n_train
            else ""
        )
    ]
    widest = max(abs(c.diff.lo), abs(c.diff.hi))
    cv.would_change = [
        f"evidence that n = {first.n_train:,} falls short of n = {c.reference_n:,} by more than the margin; "
        f"on these data only rules.margin below {widest:.3f} (the interval's widest bound) would undo it"
    ]


def _supported(cv: ModelCurve, ref: CurvePoint, small: Sequence[CurvePoint], n_tests: int) -> None:
    margin = small[0].vs_reference.margin
    parts = [f"n = {p.n_train:,} {_diff_text(p)}" for p in small]
    cv.reasons = [
        f"decided by n = {ref.n_train:,}: it beats the baseline ({_gain_text(ref)}) and every smaller size "
        f"falls short of it by more than {margin:g} ({'; '.join(parts)}); Holm-adjusted p = "
        f"{cv.p_support_holm:.3g} <= {ALPHA:g} over {n_tests} model(s)"
    ]
    closest = max(p.vs_reference.diff.hi for p in small)
    cv.would_change = [
        f"a size below the claim within the margin of n = {ref.n_train:,}; on these data rules.margin above "
        f"{-closest:.3f} (the closest size's interval bound) would undo it"
    ]


def _size_failure(p: CurvePoint, n_tests: int) -> str:
    """Why size p did not contradict the claim."""
    c = p.vs_reference
    if not p.beats_baseline:
        return f"n = {p.n_train:,} does not beat the baseline ({_gain_text(p)})"
    if not c.equivalent:
        return f"n = {p.n_train:,} is not shown within ±{c.margin:g} ({_diff_text(p)})"
    return (
        f"n = {p.n_train:,} beats the baseline and is within ±{c.margin:g}, but its adjusted p "
        f"{c.p_contradict_holm:.3g} > {ALPHA:g} (Holm over {n_tests} model(s), sizes in sequence)"
    )


def _support_failure(cv: ModelCurve, ref: CurvePoint, small: Sequence[CurvePoint], n_s: int) -> str:
    """Why the support test failed: the reference's own gain, or the sizes not shown short of it."""
    if not ref.beats_baseline:
        return f"n = {ref.n_train:,} itself does not beat the baseline ({_gain_text(ref)})"
    open_ = [
        f"n = {p.n_train:,} is not shown short by more than {p.vs_reference.margin:g} ({_diff_text(p)})"
        for p in small
        if not p.vs_reference.short
    ]
    return "; ".join(open_) or f"Holm-adjusted p {cv.p_support_holm:.3g} > {ALPHA:g} over {n_s} model(s)"


def _inconclusive(
    cv: ModelCurve, ref: CurvePoint | None, small: Sequence[CurvePoint], n_c: int, n_s: int
) -> None:
    """Name each failed condition of both verdicts and what would decide them."""
    if ref is None or not small:
        cv.reasons = ["no size at or above the claim" if ref is None else "no size below the claim"]
        cv.would_change = ["a curve grid (curve.n_train) with sizes on both sides of the claimed n"]
        return
    if ref.gain is None:
        cv.reasons = ["no baseline for the primary prompt: cannot tell which sizes beat it"]
        cv.would_change = ["a zero-shot baseline of this model on the primary prompt"]
        return
    cv.reasons = [
        "not contradicted (needs a size below the claim that beats the baseline and lies within the margin "
        "of n = " + f"{ref.n_train:,}): " + "; ".join(_size_failure(p, n_c) for p in small)
    ]
    cv.reasons.append(
        "not supported (needs the reference to beat the baseline and every size below the claim to fall "
        "short of it by more than the margin): " + _support_failure(cv, ref, small, n_s)
    )
    cv.would_change = [
        "narrower intervals of the size differences: more seeds per size (curve.seeds) or more test images; "
        "`python -m specialsam.calibrate` shows how often this design decides"
    ]


def _decide(cv: ModelCurve, claimed_n: int, n_c: int, n_s: int) -> None:
    """The model's verdict after Holm, with its reasons and what would change it."""
    ref = next((p for p in cv.points if p.n_train == cv.reference_n), None)
    small = [p for p in cv.points if p.vs_reference is not None]
    hits = [p for p in small if p.vs_reference.p_contradict_holm <= ALPHA]
    if hits:  # the chain's first (largest) size passed: the model's contradiction test
        cv.verdict = CONTRADICTED
        _contradicted(cv, hits, n_c)
    elif ref is not None and small and cv.p_support_holm <= ALPHA:
        cv.verdict = SUPPORTED
        _supported(cv, ref, small, n_s)
    else:
        cv.verdict = INCONCLUSIVE
        _inconclusive(cv, ref, small, n_c, n_s)


def _model_curve(
    model: str,
    points: list[CurvePoint],
    source: str,
    base: BaselineResult | None,
    claimed_n: int,
    margin: float,
    boots: tuple[int, int, int],
) -> ModelCurve:
    """Gains over the baseline, comparisons with the reference, the descriptive fit (no verdict yet)."""
    n_boot, n_boot_curve, seed = boots
    for p in points:
        if base is not None:
            boot = paired_difference(
                p.arrays, [base.per_image_iou], n_boot, stable_seed(seed, "curve", model, p.n_train)
            )
            p.gain, p.p_beat = boot.ci(LEVEL), _gain_p(boot)
    ref = _reference(points, claimed_n)
    if ref is not None:
        _compare_sizes(model, points, ref, claimed_n, margin, n_boot, seed)
    fit = fit_learning_curve(points, n_boot_curve, stable_seed(seed, "fit", model), margin=margin)
    smallest = next((p.n_train for p in points if p.beats_baseline), None)
    cv = ModelCurve(
        model, points, fit, base.miou if base else None, smallest, INCONCLUSIVE, [], source,
        reference_n=None if ref is None else ref.n_train,
    )  # fmt: skip
    cv.p_support = _support_p(points, ref, claimed_n)
    return cv


def _chain(cv: ModelCurve) -> list[SizeComparison]:
    """The model's contradiction tests in their fixed order: largest size below the claim first."""
    pts = [p for p in cv.points if p.vs_reference is not None and p.p_beat is not None]
    return [p.vs_reference for p in sorted(pts, key=lambda p: -p.n_train)]


def _holm_families(curves: Sequence[ModelCurve]) -> tuple[int, int]:
    """Holm across models, for the contradiction and for the support test; sizes in a fixed sequence.

    A model's contradiction test is its largest size below the claim (the one most likely to match
    the reference); smaller sizes are then tested in descending order, each only while all larger
    ones passed (a fixed sequence spends no extra error). Their adjusted p is the model's Holm
    multiplier times the running maximum of the chain's p-values."""
    chains = [(cv, ch) for cv in curves if (ch := _chain(cv))]
    firsts = [ch[0].p_contradict for _, ch in chains]
    for (_, ch), first, adj in zip(chains, firsts, holm(firsts), strict=True):
        mult = adj / first if first > 0 else 1.0
        running = 0.0
        for c in ch:
            running = max(running, c.p_contradict)
            c.p_contradict_holm = max(adj, min(1.0, mult * running))
    testable = [cv for cv in curves if cv.p_support is not None]
    for cv, adj in zip(testable, holm([cv.p_support for cv in testable]), strict=True):
        cv.p_support_holm = adj
    return len(chains), len(testable)


def data_rule(
    baselines: Sequence[BaselineResult],
    trials: Sequence[TrialResult],
    primary_prompt: str = "center",
    claimed_n: int = 5000,
    n_boot: int = 2000,
    n_boot_curve: int = 300,
    seed: int = 0,
    margin: float = 0.01,
) -> DataRuleReport:
    """Per model: gains over the baseline, paired comparisons with the reference size, the
    descriptive curve, and the verdict; models combined by Holm (see the module docstring)."""
    check_alignment(baselines, trials)
    base_by_model = {b.model: b for b in baselines if b.prompt == primary_prompt}
    curves: dict[str, ModelCurve] = {}
    all_ns: list[int] = []
    for m in sorted({t.model for t in trials}):
        points, source = _curve_points(trials, m, primary_prompt)
        if points:
            cv = _model_curve(
                m, points, source, base_by_model.get(m), claimed_n, margin, (n_boot, n_boot_curve, seed)
            )
            curves[m] = cv
            all_ns += [p.n_train for p in points]
    n_c, n_s = _holm_families(list(curves.values()))
    for cv in curves.values():
        _decide(cv, claimed_n, n_c, n_s)
    return DataRuleReport(
        curves,
        overall_verdict([c.verdict for c in curves.values()]),
        claimed_n,
        primary_prompt,
        _grid_scope(all_ns, claimed_n),
        margin,
        COMBINATION.format(claimed=claimed_n, alpha=ALPHA, n_c=n_c, n_s=n_s),
    )
