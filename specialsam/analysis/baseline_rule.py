"""The baseline rule: "fine-tune only when the zero-shot baseline mIoU is below 75%".

* **Cell** (one per model x prompt strategy): the rule predicts a gain when the baseline is below the
  threshold and no gain at or above it. Each cell's gain gets a 95% CI and a two-sided bootstrap
  p-value (``stats.paired_difference``). Observed: ``helps`` / ``hurts`` when the gain is decided
  (Holm-adjusted p <= 5%, see below) and positive / negative, else ``unclear``. Below the threshold
  only ``helps`` matches; at or above it ``hurts`` matches and ``helps`` contradicts.
* **Cells into the overall verdict: Holm, not a primary cell.** Any cell can decide the verdict, so
  with 6 cells (2 models x 3 prompts) unadjusted 95% CIs would give noise about 6 chances to
  decide. Holm's step-down adjustment over every cell with trials keeps the chance that *any* cell
  is wrongly decided at ``stats.ALPHA`` = 5%. A pre-declared primary cell would be as safe but
  would discard the prompt strategies whose baselines lie on the other side of the threshold, the
  very cells that test it; Holm keeps them. Overall: ``contradicted`` if any decided cell
  contradicts, ``supported`` if decided cells exist and all match, else ``inconclusive``.
* **Crossover** (``fit_crossover``): weighted least squares gain = a + b * baseline over cells
  (weights 1/se^2, se from the CI half-width / 1.96, floored at a quarter of the median se so no
  cell dominates); x0 = -a/b; interval: percentile bootstrap over cells (case resampling, refit).
  Not estimable with fewer than 3 distinct baselines or a non-negative fitted slope.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

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
from specialsam.analysis.selection import SelectedConfig, select_config
from specialsam.analysis.stats import ALPHA, LEVEL, GainCI, holm, paired_difference


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
    observed: str  # "helps" | "hurts" | "unclear" | "no trials" (decided after Holm)
    matched: bool | None
    verdict: str
    p_value: float | None = None  # two-sided bootstrap p of "gain = 0"
    p_holm: float | None = None  # Holm-adjusted over every cell with trials


@dataclass
class BaselineRuleReport:
    cells: list[BaselineCell]
    crossover: CrossoverFit
    verdict: str
    threshold: float
    primary_prompt: str
    selections: dict[str, SelectedConfig]
    notes: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)  # which cells decided the verdict, or why none did
    would_change: list[str] = field(default_factory=list)
    combination: str = ""

    def cell(self, model: str, prompt: str) -> BaselineCell | None:
        return next((c for c in self.cells if c.model == model and c.prompt == prompt), None)


def predicted_outcome(baseline: float, threshold: float) -> str:
    """What the baseline rule predicts for a zero-shot mIoU: "gain" strictly below the threshold."""
    return "gain" if baseline < threshold else "no gain"


def _cell_verdict(
    baseline: float, gain: GainCI | None, threshold: float, decided: bool = True
) -> tuple[str, str, bool | None, str]:
    predicted = predicted_outcome(baseline, threshold)
    if gain is None:
        return predicted, "no trials", None, INCONCLUSIVE
    observed = ("helps" if gain.mean > 0 else "hurts") if decided else "unclear"
    if observed == "unclear":
        return predicted, observed, None, INCONCLUSIVE
    matched = (observed == "helps") if predicted == "gain" else (observed == "hurts")
    return predicted, observed, matched, SUPPORTED if matched else CONTRADICTED


def _cell(
    b: BaselineResult, sel: SelectedConfig | None, n_images: int, threshold: float, n_boot: int, seed: int
) -> BaselineCell:
    """One (model, prompt) cell: the baseline against the model's selected configuration."""
    arrays = sel.arrays(b.prompt) if sel else []
    gain, p_value = None, None
    if arrays:
        boot = paired_difference(
            arrays, [b.per_image_iou], n_boot, stable_seed(seed, "cell", b.model, b.prompt)
        )
        gain, p_value = boot.ci(LEVEL), boot.p_two_sided(0.0)
    spec = float(np.mean([a.mean() for a in arrays])) if arrays else None
    predicted, observed, matched, verdict = _cell_verdict(b.miou, gain, threshold, decided=False)
    return BaselineCell(
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
        p_value,
    )


def _apply_holm(cells: Sequence[BaselineCell], threshold: float) -> None:
    """Decide each cell at the Holm-adjusted level over every cell with trials."""
    tested = [c for c in cells if c.p_value is not None]
    for c, adj in zip(tested, holm([c.p_value for c in tested]), strict=True):
        c.p_holm = adj
        _, c.observed, c.matched, c.verdict = _cell_verdict(c.baseline_miou, c.gain, threshold, adj <= ALPHA)


def _name(c: BaselineCell) -> str:
    return (
        f"`{c.model}`/{c.prompt} (baseline {c.baseline_miou:.3f}, gain {c.gain.fmt()}, Holm p {c.p_holm:.3g})"
    )


def _explain(cells: Sequence[BaselineCell], verdict: str, threshold: float) -> tuple[list[str], list[str]]:
    """Which cells decided the verdict (or why none did), and what would change it."""
    tested = [c for c in cells if c.p_holm is not None]
    if verdict == CONTRADICTED:
        bad = [c for c in cells if c.verdict == CONTRADICTED]
        above = [c for c in bad if c.predicted == "no gain"]
        change = "these cells' gains vanishing in a larger test (adjusted p above 5%)"
        if above and len(above) == len(bad):
            change += f", or a threshold above {max(c.baseline_miou for c in above):.3f} (rules.threshold)"
        return [
            "decided by "
            + "; ".join(f"{_name(c)}: predicted {c.predicted}, observed {c.observed}" for c in bad)
        ], [change]
    if verdict == SUPPORTED:
        good = [c for c in cells if c.verdict == SUPPORTED]
        return [
            f"decided by {len(good)} cell(s), all as predicted: "
            + "; ".join(_name(c) for c in good)
            + "; no decided cell contradicts"
        ], ["a decided cell against the prediction: a gain at or above the threshold, or a loss below it"]
    if not tested:
        return ["no (model, prompt) has both a baseline and fine-tuned trials"], ["fine-tuned trials"]
    best = min(tested, key=lambda c: c.p_holm)
    return [
        f"no cell's gain is decided after Holm over {len(tested)} cell(s) "
        f"(closest: {_name(best)} > {ALPHA:g})"
    ], ["narrower intervals: more test images or seeds; `python -m specialsam.calibrate` shows the odds"]


COMBINATION = (
    "Cells combine by Holm's method: each (model, prompt) cell with trials is one test of 'gain = 0', "
    "and Holm's step-down adjustment over all {m} keeps the chance that any cell is wrongly decided at "
    "{alpha:.0%}; a cell counts only when its adjusted p is at most {alpha:g}. The overall verdict is "
    "'contradicted' if any decided cell contradicts the rule, else 'supported' if any cell is decided."
)


def _scope_notes(cells: Sequence[BaselineCell], threshold: float) -> list[str]:
    """What the decided cells cannot test: a threshold with cells on one side only, or no cells."""
    notes = []
    decided = [c for c in cells if c.verdict != INCONCLUSIVE]
    below = any(c.baseline_miou < threshold for c in decided)
    above = any(c.baseline_miou >= threshold for c in decided)
    if decided and not (below and above):
        side = "below" if below else "at or above"
        notes.append(
            f"decided cells lie only {side} the {threshold:.0%} threshold: the threshold itself is not tested"
        )
    if not any(c.gain is not None for c in cells):
        notes.append("no (model, prompt) has both a baseline and fine-tuned trials")
    return notes


def baseline_rule(
    baselines: Sequence[BaselineResult],
    trials: Sequence[TrialResult],
    threshold: float = 0.75,
    primary_prompt: str = "center",
    n_boot: int = 2000,
    seed: int = 0,
) -> BaselineRuleReport:
    """Per (model, prompt strategy): baseline, validated best specialised, gain CI, rule check."""
    n_images = check_alignment(baselines, trials) or 0
    models = sorted({b.model for b in baselines} | {t.model for t in trials})
    selections = {m: s for m in models if (s := select_config(trials, m)) is not None}
    ordered = sorted(baselines, key=lambda r: (r.model, r.prompt != primary_prompt, r.prompt))
    cells = [_cell(b, selections.get(b.model), n_images, threshold, n_boot, seed) for b in ordered]
    fitted = [c for c in cells if c.gain is not None]
    crossover = fit_crossover(
        [c.baseline_miou for c in fitted],
        [c.gain.mean for c in fitted],
        [(c.gain.hi - c.gain.lo) / (2 * 1.96) for c in fitted],
        n_boot=n_boot,
        seed=stable_seed(seed, "crossover"),
    )
    _apply_holm(cells, threshold)
    verdict = overall_verdict([c.verdict for c in cells])
    notes = _scope_notes(cells, threshold)
    reasons, change = _explain(cells, verdict, threshold)
    combination = COMBINATION.format(m=len(fitted), alpha=ALPHA)
    return BaselineRuleReport(
        cells, crossover, verdict, threshold, primary_prompt, selections, notes, reasons, change, combination
    )
