"""The rules analysis on synthetic results whose answers are known by construction."""

from __future__ import annotations

import math

import numpy as np
import pytest
from matplotlib.image import imread

from specialsam.analysis.baseline_rule import baseline_rule, fit_crossover
from specialsam.analysis.data_rule import data_rule
from specialsam.analysis.results import (
    CONTRADICTED,
    INCONCLUSIVE,
    SUPPORTED,
    TAG_BASELINE_RULE,
    TAG_DATA_RULE,
    BaselineResult,
    TrialResult,
)
from specialsam.analysis.selection import select_config
from specialsam.analysis.stats import paired_gain_ci
from specialsam.analysis.summaries import (
    category_breakdown,
    extra_breakdown,
    format_summary,
    health_summary,
    recommendation,
    retention_summary,
    summary_rows,
)
from specialsam.report.markdown import write_report

N_IMG = 120
GRID = [125, 250, 500, 1000, 2000, 4000, 8000]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _image_effects(rng: np.random.Generator, sd: float = 0.05) -> np.ndarray:
    eff = rng.normal(0.0, sd, N_IMG)
    return eff - eff.mean()  # exact means: the baseline mIoU is what we say it is


def curve_data(f, grid, *, data_seed=0, base=0.5, seed_sd=0.005, seeds=3, model="m", params=None):
    """Baseline `base` and 'curve'-phase trials whose per-seed test mIoU is f(n) + seed noise."""
    rng = np.random.default_rng(data_seed)
    eff = _image_effects(rng)
    baselines = [BaselineResult(model, "center", base + eff)]
    trials = []
    for n in grid:
        for s in range(seeds):
            y = f(n) + rng.normal(0.0, seed_sd)
            iou = y + eff + rng.normal(0.0, 0.01, N_IMG)
            trials.append(
                TrialResult(
                    f"{model}-{n}-{s}", model, n, s, dict(params or {"lr": 1e-3}), {"center": iou},
                    val_miou=y, phase="curve",
                )
            )  # fmt: skip
    return baselines, trials


def crossover_data(*, data_seed=0, slope=0.4, x0=0.75, bases=(0.5, 0.58, 0.66, 0.74, 0.82, 0.9)):
    """One model per baseline level; true gain = slope * (x0 - baseline) + small noise."""
    rng = np.random.default_rng(data_seed)
    baselines, trials = [], []
    for i, b in enumerate(bases):
        m = f"m{i}"
        eff = _image_effects(rng)
        baselines.append(BaselineResult(m, "center", b + eff))
        gain = slope * (x0 - b) + rng.normal(0.0, 0.003)
        for s in range(3):
            iou = b + eff + gain + rng.normal(0.0, 0.005) + rng.normal(0.0, 0.01, N_IMG)
            trials.append(TrialResult(f"{m}-{s}", m, 1000, s, {"lr": 1e-3}, {"center": iou}, 0.7, "curve"))
    return baselines, trials


def plateau_curve(n):
    return 0.8 - 0.3 * np.exp(-n / 500.0)  # n95 = 500 ln 20 ~ 1,498


def slow_curve(n):
    return 0.8 - 0.3 * np.exp(-n / 4000.0)  # n95 = 4000 ln 20 ~ 11,983


# ------------------------------------------------------------------------------------------
# paired bootstrap
# ------------------------------------------------------------------------------------------


def test_gain_ci_is_deterministic_under_its_seed_and_covers_the_true_gain():
    rng = np.random.default_rng(0)
    covered = 0
    for r in range(40):
        base = rng.uniform(0.3, 0.9, N_IMG)
        spec = [base + 0.05 + rng.normal(0, 0.005) + rng.normal(0, 0.03, N_IMG) for _ in range(5)]
        mean, lo, hi = paired_gain_ci(base, spec, n_boot=1000, seed=r)
        assert lo < mean < hi
        covered += lo <= 0.05 <= hi
    assert covered >= 34  # nominal 95% of 40 = 38

    a = paired_gain_ci(base, spec, n_boot=500, seed=7)
    assert paired_gain_ci(base, spec, n_boot=500, seed=7) == a
    assert paired_gain_ci(base, spec, n_boot=500, seed=8) != a
    assert a.mean == pytest.approx(float(np.mean([s - base for s in spec])))


def test_gain_ci_is_paired_and_resamples_seeds():
    rng = np.random.default_rng(1)
    base = rng.uniform(0.1, 0.95, N_IMG)  # very heterogeneous images
    spec = [base + 0.03 + rng.normal(0, 0.002, N_IMG) for _ in range(3)]
    g = paired_gain_ci(base, spec, n_boot=1000, seed=0)
    # Pairing cancels the image heterogeneity (sd ~0.25): an unpaired interval would be ~0.1 wide.
    assert g.hi - g.lo < 0.005 and g.lo > 0.025
    # Seeds that disagree widen the interval: the seeds are resampled, not averaged away.
    spread = [base + 0.03 + off + rng.normal(0, 0.002, N_IMG) for off in (-0.04, 0.0, 0.04)]
    g2 = paired_gain_ci(base, spread, n_boot=1000, seed=0)
    assert g2.hi - g2.lo > 5 * (g.hi - g.lo)
    with pytest.raises(ValueError, match="images"):
        paired_gain_ci(base, [base[:-1]])


# ------------------------------------------------------------------------------------------
# baseline rule
# ------------------------------------------------------------------------------------------


def test_known_crossover_is_recovered_and_rule_supported():
    baselines, trials = crossover_data()
    report = baseline_rule(baselines, trials, n_boot=1000, seed=0)
    cx = report.crossover
    assert cx.estimable and cx.n_distinct == 6
    assert cx.x0 == pytest.approx(0.75, abs=0.02)
    assert cx.lo <= 0.75 <= cx.hi and cx.hi - cx.lo < 0.1
    assert cx.slope == pytest.approx(-0.4, abs=0.05)
    low = [c for c in report.cells if c.baseline_miou < 0.7]
    high = [c for c in report.cells if c.baseline_miou > 0.8]
    assert all(c.observed == "helps" and c.matched for c in low)
    assert all(c.observed == "hurts" and c.matched for c in high)
    assert report.verdict == SUPPORTED


def test_baseline_rule_contradicted_when_gain_found_above_threshold():
    # Crossover at 0.95: fine-tuning still helps at baseline 0.82 and 0.9, which the rule forbids.
    baselines, trials = crossover_data(x0=0.95)
    report = baseline_rule(baselines, trials, n_boot=1000)
    above = [c for c in report.cells if c.baseline_miou >= 0.75]
    assert all(c.predicted == "no gain" and c.observed == "helps" for c in above)
    assert all(c.verdict == CONTRADICTED and c.matched is False for c in above)
    assert report.verdict == CONTRADICTED
    assert report.crossover.x0 == pytest.approx(0.95, abs=0.03)


def test_baseline_rule_inconclusive_when_every_ci_straddles_zero():
    baselines, trials = crossover_data(slope=0.0)
    rng = np.random.default_rng(5)
    for t in trials:  # zero true gain, heavy per-image noise
        t.per_image_iou["center"] = t.per_image_iou["center"] + rng.normal(0, 0.3, N_IMG)
    report = baseline_rule(baselines, trials, n_boot=1000)
    assert {c.observed for c in report.cells} == {"unclear"}
    assert all(c.matched is None for c in report.cells)
    assert report.verdict == INCONCLUSIVE


def test_crossover_not_estimable_cases():
    few = fit_crossover([0.6, 0.6, 0.8], [0.1, 0.1, -0.1])
    assert not few.estimable and "distinct" in few.describe()
    rising = fit_crossover([0.5, 0.6, 0.7, 0.8], [0.0, 0.02, 0.04, 0.06])
    assert not rising.estimable and "not negative" in rising.describe()
    single_model = baseline_rule(*curve_data(plateau_curve, [1000]), n_boot=200)
    assert not single_model.crossover.estimable and single_model.cells[0].observed == "helps"


def test_selection_uses_validation_not_test():
    rng = np.random.default_rng(3)
    eff = _image_effects(rng)
    base = BaselineResult("m", "center", 0.6 + eff)
    trials = []
    # config A: best on validation, mediocre on test. config B: the reverse.
    for name, val, test in (("A", 0.85, 0.70), ("B", 0.75, 0.90)):
        for s in range(3):
            iou = {"center": test + eff + rng.normal(0, 0.01, N_IMG), "box": 0.95 + eff}
            trials.append(TrialResult(f"{name}{s}", "m", 500, s, {"lr": name}, iou, val + 0.001 * s))
    box_base = BaselineResult("m", "box", 0.9 + eff)
    report = baseline_rule([base, box_base], trials, n_boot=500)
    cell = report.cell("m", "center")
    assert cell.config.params == {"lr": "A"} and len(cell.config.trials) == 3
    assert cell.specialised_miou == pytest.approx(0.70, abs=0.01)
    # Each prompt strategy is its own cell with its own baseline, from the same selected config.
    box = report.cell("m", "box")
    assert box.config is cell.config and box.gain.mean == pytest.approx(0.05)
    assert (box.predicted, box.observed, box.verdict) == ("no gain", "helps", CONTRADICTED)

    # A curve phase takes precedence, at its largest n_train, even over a higher tune-phase val.
    for n in (250, 1000):
        for s in range(2):
            iou = {"center": 0.65 + eff}
            trials.append(TrialResult(f"c{n}{s}", "m", n, s, {"lr": "C"}, iou, 0.6 + n / 1e4, "curve"))
    sel = select_config(trials, "m")
    assert (sel.n_train, sel.params, sel.seeds) == (1000, {"lr": "C"}, [0, 1])


# ------------------------------------------------------------------------------------------
# data-volume rule
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plateau_report():
    return data_rule(*curve_data(plateau_curve, GRID), n_boot=1000, n_boot_curve=200)


def test_known_plateau_is_recovered_and_contradicts_the_5000_claim(plateau_report):
    curve = plateau_report.curves["m"]
    fit = curve.fit
    n95_true, n90_true = 500 * math.log(20), 500 * math.log(10)
    assert fit.ok and fit.ymax == pytest.approx(0.8, abs=0.01)
    assert fit.ymax_ci[0] <= 0.8 <= fit.ymax_ci[1]
    assert fit.n95 == pytest.approx(n95_true, rel=0.1) and fit.n95_ci[0] <= n95_true <= fit.n95_ci[1]
    assert fit.n90 == pytest.approx(n90_true, rel=0.1)
    assert [p.n_train for p in curve.points] == GRID and all(len(p.per_seed) == 3 for p in curve.points)
    assert curve.smallest_beating_n == 125  # 0.8 - 0.3 e^-0.25 = 0.566 > 0.5
    assert curve.verdict == CONTRADICTED and plateau_report.verdict == CONTRADICTED
    assert "reaching the claimed 5,000" in plateau_report.grid_scope


def test_data_rule_supported_when_plateau_only_past_claim():
    grid = GRID + [16000, 32000]
    report = data_rule(*curve_data(slow_curve, grid), n_boot=500, n_boot_curve=200)
    fit = report.curves["m"].fit
    assert fit.n95 == pytest.approx(4000 * math.log(20), rel=0.1)
    assert fit.n95_ci[0] >= 5000
    assert report.verdict == SUPPORTED


def test_data_rule_cannot_support_beyond_its_grid():
    # The same slow curve, but the grid stops at 4,000: the plateau lies beyond it.
    report = data_rule(*curve_data(slow_curve, GRID[:6]), n_boot=500, n_boot_curve=200)
    curve = report.curves["m"]
    assert curve.fit.n95_ci[0] >= 5000  # the fit alone would say "supported"
    assert report.verdict == INCONCLUSIVE
    assert "cannot test the claim above 4,000" in report.grid_scope


def test_data_rule_inconclusive_when_noise_dominates():
    f = lambda n: 0.55 + 0.02 * (1 - np.exp(-n / 300.0))  # noqa: E731  a 0.02 rise under 0.08 seed noise
    for data_seed in range(3):
        report = data_rule(
            *curve_data(f, GRID[:4], base=0.55, seed_sd=0.08, data_seed=data_seed),
            n_boot=300,
            n_boot_curve=100,
        )
        fit = report.curves["m"].fit
        assert fit.n95_ci[1] / fit.n95_ci[0] > 10  # the plateau position is not pinned down
        assert report.verdict == INCONCLUSIVE


def test_data_rule_falls_back_to_all_trials_and_needs_three_sizes():
    baselines, trials = curve_data(plateau_curve, [250, 1000])
    for t in trials:
        t.phase = "tune"
    report = data_rule(baselines, trials, n_boot=200, n_boot_curve=50)
    curve = report.curves["m"]
    assert curve.source.startswith("all trials")
    assert not curve.fit.ok and curve.verdict == INCONCLUSIVE
    assert "only 2 training-set size(s)" in report.grid_scope


# ------------------------------------------------------------------------------------------
# health, retention, recommendation, report
# ------------------------------------------------------------------------------------------


def _with_health_and_retention(trials):
    for i, t in enumerate(trials):
        t.health = ["ok", "loss_collapse", "loss_spike,train_val_divergence"][i % 3]
        t.retention_miou, t.base_retention_miou = 0.60, 0.66
    return trials


def test_health_and_retention_summaries():
    baselines, trials = curve_data(plateau_curve, [500, 1000, 2000])
    _with_health_and_retention(trials)
    health = health_summary(trials)
    assert health.n_trials == 9 and health.n_flagged == 6
    assert health.counts == {"ok": 3, "loss_collapse": 3, "loss_spike": 3, "train_val_divergence": 3}
    report = baseline_rule(baselines, trials, n_boot=200)
    ret = retention_summary(report.selections)["m"]
    assert ret.n_seeds == 3 and ret.delta == pytest.approx(-0.06)
    assert "n_train=2,000" in ret.config


def test_recommendation_fine_tune_and_dont():
    baselines, trials = curve_data(plateau_curve, GRID, params={"lr": 3e-4, "dice_weight": 1.0})
    _with_health_and_retention(trials)
    br = baseline_rule(baselines, trials, n_boot=500)
    dr = data_rule(baselines, trials, n_boot=500, n_boot_curve=100)
    text = recommendation(br, dr, retention_summary(br.selections), data_kind="procedural")
    assert text.startswith("**Fine-tune**") and "beyond ~" in text  # n95 << the 8,000 selected
    gain = br.cell("m", "center").gain
    expected = [
        "`m`", "8,000 training samples", "lr=0.0003", "dice_weight=1", f"{gain.mean:+.3f}",
        "0.600 vs 0.660", "loss_collapse in 1", "decoder-only", "LoRA", "not evidence about real SAM",
    ]  # fmt: skip
    for piece in expected:
        assert piece in text, piece

    hurts_b, hurts_t = crossover_data(bases=(0.8, 0.85, 0.9))  # all above the crossover: every gain < 0
    hurt = recommendation(baseline_rule(hurts_b, hurts_t, n_boot=500), None, data_kind="real")
    assert hurt.startswith("**Don't fine-tune**") and "lowered mIoU for every model" in hurt
    assert "not evidence about real SAM" not in hurt


def test_write_report_files_verdicts_and_summary(tmp_path):
    xb, xt = crossover_data()
    cb, ct = curve_data(plateau_curve, GRID, model="m0", data_seed=4)
    # model m0 gets a learning curve on its own baseline; the rest keep their single size.
    baselines = [b for b in xb if b.model != "m0"] + cb
    trials = _with_health_and_retention([t for t in xt if t.model != "m0"] + ct)
    files = write_report(
        tmp_path / "out", "carpet", "procedural", baselines, trials, n_boot=500, n_boot_curve=100,
        protocol={"image_size": 256, "split": "test"},
    )  # fmt: skip
    for path in (files.report_md, files.gain_plot, files.curve_plot):
        assert path.exists() and path.stat().st_size > 0
    assert files.category_plot is None and files.plots == [files.gain_plot, files.curve_plot]
    for path in (files.gain_plot, files.curve_plot):
        assert path.read_bytes()[:8] == PNG_MAGIC
        img = imread(path)
        assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 200 and img.std() > 0
    md = files.report_md.read_text()
    sections = [line for line in md.splitlines() if line.startswith("## ")]
    assert sections[0] == "## Recommendation" and "Procedural data" in md
    assert md.index("## Recommendation") < md.index("## Scope") < md.index("## Baseline rule")
    assert md.count("decoder-only fine-tuning") == 1
    assert "image_size | 256" in md and "gain_vs_baseline.png" in md and "learning_curve.png" in md
    assert files.verdict_baseline_rule == files.baseline_report.verdict == SUPPORTED
    assert files.verdict_data_rule == files.data_report.verdict == CONTRADICTED
    assert files.tags == {TAG_BASELINE_RULE: SUPPORTED, TAG_DATA_RULE: CONTRADICTED}
    assert f"**Verdict: {SUPPORTED}.**" in md and f"**Verdict: {CONTRADICTED}.**" in md
    assert "loss_collapse" in md and "-0.060" in md

    rows = summary_rows(files.baseline_report, files.data_report)
    assert [r["model"] for r in rows] == [f"m{i}" for i in range(6)]
    assert rows[0]["data_rule"] == CONTRADICTED and rows[0]["gain"].lo > 0
    table = format_summary(rows)
    assert table.splitlines()[0].split()[:2] == ["model", "prompt"] and len(table.splitlines()) == 8
    assert files.summary == rows


def test_extra_sets_and_categories_compare_base_with_the_selected_config(tmp_path):
    xb, xt = crossover_data()
    model = xt[0].model
    for b in xb:
        if b.model == model and b.prompt == "center":
            b.per_category = {"dark": 0.2, "line": 0.4}
            b.extra_miou = {"hard": 0.5}
    for k, t in enumerate(t for t in xt if t.model == model):
        t.per_category = {"center": {"dark": 0.3 + 0.02 * k, "line": 0.35}}
        t.extra_miou = {"hard": 0.6}
    br = baseline_rule(xb, xt, n_boot=200)
    sel = br.selections
    cats = {r.name: r for r in category_breakdown(sel, xb, "center") if r.model == model}
    assert cats["line"].delta == pytest.approx(-0.05) and cats["line"].base == 0.4
    assert cats["dark"].specialised == pytest.approx(
        np.mean([0.3 + 0.02 * k for k in range(cats["dark"].n_seeds)])
    )
    (extra,) = [r for r in extra_breakdown(sel, xb, "center") if r.model == model]
    assert extra.name == "hard" and extra.delta == pytest.approx(0.1)
    files = write_report(tmp_path, "wood", "procedural", xb, xt, n_boot=200, n_boot_curve=50)
    md = files.report_md.read_text()
    assert "## Extra test sets" in md and "## Per category" in md
    assert files.category_plot in files.plots and files.category_plot.name in md
    assert imread(files.category_plot).std() > 0
    assert f"| {model} | hard | 0.500 | 0.600" in md and "+0.100" in md
