"""The sweep behind ``python sweeps/run.py``, in stages: prepare, packs, baselines, phases, finish.

Order matters for "nothing written on bad input": every check that can fail on the user's input
(tracking server, output folders, task data, checkpoints, n_train vs available samples, cluster
address, GPUs) runs in ``prepare`` before the first MLflow write. ``--resume`` continues the same
sweep from its state file (``sweep.outputs``): finished trials are not rerun (Tune restores them)
and their MLflow runs are reused. Ray is imported only once a sweep really runs (not for
``--plan`` or a bad input).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from specialsam.analysis.results import BaselineResult, per_arm, stable_seed
from specialsam.arms import arm_method, arm_model
from specialsam.config import SweepConfig, config_to_dict
from specialsam.errors import UserError
from specialsam.finetune.cache import EmbeddingCache
from specialsam.finetune.methods import check_method
from specialsam.finetune.pack import Pack, PackSettings, build_pack, model_identity
from specialsam.finetune.pipeline import score_decoder
from specialsam.models.registry import load_model
from specialsam.sweep import mlflow_runs as names
from specialsam.sweep.finish import (
    SweepOutcome,
    TrialFailures,
    cleanup_trials,
    click_fields,
    export_best,
    finish_report,
    logged_click_fields,
    publish_model,
    trial_results,
)
from specialsam.sweep.outputs import (
    RunOptions,
    cache_root,
    check_outputs,
    save_state,
    sweep_dir,
)
from specialsam.sweep.plan import Plan, make_plan
from specialsam.sweep.tracking import Tracker, experiment_name, resolve_tracking_uri
from specialsam.tasks import load_task
from specialsam.tasks.procedural.scenes import retention_samples

__all__ = ["RunOptions", "SweepOutcome", "SweepInterrupted", "run_sweep", "prepare", "pack_settings"]


def _say(msg: str, opts: RunOptions) -> None:
    if not opts.quiet:
        print(msg, flush=True)


def pack_settings(cfg: SweepConfig) -> PackSettings:
    """What a sweep's packs are built with (benchmarks reuse it to measure the same thing)."""
    return PackSettings(
        loss_res=cfg.train.loss_res,
        flip=cfg.train.flip,
        strategies=tuple(cfg.eval.strategies),
        primary=cfg.eval.primary,
    )


def retention_set(cfg: SweepConfig) -> list:
    """The fixed general-purpose samples of the retention check (empty when disabled)."""
    return retention_samples(cfg.eval.retention_n) if cfg.eval.retention_n else []


def prepare(cfg: SweepConfig, opts: RunOptions):
    """Load and check everything user-controlled; no side effects beyond reading (so a bad dataset,
    an empty split included, fails before any MLflow run or sweep folder exists).

    Returns the config with training sizes fitted to the task's data (``config.grids``), the
    task and the models."""
    from specialsam.config.grids import fit_n_train
    from specialsam.tasks import n_train_remedy

    task = load_task(cfg.task, cfg.data_root, cfg.data, cfg.seed)
    cfg, note = fit_n_train(cfg, len(task.train), opts.set_keys)
    if note:
        task.notes.append(note)
    task.keep_first_train(
        cfg.max_n_train(), "n_train", f"lower curve.n_train / search.n_train or {n_train_remedy(cfg.task)}"
    )
    models = {}
    for name in cfg.models:
        models[name] = load_model(
            name, checkpoint_dir=opts.checkpoint_dir, allow_unverified=opts.allow_unverified
        )
    for arm in cfg.arms():  # L, LoRA targets, a missing encoder: one line each, before any write
        check_method(models[arm_model(arm)][0], arm_model(arm), cfg.method_settings(arm))
    return cfg, task, models


# ----------------------------------------------------------------------------- the sweep's state
@dataclass
class _Live:
    """What a Ctrl-C must close, filled in as the sweep creates it."""

    tracker: Tracker | None = None
    parent: str | None = None
    folder: Path | None = None


@dataclass
class Sweep:
    """One sweep as it runs: its config, inputs, folder, MLflow parent run and state file."""

    cfg: SweepConfig
    opts: RunOptions
    task: Any
    models: dict[str, tuple[Any, Any]]  # name -> (SAM model, checkpoint info)
    cache: EmbeddingCache
    folder: Path
    state: dict | None
    uri: str
    dev: Any
    tracker: Tracker | None = None
    parent: str = ""
    common: dict[str, str] = field(default_factory=dict)
    packs: dict[str, Pack] = field(default_factory=dict)
    encoder: dict[str, Any] = field(default_factory=dict)  # lora/full arm -> trainable.EncoderTuning
    datasets: Any = None  # sweep.datasets.TaskDatasets, built on first use

    def save(self) -> None:
        save_state(self.folder, self.state)


@dataclass
class Baselines:
    """Every model's zero-shot scores, as the rules and the trial logger need them."""

    results: list[BaselineResult] = field(default_factory=list)
    primary: dict[str, float] = field(default_factory=dict)  # model -> primary strategy's mIoU
    retention: dict[str, float | None] = field(default_factory=dict)
    extra: dict[str, dict[str, float]] = field(default_factory=dict)


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a sweep: its open MLflow runs are KILLED and a Ray instance the sweep started
    is shut down. ``sweep`` is what ``--resume`` continues (None: no sweep state was saved yet)."""

    def __init__(self, task: str, sweep: str | None) -> None:
        super().__init__(task, sweep)
        self.task, self.sweep = task, sweep


# ------------------------------------------------------------------------------------ the stages
def run_sweep(cfg: SweepConfig, opts: RunOptions) -> SweepOutcome | Plan:
    """One sweep; a Ctrl-C anywhere in it (encoding, baselines, a Tune phase, the report) ends as
    ``SweepInterrupted`` instead of a truncated sweep reported as finished."""
    from specialsam.sweep import ray_runtime

    had_ray = ray_runtime.ray_running()  # a Ray this process already runs (a caller's) is left alone
    live = _Live()
    try:
        return _run_sweep(cfg, opts, live)
    except KeyboardInterrupt:
        _close_stopped(live, "KILLED", stop_ray=not had_ray)
        resumable = live.folder is not None and (live.folder / "sweep.json").exists()
        raise SweepInterrupted(cfg.task, live.folder.name if resumable else opts.resume) from None
    except Exception:
        _close_stopped(live, "FAILED", stop_ray=False)  # process exit ends a Ray it started
        raise


def _run_sweep(cfg: SweepConfig, opts: RunOptions, live: _Live) -> SweepOutcome | Plan:
    sweep = prepare_sweep(cfg, opts)
    if opts.plan:
        return plan_sweep(sweep)
    start_ray(sweep)
    build_packs(sweep)
    open_parent_run(sweep, live)
    baselines = score_baselines(sweep)
    trials = run_phases(sweep, baselines)
    return finish(sweep, baselines, trials)


def _saved_config(saved: dict[str, Any], folder: Path) -> dict[str, Any]:
    """The config a sweep started with, with today's defaults for keys added since (a sweep saved
    before ``methods`` existed resumes as the decoder-only sweep it was)."""
    try:
        return config_to_dict(SweepConfig.model_validate(saved))
    except ValidationError as exc:
        raise UserError(
            f"--resume: the config saved in {folder / 'sweep.json'} is no longer valid "
            f"({exc.errors()[0]['msg']}); start a new sweep"
        ) from None


def prepare_sweep(cfg: SweepConfig, opts: RunOptions) -> Sweep:
    """Stage 1: every check on user input, before anything is written."""
    from specialsam.device import select_device

    uri = resolve_tracking_uri(opts.tracking_uri, opts.cwd)
    check_outputs(cfg, opts, uri)
    folder, state = sweep_dir(cfg, opts)
    cfg, task, models = prepare(cfg, opts)
    if state is not None and _saved_config(state["config"], folder) != config_to_dict(cfg):
        raise UserError(
            f"--resume: the config differs from the one sweep {folder.name} started with; "
            "resume with the same config and --set values, or start a new sweep"
        )
    for line in task.notes:
        _say(f"note: {line}", opts)
    cache = EmbeddingCache(cache_root(cfg, opts)[0])
    return Sweep(cfg, opts, task, models, cache, folder, state, uri, select_device())


def plan_sweep(sweep: Sweep) -> Plan:
    """``--plan``: the cost at this machine's parallelism, nothing run."""
    res = sweep.cfg.resources
    parallel = max(1.0, (os.cpu_count() or 1) / res.cpus_per_trial)
    if res.max_concurrent:
        parallel = min(parallel, res.max_concurrent)
    return make_plan(sweep.cfg, sweep.task, sweep.models, sweep.cache, parallel, sweep.dev.device.type)


def start_ray(sweep: Sweep) -> None:
    from specialsam.sweep import ray_runtime

    ray_runtime.init_ray(sweep.opts.address)
    ray_runtime.check_gpus(sweep.cfg.resources.gpus_per_trial)
    sweep.tracker = Tracker(sweep.uri, sweep.opts.experiment or experiment_name(sweep.cfg.task))
    sweep.tracker.open_in_runs_view()


def build_packs(sweep: Sweep) -> None:
    """Stage 2: embeddings + packs (the encoder runs here, once per image, never in a trial)."""
    from specialsam.sweep.precompute import cluster_precompute, use_cluster_precompute

    settings, retention = pack_settings(sweep.cfg), retention_set(sweep.cfg)
    spread = use_cluster_precompute()
    for name, (sam, info) in sweep.models.items():
        ident = model_identity(sam, name, info.sha256)
        hook = None
        if spread:  # fill the shared cache once, on the cluster's nodes/GPUs

            def hook(images, hashes, name=name, ident=ident):
                o = sweep.opts
                calls = cluster_precompute(
                    name, ident, sweep.cache, images, hashes, o.checkpoint_dir, o.allow_unverified
                )
                if calls:
                    _say(f"encoded {sum(calls.values())} images for {name} on {len(calls)} node(s)", o)

        folder = build_pack(
            sweep.task,
            sam,
            ident,
            sweep.cache,
            settings,
            retention,
            progress=not sweep.opts.quiet,
            precompute=hook,
        )
        sweep.packs[name] = Pack(folder, sweep.cache)
        prepare_encoder_arms(sweep, name, sam, ident, settings, retention)


def prepare_encoder_arms(sweep: Sweep, model: str, sam, ident, settings: PackSettings, retention) -> None:
    """For ``model``'s lora / full arms: choose how trials get the tail's input and, when it is the
    activation cache, run the frozen head once per image now (never in a trial)."""
    from specialsam.finetune.activations import (
        ActivationCache,
        ImageLookup,
        encoder_feed,
        fill_activations,
        split_images,
    )
    from specialsam.finetune.pack import pack_splits
    from specialsam.sweep.trainable import EncoderTuning

    cfg, opts = sweep.cfg, sweep.opts
    arms = [a for a in cfg.arms() if arm_model(a) == model and arm_method(a) != "decoder"]
    if not arms:
        return
    splits = pack_splits(sweep.task, settings, retention)
    sources, _hashes, keys = split_images(splits, ident)
    plan, feed = encoder_feed(sam, model, cfg.method.blocks, len(keys), cfg.activation_budget())
    _say(f"{model} encoder tuning ({', '.join(arm_method(a) for a in arms)}): {feed.describe()}", opts)
    images = None
    if feed.mode == "cache":
        ran = fill_activations(ActivationCache(sweep.cache.root), sam, plan, ident, splits)
        if ran:
            _say(f"  ran {model}'s frozen encoder blocks on {ran} image(s)", opts)
    else:
        images = ImageLookup(dict(zip(keys, sources)))
    for arm in arms:
        sweep.encoder[arm] = EncoderTuning(
            cfg.method_settings(arm),
            feed.mode,
            feed.bytes_per_image,
            opts.checkpoint_dir,
            opts.allow_unverified,
            images,
        )


def open_parent_run(sweep: Sweep, live: _Live) -> None:
    """Stage 3a: the sweep's parent run, new or (``--resume``) the interrupted one."""
    cfg, tracker = sweep.cfg, sweep.tracker
    image_size = {n: int(sam.image_encoder.img_size) for n, (sam, _) in sweep.models.items()}
    sweep.common = names.sweep_tags(
        cfg.task, sweep.task.data, cfg.eval.primary, cfg.eval.mask_selection, image_size
    )
    live.tracker, live.folder = tracker, sweep.folder
    if sweep.state is None:
        sweep.folder.mkdir(parents=True, exist_ok=True)
        sweep.parent = live.parent = tracker.create_run(
            sweep.folder.name, names.parent_tags(sweep.common, str(sweep.folder), list(cfg.models))
        )
        tracker.log_params(sweep.parent, config_to_dict(cfg))
        tracker.log_inputs(sweep.parent, task_datasets(sweep).inputs())
        sweep.state = {"parent_run_id": sweep.parent, "config": config_to_dict(cfg), "best": {}, "done": []}
        sweep.save()
        return
    sweep.parent = live.parent = sweep.state["parent_run_id"]
    tracker.client.update_run(sweep.parent, status="RUNNING")
    closed = tracker.close_running(sweep.parent)
    _say(
        f"resuming sweep {sweep.folder.name} (parent run {sweep.parent}); "
        f"{closed} interrupted run(s) marked KILLED",
        sweep.opts,
    )


def task_datasets(sweep: Sweep):
    """The task's splits as MLflow dataset inputs (fingerprints computed once per sweep)."""
    from specialsam.sweep.datasets import TaskDatasets

    if sweep.datasets is None:
        sweep.datasets = TaskDatasets(sweep.cfg.task, sweep.task, sweep.cfg.data_root)
    return sweep.datasets


def score_baselines(sweep: Sweep) -> Baselines:
    """Stage 3b: one baseline run per model x strategy (reused on resume)."""
    out = Baselines()
    existing = _reusable_baselines(sweep.tracker, sweep.parent)
    primary = sweep.cfg.eval.primary
    for name, (sam, _info) in sweep.models.items():
        per, out.retention[name] = _model_baselines(sweep, name, sam, existing)
        out.results += per
        primary_base = next(b for b in per if b.prompt == primary)
        out.primary[name] = primary_base.miou
        out.extra[name] = primary_base.extra_miou
        extras = "".join(f"; extra test set {k} {v:.3f}" for k, v in primary_base.extra_miou.items())
        _say(f"baseline {name}: " + ", ".join(f"{b.prompt} {b.miou:.3f}" for b in per) + extras, sweep.opts)
    return _for_arms(out, sweep.cfg.arms())


def _for_arms(b: Baselines, arms: list[str]) -> Baselines:
    """Each model's zero-shot scores as every one of its arms' baselines (the rules judge arms)."""
    return Baselines(
        per_arm(b.results, arms),
        {a: b.primary[arm_model(a)] for a in arms},
        {a: b.retention[arm_model(a)] for a in arms},
        {a: b.extra[arm_model(a)] for a in arms},
    )


def _model_baselines(
    sweep: Sweep, model: str, sam, existing: dict
) -> tuple[list[BaselineResult], float | None]:
    """One model's baselines: strategies already logged are read back, the rest scored and logged.

    Extra test sets and retention are scored with the primary prompt and logged on its run."""
    import numpy as np

    cfg, tracker = sweep.cfg, sweep.tracker
    strategies = list(cfg.eval.strategies)
    todo = [s for s in strategies if names.baseline_key(model, s) not in existing]
    scores = score_decoder(sam, sweep.packs[model], cfg.scoring(model), sweep.dev, todo)
    out = []
    for strat in strategies:
        extra = scores.extra_miou if strat == cfg.eval.primary else {}
        run = existing.get(names.baseline_key(model, strat))
        if run is not None:
            per = tracker.download_json(run.info.run_id, names.PER_IMAGE_IOU)
            cats = names.with_prefix(run.data.metrics, names.CATEGORY_PREFIX)
            clicked = logged_click_fields(per)
            out.append(BaselineResult(model, strat, np.asarray(per["iou"]), cats, extra, **clicked))
            continue
        sc = scores.test[strat]
        run_id = tracker.create_run(
            names.baseline_run_name(model, strat),
            names.baseline_tags(sweep.common, model, sc),
            parent=sweep.parent,
        )
        tracker.log_params(run_id, names.baseline_params(model, strat))
        tracker.log_inputs(run_id, task_datasets(sweep).inputs(splits=("test",)))
        primary = strat == cfg.eval.primary
        retention = scores.retention_miou if primary else None
        clicking = scores.interactive if primary else None
        tracker.log_metrics(run_id, names.baseline_metrics(sc, retention, extra, clicking))
        tracker.log_json(run_id, names.per_image_json(sc, clicking), names.PER_IMAGE_IOU)
        tracker.finish(run_id)
        clicked = click_fields(clicking)
        out.append(BaselineResult(model, strat, sc.per_image_iou, dict(sc.per_category), extra, **clicked))
    return out, scores.retention_miou


def _reusable_baselines(tracker: Tracker, parent: str) -> dict[str, Any]:
    """A resumed sweep's finished baseline runs by key. One an interrupt cut short (KILLED, its
    scores never logged) is deleted (MLflow's trash) and scored again, never reused or doubled."""
    out = {}
    for r in tracker.children(parent, names.ROLE_BASELINE):
        if r.info.status == "FINISHED":
            out[r.data.tags.get(names.TRIAL_ID)] = r
        else:
            tracker.client.delete_run(r.info.run_id)
    return out


def sweep_context(
    cfg: SweepConfig,
    packs: dict[str, Pack],
    cache: EmbeddingCache,
    phase: str,
    encoder: dict[str, Any] | None = None,
    **kw: Any,
):
    """What every trial of ``phase`` shares, keyed by arm; phase B never stops early (``patience`` 0).
    ``encoder``: the lora / full arms' ``EncoderTuning`` (``prepare_encoder_arms``)."""
    from specialsam.sweep.trainable import SweepContext

    train = cfg.train if phase == "tune" else cfg.train.model_copy(update={"patience": 0})
    arms = [a for a in cfg.arms() if arm_model(a) in packs]
    return SweepContext(
        phase=phase,
        packs={a: str(packs[arm_model(a)].folder) for a in arms},
        cache_dir=str(cache.root),
        scoring={a: cfg.scoring(arm_model(a)) for a in arms},
        train=train,
        threads=max(1, int(cfg.resources.cpus_per_trial)),
        encoder=dict(encoder or {}),
        **kw,
    )


def run_phases(sweep: Sweep, baselines: Baselines) -> list:
    """Stage 4: phase A per model (which settings?), then phase B (how much data?)."""
    from specialsam.sweep import phases

    cfg = sweep.cfg
    log = phases.SweepLogging(
        sweep.tracker,
        sweep.parent,
        sweep.common,
        baselines.primary,
        baselines.retention,
        cfg.eval.primary,
        base_extra=baselines.extra,
        datasets=task_datasets(sweep),
    )
    common = {
        "log": log,
        "storage": sweep.folder,
        "resources": phases.trial_resources(cfg.resources.cpus_per_trial, cfg.resources.gpus_per_trial),
        "max_concurrent": cfg.resources.max_concurrent,
        "progress": not sweep.opts.quiet,
    }
    trials = []
    for arm in cfg.arms():
        trials += _phase_a(sweep, arm, common)
    trials += _phase_b(sweep, common)
    return trials


def search_seed(cfg: SweepConfig, arm: str) -> int:
    """Each arm's own searcher seed: with one seed for all, every model's search would draw the
    same configurations (and with a short search, pick the same "best")."""
    return stable_seed(cfg.search.searcher.seed, "search", arm)


def _phase_a(sweep: Sweep, model: str, common: dict[str, Any]) -> list:
    """Phase A of one arm (``model`` is its label)."""
    from ray import tune

    from specialsam.sweep import phases

    cfg, search = sweep.cfg, sweep.cfg.search
    ctx = sweep_context(cfg, sweep.packs, sweep.cache, "tune", sweep.encoder, fault=sweep.opts.fault)
    space = {
        **phases.tune_param_space(search.space),
        **{k: tune.choice(v) for k, v in cfg.method_space(model).items()},
        "model": model,
        "n_train": search.n_train,
        "seed": cfg.curve.seeds[0],
    }
    start = " (first: the default settings)" if cfg.arm_default_point(model) else ""
    _say(
        f"phase A (tune) {model}: {search.num_samples} trials, "
        f"{search.searcher.type} + {search.scheduler.type}{start}",
        sweep.opts,
    )
    trials = phases.run_phase(
        name=f"tune-{model.replace(':', '-')}",  # a folder name on any filesystem
        param_space=space,
        ctx=ctx,
        num_samples=search.num_samples,
        searcher=search.searcher.type,
        searcher_seed=search_seed(cfg, model),
        startup_trials=cfg.startup_trials(),
        start_point=cfg.arm_default_point(model),
        asha=search.scheduler.model_dump() if search.scheduler.type == "asha" else None,
        **common,
    )
    best = phases.best_params(trials) or {}
    sweep.state["best"][model] = best
    sweep.save()
    _say(f"  best {model}: {best}", sweep.opts)
    return trials


def _phase_b(sweep: Sweep, common: dict[str, Any]) -> list:
    from ray import tune

    from specialsam.sweep import phases

    cfg = sweep.cfg
    ctx = sweep_context(
        cfg,
        sweep.packs,
        sweep.cache,
        "curve",
        sweep.encoder,
        best=sweep.state["best"],
        fault=sweep.opts.fault,
    )
    grid = {
        "model": tune.grid_search(cfg.arms()),
        "n_train": tune.grid_search(list(cfg.curve.n_train)),
        "seed": tune.grid_search(list(cfg.curve.seeds)),
    }
    _say(
        f"phase B (learning curve): {len(cfg.arms()) * len(cfg.curve.n_train) * len(cfg.curve.seeds)} trials",
        sweep.opts,
    )
    return phases.run_phase(name="curve", param_space=grid, ctx=ctx, **common)


def finish(sweep: Sweep, baselines: Baselines, trials: list) -> SweepOutcome:
    """Stage 5: rules, report, export; the parent run finished and the state file marked done.
    With errored trials the report still shows what finished, but nothing is exported or
    published (an incomplete sweep never becomes the champion) and the parent ends FAILED."""
    results = trial_results(trials, baselines.retention, sweep.cfg)
    failures = TrialFailures.of(trials)
    try:
        outcome = finish_report(
            sweep.tracker, sweep.parent, sweep.cfg, sweep.task.data, baselines.results, results, failures
        )
        if not failures.errored:
            outcome.export_paths = export_best(
                sweep.tracker, sweep.parent, sweep.cfg, outcome.report, trials, sweep.models, sweep.opts
            )
        if outcome.export_paths:
            outcome.model = publish_model(
                sweep.tracker, sweep.parent, sweep.cfg, outcome.report, outcome.export_paths[0]
            )
    finally:
        cleanup_trials(trials)  # the trials' downloaded checkpoints (temp folders)
    sweep.tracker.finish(sweep.parent, "FAILED" if failures.errored else "FINISHED")
    if not failures.errored:
        sweep.state["done"] = ["tune", "curve"]
        sweep.save()
    outcome.sweep_dir = sweep.folder
    outcome.tracking_uri = sweep.uri
    return outcome


def _close_stopped(live: _Live, status: str, stop_ray: bool) -> None:
    """Mark the sweep's open MLflow runs ``status`` (KILLED: Ctrl-C; FAILED: an error) so none is
    left RUNNING, and shut down the Ray it started. A further Ctrl-C skips the step it lands in
    (``--resume`` closes leftover runs; process exit ends Ray)."""
    from specialsam.sweep import ray_runtime

    def close_runs() -> None:
        if live.tracker is not None and live.parent is not None:
            live.tracker.close_sweep(live.parent, status)

    for step in [close_runs, *([ray_runtime.stop_ray] if stop_ray else [])]:
        try:
            step()
        except KeyboardInterrupt:
            pass
        except Exception as exc:  # noqa: BLE001 - the stop's cause is what the user must see
            if status == "KILLED":  # after an error, that error's one line stays the only one
                print(f"warning: while stopping: {type(exc).__name__}: {exc}", file=sys.stderr)
