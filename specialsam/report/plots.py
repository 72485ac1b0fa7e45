"""The rules report's two plots, on an Agg canvas (no pyplot, no global backend state, safe in workers).

Reads analysis results only (``BaselineRuleReport``, ``DataRuleReport``); called by ``report.markdown``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

if TYPE_CHECKING:
    from specialsam.analysis.baseline_rule import BaselineRuleReport
    from specialsam.analysis.clicks_rule import ClicksReport
    from specialsam.analysis.data_rule import DataRuleReport
    from specialsam.analysis.methods import MethodReport
    from specialsam.analysis.summaries import BreakdownRow
    from specialsam.analysis.survey import SurveyCell

_MARKERS = "osD^v<>Pph*X"


def _figure(size: tuple[float, float] = (7.0, 5.0)) -> tuple[Figure, object]:
    fig = Figure(figsize=size, dpi=110)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def _colors(names: list[str]) -> dict[str, object]:
    cycle = [f"C{i % 10}" for i in range(len(names))]
    return dict(zip(names, cycle, strict=True))


def plot_gain_vs_baseline(report: BaselineRuleReport, path: Path, title: str = "gain vs baseline") -> Path:
    """Gain (with its 95% CI) against baseline mIoU per (model, prompt), the threshold and y = 0."""
    fig, ax = _figure()
    cells = [c for c in report.cells if c.gain is not None]
    colors = _colors(sorted({c.model for c in cells}))
    prompts = sorted({c.prompt for c in cells})
    markers = {p: _MARKERS[i % len(_MARKERS)] for i, p in enumerate(prompts)}
    for c in cells:
        g = c.gain
        ax.errorbar(
            c.baseline_miou,
            g.mean,
            yerr=[[g.mean - g.lo], [g.hi - g.mean]],
            fmt=markers[c.prompt],
            color=colors[c.model],
            capsize=3,
            ms=6,
        )
        ax.annotate(
            f"{c.model}/{c.prompt}",
            (c.baseline_miou, g.mean),
            textcoords="offset points",
            xytext=(5, 4),
            fontsize=7,
        )
    ax.axhline(0.0, color="k", lw=0.8)
    ax.axvline(
        report.threshold, color="tab:red", ls="--", lw=1, label=f"rule threshold {report.threshold:.0%}"
    )
    cx = report.crossover
    if cx.estimable:
        xs = np.array(ax.get_xlim())
        ax.plot(xs, cx.intercept + cx.slope * xs, color="gray", lw=1, label="weighted fit")
        ax.axvline(cx.x0, color="gray", ls=":", lw=1, label=f"crossover {cx.x0:.3f}")
        if np.isfinite(cx.lo) and np.isfinite(cx.hi):
            ax.axvspan(cx.lo, cx.hi, color="gray", alpha=0.12, label="crossover 95% CI")
        ax.set_xlim(*xs)
    for m, col in colors.items():
        ax.plot([], [], "o", color=col, label=m)
    if len(prompts) > 1:
        for p, mk in markers.items():
            ax.plot([], [], mk, color="gray", ls="none", label=f"prompt: {p}")
    if not cells:
        ax.text(
            0.5, 0.5, "no (model, prompt) with both baseline and trials", ha="center", transform=ax.transAxes
        )
    ax.set_xlabel("zero-shot baseline mIoU")
    ax.set_ylabel("gain of fine-tuned decoder (mIoU, 95% CI)")
    ax.set_title(f"{title} (baseline rule: {report.verdict})")
    ax.legend(fontsize=7, loc="best")
    return _save(fig, path)


def plot_learning_curve(report: DataRuleReport, path: Path, title: str = "learning curve") -> Path:
    """Specialised mIoU against n_train (log x) with sd bars, fitted curves, baselines, the claimed n."""
    fig, ax = _figure()
    colors = _colors(sorted(report.curves))
    n_all = [p.n_train for cv in report.curves.values() for p in cv.points]
    for m, cv in sorted(report.curves.items()):
        col = colors[m]
        ns = np.array([p.n_train for p in cv.points], float)
        ax.errorbar(
            ns,
            [p.mean for p in cv.points],
            yerr=[p.sd for p in cv.points],
            fmt="o",
            color=col,
            capsize=3,
            label=f"{m} ({cv.verdict})",
        )
        if cv.fit.ok:
            grid = np.geomspace(ns.min() / 1.5, max(ns.max(), report.claimed_n) * 1.5, 200)
            ax.plot(grid, cv.fit.predict(grid), color=col, lw=1.2)
            lo, hi = cv.fit.n95_ci
            ax.axvline(cv.fit.n95, color=col, ls=":", lw=0.8)
            ax.axvspan(lo, hi, color=col, alpha=0.08)
        if cv.baseline_miou is not None:
            ax.axhline(cv.baseline_miou, color=col, ls="--", lw=1, label=f"{m} baseline")
    ax.axvline(report.claimed_n, color="k", ls="-.", lw=1, label=f"claimed {report.claimed_n:,}")
    if n_all:
        ax.set_xscale("log")
    else:
        ax.text(0.5, 0.5, "no fine-tuning results", ha="center", transform=ax.transAxes)
    ax.set_xlabel("training samples (n_train, log scale)")
    ax.set_ylabel(f"test mIoU ({report.primary_prompt} prompt)")
    ax.set_title(f"{title} (data rule: {report.verdict}); dotted: n95")
    ax.legend(fontsize=7, loc="best")
    return _save(fig, path)


def plot_clicks_curve(report: ClicksReport, path: Path, title: str = "mIoU vs clicks") -> Path:
    """mIoU after k interactions, base (dashed) vs specialised (solid) per model: where the lines
    meet, a few extra clicks are worth as much as fine-tuning."""
    fig, ax = _figure()
    colors = _colors(sorted(report.models))
    for m, mc in sorted(report.models.items()):
        ks = [p.clicks for p in mc.points]
        ax.plot(ks, [p.base_miou for p in mc.points], "o--", color=colors[m], label=f"{m} base")
        ax.errorbar(
            ks,
            [p.spec_miou for p in mc.points],
            yerr=[[p.gain.mean - p.gain.lo for p in mc.points], [p.gain.hi - p.gain.mean for p in mc.points]],
            fmt="o-",
            color=colors[m],
            capsize=3,
            label=f"{m} specialised (bars: gain 95% CI)",
        )
    if not report.models:
        ax.text(0.5, 0.5, "no interactive evaluation", ha="center", transform=ax.transAxes)
    ax.set_xlabel("interactions (1 = the prompt, then corrective clicks)")
    ax.set_ylabel(f"test mIoU ({report.prompt} first)")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="best")
    return _save(fig, path)


def plot_method_gains(report: MethodReport, path: Path, title: str = "gain per method") -> Path:
    """Gain (95% CI) of each method, grouped by model, cheapest method left; the pick is ringed.
    Methods whose CIs overlap the best one's estimate are interchangeable by the pick rule."""
    fig, ax = _figure((max(5.0, 1.8 * len(report.models) + 3.0), 4.5))
    methods = list(dict.fromkeys(r.method for mm in report.models.values() for r in mm.rows))
    colors = _colors(methods)
    width = 0.8 / max(len(methods), 1)
    for x, mm in enumerate(report.models.values()):
        for r in mm.rows:
            if r.gain is None:
                continue
            xi = x - 0.4 + width * (methods.index(r.method) + 0.5)
            g = r.gain
            ax.errorbar(xi, g.mean, yerr=[[g.mean - g.lo], [g.hi - g.mean]], fmt="o", color=colors[r.method],
                        capsize=3, ms=6)  # fmt: skip
            if r is mm.pick:
                ax.plot(xi, g.mean, "o", ms=14, mfc="none", mec="k", mew=1.2)
    for m, col in colors.items():
        ax.plot([], [], "o", color=col, label=m)
    ax.plot([], [], "o", ms=10, mfc="none", mec="k", label="pick")
    ax.axhline(0.0, color="k", lw=0.8)
    ax.set_xticks(range(len(report.models)), list(report.models), fontsize=8)
    ax.set_xlim(-0.6, len(report.models) - 0.4)
    ax.set_ylabel(f"gain over zero-shot (mIoU, {report.primary_prompt} prompt, 95% CI)")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="best")
    return _save(fig, path)


def plot_category_bars(rows: Sequence[BreakdownRow], path: Path, title: str = "mIoU per category") -> Path:
    """Test mIoU per category, base decoder vs the specialised one, one panel per model (the
    annotation benchmark's per-category plot). ``rows``: ``analysis.summaries.category_breakdown``;
    a missing value draws no bar. The figure grows with the number of categories."""
    models = sorted({r.model for r in rows})
    cats = sorted({r.name for r in rows})
    height = 1.2 + 0.28 * max(len(cats), 1)
    fig = Figure(figsize=(7.0, height * max(len(models), 1)), dpi=110)
    FigureCanvasAgg(fig)
    colors = _colors(models)
    y = np.arange(len(cats))
    for k, model in enumerate(models or [""]):
        ax = fig.add_subplot(max(len(models), 1), 1, k + 1)
        by_cat = {r.name: r for r in rows if r.model == model}
        for offset, what, color in ((-0.2, "base", "0.6"), (0.2, "specialised", colors.get(model, "C0"))):
            vals = [getattr(by_cat.get(c), what, None) for c in cats]
            ys = [yi + offset for yi, v in zip(y, vals) if v is not None]
            ax.barh(ys, [v for v in vals if v is not None], height=0.38, color=color, label=what)
        ax.set_yticks(y, cats, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_xlabel("test mIoU")
        ax.set_title(f"{title}: {model}" if model else title)
        ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def plot_survey_heatmap(cells: Sequence[SurveyCell], path: Path, title: str = "zero-shot mIoU") -> Path:
    """Category x prompt strategy heatmap of zero-shot mIoU, each cell annotated ``mIoU`` and its
    95% CI; one panel per model. ``cells``: ``analysis.survey.survey_cell``."""
    models = list(dict.fromkeys(c.model for c in cells)) or [""]
    cats = list(dict.fromkeys(c.category for c in cells))
    strats = list(dict.fromkeys(c.strategy for c in cells))
    fig = Figure(
        figsize=(1.6 + 1.5 * max(len(strats), 1), (1.0 + 0.45 * max(len(cats), 1)) * len(models)), dpi=110
    )
    FigureCanvasAgg(fig)
    for k, model in enumerate(models):
        ax = fig.add_subplot(len(models), 1, k + 1)
        grid = np.full((len(cats), len(strats)), np.nan)
        for c in cells:
            if c.model == model:
                i, j = cats.index(c.category), strats.index(c.strategy)
                grid[i, j] = c.miou
                ax.text(j, i, f"{c.miou:.2f}\n[{c.lo:.2f}, {c.hi:.2f}]", ha="center", va="center", fontsize=7)
        im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto", alpha=0.85)
        ax.set_xticks(range(len(strats)), strats, fontsize=8)
        ax.set_yticks(range(len(cats)), cats, fontsize=8)
        ax.set_title(f"{title}: {model}" if model else title)
        fig.colorbar(im, ax=ax, label="mIoU")
    return _save(fig, path)
