"""The per-category bar plot (base vs specialised), as the annotation benchmark draws it."""

from __future__ import annotations

import cv2
import numpy as np

from specialsam.analysis.summaries import BreakdownRow
from specialsam.report.plots import plot_category_bars


def _rows(cats: list[str], models=("tiny-s",)) -> list[BreakdownRow]:
    return [
        BreakdownRow(m, c, base=0.5, specialised=0.5 + 0.04 * i, n_seeds=3)
        for m in models
        for i, c in enumerate(cats)
    ]


def test_one_bar_pair_per_category_and_a_panel_per_model(tmp_path):
    few = cv2.imread(str(plot_category_bars(_rows(["a", "b"]), tmp_path / "few.png")))
    many = cv2.imread(str(plot_category_bars(_rows([f"c{i}" for i in range(20)]), tmp_path / "many.png")))
    two = cv2.imread(str(plot_category_bars(_rows(["a", "b"], ("tiny-s", "tiny-m")), tmp_path / "two.png")))
    assert many.shape[0] > 2 * few.shape[0]  # grows with the categories
    assert abs(two.shape[0] - 2 * few.shape[0]) <= 4  # one panel per model
    grey = np.all(np.abs(few.astype(int) - 153) <= 2, axis=2).sum()  # base bars are grey 0.6
    assert grey > 5000


def test_missing_values_draw_no_bar(tmp_path):
    rows = [BreakdownRow("tiny-s", "a", None, 0.7, 3), BreakdownRow("tiny-s", "b", None, 0.8, 3)]
    img = cv2.imread(str(plot_category_bars(rows, tmp_path / "p.png")))
    assert (
        np.all(np.abs(img.astype(int) - 153) <= 2, axis=2).sum() < 200
    )  # no base bars (the legend swatch only)
