"""``--baseline-only``: the zero-shot survey, every category x every prompt strategy, no training.

For MVTec AD with ``data.category=all`` (``python sweeps/run.py --task carpet --data-root <root>
--set data.category=all --baseline-only``) each category folder under the root is loaded in turn,
its test images encoded once per model (the embedding cache as a sweep uses it), and the
pretrained decoder scored with every ``eval.strategies`` prompt. One MLflow run (role ``survey``)
gets a metric per cell (mIoU and its bootstrap CI), the table (markdown) and a category x strategy
heatmap; the terminal gets the table. Offline it surveys the stand-in (one category).
Why a flag and not a sweep setting: it trains nothing, so none of the sweep's search, curve or
rules apply; it is the first question of the study (is zero-shot SAM already good enough here?).
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from specialsam.analysis.survey import SurveyCell, format_survey, survey_cell
from specialsam.config.schema import SweepConfig
from specialsam.errors import UserError
from specialsam.finetune.pack import Pack, build_pack, model_identity
from specialsam.finetune.pipeline import score_decoder
from specialsam.models.registry import load_model
from specialsam.report.plots import plot_survey_heatmap
from specialsam.sweep import mlflow_runs as names
from specialsam.sweep.outputs import RunOptions, cache_root, check_outputs
from specialsam.sweep.tracking import Tracker, experiment_name, resolve_tracking_uri
from specialsam.tasks import load_task

SURVEY_TASKS = ("carpet",)
"""Tasks whose data root holds several categories to survey (MVTec AD)."""
KEEP_FOR_PACK = 1
"""Train/val samples kept per category: a pack needs the splits, the survey encodes only test."""


@dataclass
class SurveyOutcome:
    run_id: str
    cells: list[SurveyCell]
    table: str
    data_kind: str
    tracking_uri: str
    notes: list[str] = field(default_factory=list)


def _categories(cfg: SweepConfig) -> list[str]:
    if cfg.task not in SURVEY_TASKS:
        raise UserError(
            f"--baseline-only surveys MVTec AD categories: use it with --task carpet, not {cfg.task}"
        )
    from specialsam.tasks.carpet import survey_categories

    root = Path(cfg.data_root).expanduser() if cfg.data_root else None
    return survey_categories(root, str((cfg.data or {}).get("category", "carpet")))


def _category_cells(cfg: SweepConfig, opts: RunOptions, category: str, models: dict, cache) -> tuple:
    """Load one category, encode its test images per model, score every strategy zero-shot."""
    from specialsam.device import select_device
    from specialsam.sweep.driver import pack_settings

    data = {**(cfg.data or {}), "category": category, "n_synthetic": 4, "n_val": 4}
    task = load_task(cfg.task, cfg.data_root, data, cfg.seed)
    task.train, task.val = task.train[:KEEP_FOR_PACK], task.val[:KEEP_FOR_PACK]
    if not opts.quiet:  # what is scored; the stand-in also says how to point at the real data
        said = task.notes[0] if task.data == "procedural" and task.notes else task.source
        print(f"survey {category}: {len(task.test)} test images; {said}", file=sys.stderr, flush=True)
    cells = []
    for name, (sam, info) in models.items():
        ident = model_identity(sam, name, info.sha256)
        folder = build_pack(task, sam, ident, cache, pack_settings(cfg), progress=not opts.quiet)
        plain = dataclasses.replace(cfg.scoring(name), clicks=(), noc_thresholds=())  # one prompt each
        scores = score_decoder(sam, Pack(folder, cache), plain, select_device())
        for strat, sc in scores.test.items():
            cells.append(survey_cell(name, category, strat, sc.per_image_iou, seed=cfg.seed))
    return cells, task.data


def run_survey(cfg: SweepConfig, opts: RunOptions) -> SurveyOutcome:
    """Every category x strategy x model, zero-shot; one MLflow run with the table and heatmap."""
    from specialsam.finetune.cache import EmbeddingCache

    categories = _categories(cfg)  # a bad root fails here, before anything is written
    uri = resolve_tracking_uri(opts.tracking_uri, opts.cwd)
    check_outputs(cfg, opts, uri)
    models = {
        n: load_model(n, checkpoint_dir=opts.checkpoint_dir, allow_unverified=opts.allow_unverified)
        for n in cfg.models
    }
    cache = EmbeddingCache(cache_root(cfg, opts)[0])
    cells, kind = [], "real"
    for cat in categories:
        got, kind = _category_cells(cfg, opts, cat, models, cache)
        cells += got
    table = format_survey(cells)
    tracker = Tracker(uri, opts.experiment or experiment_name(cfg.task))
    run = tracker.create_run(f"survey-{cfg.task}", names.survey_tags(cfg.task, kind, cfg.eval.mask_selection))
    tracker.log_params(run, names.survey_params(categories, list(cfg.eval.strategies), list(cfg.models)))
    tracker.log_metrics(run, names.survey_metrics(cells))
    with tempfile.TemporaryDirectory() as d:
        md = Path(d) / names.SURVEY_TABLE
        md.write_text(f"# Zero-shot survey: {cfg.task} ({kind})\n\n{table}\n", encoding="utf-8")
        png = plot_survey_heatmap(cells, Path(d) / names.SURVEY_HEATMAP, f"{cfg.task}: zero-shot mIoU")
        for f in (md, png):
            tracker.log_artifact(run, f, names.SURVEY_DIR)
    tracker.finish(run)
    return SurveyOutcome(run, cells, table, kind, uri)
