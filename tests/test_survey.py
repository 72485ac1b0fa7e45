"""The zero-shot survey (#21 item 5): every MVTec category x prompt strategy, one table + heatmap."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.image import imread

from specialsam.sweep import mlflow_runs as names
from specialsam.sweep.tracking import Tracker
from specialsam.tasks import io as tio
from tests.conftest import run_sweep_cli

CATEGORIES = {"carpet": 0.25, "leather": 0.08}  # the defect's side as a fraction of the image


def _mvtec(root, seed=0):
    """Two categories in the MVTec AD layout, each with train/good and two test defect types."""
    rng = np.random.default_rng(seed)
    for cat, frac in CATEGORIES.items():
        for i in range(3):
            tio.write_image(
                root / cat / "train" / "good" / f"{i:03d}.png", rng.integers(0, 255, (64, 64, 3), np.uint8)
            )
        for defect in ("cut", "hole"):
            for i in range(3):
                img = rng.integers(100, 155, (64, 64, 3), np.uint8)
                m = np.zeros((64, 64), bool)
                s = max(3, int(64 * frac))
                y, x = rng.integers(4, 60 - s, 2)
                m[y : y + s, x : x + s] = True
                img[m] = 250
                tio.write_image(root / cat / "test" / defect / f"{i:03d}.png", img)
                tio.write_mask(root / cat / "ground_truth" / defect / f"{i:03d}_mask.png", m)
    return root


def _argv(root, tmp_path, *more):
    return [
        "--task", "carpet", "--data-root", str(root), "--set", "data.category=all", "--baseline-only",
        "--models", "tiny-s", "--set", "eval.strategies=[center,box]", "--cache-dir", str(tmp_path / "cache"),
        *more,
    ]  # fmt: skip


def test_survey_scores_every_category_and_strategy_and_logs_one_run(tmp_path, capsys):
    root = _mvtec(tmp_path / "mvtec")
    assert run_sweep_cli(_argv(root, tmp_path), tmp_path) == 0
    out = capsys.readouterr().out
    rows = [ln for ln in out.splitlines() if ln.startswith("| tiny-s |")]
    assert [r.split("|")[2].strip() for r in rows] == ["carpet", "leather"]
    assert all(r.split("|")[3].strip() == "6" and r.count("[") == 2 for r in rows)  # n, 2 strategies
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "specialsam-carpet")
    (run,) = tracker.client.search_runs([tracker.experiment_id])
    assert run.data.tags[names.ROLE] == names.ROLE_SURVEY and run.data.tags[names.DATA] == "real"
    m = run.data.metrics
    for cat in CATEGORIES:
        for strat in ("center", "box"):
            v, lo, hi = (m[names.survey_metric("tiny-s", cat, strat, b)] for b in ("", "lo", "hi"))
            assert 0 <= lo <= v <= hi <= 1
    local = tracker.client.download_artifacts(run.info.run_id, names.SURVEY_DIR, str(tmp_path / "dl"))
    table = (tmp_path / "dl" / names.SURVEY_DIR / names.SURVEY_TABLE).read_text()
    assert "| tiny-s | leather | 6 |" in table
    heat = imread(f"{local}/{names.SURVEY_HEATMAP}")
    assert heat.shape[0] > 200 and heat.std() > 0
    assert not (tmp_path / "ray_results").exists()  # nothing trained, no Tune storage


@pytest.mark.parametrize("case", ["no_categories", "without_flag"])
def test_bad_survey_input_is_one_line_exit_2_nothing_written(tmp_path, capsys, case):
    root = tmp_path / "empty"
    root.mkdir()
    argv = _argv(root, tmp_path)
    if case == "without_flag":
        argv = [a for a in _argv(_mvtec(root), tmp_path) if a != "--baseline-only"]
    with pytest.raises(SystemExit) as e:
        run_sweep_cli(argv, tmp_path)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1
    assert ("no MVTec AD category folders" if case == "no_categories" else "add --baseline-only") in err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "cache").exists()
