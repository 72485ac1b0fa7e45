"""A sweep's last stage: the rules report on the parent run, and the recommended model exported.

``finish_report`` turns baselines and trial records into the rules' verdicts, the report and its
plots (``report.markdown``) and logs them; ``analyze_only`` rebuilds the same from MLflow alone.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from specialsam.analysis.results import BaselineResult, TrialResult, per_arm
from specialsam.analysis.summaries import format_summary, recommended_cell
from specialsam.arms import arm_model
from specialsam.config import SweepConfig
from specialsam.errors import UserError, disk_full
from specialsam.finetune.clicks import InteractiveScores
from specialsam.finetune.records import RESULT_FILE, TrialRecord
from specialsam.report.html import write_html
from specialsam.report.markdown import write_report
from specialsam.sweep import mlflow_runs as names
from specialsam.sweep.outputs import RunOptions, check_tracking_db, export_root
from specialsam.sweep.tracking import Tracker, resolve_tracking_uri

if TYPE_CHECKING:  # phases imports Ray, which --analyze-only does not need
    from specialsam.sweep.phases import PhaseTrial


@dataclass
class TrialFailures:
    """Trials without a result that are not ASHA's early stops. ``errored``: their process raised
    or died after its retries, so the sweep did not do what was asked (its parent run ends FAILED
    and ``--resume`` reruns them). ``diverged``: learning-curve trials whose training became
    non-finite, a result about the settings that the curve leaves out (phase A's diverged trials
    are the search's own business)."""

    n_trials: int
    errored: list[tuple[str, str]]  # (trial key, reason)
    diverged: list[tuple[str, str]]

    @classmethod
    def of(cls, trials: list[PhaseTrial]) -> TrialFailures:
        """From the phases' trials (the driver)."""
        diverged = [t for t in trials if t.failed and not t.errored and t.phase == "curve"]
        return cls(
            len(trials),
            sorted((t.key, t.failed or "") for t in trials if t.errored),
            sorted((t.key, t.failed or "") for t in diverged),
        )

    @classmethod
    def logged(cls, tracker: Tracker, parent: str) -> TrialFailures:
        """From the trial runs in MLflow (``--analyze-only``): their failure kind tags."""
        runs = tracker.children(parent, names.ROLE_TRIAL)
        by_kind: dict[str, list[tuple[str, str]]] = {names.ERRORED: [], names.DIVERGED: []}
        for r in runs:
            kind = r.data.tags.get(names.FAILURE_KIND) if r.info.status == "FAILED" else None
            if kind == names.ERRORED or (kind == names.DIVERGED and r.data.tags.get(names.PHASE) == "curve"):
                by_kind[kind].append(
                    (r.data.tags.get(names.TRIAL_ID, r.info.run_id), r.data.tags[names.FAILURE])
                )
        return cls(len(runs), sorted(by_kind[names.ERRORED]), sorted(by_kind[names.DIVERGED]))

    def tags(self) -> dict[str, str]:
        return {names.TRIALS_ERRORED: str(len(self.errored)), names.TRIALS_DIVERGED: str(len(self.diverged))}

    def line(self, kind: str) -> str | None:
        """``kind`` ("errored" or "diverged") in one line, naming the first trial and its reason."""
        group = getattr(self, kind)
        if not group:
            return None
        what = "the report leaves them out" if kind == "errored" else "left out of the learning curve"
        key, reason = group[0]
        return f"{len(group)} of {self.n_trials} trials {kind} ({what}); first, {key}: {reason}"

    def lines(self) -> list[str]:
        return [line for kind in ("errored", "diverged") if (line := self.line(kind))]


@dataclass
class SweepOutcome:
    parent_run_id: str
    report: Any
    sweep_dir: Path
    verdicts: dict[str, str]
    summary: str
    export_paths: tuple[Path, Path] | None
    trials: list[TrialResult]
    baselines: list[BaselineResult]
    tracking_uri: str
    data_kind: str = "real"
    model: Any = None  # sweep.model_logging.LoggedModel: the specialised model in MLflow
    failures: TrialFailures | None = None


def click_fields(scores: InteractiveScores | None) -> dict[str, Any]:
    """A decoder's interactive scores as the rules read them (``BaselineResult``/``TrialResult`` fields)."""
    if scores is None:
        return {}
    return {
        "clicks_iou": {k: scores.iou[:, j] for j, k in enumerate(scores.clicks)},
        "noc": {t: v.astype(float) for t, v in scores.noc.items()},
        "max_clicks": scores.max_clicks,
    }


def logged_click_fields(per_image: dict[str, Any]) -> dict[str, Any]:
    """``click_fields`` of a baseline run's per-image file (only the primary strategy's has them)."""
    raw = per_image.get("interactive")
    return click_fields(InteractiveScores.from_dict(raw)) if raw else {}


def trial_from_record(
    trial_id: str,
    rec: TrialRecord,
    base_retention_miou: float | None,
    default_point: dict[str, float] | None = None,
) -> TrialResult:
    """A trial's record (from its Tune checkpoint or its MLflow run) as the rules read it.

    ``default_point``: the searched parameters' defaults (``SweepConfig.default_point``); the
    phase-A trial run with exactly those is the report's "default configuration"."""
    p = rec.params
    is_default = (
        rec.phase == "tune"
        and default_point is not None
        and all(p.get(k) == v for k, v in default_point.items())
    )
    return TrialResult(
        trial_id=trial_id,
        model=rec.model,
        n_train=p["n_train"],
        seed=p["seed"],
        params=rec.hyperparams,
        per_image_iou={s: np.asarray(v.per_image_iou) for s, v in rec.test.items()},
        val_miou=rec.best_val_miou,
        phase=rec.phase,
        health=rec.health,
        retention_miou=rec.retention_miou,
        base_retention_miou=base_retention_miou,
        per_category={s: v.per_category or {} for s, v in rec.test.items()},
        extra_miou=rec.extra_miou,
        default_config=is_default,
        trial_seconds=rec.trial_seconds,
        trainable_params=rec.trainable_params,
        cache_bytes=rec.cache_bytes_per_image,
        **click_fields(rec.interactive_scores()),
    )


def trial_results(
    trials: list[PhaseTrial], base_retention: dict[str, float | None], cfg: SweepConfig
) -> list[TrialResult]:
    return [
        trial_from_record(
            t.key, t.record, base_retention.get(t.record.model), cfg.arm_default_point(t.record.model)
        )
        for t in trials
        if t.record is not None
    ]


def finish_report(
    tracker: Tracker,
    parent: str,
    cfg: SweepConfig,
    data_kind: str,
    baselines: list[BaselineResult],
    trials: list[TrialResult],
    failures: TrialFailures,
) -> SweepOutcome:
    """Verdicts, report and plots, logged on the parent run (artifacts under ``rules/``, tags);
    the report opens with the trials ``failures`` left out."""
    with tempfile.TemporaryDirectory() as d:
        rep = write_report(
            Path(d),
            cfg.task,
            data_kind,
            baselines,
            trials,
            threshold=cfg.rules.threshold,
            primary_prompt=cfg.eval.primary,
            claimed_n=cfg.rules.claimed_n,
            margin=cfg.rules.margin,
            seed=cfg.seed,
            click_protocol=cfg.click_protocol(),
            left_out=failures.lines(),
            protocol={
                "prompt": cfg.eval.primary,
                "mask_selection": cfg.eval.mask_selection,
                "scoring": "original resolution",
                "split": "test",
                "data": data_kind,
            },
        )
        page = write_html(rep.report_md)  # MLflow's markdown preview drops images; its HTML one shows them
        for f in (rep.report_md, page, *rep.plots):
            tracker.log_artifact(parent, f, "rules")
        summary = format_summary(rep.summary)
    tracker.set_tags(parent, {**rep.tags, **failures.tags()})
    log_parent_summary(tracker, parent, rep, cfg.eval.primary)
    return SweepOutcome(
        parent,
        rep,
        Path(),
        rep.tags,
        summary,
        None,
        trials,
        baselines,
        tracker.uri,
        data_kind,
        failures=failures,
    )


def headline_cell(rep, primary: str):
    """The recommended arm's primary-prompt cell (``summaries.recommended_cell``: the highest gain CI
    lower bound, moved to its model's cheapest method within the best method's CI); None: no gains."""
    cell = recommended_cell(rep.baseline_report, rep.method_report)
    return cell if cell is not None and cell.prompt == primary else None


def log_parent_summary(tracker: Tracker, parent: str, rep, primary: str) -> None:
    """The report's headline numbers as parent metrics, its selected configuration as params, so the
    runs table compares sweeps (``--analyze-only`` logs them again: metrics update, params that a
    changed analysis would alter are kept, with a warning, since MLflow params cannot change)."""
    head = headline_cell(rep, primary)
    tracker.log_metrics(parent, names.parent_metrics(rep, head))
    selection = rep.baseline_report.selections.get(head.model) if head is not None else None
    kept = tracker.log_new_params(parent, names.recommended_params(selection, primary))
    if kept:
        print(
            f"warning: params already logged with other values were kept: {', '.join(kept)}", file=sys.stderr
        )


def export_best(
    tracker: Tracker, parent: str, cfg: SweepConfig, rep, trials: list[PhaseTrial], models, opts: RunOptions
) -> tuple[Path, Path] | None:
    """Export the recommended (else best-validated) model; log decoders of each model's best trial."""
    by_key = {t.key: t for t in trials if t.record is not None and t.checkpoint_dir is not None}
    best_per_model = _best_per_model(by_key.values())
    for t in best_per_model.values():
        if t.run_id:
            tracker.log_artifact(t.run_id, t.checkpoint_dir / names.DECODER_FILE)
            if (t.checkpoint_dir / names.TUNED_FILE).exists():
                tracker.log_artifact(t.run_id, t.checkpoint_dir / names.TUNED_FILE)
            tracker.set_tags(t.run_id, {names.BEST_FOR_MODEL: "true"})
    best_cell = headline_cell(rep, cfg.eval.primary)
    if best_cell is None:
        return None
    chosen = _recommended_trial(rep, best_cell.model, by_key) or best_per_model.get(best_cell.model)
    if chosen is None:
        return None
    full, dec = _write_export(
        models[arm_model(best_cell.model)][0],
        chosen,
        f"{cfg.task}-{best_cell.model.replace(':', '-')}-specialised",
        opts,
    )
    tracker.log_artifact(parent, dec, "export")
    if full.stat().st_size < 200 * 1024**2:
        tracker.log_artifact(parent, full, "export")
    tracker.set_tags(parent, {names.EXPORT_FULL: str(full), names.EXPORT_TRIAL: chosen.key})
    return full, dec


def publish_model(tracker: Tracker, parent: str, cfg: SweepConfig, rep, full: Path):
    """The exported checkpoint as the sweep's MLflow pyfunc model (registered where possible)."""
    from specialsam.sweep.model_logging import log_specialised

    head = headline_cell(rep, cfg.eval.primary)
    return log_specialised(tracker, parent, cfg.task, arm_model(head.model), full, cfg.eval.mask_selection)


def _best_per_model(trials) -> dict[str, PhaseTrial]:
    best: dict[str, PhaseTrial] = {}
    for t in trials:
        m = t.params["model"]
        if m not in best or t.record.best_val_miou > best[m].record.best_val_miou:
            best[m] = t
    return best


def _recommended_trial(rep, model: str, by_key: dict[str, PhaseTrial]) -> PhaseTrial | None:
    """The best-validated trial of the configuration the rules selected for ``model``."""
    sel = rep.baseline_report.selections.get(model)
    if sel is None:
        return None
    cands = [by_key[t.trial_id] for t in sel.trials if t.trial_id in by_key]
    return max(cands, key=lambda t: t.record.best_val_miou) if cands else None


def _write_export(sam, chosen: PhaseTrial, stem: str, opts: RunOptions) -> tuple[Path, Path]:
    """The chosen trial's model as a full official-layout checkpoint + its decoder (+ LoRA adapters)."""
    out_dir = export_root(opts)
    try:
        if chosen.record.method is None:
            from specialsam.models.export import export_specialised

            state = torch.load(chosen.checkpoint_dir / names.DECODER_FILE, weights_only=True)
            return export_specialised(sam, state, out_dir, stem)
        return _export_tuned(sam, chosen, out_dir, stem)
    except OSError as exc:  # checked before the sweep, so the folder changed since (or the disk filled)
        if disk_full(exc):
            raise
        raise UserError(
            f"{'--export-dir' if opts.export_dir else 'the export folder'} {out_dir}: cannot write the "
            f"specialised model ({exc.strerror or exc}); fix it and rerun with --resume"
        ) from None


def _export_tuned(sam, chosen: PhaseTrial, out_dir: Path, stem: str) -> tuple[Path, Path]:
    """A lora / full trial: its method put on a copy of the base model, its kept weights loaded,
    exported with LoRA merged (``models.export.export_tuned``); the adapters alone beside it."""
    import copy

    from specialsam.finetune.methods import load_tuned_state, prepare_method, settings_from_record
    from specialsam.models.export import export_tuned

    raw = dict(chosen.record.method)
    model = copy.deepcopy(sam).cpu()
    prepare_method(model, arm_model(chosen.record.model), settings_from_record(raw))
    load_tuned_state(model, torch.load(chosen.checkpoint_dir / names.TUNED_FILE, weights_only=True))
    full, dec, _adapters = export_tuned(model, out_dir, stem, raw)  # adapters: beside them, same stem
    return full, dec


def analyze_only(cfg: SweepConfig, opts: RunOptions, parent: str) -> SweepOutcome:
    """Rebuild the rules report of a finished sweep from MLflow alone."""
    uri = resolve_tracking_uri(opts.tracking_uri, opts.cwd)
    # look the run up first: a bogus id must not create a database or an experiment
    tracker, run = Tracker.for_run(uri, parent, f"--analyze-only {parent}")
    check_tracking_db(uri)  # the report is logged to it
    if run.data.tags.get(names.ROLE) != names.ROLE_SWEEP:
        raise UserError(
            f"--analyze-only {parent}: run is not a sweep parent run (role={run.data.tags.get(names.ROLE)})"
        )
    data_kind = run.data.tags.get(names.DATA, "real")
    out = finish_report(
        tracker,
        parent,
        cfg,
        data_kind,
        per_arm(logged_baselines(tracker, parent), cfg.arms()),
        logged_trials(tracker, parent, cfg),
        TrialFailures.logged(tracker, parent),
    )
    out.tracking_uri = uri
    return out


def logged_baselines(tracker: Tracker, parent: str) -> list[BaselineResult]:
    out = []
    for r in tracker.children(parent, names.ROLE_BASELINE):
        per = tracker.download_json(r.info.run_id, names.PER_IMAGE_IOU)
        metrics = r.data.metrics
        out.append(
            BaselineResult(
                r.data.params["model"],
                r.data.params["strategy"],
                np.asarray(per["iou"]),
                names.with_prefix(metrics, names.CATEGORY_PREFIX),
                names.with_prefix(metrics, names.EXTRA_PREFIX),
                **logged_click_fields(per),
            )
        )
    return out


def logged_trials(tracker: Tracker, parent: str, cfg: SweepConfig) -> list[TrialResult]:
    out = []
    for r in tracker.children(parent, names.ROLE_TRIAL):
        if r.info.status != "FINISHED" or names.test_metric("miou", cfg.eval.primary) not in r.data.metrics:
            continue
        rec = TrialRecord.from_dict(tracker.download_json(r.info.run_id, RESULT_FILE))
        trial_id = r.data.tags.get(names.TRIAL_ID, r.info.run_id)
        base_ret = r.data.metrics.get(names.BASE_RETENTION_MIOU)
        out.append(trial_from_record(trial_id, rec, base_ret, cfg.arm_default_point(rec.model)))
    return out


def cleanup_trials(trials: list[PhaseTrial] | None) -> None:
    """Remove the trials' downloaded checkpoints (temp folders)."""
    for t in trials or []:
        if t.checkpoint_dir is not None:
            shutil.rmtree(t.checkpoint_dir, ignore_errors=True)
