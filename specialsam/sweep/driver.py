"""The sweep driver behind ``python sweeps/run.py``: task -> cache -> baselines -> phases -> report.

Order matters for "nothing written on bad input": every check that can fail on the user's input
(tracking server, task data, checkpoints, n_train vs available samples, cluster address, GPUs)
runs before the first MLflow write. The driver keeps a small state file next to the Tune storage
(``sweep.json``: parent run, config, phase results) so ``--resume`` continues the same sweep:
finished trials are not rerun (Tune restores them) and their MLflow runs are reused.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from specialsam.analysis.results import BaselineResult, TrialResult
from specialsam.analysis.summaries import format_summary
from specialsam.atomic import atomic_write_bytes
from specialsam.config import SweepConfig, config_to_dict
from specialsam.errors import UserError, check_writable_dir, disk_full
from specialsam.finetune.cache import EmbeddingCache, default_cache_dir
from specialsam.finetune.evaluate import score_extra_tests, score_split
from specialsam.finetune.pack import Pack, PackSettings, build_pack, model_identity
from specialsam.models.registry import load_model
from specialsam.report.markdown import write_report
from specialsam.sweep.plan import (
    EMBEDDING_BYTES,
    ENCODE_IMAGES_PER_S,
    TRAIN_SAMPLES_PER_S,
    ModelPlan,
    Plan,
    family,
    trial_samples,
)
from specialsam.sweep.tracking import (
    ROLE,
    TRIAL_ID,
    Tracker,
    experiment_name,
    resolve_tracking_uri,
    sqlite_path,
)
from specialsam.tasks import load_task
from specialsam.tasks.procedural.scenes import retention_samples


@dataclass
class RunOptions:
    address: str | None = None
    tracking_uri: str | None = None
    experiment: str | None = None
    storage: str | None = None
    cache_dir: str | None = None
    checkpoint_dir: str | None = None
    allow_unverified: bool = False
    resume: str | None = None  # "latest" or a sweep name
    plan: bool = False
    export_dir: str | None = None
    cwd: Path = field(default_factory=Path.cwd)
    fault: dict | None = None  # test hook, forwarded to trials
    quiet: bool = False


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


def _say(msg: str, opts: RunOptions) -> None:
    if not opts.quiet:
        print(msg, flush=True)


def _storage(cfg: SweepConfig, opts: RunOptions) -> Path:
    raw = opts.storage or cfg.storage.tune_dir or str(opts.cwd / "ray_results")
    if "://" in raw and not raw.startswith("file://"):
        raise UserError(
            f"Tune storage {raw!r}: only shared filesystem paths are supported here; "
            "mount it and pass the path"
        )
    return Path(raw.removeprefix("file://")).expanduser().resolve()


def _sweep_dir(cfg: SweepConfig, opts: RunOptions) -> tuple[Path, dict | None]:
    root = _storage(cfg, opts)
    if opts.resume:
        if opts.resume == "latest":
            found = sorted(root.glob(f"{cfg.task}-*/sweep.json"), key=lambda p: p.stat().st_mtime)
            if not found:
                raise UserError(
                    f"--resume: no {cfg.task} sweep found under {root}; run without --resume first"
                )
            folder = found[-1].parent
        else:
            folder = root / opts.resume
            if not (folder / "sweep.json").exists():
                raise UserError(f"--resume {opts.resume}: no sweep state at {folder}/sweep.json")
        return folder, _read_state(folder / "sweep.json")
    return root / f"{cfg.task}-{time.strftime('%Y%m%d-%H%M%S')}", None


_STATE_KEYS = {"parent_run_id": str, "config": dict, "best": dict, "done": list}


def _read_state(path: Path) -> dict:
    """``sweep.json`` as ``_save_state`` wrote it; anything else (truncated, hand-edited, not
    JSON) is one line naming the file, not a traceback."""
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        bad = [k for k, t in _STATE_KEYS.items() if not isinstance(state.get(k), t)]
        problem = f"missing or malformed {', '.join(bad)}" if bad else ""
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as exc:
        problem = f"{type(exc).__name__}: {exc}"
    if problem:
        raise UserError(
            f"--resume: the sweep state {path} is corrupt ({problem}); restore it from a backup, "
            "or start a new sweep without --resume"
        )
    return state


def _save_state(folder: Path, state: dict) -> None:
    atomic_write_bytes(folder / "sweep.json", json.dumps(state, indent=2, default=str).encode())


def _cache_root(cfg: SweepConfig, opts: RunOptions) -> tuple[Path, str]:
    """The embedding cache folder, and where that choice came from (for error messages)."""
    if opts.cache_dir:
        return Path(opts.cache_dir).expanduser(), "--cache-dir"
    if cfg.storage.cache_dir:
        return Path(cfg.storage.cache_dir).expanduser(), "storage.cache_dir"
    label = "$SPECIALSAM_CACHE" if os.environ.get("SPECIALSAM_CACHE") else "the embedding cache"
    return default_cache_dir().expanduser(), label


def _export_root(opts: RunOptions) -> Path:
    return Path(opts.export_dir or (opts.cwd / "exports")).expanduser().resolve()


def check_outputs(cfg: SweepConfig, opts: RunOptions, uri: str) -> None:
    """Every location a sweep writes (Tune storage, embedding cache, export folder, the SQLite
    database and its artifact folder) is a writable folder or can be made one, checked before the
    first write: a path that is a file fails now, not after the sweep with its parent run left
    RUNNING."""
    storage = "--storage" if opts.storage else "storage.tune_dir" if cfg.storage.tune_dir else "Tune storage"
    check_writable_dir(_storage(cfg, opts), storage)
    check_writable_dir(*_cache_root(cfg, opts))
    check_writable_dir(_export_root(opts), "--export-dir" if opts.export_dir else "the export folder")
    check_tracking_db(uri)


def check_tracking_db(uri: str) -> None:
    """A ``sqlite:///`` store's database file is a writable file (or can be created) and the
    folder it keeps artifacts in is writable; other stores are checked by their servers."""
    db = sqlite_path(uri)
    if db is None:
        return
    if db.exists() and not (db.is_file() and os.access(db, os.R_OK | os.W_OK)):
        raise UserError(
            f"--tracking-uri {uri}: {db} is not a writable SQLite file; pass another sqlite:/// path"
        )
    check_writable_dir(db.parent, "the MLflow database folder")
    check_writable_dir(db.parent / "mlartifacts", "the MLflow artifact folder")


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
    an empty split included, fails before any MLflow run or sweep folder exists)."""
    from specialsam.tasks import n_train_remedy

    task = load_task(cfg.task, cfg.data_root, cfg.data, cfg.seed)
    max_n = max([*cfg.curve.n_train, cfg.search.n_train])
    task.keep_first_train(
        max_n, "n_train", f"lower curve.n_train / search.n_train or {n_train_remedy(cfg.task)}"
    )
    models = {}
    for name in cfg.models:
        models[name] = load_model(
            name, checkpoint_dir=opts.checkpoint_dir, allow_unverified=opts.allow_unverified
        )
    return task, models


def make_plan(cfg: SweepConfig, task, models, cache: EmbeddingCache, parallel: float, device: str) -> Plan:
    train = cfg.train
    plan = Plan(
        phase_a_trials=cfg.search.num_samples * len(cfg.models),
        phase_b_trials=len(cfg.curve.n_train) * len(cfg.curve.seeds) * len(cfg.models),
        parallel=parallel,
        device=device,
    )
    extras = [x for v in getattr(task, "extra_tests", {}).values() for x in v]
    samples = list(task.train) + list(task.val) + list(task.test) + extras
    n_ret = cfg.eval.retention_n
    hashes = [s.image_hash() for s in samples]
    for name, (sam, info) in models.items():
        ident = model_identity(sam, name, info.sha256)
        todo = sum(not cache.has(ident.key(h)) for h in hashes)
        images = len(samples) + len(task.train) * int(train.flip) + n_ret
        todo += len(task.train) * int(train.flip) + n_ret  # flips/retention: counted, not checked
        fam = family(name)
        per_trial_a = trial_samples(
            cfg.search.n_train, train.epochs, train.max_steps, train.batch_size, train.flip
        )
        total = cfg.search.num_samples * per_trial_a + sum(
            len(cfg.curve.seeds)
            * trial_samples(n, train.epochs, train.max_steps, train.batch_size, train.flip)
            for n in cfg.curve.n_train
        )
        res = train.loss_res or (256 if fam == "tiny" else 1024)
        plan.models.append(
            ModelPlan(
                model=name,
                images=images,
                to_encode=todo,
                cache_bytes=images * EMBEDDING_BYTES[fam] + len(samples) * res * res,
                train_samples=total,
                encode_seconds=todo / ENCODE_IMAGES_PER_S[name][device],
                train_seconds=total / TRAIN_SAMPLES_PER_S[fam][device],
            )
        )
    return plan


def _log_baselines(
    tracker: Tracker,
    parent: str,
    tags: dict,
    model: str,
    pack: Pack,
    cfg: SweepConfig,
    existing: dict,
    sam,
    dev,
) -> tuple[list[BaselineResult], float | None]:
    """Baseline child runs (one per model x strategy), reused on resume.

    Returns one ``BaselineResult`` per strategy and the base decoder's retention mIoU; extra test
    sets and retention are scored with the primary prompt and logged on its baseline run."""
    out: list[BaselineResult] = []
    test = pack.split("test")
    primary = cfg.eval.primary
    scores = None
    base_ret = None
    if pack.has("retention"):
        base_ret = score_split(sam, pack.split("retention"), [primary], dev=dev)[primary].miou
    extra = score_extra_tests(sam, pack, primary, dev)
    for strat in cfg.eval.strategies:
        key = f"baseline/{model}/{strat}"
        extra_here = extra if strat == primary else {}
        if key in existing:
            run = existing[key]
            per = tracker.download_json(run.info.run_id, "per_image_iou.json")["iou"]
            out.append(
                BaselineResult(
                    model, strat, np.asarray(per), metrics_with_prefix(run, "test_miou.cat."), extra_here
                )
            )
            continue
        if scores is None:
            scores = score_split(
                sam, test, cfg.eval.strategies, cfg.eval.mask_selection, cfg.eval.extra_metrics, dev
            )
        sc = scores[strat]
        run = tracker.create_run(
            f"baseline-{model}-{strat}",
            {
                **tags,
                ROLE: "baseline",
                TRIAL_ID: key,
                "specialsam.model": model,
                **sc.protocol.tags(),
                "specialsam.prompt_protocol": sc.protocol.label(),
            },
            parent=parent,
        )
        tracker.log_params(run, {"model": model, "strategy": strat})
        metrics = {
            "test_miou": sc.miou,
            **{f"test_{k}": v for k, v in sc.means.items() if k != "iou"},
            **{f"test_miou.cat.{c}": v for c, v in sc.per_category.items()},
            "skipped_empty": sc.skipped_empty,
        }
        if base_ret is not None and strat == primary:
            metrics["retention_miou"] = base_ret
        metrics.update({f"extra_miou.{k}": v for k, v in extra_here.items()})
        tracker.log_metrics(run, metrics)
        tracker.log_json(run, {"iou": sc.per_image_iou.tolist(), "keys": sc.keys}, "per_image_iou.json")
        tracker.finish(run)
        out.append(BaselineResult(model, strat, sc.per_image_iou, dict(sc.per_category), extra_here))
    return out, base_ret


def metrics_with_prefix(run, prefix: str) -> dict[str, float]:
    """A run's metrics under ``prefix`` (``test_miou.cat.``, ``extra_miou.``), keyed by the rest."""
    return {k[len(prefix) :]: v for k, v in run.data.metrics.items() if k.startswith(prefix)}


def trial_from_record(trial_id: str, rec: dict, base_retention_miou: float | None) -> TrialResult:
    """A trial's ``result.json`` record (from its Tune checkpoint or its MLflow run) for the rules."""
    p = rec["params"]
    return TrialResult(
        trial_id=trial_id,
        model=p["model"],
        n_train=p["n_train"],
        seed=p["seed"],
        params={k: v for k, v in p.items() if k not in ("model", "n_train", "seed")},
        per_image_iou={s: np.asarray(v["per_image_iou"]) for s, v in rec["test"].items()},
        val_miou=rec["best_val_miou"],
        phase=rec["phase"],
        health=rec["health"],
        retention_miou=rec.get("retention_miou"),
        base_retention_miou=base_retention_miou,
        per_category={s: v.get("per_category") or {} for s, v in rec["test"].items()},
        extra_miou=rec.get("extra_miou") or {},
    )


def _trial_results(records, base_retention: dict[str, float | None]) -> list[TrialResult]:
    return [
        trial_from_record(r.key, r.record, base_retention.get(r.record["params"]["model"]))
        for r in records
        if r.record is not None
    ]


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a sweep: its open MLflow runs are KILLED and a Ray instance the sweep started
    is shut down. ``sweep`` is what ``--resume`` continues (None: no sweep state was saved yet)."""

    def __init__(self, task: str, sweep: str | None) -> None:
        super().__init__(task, sweep)
        self.task, self.sweep = task, sweep


@dataclass
class _Live:
    """What a Ctrl-C must close, filled in as the sweep creates it."""

    tracker: Tracker | None = None
    parent: str | None = None
    folder: Path | None = None


def run_sweep(cfg: SweepConfig, opts: RunOptions) -> SweepOutcome | Plan:
    """One sweep; a Ctrl-C anywhere in it (encoding, baselines, a Tune phase, the report) ends as
    ``SweepInterrupted`` instead of a truncated sweep reported as finished."""
    from specialsam.sweep import phases

    had_ray = phases.ray_running()  # a Ray this process already runs (a caller's) is left alone
    live = _Live()
    try:
        return _run_sweep(cfg, opts, live)
    except KeyboardInterrupt:
        _close_interrupted(live, stop_ray=not had_ray)
        resumable = live.folder is not None and (live.folder / "sweep.json").exists()
        raise SweepInterrupted(cfg.task, live.folder.name if resumable else opts.resume) from None


def _close_interrupted(live: _Live, stop_ray: bool) -> None:
    """Mark the sweep's open MLflow runs KILLED and shut down the Ray it started. A further Ctrl-C
    skips the step it lands in (``--resume`` closes leftover runs; process exit ends Ray)."""
    import sys

    from specialsam.sweep import phases

    def kill_runs() -> None:
        if live.tracker is not None and live.parent is not None:
            live.tracker.kill_sweep(live.parent)

    for step in [kill_runs, *([phases.stop_ray] if stop_ray else [])]:
        try:
            step()
        except KeyboardInterrupt:
            pass
        except Exception as exc:  # noqa: BLE001 - the interrupt is what the user must see; this is a note
            print(f"warning: while stopping: {type(exc).__name__}: {exc}", file=sys.stderr)


def _reusable_baselines(tracker: Tracker, parent: str) -> dict[str, Any]:
    """A resumed sweep's finished baseline runs by key. One an interrupt cut short (KILLED, its
    scores never logged) is deleted (MLflow's trash) and scored again, never reused or doubled."""
    out = {}
    for r in tracker.children(parent, "baseline"):
        if r.info.status == "FINISHED":
            out[r.data.tags.get(TRIAL_ID)] = r
        else:
            tracker.client.delete_run(r.info.run_id)
    return out


def _run_sweep(cfg: SweepConfig, opts: RunOptions, live: _Live) -> SweepOutcome | Plan:
    from specialsam.device import select_device
    from specialsam.sweep import phases

    # 1. every check on user input, before anything is written
    uri = resolve_tracking_uri(opts.tracking_uri, opts.cwd)
    check_outputs(cfg, opts, uri)
    folder, state = _sweep_dir(cfg, opts)
    if state is not None and state["config"] != json.loads(json.dumps(config_to_dict(cfg))):
        raise UserError(
            f"--resume: the config differs from the one sweep {folder.name} started with; "
            "resume with the same config and --set values, or start a new sweep"
        )
    task, models = prepare(cfg, opts)
    for line in task.notes:
        _say(f"note: {line}", opts)
    cache = EmbeddingCache(_cache_root(cfg, opts)[0])
    dev = select_device()
    if opts.plan:
        import os

        parallel = max(1.0, (os.cpu_count() or 1) / cfg.resources.cpus_per_trial)
        if cfg.resources.max_concurrent:
            parallel = min(parallel, cfg.resources.max_concurrent)
        return make_plan(cfg, task, models, cache, parallel, dev.device.type)
    phases.init_ray(opts.address)
    phases.check_gpus(cfg.resources.gpus_per_trial)
    tracker = Tracker(uri, opts.experiment or experiment_name(cfg.task))

    # 2. embeddings + packs (the encoder runs here, once per image, never in a trial)
    settings = pack_settings(cfg)
    retention = retention_set(cfg)
    packs: dict[str, Pack] = {}
    from specialsam.sweep.precompute import cluster_precompute, use_cluster_precompute

    spread = use_cluster_precompute()
    for name, (sam, info) in models.items():
        ident = model_identity(sam, name, info.sha256)
        hook = None
        if spread:  # fill the shared cache once, on the cluster's nodes/GPUs

            def hook(images, hashes, name=name, ident=ident):
                calls = cluster_precompute(
                    name, ident, cache, images, hashes, opts.checkpoint_dir, opts.allow_unverified
                )
                if calls:
                    _say(f"encoded {sum(calls.values())} images for {name} on {len(calls)} node(s)", opts)

        folder_pack = build_pack(
            task, sam, ident, cache, settings, retention, progress=not opts.quiet, precompute=hook
        )
        packs[name] = Pack(folder_pack, cache)

    # 3. parent run (new, or the interrupted one), baselines
    image_size = {n: int(sam.image_encoder.img_size) for n, (sam, _) in models.items()}
    common = {
        "specialsam.task": cfg.task,
        "specialsam.data": task.data,
        "specialsam.prompt_protocol": f"{cfg.eval.primary}/{cfg.eval.mask_selection}/original-resolution",
        "specialsam.primary_prompt": cfg.eval.primary,
        "specialsam.mask_selection": cfg.eval.mask_selection,
        "specialsam.scoring": "original-resolution",
        "specialsam.image_size": ",".join(f"{k}={v}" for k, v in image_size.items()),
    }
    live.tracker, live.folder = tracker, folder
    if state is None:
        folder.mkdir(parents=True, exist_ok=True)
        parent = tracker.create_run(
            folder.name,
            {
                **common,
                ROLE: "sweep",
                "specialsam.sweep_dir": str(folder),
                "specialsam.models": ",".join(cfg.models),
            },
        )
        live.parent = parent
        tracker.log_params(parent, config_to_dict(cfg))
        state = {"parent_run_id": parent, "config": config_to_dict(cfg), "best": {}, "done": []}
        _save_state(folder, state)
    else:
        parent = live.parent = state["parent_run_id"]
        tracker.client.update_run(parent, status="RUNNING")
        closed = tracker.close_running(parent)
        _say(
            f"resuming sweep {folder.name} (parent run {parent}); {closed} interrupted run(s) marked KILLED",
            opts,
        )
    existing = _reusable_baselines(tracker, parent)
    baselines: list[BaselineResult] = []
    baseline_primary, base_ret, base_extra = {}, {}, {}
    for name, (sam, _info) in models.items():
        per, base_ret[name] = _log_baselines(
            tracker, parent, common, name, packs[name], cfg, existing, sam, dev
        )
        baselines += per
        primary_base = next(b for b in per if b.prompt == cfg.eval.primary)
        baseline_primary[name] = primary_base.miou
        base_extra[name] = primary_base.extra_miou
        extras = "".join(f"; extra test set {k} {v:.3f}" for k, v in primary_base.extra_miou.items())
        _say(f"baseline {name}: " + ", ".join(f"{b.prompt} {b.miou:.3f}" for b in per) + extras, opts)
    log = phases.SweepLogging(
        tracker, parent, common, baseline_primary, base_ret, cfg.eval.primary, base_extra=base_extra
    )

    # 4. phases
    threads = max(1, int(cfg.resources.cpus_per_trial))
    resources = phases.trial_resources(cfg.resources.cpus_per_trial, cfg.resources.gpus_per_trial)
    ctx_base = {
        "packs": {n: str(p.folder) for n, p in packs.items()},
        "cache_dir": str(cache.root),
        "threads": threads,
        "primary": cfg.eval.primary,
        "strategies": list(cfg.eval.strategies),
        "mask_selection": cfg.eval.mask_selection,
        "extra_metrics": cfg.eval.extra_metrics,
        "fault": opts.fault,
    }
    train_settings = {
        k: getattr(cfg.train, k)
        for k in (
            "epochs",
            "max_steps",
            "batch_size",
            "micro_batch",
            "patience",
            "warmup_fraction",
            "weight_decay",
        )
    }
    records = []
    for name in cfg.models:
        ctx = {**ctx_base, "phase": "tune", "train": train_settings}
        space = {
            **phases.tune_param_space(cfg.search.space),
            "model": name,
            "n_train": cfg.search.n_train,
            "seed": cfg.curve.seeds[0],
        }
        _say(
            f"phase A (tune) {name}: {cfg.search.num_samples} trials, {cfg.search.searcher.type} + "
            f"{cfg.search.scheduler.type}",
            opts,
        )
        recs = phases.run_phase(
            name=f"tune-{name}",
            param_space=space,
            ctx=ctx,
            log=log,
            storage=folder,
            resources=resources,
            num_samples=cfg.search.num_samples,
            searcher=cfg.search.searcher.type,
            searcher_seed=cfg.search.searcher.seed,
            asha=cfg.search.scheduler.model_dump() if cfg.search.scheduler.type == "asha" else None,
            max_concurrent=cfg.resources.max_concurrent,
        )
        records += recs
        best = phases.best_params(recs) or {}
        state["best"][name] = best
        _save_state(folder, state)
        _say(f"  best {name}: {best}", opts)
    ctx = {**ctx_base, "phase": "curve", "best": state["best"], "train": {**train_settings, "patience": 0}}
    from ray import tune

    grid = {
        "model": tune.grid_search(list(cfg.models)),
        "n_train": tune.grid_search(list(cfg.curve.n_train)),
        "seed": tune.grid_search(list(cfg.curve.seeds)),
    }
    _say(
        f"phase B (learning curve): {len(cfg.models) * len(cfg.curve.n_train) * len(cfg.curve.seeds)} trials",
        opts,
    )
    records += phases.run_phase(
        name="curve",
        param_space=grid,
        ctx=ctx,
        log=log,
        storage=folder,
        resources=resources,
        max_concurrent=cfg.resources.max_concurrent,
    )

    # 5. rules, report, export
    trials = _trial_results(records, base_ret)
    try:
        outcome = finish_report(tracker, parent, cfg, task.data, baselines, trials, records, models, opts)
    finally:
        cleanup_records(records)  # the trials' downloaded checkpoints (temp folders)
    tracker.finish(parent)
    state["done"] = ["tune", "curve"]
    _save_state(folder, state)
    outcome.sweep_dir = folder
    outcome.tracking_uri = uri
    return outcome


def finish_report(
    tracker: Tracker,
    parent: str,
    cfg: SweepConfig,
    data_kind: str,
    baselines,
    trials,
    records,
    models,
    opts: RunOptions,
) -> SweepOutcome:
    with tempfile.TemporaryDirectory() as d:
        out = Path(d)
        rep = write_report(
            out,
            cfg.task,
            data_kind,
            baselines,
            trials,
            threshold=cfg.rules.threshold,
            primary_prompt=cfg.eval.primary,
            claimed_n=cfg.rules.claimed_n,
            seed=cfg.seed,
            protocol={
                "prompt": cfg.eval.primary,
                "mask_selection": cfg.eval.mask_selection,
                "scoring": "original resolution",
                "split": "test",
                "data": data_kind,
            },
        )
        for f in (rep.report_md, rep.gain_plot, rep.curve_plot):
            tracker.log_artifact(parent, f, "rules")
        summary = format_summary(rep.summary)
    tracker.set_tags(parent, rep.tags)
    export = None
    if records is not None and models is not None:
        export = _export_best(tracker, parent, cfg, rep, records, models, opts)
    return SweepOutcome(
        parent, rep, Path(), rep.tags, summary, export, trials, baselines, tracker.uri, data_kind
    )


def _export_best(tracker, parent, cfg, rep, records, models, opts):
    """Export the recommended (else best-validated) model; log decoders of each model's best trial."""
    from specialsam.models.export import export_specialised

    by_key = {r.key: r for r in records if r.record is not None and r.checkpoint_dir is not None}
    best_per_model = {}
    for r in by_key.values():
        m = r.params["model"]
        if m not in best_per_model or r.record["best_val_miou"] > best_per_model[m].record["best_val_miou"]:
            best_per_model[m] = r
    for r in best_per_model.values():
        if r.run_id:
            tracker.log_artifact(r.run_id, r.checkpoint_dir / "decoder.pt")
            tracker.set_tags(r.run_id, {"specialsam.best_for_model": "true"})
    cells = [c for c in rep.baseline_report.cells if c.prompt == cfg.eval.primary and c.gain is not None]
    if not cells:
        return None
    best_cell = max(cells, key=lambda c: c.gain.lo)
    sel = rep.baseline_report.selections.get(best_cell.model)
    chosen = None
    if sel is not None:
        ids = {t.trial_id for t in sel.trials}
        cands = [by_key[k] for k in ids if k in by_key]
        chosen = max(cands, key=lambda r: r.record["best_val_miou"]) if cands else None
    chosen = chosen or best_per_model.get(best_cell.model)
    if chosen is None:
        return None
    sam, _ = models[best_cell.model]
    state = torch.load(chosen.checkpoint_dir / "decoder.pt", weights_only=True)
    out_dir = _export_root(opts)
    stem = f"{cfg.task}-{best_cell.model}-specialised"
    try:
        full, dec = export_specialised(sam, state, out_dir, stem)
    except OSError as exc:  # checked before the sweep, so the folder changed since (or the disk filled)
        if disk_full(exc):
            raise
        raise UserError(
            f"{'--export-dir' if opts.export_dir else 'the export folder'} {out_dir}: cannot write the "
            f"specialised model ({exc.strerror or exc}); fix it and rerun with --resume"
        ) from None
    tracker.log_artifact(parent, dec, "export")
    if full.stat().st_size < 200 * 1024**2:
        tracker.log_artifact(parent, full, "export")
    tracker.set_tags(parent, {"specialsam.export.full": str(full), "specialsam.export.trial": chosen.key})
    return full, dec


def analyze_only(cfg: SweepConfig, opts: RunOptions, parent: str) -> SweepOutcome:
    """Rebuild the rules report of a finished sweep from MLflow alone."""
    uri = resolve_tracking_uri(opts.tracking_uri, opts.cwd)
    # look the run up first: a bogus id must not create a database or an experiment
    tracker, run = Tracker.for_run(uri, parent, f"--analyze-only {parent}")
    check_tracking_db(uri)  # the report is logged to it
    if run.data.tags.get(ROLE) != "sweep":
        raise UserError(
            f"--analyze-only {parent}: run is not a sweep parent run (role={run.data.tags.get(ROLE)})"
        )
    baselines = []
    for r in tracker.children(parent, "baseline"):
        per = tracker.download_json(r.info.run_id, "per_image_iou.json")["iou"]
        model, strat = r.data.params["model"], r.data.params["strategy"]
        baselines.append(
            BaselineResult(
                model,
                strat,
                np.asarray(per),
                metrics_with_prefix(r, "test_miou.cat."),
                metrics_with_prefix(r, "extra_miou."),
            )
        )
    trials = []
    for r in tracker.children(parent, "trial"):
        if r.info.status != "FINISHED" or "test_miou." + cfg.eval.primary not in r.data.metrics:
            continue
        rec = tracker.download_json(r.info.run_id, "result.json")
        trial_id = r.data.tags.get(TRIAL_ID, r.info.run_id)
        trials.append(trial_from_record(trial_id, rec, r.data.metrics.get("base_retention_miou")))
    data_kind = run.data.tags.get("specialsam.data", "real")
    out = finish_report(tracker, parent, cfg, data_kind, baselines, trials, None, None, opts)
    out.tracking_uri = uri
    return out


def mlflow_ui_hint(uri: str) -> str:
    if uri.startswith("sqlite:///"):
        return f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"
    return f"open {uri} in a browser"


def cleanup_records(records) -> None:
    for r in records or []:
        if r.checkpoint_dir is not None:
            shutil.rmtree(r.checkpoint_dir, ignore_errors=True)
