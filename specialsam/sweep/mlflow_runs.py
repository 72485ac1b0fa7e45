"""Every MLflow name a sweep writes or reads: tags, params, metrics, artifacts of its runs.

A sweep is one parent run (role ``sweep``) with a child run per baseline (model x prompt strategy)
and per trial; a multi-task study is one more run (role ``study``). Writers (the driver, the Tune
callback, the study) and readers (``--analyze-only``, resume, tests) build names here only, so a
metric is never logged under one name and looked up under another.

Two metric shapes are kept as earlier sweeps logged them: a baseline run scores one strategy and
logs ``test_miou``; a trial run scores them all and logs ``test_miou.<strategy>``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from specialsam.analysis.results import EXCLUDED_PARAM_KEYS, TAG_BASELINE_RULE, TAG_DATA_RULE
from specialsam.finetune.clicks import InteractiveScores
from specialsam.finetune.evaluate import Scores
from specialsam.finetune.records import RESULT_FILE, TrialRecord

# ---------------------------------------------------------------------------------- experiment
EXPERIMENT_KIND = "mlflow.experimentKind"
"""The experiment tag MLflow 3's UI reads to choose its view (what its experiment-type selector
writes); without it a new experiment opens in the GenAI view (traces), not the runs table."""
KIND_MODEL_TRAINING = "custom_model_development"
"""The UI's "Model training" view: the runs table, charts, datasets and logged models."""

# --------------------------------------------------------------------------------------- tags
ROLE = "specialsam.role"
"""Which kind of run: one of the ``ROLE_*`` values."""
ROLE_SWEEP, ROLE_BASELINE, ROLE_TRIAL, ROLE_STUDY = "sweep", "baseline", "trial", "study"
ROLE_SURVEY = "survey"
"""The zero-shot survey (``--baseline-only``): one run, no children."""
PARENT = "mlflow.parentRunId"
TRIAL_ID = "specialsam.trial_id"
"""A child run's key: ``baseline/<model>/<strategy>`` or ``<experiment>/<tune trial id>``."""

TASK = "specialsam.task"
DATA = "specialsam.data"
MODEL = "specialsam.model"
MODELS = "specialsam.models"
PHASE = "specialsam.phase"
SWEEP_DIR = "specialsam.sweep_dir"
HEALTH = "specialsam.health"
FAILURE = "specialsam.failure"
FAILURE_KIND = "specialsam.failure_kind"
"""A failed trial's kind: ``ERRORED`` (its process raised or died) or ``DIVERGED`` (non-finite training)."""
ERRORED, DIVERGED = "errored", "diverged"
TRIALS_ERRORED = "specialsam.trials_errored"
TRIALS_DIVERGED = "specialsam.trials_diverged"
"""On the parent: how many trials errored (the sweep is FAILED) or diverged (left out of the curve)."""
STOPPED_EARLY = "specialsam.stopped_early"
RETRIED = "specialsam.retried"
NODE_ID = "specialsam.node_id"
BEST_FOR_MODEL = "specialsam.best_for_model"
EXPORT_FULL = "specialsam.export.full"
EXPORT_TRIAL = "specialsam.export.trial"
LOGGED_MODEL = "specialsam.model_uri"
"""The parent's pointer to its specialised MLflow model: ``models:/specialsam-<task>@champion``
where the store has a registry, else the logged model's ``models:/<model_id>``."""
STUDY_TASKS = "specialsam.tasks"
PROMPT_PROTOCOL = "specialsam.prompt_protocol"
CLICK_PROTOCOL = "specialsam.click_protocol"
VERDICT_BASELINE_RULE, VERDICT_DATA_RULE = TAG_BASELINE_RULE, TAG_DATA_RULE
"""The two overall verdicts (named with the verdict vocabulary in ``analysis.results``)."""

# ------------------------------------------------------------------------------------ metrics
TEST_MIOU = "test_miou"
CATEGORY_PREFIX = "test_miou.cat."
EXTRA_PREFIX = "extra_miou."
BASE_EXTRA_PREFIX = "base_extra_miou."
EXTRA_CHANGE_PREFIX = "extra_change."
BASELINE_MIOU = "baseline_miou"
GAIN = "gain"
RETENTION_MIOU = "retention_miou"
BASE_RETENTION_MIOU = "base_retention_miou"
RETENTION_CHANGE = "retention_change"
VAL_MIOU = "val_miou"
TRAIN_LOSS = "train_loss"
BEST_VAL_MIOU = "best_val_miou"
TRIAL_SECONDS = "trial_seconds"
STEPS = "steps"
SKIPPED_EMPTY = "skipped_empty"
CLICKS_PREFIX = "clicks_miou."
NOC_PREFIX = "noc."

# ---------------------------------------------------------------------------------- artifacts
PER_IMAGE_IOU = "per_image_iou.json"
TRIAL_ARTIFACTS = (RESULT_FILE, "curves.png", "overlay.png")
DECODER_FILE = "decoder.pt"
TUNED_FILE = "tuned.pt"
"""A lora / full trial's kept encoder weights (adapters or blocks) by parameter name, beside its decoder."""
SURVEY_DIR = "survey"
SURVEY_TABLE = "survey.md"
SURVEY_HEATMAP = "survey_heatmap.png"
SURVEY_PREFIX = "survey_miou."
"""Survey metrics: ``survey_miou.<model>.<category>.<strategy>`` and ``.lo`` / ``.hi`` (95% CI)."""


def survey_tags(task: str, data: str, mask_selection: str) -> dict[str, str]:
    return {ROLE: ROLE_SURVEY, TASK: task, DATA: data, "specialsam.mask_selection": mask_selection}


def survey_params(categories: list[str], strategies: list[str], models: list[str]) -> dict[str, str]:
    return {
        "categories": ",".join(categories),
        "strategies": ",".join(strategies),
        "models": ",".join(models),
    }


def survey_metric(model: str, category: str, strategy: str, bound: str = "") -> str:
    return f"{SURVEY_PREFIX}{model}.{category}.{strategy}" + (f".{bound}" if bound else "")


def survey_metrics(cells) -> dict[str, float]:
    """Each survey cell's mIoU and CI bounds under :func:`survey_metric` names."""
    out = {}
    for c in cells:
        out[survey_metric(c.model, c.category, c.strategy)] = c.miou
        out[survey_metric(c.model, c.category, c.strategy, "lo")] = c.lo
        out[survey_metric(c.model, c.category, c.strategy, "hi")] = c.hi
    return out


# ------------------------------------------------------------------ the specialised MLflow model
PYFUNC_MODEL = "specialised-model"
"""``name=`` of the pyfunc logged on the parent run (``sweep.model_logging``)."""
CHAMPION = "champion"
"""The registry alias that follows the newest sweep's recommended model."""
REGISTERED_MODEL_DESCRIPTION = (
    "SAM with the mask decoder a SpecialSAM sweep recommended; input: image + point or box, output: mask"
)


def registered_model(task: str) -> str:
    return f"specialsam-{task}"


def champion_uri(task: str) -> str:
    return f"models:/{registered_model(task)}@{CHAMPION}"


# -------------------------------------------------------------------------- dataset inputs
DATASET_CONTEXTS = {"train": "training", "val": "validation", "test": "testing"}
"""Split -> the ``mlflow.data.context`` tag of its dataset input."""


def dataset_name(task: str, split: str, n: int | None = None) -> str:
    """``carpet-train`` (the whole pool), ``carpet-train-n64`` (a trial's first 64 samples)."""
    return f"{task}-{split}" if n is None else f"{task}-{split}-n{n}"


def test_metric(name: str, strategy: str | None = None) -> str:
    """``test_<name>`` on a baseline run (one strategy), ``test_<name>.<strategy>`` on a trial run."""
    return f"test_{name}" if strategy is None else f"test_{name}.{strategy}"


def with_prefix(metrics: Mapping[str, float], prefix: str) -> dict[str, float]:
    """Metrics under ``prefix`` (e.g. :data:`CATEGORY_PREFIX`), keyed by the rest of the name."""
    return {k[len(prefix) :]: v for k, v in metrics.items() if k.startswith(prefix)}


def interactive_metrics(scores: InteractiveScores | None) -> dict[str, float]:
    """``clicks_miou.<k>`` (mIoU after k interactions) and ``noc.<t>`` (mean clicks to IoU t, t in
    percent: ``noc.85``) of a decoder's simulated corrective clicking, primary strategy."""
    if scores is None:
        return {}
    miou, noc = scores.means()
    out = {f"{CLICKS_PREFIX}{k}": v for k, v in miou.items()}
    out.update({f"{NOC_PREFIX}{round(t * 100)}": v for t, v in noc.items()})
    return out


# ------------------------------------------------------------------------------- parent run
def sweep_tags(
    task: str, data: str, primary: str, mask_selection: str, image_size: Mapping[str, int]
) -> dict:
    """Tags every run of a sweep carries: what was scored, and how."""
    return {
        TASK: task,
        DATA: data,
        PROMPT_PROTOCOL: f"{primary}/{mask_selection}/original-resolution",
        "specialsam.primary_prompt": primary,
        "specialsam.mask_selection": mask_selection,
        "specialsam.scoring": "original-resolution",
        "specialsam.image_size": ",".join(f"{k}={v}" for k, v in image_size.items()),
    }


def parent_tags(common: Mapping[str, str], sweep_dir: str, models: list[str]) -> dict:
    return {**common, ROLE: ROLE_SWEEP, SWEEP_DIR: sweep_dir, MODELS: ",".join(models)}


SPECIALISED_MIOU = "specialised_miou"
GAIN_CI_LO, GAIN_CI_HI = "gain_ci_lo", "gain_ci_hi"
SMALLEST_BEATING_N = "smallest_beating_n"
"""The smallest n_train whose specialised mIoU beats the baseline (gain CI above 0)."""
RECOMMENDED_PREFIX = "recommended."
"""Parent params: the configuration the rules selected for the headline model."""


def parent_metrics(rep, headline) -> dict[str, float]:
    """What the runs table compares across sweeps: per model and prompt ``<metric>.<model>.<prompt>``
    (baseline, specialised, gain and its CI), per model ``retention_change.<model>`` and
    ``smallest_beating_n.<model>``, and the same unsuffixed for ``headline`` (the recommended model's
    primary-prompt cell), so sweeps of different tasks and models share columns.

    ``rep`` is ``report.markdown.ReportFiles``; ``headline`` one of its baseline-rule cells or None."""
    from specialsam.analysis.summaries import retention_summary

    retention = {m: r.delta for m, r in retention_summary(rep.baseline_report.selections).items()}
    smallest = {m: c.smallest_beating_n for m, c in rep.data_report.curves.items()}
    out: dict[str, float] = {}
    for c in rep.baseline_report.cells:
        out.update({f"{k}.{c.model}.{c.prompt}": v for k, v in _cell_metrics(c).items()})
    for m in {c.model for c in rep.baseline_report.cells}:
        out.update(_model_metrics(m, retention.get(m), smallest.get(m), suffix=f".{m}"))
    if headline is not None:
        out.update(_cell_metrics(headline))
        out.update(
            _model_metrics(headline.model, retention.get(headline.model), smallest.get(headline.model))
        )
    return {k: float(v) for k, v in out.items() if v is not None}


def _cell_metrics(cell) -> dict[str, float | None]:
    gain = cell.gain
    return {
        BASELINE_MIOU: cell.baseline_miou,
        SPECIALISED_MIOU: cell.specialised_miou,
        GAIN: None if gain is None else gain.mean,
        GAIN_CI_LO: None if gain is None else gain.lo,
        GAIN_CI_HI: None if gain is None else gain.hi,
    }


def _model_metrics(model: str, retention: float | None, smallest: int | None, suffix: str = "") -> dict:
    return {RETENTION_CHANGE + suffix: retention, SMALLEST_BEATING_N + suffix: smallest}


def recommended_params(selection, prompt: str) -> dict[str, Any]:
    """The headline model's selected configuration as ``recommended.*`` params."""
    if selection is None:
        return {}
    searched = {k: v for k, v in selection.params.items() if k not in EXCLUDED_PARAM_KEYS}
    fields = {"model": selection.model, "prompt": prompt, "n_train": selection.n_train, **searched}
    return {RECOMMENDED_PREFIX + k: v for k, v in fields.items()}


# ------------------------------------------------------------------------------ baseline runs
def baseline_key(model: str, strategy: str) -> str:
    return f"baseline/{model}/{strategy}"


def baseline_run_name(model: str, strategy: str) -> str:
    return f"baseline-{model}-{strategy}"


def baseline_tags(common: Mapping[str, str], model: str, scores: Scores, click_protocol: str = "") -> dict:
    tags = {
        **common,
        ROLE: ROLE_BASELINE,
        TRIAL_ID: baseline_key(model, scores.protocol.strategy),
        MODEL: model,
        **scores.protocol.tags(),
        PROMPT_PROTOCOL: scores.protocol.label(),
    }
    if click_protocol:
        tags[CLICK_PROTOCOL] = click_protocol
    return tags


def baseline_params(model: str, strategy: str) -> dict:
    return {"model": model, "strategy": strategy}


def baseline_metrics(
    scores: Scores,
    retention: float | None,
    extra: Mapping[str, float],
    interactive: InteractiveScores | None = None,
) -> dict:
    """One strategy's zero-shot scores; ``retention``, ``extra`` and ``interactive`` only on the
    primary strategy's run."""
    metrics = {
        TEST_MIOU: scores.miou,
        **{test_metric(k): v for k, v in scores.means.items() if k != "iou"},
        **{CATEGORY_PREFIX + c: v for c, v in scores.per_category.items()},
        SKIPPED_EMPTY: scores.skipped_empty,
    }
    if retention is not None:
        metrics[RETENTION_MIOU] = retention
    metrics.update({EXTRA_PREFIX + k: v for k, v in extra.items()})
    metrics.update(interactive_metrics(interactive))
    return metrics


def per_image_json(scores: Scores, interactive: InteractiveScores | None = None) -> dict[str, Any]:
    """What :data:`PER_IMAGE_IOU` holds: the paired per-image IoU the rules read back (and, on the
    primary strategy's run, the per-image click curves and NoC)."""
    out: dict[str, Any] = {"iou": scores.per_image_iou.tolist(), "keys": scores.keys}
    if interactive is not None:
        out["interactive"] = interactive.to_dict()
    return out


# --------------------------------------------------------------------------------- trial runs
def trial_key(experiment: str, tune_trial_id: str) -> str:
    return f"{experiment}/{tune_trial_id}"


def trial_run_name(phase: str, model: str, n_train: int, seed: int, tune_trial_id: str) -> str:
    return f"{phase}-{model}-n{n_train}-s{seed}-{tune_trial_id}"


def trial_tags(common: Mapping[str, str], key: str, phase: str, model: str, click_protocol: str = "") -> dict:
    tags = {**common, ROLE: ROLE_TRIAL, TRIAL_ID: key, PHASE: phase, MODEL: model}
    if click_protocol:
        tags[CLICK_PROTOCOL] = click_protocol
    return tags


def epoch_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """The per-epoch curve a trial reports to Tune, as logged at step = epoch."""
    return {TRAIN_LOSS: result[TRAIN_LOSS], VAL_MIOU: result[VAL_MIOU]}


def final_report(record: TrialRecord) -> dict[str, float]:
    """A finished trial's last Tune report: validation mIoU (what the searcher and ASHA read) and
    test mIoU per strategy (shown in Tune's tables, never used to select)."""
    out = {VAL_MIOU: record.best_val_miou, "final": 1, TRIAL_SECONDS: record.trial_seconds}
    nan = float("nan")
    out.update(
        {test_metric("miou", s): sc.miou if sc.miou is not None else nan for s, sc in record.test.items()}
    )
    return out


def failed_tags(reason: str, kind: str) -> dict:
    return {FAILURE: reason, HEALTH: "failed", FAILURE_KIND: kind}


def trial_result_tags(record: TrialRecord) -> dict:
    return {
        HEALTH: record.health,
        STOPPED_EARLY: str(record.stopped_early).lower(),
        NODE_ID: record.node_id,
    }


def trial_metrics(
    record: TrialRecord,
    primary: str,
    baseline_miou: float | None,
    base_retention: float | None,
    base_extra: Mapping[str, float],
) -> dict[str, float]:
    """A finished trial's metrics; gains are against its model's baseline on the primary strategy."""
    metrics: dict[str, float] = {
        test_metric("miou", s): sc.miou for s, sc in record.test.items() if sc.miou is not None
    }
    for s, sc in record.test.items():
        metrics.update({test_metric(m, s): x for m, x in sc.means.items() if m != "iou"})
    primary_miou = metrics.get(test_metric("miou", primary))
    if baseline_miou is not None and primary_miou is not None:
        metrics[BASELINE_MIOU] = baseline_miou
        metrics[GAIN] = primary_miou - baseline_miou
    metrics[TRIAL_SECONDS] = record.trial_seconds
    metrics[BEST_VAL_MIOU] = record.best_val_miou
    metrics[STEPS] = record.steps
    if record.retention_miou is not None:
        metrics[RETENTION_MIOU] = record.retention_miou
        if base_retention is not None:
            metrics[BASE_RETENTION_MIOU] = base_retention
            metrics[RETENTION_CHANGE] = record.retention_miou - base_retention
    for name, v in record.extra_miou.items():
        metrics[EXTRA_PREFIX + name] = v
        if name in base_extra:
            metrics[BASE_EXTRA_PREFIX + name] = base_extra[name]
            metrics[EXTRA_CHANGE_PREFIX + name] = v - base_extra[name]
    if primary in record.test:
        metrics.update({CATEGORY_PREFIX + c: v for c, v in record.test[primary].per_category.items()})
    metrics.update(interactive_metrics(record.interactive_scores()))
    return metrics


# --------------------------------------------------------------------------------- study run
def study_tags(baseline_verdict: str, tasks: list[str]) -> dict:
    return {ROLE: ROLE_STUDY, VERDICT_BASELINE_RULE: baseline_verdict, STUDY_TASKS: ",".join(tasks)}


def study_metrics(task: str, model: str, gain: float, baseline: float) -> dict[str, float]:
    return {f"gain.{task}.{model}": gain, f"baseline.{task}.{model}": baseline}
