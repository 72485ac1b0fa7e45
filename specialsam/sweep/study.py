"""The study table across tasks: the comparison the baseline rule is really about.

One sweep can only put a few (model, prompt) cells on the gain-vs-baseline plane; the study's
claim is about tasks whose baselines differ (95.8%, 47.5%, 29.4%). This gathers the cells of
several finished sweeps, fits the crossover across all of them, and logs the table and the
cross-task scatter to the ``specialsam-study`` experiment.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from specialsam.analysis.baseline_rule import BaselineRuleReport, fit_crossover
from specialsam.analysis.results import overall_verdict as _overall
from specialsam.report.plots import plot_gain_vs_baseline

STUDY_EXPERIMENT = "specialsam-study"


def study_rows(outcomes: list[tuple[str, object]], primary: str) -> list[dict]:
    rows = []
    for task, out in outcomes:
        rep = out.report  # type: ignore[attr-defined]
        for c in rep.baseline_report.cells:
            if c.prompt != primary:
                continue
            rows.append(
                {
                    "task": task,
                    "data": out.data_kind,
                    "model": c.model,  # type: ignore[attr-defined]
                    "n_train": c.config.n_train if c.config else None,
                    "baseline": c.baseline_miou,
                    "specialised": c.specialised_miou,
                    "gain": c.gain.mean if c.gain else None,
                    "lo": c.gain.lo if c.gain else None,
                    "hi": c.gain.hi if c.gain else None,
                    "baseline_rule": c.verdict,
                    "data_rule": rep.verdict_data_rule,
                }
            )
    return rows


def format_rows(rows: list[dict]) -> str:
    head = (
        f"{'task':<11} {'model':<7} {'n_train':>7} {'baseline':>9} {'specialised':>12} "
        f"{'change [95% CI]':>26} "
        f"{'baseline rule':>14} {'data rule':>13}"
    )
    lines = [head]
    for r in rows:
        spec = "-" if r["specialised"] is None else f"{r['specialised']:.3f}"
        change = "-" if r["gain"] is None else f"{r['gain']:+.3f} [{r['lo']:+.3f}, {r['hi']:+.3f}]"
        lines.append(
            f"{r['task']:<11} {r['model']:<7} {r['n_train'] or '-':>7} {r['baseline']:>9.3f} {spec:>12} "
            f"{change:>26} {r['baseline_rule']:>14} {r['data_rule']:>13}"
        )
    return "\n".join(lines)


def combined_report(outcomes: list[tuple[str, object]], primary: str, threshold: float) -> BaselineRuleReport:
    cells = []
    for task, out in outcomes:
        for c in out.report.baseline_report.cells:  # type: ignore[attr-defined]
            if c.prompt == primary:
                cells.append(replace(c, model=f"{task}/{c.model}"))
    with_gain = [c for c in cells if c.gain is not None]
    x = np.array([c.baseline_miou for c in with_gain])
    y = np.array([c.gain.mean for c in with_gain])
    se = np.array([(c.gain.hi - c.gain.lo) / 3.92 for c in with_gain])
    crossover = fit_crossover(x, y, se)
    return BaselineRuleReport(
        cells=cells,
        crossover=crossover,
        verdict=_overall([c.verdict for c in cells]),
        threshold=threshold,
        primary_prompt=primary,
        selections={},
    )


def log_study(
    tracking_uri: str, outcomes: list[tuple[str, object]], primary: str, threshold: float
) -> tuple[str, str]:
    """Log the table + cross-task scatter; returns (run id, printed table)."""
    from specialsam.sweep import mlflow_runs as names
    from specialsam.sweep.tracking import Tracker

    rows = study_rows(outcomes, primary)
    table = format_rows(rows)
    rep = combined_report(outcomes, primary, threshold)
    tracker = Tracker(tracking_uri, STUDY_EXPERIMENT)
    run = tracker.create_run(
        "study-" + "-".join(t for t, _ in outcomes),
        names.study_tags(rep.verdict, [t for t, _ in outcomes]),
    )
    with tempfile.TemporaryDirectory() as d:
        p = Path(d)
        (p / "study_table.md").write_text(
            "# The study table\n\nPrimary prompt: " + primary + "\n\n```\n" + table + "\n```\n\n"
            f"Crossover across tasks: {rep.crossover.describe()}\n"
        )
        plot_gain_vs_baseline(
            rep, p / "gain_vs_baseline_across_tasks.png", title="gain vs baseline, all tasks"
        )
        tracker.log_artifact(run, p / "study_table.md")
        tracker.log_artifact(run, p / "gain_vs_baseline_across_tasks.png")
        tracker.log_json(run, rows, "study_table.json")
    for r in rows:
        if r["gain"] is not None:
            tracker.log_metrics(run, names.study_metrics(r["task"], r["model"], r["gain"], r["baseline"]))
    tracker.finish(run)
    return run, table + f"\ncrossover across tasks: {rep.crossover.describe()}"
