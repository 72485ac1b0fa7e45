"""The method table (issue #23): per model, decoder / lora / full side by side, the pick, the rules
per method, and a decoder-only sweep's report left as it was."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.image import imread

from specialsam.analysis.baseline_rule import baseline_rule
from specialsam.analysis.data_rule import data_rule
from specialsam.analysis.methods import MethodRow, method_report, pick_method
from specialsam.analysis.results import (
    CONTRADICTED,
    INCONCLUSIVE,
    SUPPORTED,
    TAG_BASELINE_RULE,
    TAG_DATA_RULE,
    TAG_RECOMMENDED_METHOD,
    BaselineResult,
    TrialResult,
)
from specialsam.analysis.stats import GainCI
from specialsam.analysis.summaries import recommendation, recommended_cell, retention_summary
from specialsam.arms import arm_name, split_arm
from specialsam.report.markdown import write_report

N_IMG = 80
GRID = (1000, 5000)
PARAMS = {"decoder": 4_000, "lora": 6_500, "full": 40_000}
CACHE = {"decoder": 64 * 1024, "lora": 256 * 1024, "full": 256 * 1024}
SECONDS = {1000: (5.0, 9.0, 6.0), 5000: (10.0, 40.0, 20.0)}  # per seed; medians 6 and 20, means not


def arm_sweep(gains, *, img_sd=0.02, seed_sd=0.002, base=0.5, data_seed=0):
    """Baselines (one copy per arm, as the sweep hands them over) and curve trials.

    ``gains``: arm -> gain over the baseline per ``GRID`` size (a float: the same at every size).
    Each seed's mean gain is exactly the given one plus a seed offset summing to 0."""
    rng = np.random.default_rng(data_seed)
    eff = rng.normal(0.0, 0.05, N_IMG)
    eff -= eff.mean()
    baselines, trials = [], []
    for arm, gain in gains.items():
        baselines.append(BaselineResult(arm, "center", base + eff))
        per_n = gain if isinstance(gain, tuple) else (gain,) * len(GRID)
        method = split_arm(arm)[1]
        for n, g in zip(GRID, per_n, strict=True):
            for s, off in enumerate((-seed_sd, 0.0, seed_sd)):
                noise = rng.normal(0.0, img_sd, N_IMG)
                iou = base + eff + g + off + noise - noise.mean()
                t = TrialResult(f"{arm}-{n}-{s}", arm, n, s, {"lr": 1e-3}, {"center": iou}, base + g, "curve")
                t.trial_seconds, t.trainable_params, t.cache_bytes = (
                    SECONDS[n][s],
                    PARAMS[method],
                    CACHE[method],
                )
                t.retention_miou, t.base_retention_miou = 0.66 - (0.1 if method == "full" else 0.06), 0.66
                trials.append(t)
    return baselines, trials


def arms(model, decoder, lora, full):
    return {arm_name(model, "decoder"): decoder, arm_name(model, "lora"): lora, arm_name(model, "full"): full}


def report(baselines, trials):
    br = baseline_rule(baselines, trials, n_boot=400)
    return br, method_report(br, None, trials)


def test_pick_is_decoder_when_the_gains_overlap():
    b, t = arm_sweep(
        {**arms("tiny-s", 0.050, 0.051, 0.052), **arms("tiny-m", 0.080, 0.079, 0.081)}, img_sd=0.05
    )
    br, mr = report(b, t)
    assert list(mr.models) == ["tiny-m", "tiny-s"]
    for mm in mr.models.values():
        assert [r.method for r in mm.rows] == ["decoder", "lora", "full"]
        assert mm.pick.method == "decoder" and mm.decoder_enough
        assert mm.row("decoder").gain.mean >= mm.best.gain.lo  # the fixture really overlaps
        assert mm.best.method != "decoder"  # ... and decoder is not simply the best
    text = recommendation(br, None, retention_summary(br.selections), methods=mr)
    assert text.startswith("**Fine-tune** the mask decoder of `tiny-m` (decoder-only is enough: its gain")
    assert (
        "tiny-m+" not in text.split("\n")[0] and "fine-tuning methods compared: decoder, lora, full" in text
    )
    assert recommended_cell(br, mr).model == "tiny-m"


def test_pick_is_full_when_its_ci_is_clearly_above_the_others():
    b, t = arm_sweep({**arms("tiny-s", 0.020, 0.030, 0.020), **arms("tiny-m", 0.020, 0.030, 0.120)})
    br, mr = report(b, t)
    m = mr.models["tiny-m"]
    assert m.pick.method == "full" and m.pick is m.best and not m.decoder_enough
    assert m.row("lora").gain.mean < m.best.gain.lo
    assert m.decoder_note.startswith("decoder-only is not enough for `tiny-m`: its gain +0.020")
    assert "below full's CI lower bound" in m.decoder_note
    assert m.pick_line().startswith("pick: full — the best method (+0.120 [")
    assert "`lora` is picked if its gain estimate reaches full's CI lower bound" in m.would_change
    assert mr.models["tiny-s"].pick.method == "lora"
    text = recommendation(br, None, retention_summary(br.selections), methods=mr)
    assert text.startswith("**Fine-tune** `tiny-m` with `full` (decoder-only is not enough: its gain +0.020")
    assert (
        "(`tiny-m:full`, selected configuration): general-purpose mIoU 0.560 vs 0.660 for the base model"
        in text
    )
    assert (
        "Also helped: `tiny-s:lora` +0.030" in text and "`tiny-s` +" not in text
    )  # other models: their pick


def test_pick_is_the_cheapest_within_the_best_ci_and_the_recommendation_follows_it():
    b, t = arm_sweep({**arms("tiny-m", 0.020, 0.1195, 0.124)}, img_sd=0.03)
    br, mr = report(b, t)
    m = mr.models["tiny-m"]
    assert m.best.method == "full" and m.pick.method == "lora"
    best_by_ci = max((c for c in br.cells if c.gain is not None), key=lambda c: c.gain.lo)
    assert best_by_ci.model == "tiny-m:full"  # the old choice would have recommended full
    assert recommended_cell(br, mr).model == "tiny-m:lora"
    assert (
        m.pick_line()
        == f"pick: lora — cheapest method within the best method's CI (full {m.best.gain.fmt()})"
    )
    assert "`full` is picked if its CI separates from `lora`: a lower bound above +0.1" in m.would_change


def _row(method, mean, lo, hi):
    return MethodRow(method, "m", method, GainCI(mean, lo, hi), None, None, None, None)


def test_a_pick_must_itself_be_shown_above_zero_when_the_best_is():
    shown = [_row("decoder", 0.012, -0.01, 0.034), _row("full", 0.03, 0.01, 0.05)]
    assert [r.method for r in pick_method(shown)] == ["full", "full"]
    both_unclear = [_row("decoder", 0.012, -0.01, 0.034), _row("full", 0.03, -0.005, 0.065)]
    assert [r.method for r in pick_method(both_unclear)] == ["full", "decoder"]
    tie = [_row("full", 0.03, 0.02, 0.04), _row("lora", 0.03, 0.02, 0.04)]
    assert [r.method for r in pick_method(tie)] == ["lora", "lora"]  # equal estimates: the cheaper is best
    assert pick_method([MethodRow("m", "m", "decoder", None, None, None, None, None)]) == (None, None)


def test_table_values_are_medians_of_the_selected_configuration():
    b, t = arm_sweep(arms("tiny-m", 0.05, 0.06, 0.07))
    for x in t:  # lora's selected configuration (n = 5,000) recorded no seconds: older records
        if x.model == "tiny-m:lora" and x.n_train == 5000:
            x.trial_seconds = None
    br, mr = report(b, t)
    rows = {r.method: r for r in mr.models["tiny-m"].rows}
    dec, lora, full = rows["decoder"], rows["lora"], rows["full"]
    assert dec.trial_seconds == 20.0 and full.trial_seconds == 20.0  # not 9.5, the median of all six
    assert lora.trial_seconds == 6.0 and not lora.costs_from_selection and "all 6 trial(s)" in lora.cost_scope
    assert dec.costs_from_selection and dec.cost_scope == "selected configuration (3 trial(s))"
    assert (dec.trainable_params, lora.trainable_params, full.trainable_params) == (4_000, 6_500, 40_000)
    assert (dec.cache_bytes, full.cache_bytes) == (65536, 262144)
    assert dec.retention_change == pytest.approx(-0.06) and full.retention_change == pytest.approx(-0.10)
    assert dec.gain == br.cell("tiny-m", "center").gain and full.gain.mean == pytest.approx(0.07)


def test_rules_are_judged_per_method():
    # decoder: no gain at all (nothing decided); full: a clear gain that keeps rising past 1,000.
    b, t = arm_sweep(
        {**arms("tiny-s", 0.0, (0.02, 0.06), (0.02, 0.10)), **arms("tiny-m", 0.0, 0.04, (0.02, 0.10))}
    )
    br = baseline_rule(b, t, n_boot=400)
    dr = data_rule(b, t, claimed_n=5000, n_boot=400, n_boot_curve=20)
    v = {x.method: x for x in method_report(br, dr, t).verdicts}
    assert (v["decoder"].baseline_rule, v["full"].baseline_rule) == (INCONCLUSIVE, SUPPORTED)
    assert (v["decoder"].n_cells, v["decoder"].n_curves) == (2, 2)
    assert dr.curves["tiny-m:lora"].verdict == CONTRADICTED and dr.curves["tiny-s:lora"].verdict == SUPPORTED
    assert v["lora"].data_rule == CONTRADICTED  # one contradicting arm decides the method
    assert (v["decoder"].data_rule, v["full"].data_rule) == (INCONCLUSIVE, SUPPORTED)


def test_decoder_only_sweep_has_no_method_section(tmp_path):
    b, t = arm_sweep({"tiny-s": 0.03, "tiny-m": 0.05})
    br = baseline_rule(b, t, n_boot=400)
    assert method_report(br, None, t) is None
    files = write_report(tmp_path, "carpet", "procedural", b, t, n_boot=300, n_boot_curve=10)
    md = files.report_md.read_text()
    assert "Which way to fine-tune" not in md and "method_gains.png" not in md
    assert "**Fine-tune** the mask decoder of `tiny-m` with 5,000 training samples" in md
    assert md.count("decoder-only fine-tuning (frozen image encoder") == 1
    assert files.method_report is None and files.method_plot is None
    assert set(files.tags) == {TAG_BASELINE_RULE, TAG_DATA_RULE}
    assert files.plots == [files.gain_plot, files.curve_plot]


def test_report_has_the_method_section_its_plot_and_tags(tmp_path):
    b, t = arm_sweep({**arms("tiny-s", 0.02, 0.03, 0.02), **arms("tiny-m", 0.02, 0.03, 0.12)})
    files = write_report(tmp_path, "carpet", "procedural", b, t, n_boot=300, n_boot_curve=10)
    md = files.report_md.read_text()
    assert (
        md.index("## Baseline rule")
        < md.index("## Which way to fine-tune (method)")
        < md.index("## Data-vol")
    )
    header = "| method | gain (95% CI) | retention change | trainable params | trial s | cache bytes/image |"
    assert md.count(header) == 2 and md.index("### `tiny-m`") < md.index("### `tiny-s`")
    full = files.baseline_report.cell("tiny-m:full", "center").gain
    assert f"| full | {full.fmt()} | -0.100 | 40,000 | 20.0 | 256.0 KiB |" in md
    assert "| decoder | " in md and "| -0.060 | 4,000 | 20.0 | 64.0 KiB |" in md
    assert f"- pick: full — the best method ({full.fmt()})" in md
    assert "- decoder-only is not enough for `tiny-m`: its gain +0.020" in md
    assert "- decoder-only is not enough for `tiny-s`" in md  # its pick is lora
    assert "| method | baseline rule | data rule |" in md and "| full | supported (2 cell(s)) |" in md
    assert "**Fine-tune** `tiny-m` with `full` (decoder-only is not enough" in md
    assert "decoder-only fine-tuning (frozen" not in md and "fine-tuning methods compared" in md
    assert files.method_plot in files.plots and files.method_plot.name in md
    assert imread(files.method_plot).std() > 0
    tags = files.tags
    assert tags[TAG_RECOMMENDED_METHOD] == "full"
    assert tags[TAG_BASELINE_RULE + ".method.full"] == SUPPORTED
    assert {k for k in tags if ".method." in k} == {
        f"{rule}.method.{m}"
        for rule in (TAG_BASELINE_RULE, TAG_DATA_RULE)
        for m in ("decoder", "lora", "full")
    }


def test_when_every_method_hurts_the_report_says_dont_for_every_method(tmp_path):
    b, t = arm_sweep(arms("tiny-m", -0.05, -0.04, -0.06))
    files = write_report(tmp_path, "carpet", "real", b, t, n_boot=300, n_boot_curve=10)
    md = files.report_md.read_text()
    assert "**Don't fine-tune**: fine-tuning lowered mIoU for every model and method on center" in md
    assert files.method_report.models["tiny-m"].pick.method == "lora"  # the least bad, alone in its CI
    assert "- no method of `tiny-m` shows a gain (no CI above 0): there the pick only names" in md
    assert files.tags[TAG_RECOMMENDED_METHOD] == "none"
