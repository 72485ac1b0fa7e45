"""The zero-shot survey's statistics: mIoU per (model, category, prompt strategy) with its CI.

A survey (``--baseline-only``; MVTec AD with ``data.category=all``) scores the pretrained decoder
on every category's test set with every prompt strategy and trains nothing. Each cell's interval
is a percentile bootstrap over the category's test images (seeded, so deterministic).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from specialsam.analysis.stats import LEVEL


@dataclass(frozen=True)
class SurveyCell:
    """One (model, category, strategy): zero-shot test mIoU over ``n`` images, ``lo``-``hi`` its CI."""

    model: str
    category: str
    strategy: str
    n: int
    miou: float
    lo: float
    hi: float


def mean_ci(
    values: np.ndarray, n_boot: int = 2000, seed: int = 0, level: float = LEVEL
) -> tuple[float, float, float]:
    """(mean, lo, hi): the mean of ``values`` and its percentile bootstrap interval."""
    v = np.asarray(values, np.float64)
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(axis=1)
    alpha = (1 - level) / 2
    return float(v.mean()), float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def survey_cell(
    model: str, category: str, strategy: str, per_image_iou: np.ndarray, n_boot: int = 2000, seed: int = 0
) -> SurveyCell:
    m, lo, hi = mean_ci(per_image_iou, n_boot, seed)
    return SurveyCell(model, category, strategy, int(np.asarray(per_image_iou).size), m, lo, hi)


def format_survey(cells: Sequence[SurveyCell]) -> str:
    """One markdown table: a row per (model, category), a column per strategy, ``mIoU [lo, hi]``."""
    strategies = list(dict.fromkeys(c.strategy for c in cells))
    rows = list(dict.fromkeys((c.model, c.category) for c in cells))
    by = {(c.model, c.category, c.strategy): c for c in cells}
    head = ["model", "category", "n", *strategies]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for model, cat in rows:
        here = [by.get((model, cat, s)) for s in strategies]
        n = next((c.n for c in here if c is not None), 0)
        vals = [f"{c.miou:.3f} [{c.lo:.3f}, {c.hi:.3f}]" if c else "" for c in here]
        out.append("| " + " | ".join([model, cat, str(n), *vals]) + " |")
    return "\n".join(out)
