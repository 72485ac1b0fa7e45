"""Is fine-tuning worth more than a few clicks? The rule per click budget on planted answers."""

from __future__ import annotations

import numpy as np

from specialsam.analysis.baseline_rule import baseline_rule
from specialsam.analysis.clicks_rule import clicks_rule
from specialsam.analysis.results import CONTRADICTED, INCONCLUSIVE, SUPPORTED, BaselineResult, TrialResult
from specialsam.analysis.summaries import recommendation
from specialsam.report.markdown import write_report

N = 120
CLICKS = (1, 3, 9)


def _iou(rng: np.random.Generator, mean: float) -> np.ndarray:
    return np.clip(rng.normal(mean, 0.05, N), 0, 1)


def _fixture(spec_after_9: float, base_noc: float = 6.0, spec_noc: float = 3.0):
    """One model whose base decoder goes 0.40 -> 0.60 -> 0.86 with clicks; fine-tuned it starts at
    0.55 and reaches ``spec_after_9`` after 9 interactions."""
    rng = np.random.default_rng(0)
    base_curve = {1: _iou(rng, 0.40), 3: _iou(rng, 0.60), 9: _iou(rng, 0.86)}
    base = BaselineResult(
        "tiny-m",
        "center",
        base_curve[1],
        clicks_iou=base_curve,
        noc={0.85: np.clip(np.round(rng.normal(base_noc, 1, N)), 1, 20)},
        max_clicks=20,
    )
    trials = []
    for seed in range(3):
        spec_curve = {1: _iou(rng, 0.55), 3: _iou(rng, 0.70), 9: _iou(rng, spec_after_9)}
        trials.append(
            TrialResult(
                f"curve/{seed}",
                "tiny-m",
                500,
                seed,
                {"lr": 1e-3},
                {"center": spec_curve[1]},
                0.5,
                phase="curve",
                clicks_iou=spec_curve,
                noc={0.85: np.clip(np.round(rng.normal(spec_noc, 1, N)), 1, 20)},
                max_clicks=20,
            )
        )
    return [base], trials


def test_gain_that_vanishes_with_clicks_is_said_per_budget_and_in_the_recommendation():
    baselines, trials = _fixture(spec_after_9=0.86)
    br = baseline_rule(baselines, trials, n_boot=500)
    cr = clicks_rule(baselines, br.selections, "center", 0.75, "center then clicks", n_boot=500)
    first, last = cr.budgets
    assert (first.clicks, last.clicks) == (1, 9)
    assert first.verdict == SUPPORTED and first.cells[0][3] == "helps"  # below 0.75: gain, as predicted
    assert last.cells[0][1] > 0.75 and last.cells[0][3] == "unclear" and last.verdict == INCONCLUSIVE
    assert "no longer" in last.statement
    noc = cr.models["tiny-m"].noc[0]
    assert noc.saved.lo > 2 and noc.base_noc > noc.spec_noc  # ~3 clicks saved per object
    text = recommendation(br, clicks=cr)
    assert "gain vanishes with interaction" in text


def test_a_gain_that_persists_above_the_threshold_contradicts_the_rule_at_that_budget():
    baselines, trials = _fixture(spec_after_9=0.95)
    br = baseline_rule(baselines, trials, n_boot=500)
    cr = clicks_rule(baselines, br.selections, "center", 0.75, n_boot=500)
    last = cr.budgets[-1]
    assert last.cells[0][3] == "helps" and last.verdict == CONTRADICTED  # baseline 0.86 >= 0.75 yet a gain
    assert "still helps" in last.statement


def test_report_has_the_clicks_section_plot_and_budget_tags(tmp_path):
    baselines, trials = _fixture(spec_after_9=0.86)
    rep = write_report(tmp_path, "carpet", "procedural", baselines, trials, n_boot=300, n_boot_curve=50)
    text = rep.report_md.read_text()
    assert "## Is fine-tuning worth more than a few clicks?" in text and "clicks saved per object" in text
    assert rep.clicks_plot is not None and rep.clicks_plot.stat().st_size > 0 and rep.clicks_plot in rep.plots
    assert rep.tags["specialsam.verdict.baseline_rule.clicks1"] == SUPPORTED
    assert rep.tags["specialsam.verdict.baseline_rule.clicks9"] == INCONCLUSIVE


def test_without_interactive_scores_nothing_changes(tmp_path):
    baselines, trials = _fixture(spec_after_9=0.86)
    for r in [*baselines, *trials]:
        r.clicks_iou, r.noc = {}, {}
    rep = write_report(tmp_path, "carpet", "procedural", baselines, trials, n_boot=300, n_boot_curve=50)
    assert rep.clicks_plot is None and "few clicks" not in rep.report_md.read_text()
    assert set(rep.tags) == {"specialsam.verdict.baseline_rule", "specialsam.verdict.data_rule"}
