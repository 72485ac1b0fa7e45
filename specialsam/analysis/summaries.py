"""What the verdicts mean for the reader: health, retention, breakdowns, the recommendation, the table.

Summaries of analysed results, as plain values and sentences: how healthy training was, what
specialising cost on general images (retention), where the gain comes from (per category, per extra
test set), the actionable recommendation that opens the report, and the terminal summary table.
No plotting, no file writing: ``specialsam.report.markdown`` lays these out.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from specialsam.analysis.baseline_rule import BaselineCell, BaselineRuleReport
from specialsam.analysis.clicks_rule import ClicksReport
from specialsam.analysis.data_rule import DataRuleReport, ModelCurve
from specialsam.analysis.results import EXCLUDED_PARAM_KEYS, BaselineResult, TrialResult
from specialsam.analysis.selection import SelectedConfig, fmt_params
from specialsam.arms import METHODS, arm_method, arm_model

if TYPE_CHECKING:  # methods.py imports this module (retention_summary)
    from specialsam.analysis.methods import MethodReport

# --------------------------------------------------------------------------------------------
# Health, retention, breakdowns
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


@dataclass
class TuneSpread:
    """Phase A of one model: did tuning matter? Validation mIoU over its trials, and the default's."""

    model: str
    n_trials: int
    best: float
    median: float
    worst: float
    default: float | None  # None: no phase-A trial evaluated the default configuration

    def describe_default(self) -> str:
        if self.default is None:
            return "default configuration not evaluated"
        return f"{self.default:.3f} ({self.best - self.default:+.3f} from tuning)"


def tune_spread(trials: Sequence[TrialResult]) -> list[TuneSpread]:
    """Per model, best / median / worst validation mIoU of its phase-A (``tune``) trials.

    Only trials that ran to their end have results (ASHA-stopped ones leave no record); a default
    near the top says tuning mattered little, a default near the bottom says it mattered."""
    out = []
    for m in sorted({t.model for t in trials if t.phase == "tune"}):
        mine = [t for t in trials if t.model == m and t.phase == "tune" and np.isfinite(t.val_miou)]
        if not mine:
            continue
        vals = np.array([t.val_miou for t in mine])
        default = [t.val_miou for t in mine if t.default_config]
        out.append(
            TuneSpread(
                m,
                len(mine),
                float(vals.max()),
                float(np.median(vals)),
                float(vals.min()),
                float(np.mean(default)) if default else None,
            )
        )
    return out


# --------------------------------------------------------------------------------------------
# Recommendation and the terminal table
# --------------------------------------------------------------------------------------------


def scope_statement(data_kind: str = "real", methods: MethodReport | None = None) -> str:
    text = (
        "Scope: decoder-only fine-tuning (frozen image encoder, cached embeddings); encoder, adapter and "
        "LoRA tuning were not compared, so a 'don't' here says nothing about them."
    )
    if methods is not None:
        present = {r.method for mm in methods.models.values() for r in mm.rows}
        tried = [m for m in METHODS if m in present]
        text = (
            f"Scope: fine-tuning methods compared: {', '.join(tried)} (decoder: the mask decoder on "
            "cached embeddings; lora: LoRA adapters in the image encoder's last blocks + the decoder; "
            "full: those blocks, the neck and the decoder), each with the frozen part of the encoder run "
            "once per image; other adapters were not compared."
        )
    if data_kind == "procedural":
        text += (
            " Data: procedural stand-in; this run is a demonstration of the method, "
            "not evidence about real SAM on real data."
        )
    return text


def _primary_cells(baseline_report: BaselineRuleReport) -> tuple[list[BaselineCell], str]:
    """Cells with a gain on the primary prompt (else on any prompt), and how to name that prompt."""
    prompt = baseline_report.primary_prompt
    cells = [c for c in baseline_report.cells if c.gain is not None and c.prompt == prompt]
    if not cells:
        cells = [c for c in baseline_report.cells if c.gain is not None]
        prompt = "any prompt strategy"
    return cells, prompt


def _samples_line(curve: ModelCurve | None, sel: SelectedConfig, margin: float) -> str | None:
    """How much data is enough: the direct comparison first, the fitted curve as description."""
    if curve is None:
        return None
    bits = []
    if curve.smallest_equivalent_n is not None and curve.reference_n is not None:
        bits.append(
            f"n = {curve.smallest_equivalent_n:,} already comes within ±{margin:g} mIoU of "
            f"n = {curve.reference_n:,} (paired comparison on the same test images)"
        )
    if curve.fit.ok and not curve.fit.notes:
        lo95, hi95 = curve.fit.n95_ci
        bits.append(
            f"the learning curve covers 95% of its rise by n ~ {curve.fit.n95:,.0f} "
            f"[{lo95:,.0f}, {hi95:,.0f}]"
            + (f", so data beyond ~{hi95:,.0f} samples buys little" if hi95 < sel.n_train else "")
        )
    elif curve.fit.ok:
        bits.append(
            f"the fitted curve's n95 ~ {curve.fit.n95:,.0f} is flagged ({'; '.join(curve.fit.notes)})"
        )
    if curve.smallest_beating_n is not None:
        bits.append(f"n = {curve.smallest_beating_n:,} is the smallest grid size that beats the baseline")
    return "Samples: " + "; ".join(bits) + "." if bits else None


def _what_to_tune(best: BaselineCell, methods: MethodReport | None) -> str:
    """``the mask decoder of `tiny-m``` (decoder-only sweeps), or the model, its method and why."""
    if methods is None:
        return f"the mask decoder of `{best.model}`"
    model, method = arm_model(best.model), arm_method(best.model)
    note = methods.models[model].decoder_note.replace(f" for `{model}`", "")
    if method == "decoder":
        return f"the mask decoder of `{model}` ({note})"
    return f"`{model}` with `{method}` ({note})"


def recommended_cell(
    baseline_report: BaselineRuleReport, methods: MethodReport | None = None
) -> BaselineCell | None:
    """The cell the recommendation rests on: the highest gain CI lower bound (primary prompt, else
    any); when that gain is shown and the sweep compared methods, moved to its model's method pick,
    so the recommended arm is the cheapest method within the best one's CI. None: no gains."""
    cells, _ = _primary_cells(baseline_report)
    if not cells:
        return None
    best = max(cells, key=lambda c: (c.gain.lo, c.gain.mean))
    pick = methods.pick_for(best.model) if methods is not None and best.gain.lo > 0 else None
    if pick is not None:
        best = baseline_report.cell(pick.arm, best.prompt) or best
    return best


def _fine_tune_lines(
    best: BaselineCell,
    cells: Sequence[BaselineCell],
    data_report: DataRuleReport | None,
    methods: MethodReport | None = None,
) -> list[str]:
    """The 'fine-tune' verdict: what, with how much data, its caveats, and who else gained."""
    sel = best.config
    assert sel is not None
    lines = [
        f"**Fine-tune** {_what_to_tune(best, methods)} with {sel.n_train:,} training samples and "
        f"{fmt_params({k: v for k, v in sel.params.items() if k not in EXCLUDED_PARAM_KEYS})}: "
        f"expected mIoU gain {best.gain.fmt()} (95% CI) on the `{best.prompt}` prompt, "
        f"{best.baseline_miou:.3f} -> {best.specialised_miou:.3f} over {best.n_seeds} seed(s)."
    ]
    curve = data_report.curves.get(best.model) if data_report else None
    samples = _samples_line(curve, sel, data_report.margin if data_report else 0.01)
    if samples is not None:
        lines.append(samples)
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
    if methods is not None:  # other models by their pick; every method is in the method table
        others = [
            c for c in others if arm_model(c.model) != arm_model(best.model) and methods.is_pick(c.model)
        ]
    if others:
        lines.append("Also helped: " + ", ".join(f"`{c.model}` {c.gain.fmt()}" for c in others) + ".")
    return lines


def _dont_line(best: BaselineCell, cells: Sequence[BaselineCell], prompt: str, methods: bool = False) -> str:
    """The 'don't fine-tune' verdict: every gain negative, or none demonstrably positive."""
    if all(c.gain.hi < 0 for c in cells):
        what = "specialising the decoder lowered mIoU for every model"
        if methods:
            what = "fine-tuning lowered mIoU for every model and method"
        return (
            f"**Don't fine-tune**: {what} on {prompt} "
            f"(least bad: `{best.model}` {best.gain.fmt()} from a baseline of {best.baseline_miou:.3f})."
        )
    return (
        "**Don't fine-tune (no demonstrated gain)**: "
        f"no model's gain on {prompt} has a 95% CI above 0 "
        f"(best: `{best.model}` {best.gain.fmt()} from a baseline of {best.baseline_miou:.3f}). "
        "More test images or seeds could narrow the interval."
    )


def _retention_lines(best: BaselineCell, retention: Mapping[str, RetentionSummary] | None) -> list[str]:
    """The price of the recommended model on general images, or that it was not measured."""
    ret = (retention or {}).get(best.model)
    if ret is not None and ret.delta is not None:
        return [
            f"Retention cost (`{best.model}`, selected configuration): general-purpose mIoU "
            f"{ret.retention_miou:.3f} vs {ret.base_retention_miou:.3f} for the base "
            f"{'decoder' if arm_method(best.model) == 'decoder' else 'model'} "
            f"({ret.delta:+.3f})."
        ]
    if ret is not None or best.gain.lo > 0:
        return ["Retention cost: not measured for this configuration."]
    return []


def _clicks_lines(clicks: ClicksReport | None) -> list[str]:
    """What the gain is worth once users click again (largest click budget), when it differs."""
    if clicks is None or len(clicks.budgets) < 2:
        return []
    first, last = clicks.budgets[0], clicks.budgets[-1]
    helped = {c[0] for c in first.cells if c[3] == "helps"}
    still = {c[0] for c in last.cells if c[3] == "helps"}
    if helped and not still:
        return [
            f"**Clicks**: the gain vanishes with interaction: {last.statement}. A few extra clicks per "
            "object may be worth as much as fine-tuning (see 'Is fine-tuning worth more than a few clicks?')."
        ]
    if still and not helped:
        return [f"**Clicks**: {last.statement}, though not after {first.clicks} click(s)."]
    return [f"**Clicks**: {last.statement}."] if still else []


def recommendation(
    baseline_report: BaselineRuleReport,
    data_report: DataRuleReport | None = None,
    retention: Mapping[str, RetentionSummary] | None = None,
    data_kind: str = "real",
    include_scope: bool = True,
    health: HealthSummary | None = None,
    clicks: ClicksReport | None = None,
    methods: MethodReport | None = None,
) -> str:
    """The actionable opening of the report: fine-tune (what, how) or don't (why), then its scope.

    The model is the one whose primary-prompt gain has the highest CI lower bound; with ``methods``
    (a sweep that compared methods) its method is the model's pick (``recommended_cell``); settings
    and sample count are the validation-selected configuration's. Trials training left unchanged
    (``health``, else the selected configurations' trials) are said first: when every trial is
    unchanged there is no recommendation at all, since a zero gain was never measured."""
    cells, prompt = _primary_cells(baseline_report)
    if health is None:
        health = health_summary([t for sel in baseline_report.selections.values() for t in sel.trials])
    n_unchanged = health.counts.get(UNCHANGED, 0)
    lines: list[str] = []
    if n_unchanged and n_unchanged == health.n_trials:
        lines.append("**No recommendation**: " + (unchanged_warning(n_unchanged, health.n_trials) or ""))
    elif not cells:
        lines.append("**No recommendation**: no model has both a zero-shot baseline and fine-tuned trials.")
    else:
        best = recommended_cell(baseline_report, methods)
        if best.gain.lo > 0:
            lines += _fine_tune_lines(best, cells, data_report, methods)
        else:
            lines.append(_dont_line(best, cells, prompt, methods is not None))
        if n_unchanged:  # right under the verdict it qualifies
            lines.insert(1, "Caution: " + (unchanged_warning(n_unchanged, health.n_trials) or ""))
        lines += _retention_lines(best, retention)
        lines += _clicks_lines(clicks)
    if include_scope:
        lines.append(scope_statement(data_kind, methods))
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
