"""Which way to fine-tune each model: the method table (issue #23).

The sweep runs every (model, method) *arm* as if it were a model (``specialsam.arms``), so the
baseline rule's cells, the data rule's curves, the selections and the retention summaries are
already per arm. This module reads them back per model, one row per method:

* **gain**: the arm's primary-prompt cell of the baseline rule (selected configuration, 95% CI);
* **retention change**: the arm's selected configuration on the general-purpose set
  (``summaries.retention_summary``);
* **costs** (trainable parameters, trial seconds, cache bytes per image): medians over the selected
  configuration's trials, i.e. the seeds of what the pick would rerun, at its n_train; a cost that
  none of them recorded (records from before #23) falls back to all of the arm's trials, and the row
  says which (``MethodRow.cost_scope``).

**The pick** (``ModelMethods.pick``): the cheapest method (``arms.METHODS`` order: decoder < lora <
full) whose gain estimate reaches the best method's 95% CI lower bound, the best being the highest
gain estimate, as the issue asks. One addition: when the best method's CI lies above 0, a cheaper
method must also have its own CI above 0, so the pick never turns a demonstrated gain into an
undemonstrated one. The rules are judged per method by ``results.overall_verdict`` over the
method's cells (baseline rule) and curves (data rule), each already decided after Holm across all
arms. No plotting, no file writing here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from specialsam.analysis.baseline_rule import BaselineRuleReport
from specialsam.analysis.data_rule import DataRuleReport
from specialsam.analysis.results import TrialResult, overall_verdict
from specialsam.analysis.stats import GainCI
from specialsam.analysis.summaries import retention_summary
from specialsam.arms import METHODS, arm_method, arm_model

PICK_RULE = (
    "the cheapest method (decoder < lora < full) whose gain estimate reaches the best method's "
    "95% CI lower bound (best: the highest gain estimate); when that bound is above 0, the cheaper "
    "method's own CI must be above 0 too"
)


def method_rank(method: str) -> int:
    """Cost order of a method (``arms.METHODS``); an unknown method counts as the costliest."""
    return METHODS.index(method) if method in METHODS else len(METHODS)


@dataclass
class MethodRow:
    """One arm of a model: its gain, what specialising cost on general images, what it cost to run."""

    arm: str
    model: str
    method: str
    gain: GainCI | None  # primary-prompt cell, selected configuration; None: no trials
    retention_change: float | None
    trainable_params: float | None  # medians over ``cost_scope``'s trials; None: not recorded
    trial_seconds: float | None
    cache_bytes: float | None  # per image
    cost_scope: str = ""  # which trials the cost medians come from
    costs_from_selection: bool = True  # False: some cost fell back to all trials, or none was recorded


@dataclass
class ModelMethods:
    """One model's methods, cheapest first, and which of them to use."""

    model: str
    rows: list[MethodRow]
    best: MethodRow | None = None  # highest gain estimate
    pick: MethodRow | None = None
    decoder_enough: bool = False
    decoder_note: str = ""  # why decoder-only is (not) enough, or that it was not measured
    would_change: str = ""

    def row(self, method: str) -> MethodRow | None:
        return next((r for r in self.rows if r.method == method), None)

    def pick_line(self) -> str:
        """``pick: lora — ...``: the pick and the best method it was measured against."""
        if self.pick is None:
            return "pick: none — no method of this model has a gain (no trials on the primary prompt)"
        best = self.best
        if self.pick is best:
            return (
                f"pick: {best.method} — the best method ({best.gain.fmt()}); no cheaper method's "
                f"estimate reaches its CI lower bound {best.gain.lo:+.3f}"
            )
        return (
            f"pick: {self.pick.method} — cheapest method within the best method's CI "
            f"({best.method} {best.gain.fmt()})"
        )


@dataclass
class MethodVerdict:
    """The two rules judged over one method's arms."""

    method: str
    baseline_rule: str
    data_rule: str
    n_cells: int  # baseline-rule cells with trials
    n_curves: int


@dataclass
class MethodReport:
    models: dict[str, ModelMethods]
    verdicts: list[MethodVerdict]
    primary_prompt: str
    pick_rule: str = PICK_RULE
    notes: list[str] = field(default_factory=list)

    def pick_for(self, arm: str) -> MethodRow | None:
        """The method pick of ``arm``'s model (None: the model has no measured method)."""
        mm = self.models.get(arm_model(arm))
        return None if mm is None else mm.pick

    def is_pick(self, arm: str) -> bool:
        pick = self.pick_for(arm)
        return pick is not None and pick.arm == arm


def _median(values: Sequence[float | None]) -> float | None:
    kept = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return float(np.median(kept)) if kept else None


def _costs(
    selected: Sequence[TrialResult], every: Sequence[TrialResult]
) -> tuple[tuple[float | None, ...], str, bool]:
    """Median params, seconds and cache bytes: the selected configuration's trials, else all the arm's."""
    getters: tuple[Callable[[TrialResult], float | None], ...] = (
        lambda t: t.trainable_params,
        lambda t: t.trial_seconds,
        lambda t: t.cache_bytes,
    )
    out, fell_back = [], False
    for get in getters:
        value = _median([get(t) for t in selected])
        if value is None:
            value = _median([get(t) for t in every])
            fell_back = fell_back or value is not None
        out.append(value)
    if all(v is None for v in out):
        return tuple(out), "not recorded by any trial", False
    scope = f"selected configuration ({len(selected)} trial(s))"
    if fell_back:
        scope += f", except costs none of them recorded: all {len(every)} trial(s) of the arm"
    return tuple(out), scope, not fell_back


def _row(arm: str, br: BaselineRuleReport, trials: Sequence[TrialResult], retention) -> MethodRow:
    cell = br.cell(arm, br.primary_prompt)
    sel = br.selections.get(arm)
    ret = retention.get(arm)
    mine = [t for t in trials if t.model == arm]
    (params, seconds, cache), scope, from_sel = _costs(sel.trials if sel else [], mine)
    return MethodRow(
        arm,
        arm_model(arm),
        arm_method(arm),
        None if cell is None else cell.gain,
        None if ret is None else ret.delta,
        params,
        seconds,
        cache,
        scope,
        from_sel,
    )


def pick_method(rows: Sequence[MethodRow]) -> tuple[MethodRow | None, MethodRow | None]:
    """(best, pick) among the rows with a gain (see the module docstring)."""
    measured = [r for r in rows if r.gain is not None]
    if not measured:
        return None, None
    best = max(measured, key=lambda r: (r.gain.mean, -method_rank(r.method)))
    ok = [
        r
        for r in measured
        if r is best or (r.gain.mean >= best.gain.lo and (best.gain.lo <= 0 or r.gain.lo > 0))
    ]
    return best, min(ok, key=lambda r: method_rank(r.method))


def _decoder_note(mm: ModelMethods) -> str:
    """Why decoder-only is (not) enough for this model, in one sentence."""
    dec, best, m = mm.row("decoder"), mm.best, mm.model
    if dec is None or dec.gain is None or best is None:
        return f"decoder-only was not measured for `{m}`"
    if mm.decoder_enough:
        if best is dec:
            return (
                f"decoder-only is enough for `{m}`: no other method's estimate is higher ({dec.gain.fmt()})"
            )
        return (
            f"decoder-only is enough for `{m}`: its gain {dec.gain.fmt()} reaches {best.method}'s "
            f"CI lower bound {best.gain.lo:+.3f}"
        )
    if dec.gain.mean >= best.gain.lo:
        return (
            f"decoder-only is not enough for `{m}`: its gain {dec.gain.fmt()} is not shown above 0, "
            f"while {best.method}'s is ({best.gain.fmt()})"
        )
    return (
        f"decoder-only is not enough for `{m}`: its gain {dec.gain.fmt()} lies below {best.method}'s "
        f"CI lower bound {best.gain.lo:+.3f}"
    )


def _would_change(mm: ModelMethods) -> str:
    """What evidence would move the pick to a cheaper or a costlier method."""
    measured = [r for r in mm.rows if r.gain is not None]
    pick, best = mm.pick, mm.best
    if pick is None:
        return "trials of this model's arms on the primary prompt"
    if len(measured) == 1:
        return f"only `{pick.method}` has trials: the other methods need trials before they can be compared"
    parts = []
    cheaper = [r for r in measured if method_rank(r.method) < method_rank(pick.method)]
    if cheaper:
        c = max(cheaper, key=lambda r: r.gain.mean)
        need = " with its own CI above 0" if best.gain.lo > 0 else ""
        parts.append(
            f"`{c.method}` is picked if its gain estimate reaches {best.method}'s CI lower bound "
            f"{best.gain.lo:+.3f}{need} (now {c.gain.fmt()})"
        )
    costlier = [r for r in measured if method_rank(r.method) > method_rank(pick.method)]
    if costlier:
        c = max(costlier, key=lambda r: r.gain.lo)
        parts.append(
            f"`{c.method}` is picked if its CI separates from `{pick.method}`: a lower bound above "
            f"{pick.gain.mean:+.3f} (now {c.gain.lo:+.3f})"
        )
    return "; ".join(parts) + "; more test images or seeds narrow the intervals"


def _model_methods(model: str, rows: list[MethodRow]) -> ModelMethods:
    mm = ModelMethods(model, sorted(rows, key=lambda r: method_rank(r.method)))
    mm.best, mm.pick = pick_method(mm.rows)
    mm.decoder_enough = mm.pick is not None and mm.pick.method == "decoder"
    mm.decoder_note = _decoder_note(mm)
    mm.would_change = _would_change(mm)
    return mm


def _verdicts(arms: Sequence[str], br: BaselineRuleReport, dr: DataRuleReport | None) -> list[MethodVerdict]:
    """Each rule over one method's arms: its cells (every prompt) and its curves."""
    out = []
    for method in sorted({arm_method(a) for a in arms}, key=method_rank):
        cells = [c for c in br.cells if arm_method(c.model) == method and c.gain is not None]
        curves = [cv for m, cv in (dr.curves.items() if dr else []) if arm_method(m) == method]
        out.append(
            MethodVerdict(
                method,
                overall_verdict([c.verdict for c in cells]),
                overall_verdict([cv.verdict for cv in curves]),
                len(cells),
                len(curves),
            )
        )
    return out


def method_report(
    baseline_report: BaselineRuleReport,
    data_report: DataRuleReport | None,
    trials: Sequence[TrialResult],
) -> MethodReport | None:
    """Per model, its methods side by side and the pick; None for a decoder-only sweep (every arm
    is a bare model name), whose report then reads exactly as before the method axis."""
    arms = sorted({c.model for c in baseline_report.cells} | {t.model for t in trials})
    if all(arm_method(a) == "decoder" for a in arms):
        return None
    retention = retention_summary(baseline_report.selections)
    by_model: dict[str, list[MethodRow]] = {}
    for arm in arms:
        by_model.setdefault(arm_model(arm), []).append(_row(arm, baseline_report, trials, retention))
    models = {m: _model_methods(m, rows) for m, rows in sorted(by_model.items())}
    unshown = [f"`{m}`" for m, mm in models.items() if mm.pick is not None and mm.pick.gain.lo <= 0]
    notes = []
    if unshown:
        notes.append(
            f"no method of {', '.join(unshown)} shows a gain (no CI above 0): there the pick only names "
            "the cheapest of the least bad methods, not one worth using"
        )
    verdicts = _verdicts(arms, baseline_report, data_report)
    return MethodReport(models, verdicts, baseline_report.primary_prompt, notes=notes)
