"""The rules report: ``write_report`` analyses the results, then writes ``report.md`` and its plots.

The one place that turns analysis results (``specialsam.analysis``) into files: the markdown, one
section per function below, and the plots drawn by ``specialsam.report.plots``. The sweep logs what
it returns (the files, and the two verdicts as the MLflow tags in ``ReportFiles.tags``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from specialsam.analysis.baseline_rule import BaselineRuleReport, baseline_rule
from specialsam.analysis.data_rule import DataRuleReport, ModelCurve, data_rule
from specialsam.analysis.results import TAG_BASELINE_RULE, TAG_DATA_RULE, BaselineResult, TrialResult
from specialsam.analysis.summaries import (
    UNCHANGED,
    BreakdownRow,
    HealthSummary,
    RetentionSummary,
    category_breakdown,
    extra_breakdown,
    health_summary,
    recommendation,
    retention_summary,
    scope_statement,
    summary_rows,
    unchanged_warning,
)
from specialsam.report import plots

CATEGORY_PLOT = "category_bars.png"


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
    category_plot: Path | None = None
    """Per-category bars (base vs specialised); None when the report has no per-category table."""

    @property
    def plots(self) -> list[Path]:
        """Every plot written beside ``report.md`` (what the sweep logs with it)."""
        return [p for p in (self.gain_plot, self.curve_plot, self.category_plot) if p is not None]

    @property
    def tags(self) -> dict[str, str]:
        return {TAG_BASELINE_RULE: self.verdict_baseline_rule, TAG_DATA_RULE: self.verdict_data_rule}


def _f3(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def _breakdown_table(rows: Sequence[BreakdownRow], what: str) -> list[str]:
    out = [f"| model | {what} | base decoder | specialised (seeds) | change |", "|---|---|---|---|---|"]
    for r in rows:
        delta = "-" if r.delta is None else f"{r.delta:+.3f}"
        out.append(f"| {r.model} | {r.name} | {_f3(r.base)} | {_f3(r.specialised)} ({r.n_seeds}) | {delta} |")
    return out


def _opening(
    task: str,
    data_kind: str,
    br: BaselineRuleReport,
    dr: DataRuleReport,
    health: HealthSummary,
    retention: Mapping[str, RetentionSummary],
    protocol: Mapping[str, Any] | None,
) -> list[str]:
    """Title, procedural warning, the recommendation, then scope and protocol."""
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
    return out


def _baseline_section(br: BaselineRuleReport) -> list[str]:
    """The baseline rule: verdict, one row per cell, the selected configurations, the crossover."""
    out = [
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
    return out


def _curve_subsection(m: str, cv: ModelCurve) -> list[str]:
    """One model's learning curve: source, one row per training-set size, the fit and its verdict."""
    base = "-" if cv.baseline_miou is None else f"{cv.baseline_miou:.3f}"
    out = [
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
    return out


def _data_section(dr: DataRuleReport) -> list[str]:
    """The data-volume rule: verdict, what the grid can conclude, one subsection per model."""
    out = [
        f"## Data-volume rule: {dr.claimed_n:,}+ samples are needed",
        "",
        f"**Verdict: {dr.verdict}.** Prompt `{dr.primary_prompt}`. {dr.definition}",
        "",
        f"What the grid can conclude: {dr.grid_scope}",
        "",
    ]
    for m, cv in dr.curves.items():
        out += _curve_subsection(m, cv)
    out += ["![learning curve](learning_curve.png)", ""]
    return out


def _health_section(health: HealthSummary) -> list[str]:
    """Training health: how many trials carry each flag, and the unchanged-decoder warning."""
    return [
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
    ]


def _retention_section(retention: Mapping[str, RetentionSummary]) -> list[str]:
    """Retention: each selected configuration against the base decoder on general images."""
    out = [
        "## Retention (the price of specialising)",
        "",
        "Fine-tuned decoder vs base decoder on a fixed general-purpose set, "
        "for each model's selected configuration.",
        "",
        "| model | configuration | seeds | retention mIoU | base decoder | change |",
        "|---|---|---|---|---|---|",
    ]
    for r in retention.values():
        delta = "-" if r.delta is None else f"{r.delta:+.3f}"
        out.append(
            f"| {r.model} | {r.config} | {r.n_seeds} | {_f3(r.retention_miou)} | "
            f"{_f3(r.base_retention_miou)} | {delta} |"
        )
    return out


def _breakdown_sections(
    primary_prompt: str, extras: Sequence[BreakdownRow], categories: Sequence[BreakdownRow]
) -> list[str]:
    """Extra test sets and per-category results, each only when there is something to show."""
    out: list[str] = []
    if extras:
        out += [
            "",
            "## Extra test sets",
            "",
            "Test sets the decoder never trained on (zero-shot transfer sets, or the other wood mode), "
            f"scored with the primary prompt ({primary_prompt}): does the gain carry over?",
            "",
            *_breakdown_table(extras, "test set"),
        ]
    if categories:
        out += [
            "",
            "## Per category",
            "",
            f"Test mIoU per category (primary prompt, {primary_prompt}): where the gain comes from.",
            "",
            *_breakdown_table(categories, "category"),
            "",
            f"![per category]({CATEGORY_PLOT})",
        ]
    return out


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
    out = _opening(task, data_kind, br, dr, health, retention, protocol)
    out += _baseline_section(br)
    out += _data_section(dr)
    out += _health_section(health)
    out += _retention_section(retention)
    out += _breakdown_sections(br.primary_prompt, extras, categories)
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
    """Analyse, then write ``report.md``, ``gain_vs_baseline.png``, ``learning_curve.png`` and, when
    there is a per-category table, ``category_bars.png`` beside it."""
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
    cat_plot = None
    if categories:
        cat_plot = plots.plot_category_bars(categories, out_dir / CATEGORY_PLOT, f"{task}: mIoU per category")
    return ReportFiles(
        report_md, gain_plot, curve_plot, br.verdict, dr.verdict, br, dr, summary_rows(br, dr), cat_plot
    )
