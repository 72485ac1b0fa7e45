"""Verdicts with known answers (issue #20): the data rule by direct paired comparisons, Holm across
cells, the phase-A spread, and the calibration simulation recovering planted truths."""

from __future__ import annotations

import math

import numpy as np
import pytest

from specialsam import calibrate
from specialsam.analysis.baseline_rule import baseline_rule
from specialsam.analysis.data_rule import data_rule
from specialsam.analysis.results import CONTRADICTED, INCONCLUSIVE, SUPPORTED, BaselineResult, TrialResult
from specialsam.analysis.stats import holm, paired_difference, paired_gain_ci
from specialsam.analysis.summaries import tune_spread
from specialsam.config import schema
from specialsam.report.markdown import write_report

N_IMG = 89  # MVTec carpet's defect test images
GRID = (125, 500, 2000, 8000)  # the shipped carpet/wood curve grid


def sweep(means, *, base=0.392, seed_sd=0.003, img_sd=0.02, data_seed=0, grid=GRID, model="tiny-m", seeds=3):
    """Baseline and curve trials whose per-seed test mIoU at grid[k] is exactly means[k] + a seed
    offset (offsets sum to 0, so each size's mean is exactly means[k]); images share a fine-tuning
    benefit (paired), plus independent per-trial noise."""
    rng = np.random.default_rng(data_seed)
    eff = rng.beta(1.2, 1.8, N_IMG)
    eff -= eff.mean()
    benefit = rng.normal(0.0, 0.08, N_IMG)
    benefit -= benefit.mean()
    baselines = [BaselineResult(model, "center", base + eff)]
    offsets = np.linspace(-seed_sd, seed_sd, seeds) * math.sqrt(3 / 2)
    trials = []
    for n, mu in zip(grid, means, strict=True):
        for s, off in enumerate(offsets):
            noise = rng.normal(0.0, img_sd, N_IMG)
            iou = mu + off + eff + benefit + noise - noise.mean()
            trials.append(
                TrialResult(f"{model}-{n}-{s}", model, n, s, {"lr": 6e-4}, {"center": iou}, mu, "curve")
            )
    return baselines, trials


def rule(baselines, trials, **kw):
    return data_rule(baselines, trials, n_boot=1000, n_boot_curve=30, **kw)


# ------------------------------------------------------------------------------------------
# statistics
# ------------------------------------------------------------------------------------------


def test_holm_adjusts_step_down():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.2]) == [0.2] and holm([]) == []
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1, monotone


def test_paired_difference_pairs_images_and_tests_equivalence():
    rng = np.random.default_rng(0)
    img = rng.uniform(0.1, 0.9, N_IMG)  # heterogeneous images, shared by both groups
    near = [img + 0.002 + rng.normal(0, 0.01, N_IMG) for _ in range(3)]
    ref = [img + rng.normal(0, 0.01, N_IMG) for _ in range(3)]
    boot = paired_difference(near, ref, 1000, seed=1)
    assert boot.mean == pytest.approx(float(np.mean(near) - np.mean(ref)))
    assert boot.ci(0.90).hi - boot.ci(0.90).lo < 0.01  # pairing cancels the image spread (sd ~0.23)
    assert boot.p_equivalent(0.01) < 0.01 and boot.p_less(-0.01) > 0.5
    far = paired_difference([a - 0.05 for a in near], ref, 1000, seed=1)
    assert far.p_less(-0.01) < 0.01 and far.p_equivalent(0.01) > 0.5
    # the gain CI is the same bootstrap with the baseline as a one-array group
    assert paired_gain_ci(img, near, 500, seed=3) == paired_difference(near, [img], 500, seed=3).ci()


# ------------------------------------------------------------------------------------------
# the data rule: known answers
# ------------------------------------------------------------------------------------------


def test_plateau_at_125_contradicts_the_claim():
    report = rule(*sweep((0.440, 0.440, 0.440, 0.440)))
    cv = report.curves["tiny-m"]
    assert cv.reference_n == 8000 and cv.verdict == CONTRADICTED and report.verdict == CONTRADICTED
    assert cv.smallest_equivalent_n == 125  # the fixed sequence reaches down to the smallest size
    assert all(p.vs_reference.equivalent for p in cv.points[:3])
    assert cv.reasons[0].startswith("decided by n = 2,000") and "within ±0.01" in cv.reasons[0]
    assert "rules.margin below" in cv.would_change[0]


def test_curve_still_rising_past_5000_with_small_sizes_below_baseline_supports_the_claim():
    # 125 and 500 are worse than zero-shot; 2,000 gains a little; 8,000 gains most.
    report = rule(*sweep((0.370, 0.380, 0.400, 0.460)))
    cv = report.curves["tiny-m"]
    assert [cv.points[k].beats_baseline for k in (0, 1, 3)] == [False, False, True]
    assert all(p.vs_reference.short for p in cv.points[:3])
    assert cv.verdict == SUPPORTED and report.verdict == SUPPORTED
    assert cv.reasons[0].startswith("decided by n = 8,000") and "falls short" in cv.reasons[0]


@pytest.mark.parametrize("data_seed", [0, 1, 2])
def test_noise_only_is_inconclusive(data_seed):
    report = rule(*sweep((0.392,) * 4, seed_sd=0.01, img_sd=0.04, data_seed=data_seed))
    cv = report.curves["tiny-m"]
    assert cv.smallest_beating_n is None
    assert cv.verdict == INCONCLUSIVE and report.verdict == INCONCLUSIVE
    assert any(r.startswith("not contradicted") for r in cv.reasons)
    assert any("itself does not beat the baseline" in r for r in cv.reasons)
    assert "more seeds" in cv.would_change[0]


def test_the_issues_carpet_numbers():
    """tiny-m on the default carpet sweep: 0.434 / 0.438 / 0.439 / 0.440, baseline 0.392."""
    means = (0.434, 0.438, 0.439, 0.440)
    quiet = rule(*sweep(means, seed_sd=0.003, img_sd=0.02)).curves["tiny-m"]
    assert quiet.verdict == CONTRADICTED and quiet.smallest_equivalent_n == 500  # 125 is 0.006 short
    assert any("barely rises" in n or "extrapolated" in n for n in quiet.fit.notes)  # n95 flagged
    noisy = rule(*sweep(means, seed_sd=0.01, img_sd=0.04)).curves["tiny-m"]
    assert noisy.verdict == INCONCLUSIVE and "not shown within ±0.01" in noisy.reasons[0]
    wider = rule(*sweep(means, seed_sd=0.01, img_sd=0.04), margin=0.03).curves["tiny-m"]
    assert wider.verdict == CONTRADICTED


def test_no_size_at_or_above_the_claim_decides_nothing():
    report = rule(*sweep((0.43, 0.44, 0.44), grid=(125, 500, 2000)))
    assert report.verdict == INCONCLUSIVE and report.curves["tiny-m"].reference_n is None
    assert "neither support nor contradict" in report.grid_scope


def test_models_combine_by_holm():
    b1, t1 = sweep((0.440,) * 4, model="a")
    b2, t2 = sweep((0.392,) * 4, model="b", data_seed=5, seed_sd=0.01, img_sd=0.04)
    report = rule(b1 + b2, t1 + t2)
    assert report.verdict == CONTRADICTED
    assert "2 contradiction test(s)" in report.combination and "Holm" in report.combination
    alone = rule(b1, t1).curves["a"].points[2].vs_reference
    paired = report.curves["a"].points[2].vs_reference
    assert paired.p_contradict_holm >= alone.p_contradict_holm  # two models: a stricter threshold


def test_margin_is_a_rules_setting():
    assert schema.RuleSettings().margin == 0.01
    assert schema.RuleSettings(margin=0.02).margin == 0.02
    with pytest.raises(ValueError):
        schema.RuleSettings(margin=0)


# ------------------------------------------------------------------------------------------
# the baseline rule: Holm across cells
# ------------------------------------------------------------------------------------------


def test_baseline_rule_needs_a_cell_decided_after_holm():
    rng = np.random.default_rng(4)
    baselines, trials = [], []
    for m in ("a", "b"):
        for prompt in calibrate.PROMPTS:
            img = rng.beta(1.2, 1.8, N_IMG)
            baselines.append(BaselineResult(m, prompt, img))
    benefit = rng.normal(0, 0.08, N_IMG)  # images differ in how much fine-tuning helps them
    gains = {("a", "center"): 0.02 + benefit - benefit.mean()}  # one modest gain, five null cells
    for m in ("a", "b"):
        for s in range(3):
            iou = {}
            for b in (b for b in baselines if b.model == m):
                noise = rng.normal(0, 0.04, N_IMG)
                iou[b.prompt] = b.per_image_iou + gains.get((m, b.prompt), 0.0) + noise - noise.mean()
            trials.append(TrialResult(f"{m}{s}", m, 8000, s, {"lr": 1e-3}, iou, 0.5, "curve"))
    report = baseline_rule(baselines, trials, n_boot=1000)
    cell = report.cell("a", "center")
    assert cell.gain.lo > 0 and cell.p_value < 0.05  # an unadjusted 95% CI would decide it ...
    assert cell.p_holm > 0.05 and cell.observed == "unclear"  # ... Holm over 6 cells does not
    assert report.verdict == INCONCLUSIVE and "no cell's gain is decided after Holm" in report.reasons[0]
    assert "over all 6" in report.combination


# ------------------------------------------------------------------------------------------
# phase A spread and the report
# ------------------------------------------------------------------------------------------


def _tune_trials(model, vals, default_at=None):
    return [
        TrialResult(f"{model}-t{k}", model, 500, 0, {"lr": k}, {"center": np.full(N_IMG, 0.4)}, v, "tune",
                    default_config=k == default_at)
        for k, v in enumerate(vals)
    ]  # fmt: skip


def test_tune_spread_and_its_report_section(tmp_path):
    trials = _tune_trials("tiny-m", [0.61, 0.58, 0.66, 0.52], default_at=1) + _tune_trials(
        "tiny-s", [0.5, 0.55]
    )
    spread = {s.model: s for s in tune_spread(trials)}
    m = spread["tiny-m"]
    assert (m.n_trials, m.best, m.median, m.worst, m.default) == (4, 0.66, pytest.approx(0.595), 0.52, 0.58)
    assert spread["tiny-s"].default is None
    assert spread["tiny-s"].describe_default() == "default configuration not evaluated"
    b, t = sweep((0.440,) * 4)
    files = write_report(tmp_path, "carpet", "procedural", b, t + trials, n_boot=300, n_boot_curve=20)
    md = files.report_md.read_text()
    assert "## Phase A: did tuning matter?" in md
    assert "| tiny-m | 4 | 0.660 | 0.595 | 0.520 | 0.580 (+0.080 from tuning) |" in md
    assert "default configuration not evaluated" in md
    assert "Models combine by Holm" in md and "Cells combine by Holm" in md
    assert "What would change it:" in md and "python -m specialsam.calibrate --grid 125,500,2000,8000" in md


# ------------------------------------------------------------------------------------------
# calibration: the simulation recovers planted truths
# ------------------------------------------------------------------------------------------


def _row(rows, name):
    return next(r for r in rows if r.truth.name.startswith(name))


def test_calibration_recovers_planted_truths():
    t = {x.name: x for x in calibrate.truths()}
    pick = [
        t["large gain +0.05, baselines below 0.75"],
        t["no gain, baselines above 0.75"],
        t["plateau by n = 125 (+0.042 at 125, +0.048 at 8,000)"],
        t["still rising past 5,000 (+0.031 at 2,000, +0.069 at 8,000)"],
        t["no gain at any n"],
    ]
    # margin 0.02: the design where the plateau is detectable (at 0.01 it is not; see the README)
    rows = calibrate.calibrate(calibrate.Design(margin=0.02), reps=30, n_boot=200, seed=1, only=pick)
    assert _row(rows, "large gain").share(SUPPORTED) >= 0.9
    assert _row(rows, "plateau by n = 125").share(CONTRADICTED) >= 0.6
    assert _row(rows, "still rising past").share(SUPPORTED) >= 0.7
    for r in rows:
        assert r.wrong <= 0.1, r.truth.name
    assert _row(rows, "no gain at any n").right == INCONCLUSIVE
    assert calibrate.worst_wrong(rows)["data"] <= 0.1


def test_calibration_cli_prints_the_table(capsys):
    assert calibrate.main(["--quick", "--rule", "baseline", "--reps", "3", "--n-boot", "100"]) == 0
    out = capsys.readouterr().out
    assert "| rule | planted truth | right verdict |" in out and "Worst wrong-verdict rate" in out
    assert out.count("| baseline |") == 6
