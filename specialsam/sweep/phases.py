"""Ray Tune wiring: the two phases of a sweep, their trials' MLflow runs, resume.

Phase A (*tune*) answers "which settings?": per model size, Optuna proposes lr / loss weights /
prompt mix at a reference training-set size and ASHA stops unpromising trials early, on
validation mIoU. Phase B (*curve*) answers "how much data?": a grid over n_train x model x seeds at
each model's best phase-A settings, every trial run to its full step budget (no early stopping),
so the learning curve compares like with like. Trials (``sweep.trainable``) read only the pack and
the embedding cache. Everything MLflow sees is written by the driver through ``MlflowLogger``;
every trial leaves its record (metrics, per-image IoU, decoder weights, plots) in its Tune
checkpoint, so results survive the driver and ``--resume`` rebuilds them from storage.
"""

from __future__ import annotations

import math
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray import tune

from specialsam.arms import arm_method
from specialsam.finetune.records import TrialRecord
from specialsam.sweep import mlflow_runs as names
from specialsam.sweep.progress import progress_for
from specialsam.sweep.ray_runtime import PhaseInterrupted, sigint_stops_tune
from specialsam.sweep.tracking import Tracker
from specialsam.sweep.trainable import AXES, SWEEP_SEARCHABLE, SweepContext, trainable

TRIAL_PARAMS = (*SWEEP_SEARCHABLE, *AXES)


@dataclass
class PhaseTrial:
    """One trial of a phase as the driver sees it after the phase: its record (read from its Tune
    checkpoint, downloaded to ``checkpoint_dir``), or why it has none."""

    key: str
    phase: str
    params: dict[str, Any]
    record: TrialRecord | None  # None: stopped early by ASHA, or failed
    checkpoint_dir: Path | None
    failed: str | None = None
    run_id: str | None = None
    errored: bool = False  # its process raised or died, after its retries (not a diverged training)


@dataclass
class SweepLogging:
    """What the driver's Tune callback needs to create and fill the trials' MLflow runs."""

    tracker: Tracker
    parent_run: str
    common_tags: dict[str, str]
    baseline_primary: dict[str, float]  # model -> baseline mIoU on the primary strategy
    base_retention: dict[str, float | None]
    primary: str
    run_ids: dict[str, str] = field(default_factory=dict)
    base_extra: dict[str, dict[str, float]] = field(default_factory=dict)  # model -> extra set -> mIoU
    datasets: Any = None  # sweep.datasets.TaskDatasets: each trial's data as MLflow dataset inputs


class MlflowLogger(tune.Callback):
    """Creates, fills and closes trial child runs from the driver; reuses them on resume."""

    def __init__(self, log: SweepLogging, ctx: SweepContext, experiment: str) -> None:
        self.log, self.ctx, self.experiment = log, ctx, experiment
        self.existing = log.tracker.trial_runs(log.parent_run)

    def __getstate__(self) -> dict:
        # Tune pickles its run config (callbacks included) into the experiment state; the live
        # MLflow client stays out of it. A resumed sweep attaches a fresh logger.
        return {"ctx": None, "experiment": self.experiment, "log": None, "existing": {}}

    def _run(self, trial) -> str:
        key = names.trial_key(self.experiment, trial.trial_id)
        if key in self.log.run_ids:
            return self.log.run_ids[key]
        if key in self.existing:
            run_id = self.existing[key].info.run_id
            self.log.tracker.client.update_run(run_id, status="RUNNING")
            for tag in {names.FAILURE, names.FAILURE_KIND} & set(self.existing[key].data.tags):
                self.log.tracker.client.delete_tag(run_id, tag)  # rerun: its old failure is history
        else:
            cfg, phase = trial.config, self.ctx.phase
            run_id = self.log.tracker.create_run(
                names.trial_run_name(phase, cfg["model"], cfg["n_train"], cfg["seed"], trial.trial_id),
                names.trial_tags(
                    self.log.common_tags, key, phase, cfg["model"], _click_protocol(self.ctx, cfg)
                ),
                parent=self.log.parent_run,
            )
            params = {**self.ctx.best.get(cfg["model"], {}), **{k: cfg[k] for k in TRIAL_PARAMS if k in cfg}}
            params["method"] = arm_method(cfg["model"])
            self.log.tracker.log_params(run_id, params)
            if self.log.datasets is not None:
                self.log.tracker.log_inputs(run_id, self.log.datasets.inputs(int(cfg["n_train"])))
        self.log.run_ids[key] = run_id
        return run_id

    def on_trial_start(self, iteration, trials, trial, **info):
        if self.log is not None:
            self._run(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if self.log is not None and "epoch" in result and "final" not in result:
            self.log.tracker.log_metrics(
                self._run(trial), names.epoch_metrics(result), step=int(result["epoch"])
            )

    def on_trial_recover(self, iteration, trials, trial, **info):
        if self.log is not None:
            self.log.tracker.set_tags(self._run(trial), {names.RETRIED: trial.num_failures})

    def on_trial_error(self, iteration, trials, trial, **info):
        if self.log is None:
            return
        run = self._run(trial)
        reason = error_line(_error_text(trial))
        self.log.tracker.set_tags(run, names.failed_tags(reason, names.ERRORED))
        self.log.tracker.finish(run, "FAILED")

    def on_trial_complete(self, iteration, trials, trial, **info):
        if self.log is None:
            return
        run = self._run(trial)
        last = trial.last_result or {}
        if "failed" in last:
            self.log.tracker.set_tags(run, names.failed_tags(last["failed"], names.DIVERGED))
            self.log.tracker.finish(run, "FAILED")
            return
        ckpt = trial.checkpoint
        if "final" not in last or ckpt is None:
            self.log.tracker.set_tags(run, {names.STOPPED_EARLY: "asha"})
            self.log.tracker.finish(run, "FINISHED")
            return
        with ckpt.as_directory() as d:
            log_trial_record(self.log, run, Path(d))
        self.log.tracker.finish(run, "FINISHED")


def _click_protocol(ctx: SweepContext, config: dict) -> str:
    how = ctx.scoring[config["model"]]
    return how.protocol() if how.interactive else ""


def log_trial_record(log: SweepLogging, run: str, folder: Path) -> None:
    """A finished trial's metrics, tags and artifacts, from the folder of its checkpoint."""
    rec = TrialRecord.read(folder)
    metrics = names.trial_metrics(
        rec,
        log.primary,
        log.baseline_primary.get(rec.model),
        log.base_retention.get(rec.model),
        log.base_extra.get(rec.model, {}),
    )
    log.tracker.log_metrics(run, metrics)
    log.tracker.set_tags(run, names.trial_result_tags(rec))
    for name in names.TRIAL_ARTIFACTS:
        if (folder / name).exists():
            log.tracker.log_artifact(run, folder / name)


def trial_resources(cpus: float, gpus: float) -> dict[str, float]:
    """Per-trial request; a GPU fraction lets several decoder trials share one GPU."""
    return {"cpu": float(cpus), "gpu": float(gpus)}


def tune_param_space(space: dict[str, Any]) -> dict[str, Any]:
    """Config ``search.space`` entries -> Tune sampling primitives (Optuna converts them)."""
    out: dict[str, Any] = {}
    for name, p in space.items():
        kind = p.type
        if kind == "loguniform":
            out[name] = tune.loguniform(p.low, p.high)
        elif kind == "uniform":
            out[name] = tune.uniform(p.low, p.high)
        elif kind == "choice":
            out[name] = tune.choice(list(p.values))
        else:
            out[name] = p.value
    return out


def run_phase(
    *,
    name: str,
    param_space: dict[str, Any],
    ctx: SweepContext,
    log: SweepLogging,
    storage: Path | str,
    resources: dict[str, float],
    num_samples: int = 1,
    searcher: str | None = None,
    searcher_seed: int = 0,
    startup_trials: int | None = None,
    start_point: dict[str, float] | None = None,
    asha: dict | None = None,
    max_concurrent: int | None = None,
    max_failures: int = 2,
    progress: bool = False,
) -> list[PhaseTrial]:
    """Run (or resume) one Tune experiment and return its trials.

    ``param_space`` holds the searched values and the trials' axes only; ``ctx`` reaches every
    trial through ``tune.with_parameters``. A searcher's first trial is ``start_point`` (if given);
    ``progress`` shows the phase's progress in the terminal (``sweep.progress``)."""
    path = f"{str(storage).rstrip('/')}/{name}"
    trainable_r = tune.with_resources(tune.with_parameters(trainable, ctx=ctx), resources)
    callbacks: list = [MlflowLogger(log, ctx, name)]
    if progress:
        callbacks.append(progress_for(name, param_space, num_samples))
    restored = tune.Tuner.can_restore(path)
    if restored:
        tuner = tune.Tuner.restore(path, trainable_r, resume_errored=True, param_space=param_space)
        # The restored run config carries detached loggers; Ray has no public way to pass new
        # callbacks to a restored Tuner, so attach ours to its run config directly.
        tuner._local_tuner.get_run_config().callbacks = callbacks
    else:
        tuner = tune.Tuner(
            trainable_r,
            param_space=param_space,
            tune_config=_tune_config(
                name=name,
                num_samples=num_samples,
                search_alg=search_alg(searcher, searcher_seed, startup_trials, start_point),
                scheduler=_scheduler(asha, ctx.train.epochs),
                max_concurrent=max_concurrent,
            ),
            run_config=_run_config(name, storage, callbacks, max_failures),
        )
    with sigint_stops_tune() as interrupted:
        grid = tuner.fit()
    if interrupted():
        raise PhaseInterrupted(f"{name}: interrupted; Tune saved its state for --resume")
    if restored:
        _drop_orphans(log, name, grid)
    return [_phase_trial(name, ctx.phase, res, log) for res in grid]


def search_alg(
    searcher: str | None, seed: int, startup_trials: int | None = None, start_point: dict | None = None
):
    """Phase A's searcher. Optuna: multivariate TPE (lr and loss weights interact) whose random start
    is ``startup_trials`` long, so a search of a handful of trials is modelled after half of them."""
    points = [start_point] if start_point else None
    if searcher == "optuna":
        import warnings

        import optuna
        from ray.tune.search.optuna import OptunaSearch

        with warnings.catch_warnings():  # multivariate TPE is marked experimental; it is Optuna's own
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler = optuna.samplers.TPESampler(
                n_startup_trials=startup_trials or 10, multivariate=True, seed=seed
            )
        return OptunaSearch(metric=names.VAL_MIOU, mode="max", sampler=sampler, points_to_evaluate=points)
    if searcher == "random":
        from ray.tune.search import BasicVariantGenerator

        return BasicVariantGenerator(random_state=seed, points_to_evaluate=points)
    return None


def _scheduler(asha: dict | None, epochs: int):
    if not asha:
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(
        time_attr="training_iteration",
        metric=names.VAL_MIOU,
        mode="max",
        max_t=int(epochs) + 1,
        grace_period=int(asha["grace_period"]),
        reduction_factor=float(asha["reduction_factor"]),
    )


def _tune_config(*, name: str, num_samples: int, search_alg, scheduler, max_concurrent: int | None):
    return tune.TuneConfig(
        num_samples=num_samples,
        search_alg=search_alg,
        scheduler=scheduler,
        max_concurrent_trials=max_concurrent,
        # a finished trial's worker process runs the next one: no new process, no second
        # import of torch/segment_anything per trial (benchmarks/overhead.py measures it)
        reuse_actors=True,
        trial_name_creator=lambda t: f"{name}-{t.trial_id}",
        trial_dirname_creator=lambda t: f"{name}-{t.trial_id}",
    )


def _run_config(name: str, storage: Path | str, callbacks: list, max_failures: int):
    return tune.RunConfig(
        name=name,
        storage_path=str(storage),
        callbacks=callbacks,
        verbose=0,
        failure_config=tune.FailureConfig(max_failures=max_failures),
        # each trial checkpoints once (its final record); keeping all avoids forced snapshots
        checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
    )


def _drop_orphans(log: SweepLogging, name: str, grid) -> None:
    dropped = drop_orphan_trial_runs(log, name, [Path(r.path).name for r in grid])
    if dropped:
        print(
            f"{name}: deleted {dropped} MLflow run(s) of trials the interrupted driver had started after "
            "Tune's last experiment checkpoint (they are not part of the resumed experiment)",
            file=sys.stderr,
        )


def _phase_trial(name: str, phase: str, res, log: SweepLogging) -> PhaseTrial:
    """One Tune result as a ``PhaseTrial``; a finished trial's checkpoint goes to a temp folder."""
    cfg = res.config or {}
    m = res.metrics or {}
    # a trial that errored before its first report has no metrics; its folder is named after it
    trial_id = m.get("trial_id") or Path(res.path).name.removeprefix(f"{name}-")
    key = names.trial_key(name, trial_id)
    params = {k: cfg[k] for k in TRIAL_PARAMS if k in cfg}
    failed = m.get("failed") or (error_line(str(res.error)) if res.error else None)
    rec, folder = None, None
    if res.checkpoint is not None and "final" in m and "failed" not in m:
        folder = Path(res.checkpoint.to_directory(tempfile.mkdtemp(prefix="specialsam-trial-")))
        rec = TrialRecord.read(folder)
    return PhaseTrial(key, phase, params, rec, folder, failed, log.run_ids.get(key), res.error is not None)


def _error_text(trial) -> str:
    """What Tune saved of a trial's last error (its traceback file)."""
    path = getattr(trial, "error_file", None)
    try:
        return Path(path).read_text(errors="replace") if path else ""
    except OSError:
        return ""


def error_line(text: str) -> str:
    """A trial error's last line, the exception itself (Ray wraps it in its traceback)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return (lines[-1] if lines else "no reason recorded")[:500]


def drop_orphan_trial_runs(log: SweepLogging, name: str, trial_dirs: list[str]) -> int:
    """Delete this experiment's trial runs whose trial Tune does not know (returns how many).

    A driver killed mid-sweep may have started a trial (and its MLflow run) after Tune last saved
    the experiment state; the restored experiment never sees that trial again and its searcher
    proposes a replacement. Its run would stay behind as a duplicate, so it goes (soft delete: it
    can be restored from MLflow's trash). Trial folders are named ``<name>-<trial_id>``."""
    known = {names.trial_key(name, d.removeprefix(name + "-")) for d in trial_dirs}
    orphans = [
        run
        for key, run in log.tracker.trial_runs(log.parent_run).items()
        if key.startswith(f"{name}/") and key not in known
    ]
    for run in orphans:
        log.tracker.client.delete_run(run.info.run_id)
    return len(orphans)


def best_params(trials: list[PhaseTrial]) -> dict[str, Any] | None:
    """Phase A's winner by *validation* mIoU (never test: no selection on the test set)."""
    done = [r for r in trials if r.record is not None and not math.isnan(r.record.best_val_miou)]
    if not done:
        return None
    best = max(done, key=lambda r: r.record.best_val_miou)  # type: ignore[union-attr]
    return {k: v for k, v in best.params.items() if k in SWEEP_SEARCHABLE}
