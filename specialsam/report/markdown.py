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
from specialsam.analysis.clicks_rule import ClicksReport, clicks_rule
from specialsam.analysis.data_rule import CurvePoint, DataRuleReport, ModelCurve, data_rule
from specialsam.analysis.methods import MethodReport, method_report
from specialsam.analysis.results import (
    TAG_BASELINE_RULE,
    TAG_BASELINE_RULE_CLICKS,
    TAG_DATA_RULE,
    TAG_METHOD_INFIX,
    TAG_RECOMMENDED_METHOD,
    BaselineResult,
    TrialResult,
    check_alignment,
)
from specialsam.analysis.summaries import (
    UNCHANGED,
    BreakdownRow,
    HealthSummary,
    RetentionSummary,
    TuneSpread,
    category_breakdown,
    extra_breakdown,
    health_summary,
    recommendation,
    recommended_cell,
    retention_summary,
    scope_statement,
    summary_rows,
    tune_spread,
    unchanged_warning,
)
from specialsam.arms import arm_method
from specialsam.report import plots

CATEGORY_PLOT = "category_bars.png"
METHOD_PLOT = "method_gains.png"


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
    clicks_report: ClicksReport | None = None
    clicks_plot: Path | None = None
    category_plot: Path | None = None
    """Per-category bars (base vs specialised); None when the report has no per-category table."""
    method_report: MethodReport | None = None
    """The method table (None: a decoder-only sweep, whose report and tags read as before)."""
    method_plot: Path | None = None
    recommended_method: str = "none"
    """The recommended arm's method, ``none`` when the recommendation is not to fine-tune."""

    @property
    def plots(self) -> list[Path]:
        """Every plot the report links, for logging beside it."""
        every = (self.gain_plot, self.curve_plot, self.clicks_plot, self.category_plot, self.method_plot)
        return [p for p in every if p is not None]

    @property
    def tags(self) -> dict[str, str]:
        tags = {TAG_BASELINE_RULE: self.verdict_baseline_rule, TAG_DATA_RULE: self.verdict_data_rule}
        for b in self.clicks_report.budgets if self.clicks_report else []:
            tags[f"{TAG_BASELINE_RULE_CLICKS}{b.clicks}"] = b.verdict
        if self.method_report is not None:
            tags[TAG_RECOMMENDED_METHOD] = self.recommended_method
            for v in self.method_report.verdicts:
                tags[TAG_BASELINE_RULE + TAG_METHOD_INFIX + v.method] = v.baseline_rule
                tags[TAG_DATA_RULE + TAG_METHOD_INFIX + v.method] = v.data_rule
        return tags


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
    clicks: ClicksReport | None = None,
    methods: MethodReport | None = None,
) -> list[str]:
    """Title, procedural warning, the recommendation, then scope and protocol."""
    out = [f"# SpecialSAM report: task `{task}`", ""]
    if data_kind == "procedural":
        out += [
            "> **Procedural data**: the real dataset was absent; these numbers demonstrate the method only.",
            "",
        ]
    rec = recommendation(
        br, dr, retention, data_kind, include_scope=False, health=health, clicks=clicks, methods=methods
    )
    out += ["## Recommendation", "", rec, ""]
    out += ["## Scope and protocol", "", scope_statement(data_kind, methods), ""]
    if protocol:
        out += ["| setting | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in protocol.items()), ""]
    return out


def _calibration_line(rule: str, command: str) -> str:
    return (
        f"How often a {rule} verdict from this sweep design is wrong: simulate it with `{command}` (the "
        "table for the shipped defaults is in the README, 'How often is a verdict wrong (calibration)')."
    )


def _baseline_section(br: BaselineRuleReport, calibrate_cmd: str) -> list[str]:
    """The baseline rule: verdict and why, one row per cell, the selected configurations, the crossover."""
    out = [
        f"## Baseline rule: fine-tune only when the zero-shot mIoU is below {br.threshold:.0%}",
        "",
        f"**Verdict: {br.verdict}.** The rule predicts a gain below the threshold and none at or above it; "
        "each cell's gain has a 95% CI and a p-value (bootstrap over test images and seeds, paired). "
        "Configurations are chosen by validation mIoU, never by test.",
        "",
        br.combination,
        "",
        *(f"- Decided by / failed: {r}" for r in br.reasons),
        *(f"- What would change it: {w}" for w in br.would_change),
        *(f"- {n}" for n in br.notes),
        f"- {_calibration_line('baseline-rule', calibrate_cmd)}",
        "",
        "| model | prompt | baseline mIoU | specialised mIoU | gain [95% CI] | Holm p | seeds | "
        "configuration | predicted | observed | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in br.cells:
        out.append(
            f"| {c.model} | {c.prompt} | {c.baseline_miou:.3f} | "
            f"{'-' if c.specialised_miou is None else f'{c.specialised_miou:.3f}'} | "
            f"{'-' if c.gain is None else c.gain.fmt()} | {'-' if c.p_holm is None else f'{c.p_holm:.3g}'} | "
            f"{c.n_seeds} | {'-' if c.config is None else c.config.describe()} | "
            f"{c.predicted} | {c.observed} | {c.verdict} |"
        )
    out += ["", "Selected configurations:", ""]
    out += [
        f"- `{m}`: {s.describe()} (validation mIoU {s.val_miou:.3f}; {s.how})"
        for m, s in br.selections.items()
    ]
    out += ["", f"Crossover: {br.crossover.describe()}.", "", "![gain vs baseline](gain_vs_baseline.png)", ""]
    return out


def _bytes(v: float | None) -> str:
    if v is None:
        return "-"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if v >= size:
            return f"{v / size:.1f} {unit}"
    return f"{v:.0f} B"


def _method_table(mr: MethodReport, model: str) -> list[str]:
    """One model's methods side by side, cheapest first, then the pick and what would change it."""
    mm = mr.models[model]
    out = [
        f"### `{model}`",
        "",
        "| method | gain (95% CI) | retention change | trainable params | trial s | cache bytes/image |",
        "|---|---|---|---|---|---|",
    ]
    for r in mm.rows:
        params = "-" if r.trainable_params is None else f"{r.trainable_params:,.0f}"
        secs = "-" if r.trial_seconds is None else f"{r.trial_seconds:.1f}"
        ret = "-" if r.retention_change is None else f"{r.retention_change:+.3f}"
        gain = "-" if r.gain is None else r.gain.fmt()
        out.append(f"| {r.method} | {gain} | {ret} | {params} | {secs} | {_bytes(r.cache_bytes)} |")
    out += ["", f"- {mm.pick_line()}"]
    if not mm.decoder_enough:
        out.append(f"- {mm.decoder_note}")
    out.append(f"- What would change it: {mm.would_change}")
    out += [f"- Costs of `{r.method}`: {r.cost_scope}" for r in mm.rows if not r.costs_from_selection]
    return [*out, ""]


def _method_section(mr: MethodReport) -> list[str]:
    """Which way to fine-tune each model: the method table, the pick, the rules per method."""
    out = [
        "## Which way to fine-tune (method)",
        "",
        "Each (model, method) arm was searched, given a learning curve and judged on its own (decoder: the "
        "mask decoder on cached embeddings; lora: LoRA adapters in the image encoder's last blocks + the "
        "decoder; full: those blocks, the neck and the decoder). Gain: the arm's selected configuration on "
        f"the `{mr.primary_prompt}` prompt, 95% CI as in the baseline rule; retention change: as in the "
        "retention section; trainable params, trial seconds (training + scoring) and cache bytes per image: "
        f"medians over the selected configuration's trials. Pick: {mr.pick_rule}.",
        "",
    ]
    for model in mr.models:
        out += _method_table(mr, model)
    out += [
        "Rules judged per method (over that method's arms; each cell and curve decided after Holm across "
        "all arms):",
        "",
        "| method | baseline rule | data rule |",
        "|---|---|---|",
        *(
            f"| {v.method} | {v.baseline_rule} ({v.n_cells} cell(s)) | "
            f"{v.data_rule} ({v.n_curves} curve(s)) |"
            for v in mr.verdicts
        ),
        "",
        *(f"- {n}" for n in mr.notes),
        *([""] if mr.notes else []),
        f"![gain per method]({METHOD_PLOT})",
        "",
    ]
    return out


def _tune_section(spread: Sequence[TuneSpread]) -> list[str]:
    """Phase A: the spread of validation mIoU over the searched configurations, and the default's."""
    if not spread:
        return []
    return [
        "## Phase A: did tuning matter?",
        "",
        "Best validation mIoU of each model's phase-A trials that ran to their end (a trial ASHA "
        "stopped early leaves no record and is not counted: when only the default is listed, ASHA "
        "stopped every other configuration as weaker). A default close to the best says tuning "
        "bought little.",
        "",
        "| model | trials | best | median | worst | default configuration |",
        "|---|---|---|---|---|---|",
        *(
            f"| {t.model} | {t.n_trials} | {t.best:.3f} | {t.median:.3f} | {t.worst:.3f} | "
            f"{t.describe_default()} |"
            for t in spread
        ),
        "",
    ]


def _point_row(p: CurvePoint, cv: ModelCurve) -> str:
    beats = {True: "yes", False: "no", None: "-"}[p.beats_baseline]
    c = p.vs_reference
    if p.n_train == cv.reference_n:
        vs, reading, holm_p = "reference", "-", "-"
    elif c is None:
        vs, reading, holm_p = "-", "-", "-"
    else:
        vs, reading = c.diff.fmt(), c.reading()
        holm_p = f"{c.p_contradict_holm:.3g}" if p.p_beat is not None else "-"
    return (
        f"| {p.n_train:,} | {len(p.per_seed)} | {p.mean:.3f} ± {p.sd:.3f} | "
        f"{'-' if p.gain is None else p.gain.fmt()} | {beats} | {vs} | {reading} | {holm_p} |"
    )


def _curve_subsection(m: str, cv: ModelCurve) -> list[str]:
    """One model: source, one row per training-set size with its comparisons, the verdict, the fit."""
    base = "-" if cv.baseline_miou is None else f"{cv.baseline_miou:.3f}"
    ref = "none" if cv.reference_n is None else f"n = {cv.reference_n:,}"
    out = [
        f"### `{m}`: {cv.verdict}",
        "",
        f"Source: {cv.source}; baseline mIoU {base}; reference size {ref}; smallest n beating the baseline: "
        f"{'none' if cv.smallest_beating_n is None else f'{cv.smallest_beating_n:,}'}.",
        "",
        "| n_train | seeds | specialised mIoU (mean ± sd) | gain vs baseline [95% CI] | beats baseline | "
        "vs reference [90% CI] | reading | adjusted p (contradiction) |",
        "|---|---|---|---|---|---|---|---|",
        *(_point_row(p, cv) for p in cv.points),
        "",
        *(f"- Decided by / failed: {r}" for r in cv.reasons),
        *(f"- What would change it: {w}" for w in cv.would_change),
        "",
        f"Fitted curve (description only; it decides nothing): {cv.fit.describe()}.",
        "",
    ]
    return out


def _data_section(dr: DataRuleReport, calibrate_cmd: str) -> list[str]:
    """The data-volume rule: verdict, how models combine, what the grid can conclude, per model."""
    out = [
        f"## Data-volume rule: {dr.claimed_n:,}+ samples are needed",
        "",
        f"**Verdict: {dr.verdict}.** Prompt `{dr.primary_prompt}`, margin delta = {dr.margin:g} mIoU "
        f"(rules.margin). {dr.definition}",
        "",
        dr.combination,
        "",
        f"What the grid can conclude: {dr.grid_scope}",
        "",
        _calibration_line("data-rule", calibrate_cmd),
        "",
    ]
    for m, cv in dr.curves.items():
        out += _curve_subsection(m, cv)
    out += ["![learning curve](learning_curve.png)", ""]
    return out


def calibrate_command(dr: DataRuleReport, br: BaselineRuleReport, n_seeds: int, n_images: int) -> str:
    """The calibration command that simulates this sweep's design (grid, seeds, test images, rules)."""
    grid = sorted({p.n_train for cv in dr.curves.values() for p in cv.points})
    parts = ["python -m specialsam.calibrate"]
    if grid:
        parts.append("--grid " + ",".join(str(n) for n in grid))
    parts += [
        f"--seeds {n_seeds}",
        f"--test-images {n_images}",
        f"--claimed-n {dr.claimed_n}",
        f"--threshold {br.threshold:g}",
        f"--margin {dr.margin:g}",
    ]
    return " ".join(parts)


def _clicks_section(cr: ClicksReport) -> list[str]:
    """mIoU after k clicks and NoC, base vs specialised; the baseline rule per click budget."""
    if not cr.available:
        return []
    out = ["## Is fine-tuning worth more than a few clicks?", ""]
    if cr.protocol:
        out += [f"Protocol: {cr.protocol}.", ""]
    for b in cr.budgets:
        cells = "; ".join(
            f"`{m}` baseline {bl:.3f}, gain {g.fmt()} ({obs}, Holm p {p:.3g})" for m, bl, g, obs, p in b.cells
        )
        out.append(f"- **{b.statement}**: baseline rule at {b.clicks} click(s) **{b.verdict}** ({cells})")
    out.append("")
    for m, mc in sorted(cr.models.items()):
        out += [
            f"### `{m}` ({mc.n_images} objects, {mc.n_seeds} seed(s), NoC capped at {mc.max_clicks})",
            "",
            "| interactions | base mIoU | specialised mIoU | gain [95% CI] |",
            "|---|---|---|---|",
            *(f"| {p.clicks} | {p.base_miou:.3f} | {p.spec_miou:.3f} | {p.gain.fmt()} |" for p in mc.points),
            "",
        ]
        if mc.noc:
            out += [
                "| NoC@IoU | base clicks (reached) | specialised clicks (reached) "
                "| clicks saved per object [95% CI] |",
                "|---|---|---|---|",
                *(
                    f"| {r.threshold:.0%} | {r.base_noc:.2f} ({r.base_reached:.0%}) | {r.spec_noc:.2f} "
                    f"({r.spec_reached:.0%}) | {r.saved.fmt(2)} |"
                    for r in mc.noc
                ),
                "",
            ]
    out += ["![mIoU vs clicks](clicks_curve.png)", ""]
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
    spread: Sequence[TuneSpread] = (),
    calibrate_cmd: str = "python -m specialsam.calibrate",
    clicks: ClicksReport | None = None,
    methods: MethodReport | None = None,
) -> str:
    out = _opening(task, data_kind, br, dr, health, retention, protocol, clicks, methods)
    out += _baseline_section(br, calibrate_cmd)
    out += _method_section(methods) if methods else []
    out += _clicks_section(clicks) if clicks else []
    out += _tune_section(spread)
    out += _data_section(dr, calibrate_cmd)
    out += _health_section(health)
    out += _retention_section(retention)
    out += _breakdown_sections(br.primary_prompt, extras, categories)
    return "\n".join(out) + "\n"


def _with_left_out(text: str, left_out: Sequence[str]) -> str:
    """The trials the sweep lost, said under the title, before any verdict is read."""
    if not left_out:
        return text
    title, rest = text.split("\n", 1)
    return "\n".join([title, "", *(f"> **Trials left out**: {line}." for line in left_out), rest])


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
    margin: float = 0.01,
    n_boot: int = 2000,
    n_boot_curve: int = 300,
    seed: int = 0,
    protocol: Mapping[str, Any] | None = None,
    click_protocol: str = "",
    left_out: Sequence[str] = (),
) -> ReportFiles:
    """Analyse, then write ``report.md``, ``gain_vs_baseline.png``, ``learning_curve.png`` and, when
    there is a per-category table, ``category_bars.png`` beside it."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    br = baseline_rule(baselines, trials, threshold, primary_prompt, n_boot, seed)
    dr = data_rule(baselines, trials, primary_prompt, claimed_n, n_boot, n_boot_curve, seed, margin)
    health = health_summary(trials)
    retention = retention_summary(br.selections)
    report_md = out_dir / "report.md"
    extras = extra_breakdown(br.selections, baselines, primary_prompt)
    categories = category_breakdown(br.selections, baselines, primary_prompt)
    n_seeds = max((len(p.per_seed) for cv in dr.curves.values() for p in cv.points), default=0)
    cmd = calibrate_command(dr, br, n_seeds, check_alignment(baselines, trials) or 0)
    cr = clicks_rule(baselines, br.selections, primary_prompt, threshold, click_protocol, n_boot, seed)
    mr = method_report(br, dr, trials)
    spread = tune_spread(trials)
    text = _markdown(
        task, data_kind, br, dr, health, retention, protocol, extras, categories, spread, cmd, cr, mr
    )
    report_md.write_text(_with_left_out(text, left_out), encoding="utf-8")
    gain_plot = plots.plot_gain_vs_baseline(
        br, out_dir / "gain_vs_baseline.png", title=f"{task}: gain vs baseline"
    )
    curve_plot = plots.plot_learning_curve(
        dr, out_dir / "learning_curve.png", title=f"{task}: learning curve"
    )
    clicks_plot = None
    if cr.available:
        clicks_plot = plots.plot_clicks_curve(
            cr, out_dir / "clicks_curve.png", title=f"{task}: mIoU vs clicks"
        )
    cat_plot = None
    if categories:
        cat_plot = plots.plot_category_bars(categories, out_dir / CATEGORY_PLOT, f"{task}: mIoU per category")
    method_plot, rec = None, recommended_cell(br, mr)
    if mr is not None:
        method_plot = plots.plot_method_gains(mr, out_dir / METHOD_PLOT, f"{task}: gain per method")
    return ReportFiles(
        report_md,
        gain_plot,
        curve_plot,
        br.verdict,
        dr.verdict,
        br,
        dr,
        summary_rows(br, dr),
        cr,
        clicks_plot,
        cat_plot,
        mr,
        method_plot,
        arm_method(rec.model) if rec is not None and rec.gain.lo > 0 else "none",
    )
