"""Ray Tune wiring: the two phases of a sweep, trials, resources, logging, resume.

Phase A (*tune*) answers "which settings?": per model size, Optuna proposes lr / loss weights /
prompt mix at a reference training-set size and ASHA stops unpromising trials early, on
validation mIoU. Phase B (*curve*) answers "how much data?": a grid over n_train x model x seeds at
each model's best phase-A settings, every trial run to its full step budget (no early stopping),
so the learning curve compares like with like. Trials read only the pack and the embedding cache
(the encoder never runs inside a trial). Everything MLflow sees is written by the driver through
``MlflowLogger``; every trial leaves its record (metrics, per-image IoU, decoder weights, plots)
in its Tune checkpoint, so results survive the driver and ``--resume`` rebuilds them from storage.
This is the only module of the library that imports Ray.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from ray import tune

from specialsam.finetune.cache import EmbeddingCache
from specialsam.finetune.pack import Pack
from specialsam.finetune.train import SEARCHABLE
from specialsam.sweep.tracking import ROLE, TRIAL_ID, Tracker

TRIAL_PARAMS = (*SEARCHABLE, "n_train", "model", "seed")


# ---------------------------------------------------------------------------------------------
# inside a trial process
# ---------------------------------------------------------------------------------------------
def trainable(config: dict[str, Any]) -> None:
    """One trial: fine-tune the decoder of ``config['model']`` from its pack, report to Tune."""
    from specialsam.device import select_device
    from specialsam.finetune.evaluate import score_extra_tests, score_split
    from specialsam.finetune.train import TrainConfig, TrainingFailed, train_decoder
    from specialsam.models.headless import decoder_state
    from specialsam.models.inference import predict_masks
    from specialsam.prompts import Prompt
    from specialsam.report.figures import overlay_grid, plot_training_curves

    ctx = config["_ctx"]
    torch.set_num_threads(max(1, int(ctx["threads"])))
    pack = Pack(ctx["packs"][config["model"]], EmbeddingCache(ctx["cache_dir"]))
    sam = pack.headless_model()
    dev = select_device(precision=ctx.get("precision", "auto")).for_decoder(sam.mask_decoder.transformer_dim)
    settings = {k: v for k, v in ctx["train"].items() if k in TrainConfig.__dataclass_fields__}
    params = {
        **ctx.get("best", {}).get(config["model"], {}),
        **{k: config[k] for k in SEARCHABLE if k in config},
    }
    cfg = TrainConfig(
        **{**settings, **params, "n_train": int(config["n_train"]), "seed": int(config["seed"])}
    )
    fault = ctx.get("fault") or {}
    if _fault_matches(fault.get("nan"), config):  # test hook: a learning rate that must blow up
        cfg.lr, cfg.grad_clip = 1e30, 0.0
    primary, strategies = ctx["primary"], ctx["strategies"]

    # baseline predictions on the overlay images, before the decoder changes
    thumbs = pack.thumbnails()
    test = pack.split("test")
    coords, labels, ok = test.prompts(primary)
    shown = [i for i in range(len(thumbs)) if ok[i]]

    def predict_thumbs() -> list[np.ndarray]:
        if not shown:
            return []
        preds = predict_masks(
            sam,
            torch.from_numpy(test.embeddings(shown)),
            [Prompt(coords[i], labels[i]) for i in shown],
            [test.original_hw[i] for i in shown],
            ctx["mask_selection"],
            prompts_in_model_frame=True,
        )
        return [_resize_mask(p, thumbs[i][1].shape) for p, i in zip(preds, shown)]

    base_thumbs = predict_thumbs()

    def fault_hook(step: int) -> None:
        _maybe_inject_fault(fault, config, step)

    def on_epoch(epoch: int, m: dict[str, float]) -> None:
        tune.report(
            {"val_miou": m["val_miou"], "train_loss": m["train_loss"], "epoch": epoch, "steps": m["steps"]}
        )

    t0 = time.time()
    try:
        result = train_decoder(sam, pack, cfg, dev, on_epoch=on_epoch, fault_hook=fault_hook)
    except TrainingFailed as exc:
        tune.report({"val_miou": 0.0, "failed": str(exc), "final": 1})
        return
    scores = score_split(sam, test, strategies, ctx["mask_selection"], ctx["extra_metrics"], dev)
    retention = None
    if pack.has("retention"):
        retention = score_split(sam, pack.split("retention"), [primary], dev=dev)[primary].miou
    extra = score_extra_tests(sam, pack, primary, dev)
    seconds = time.time() - t0

    with tempfile.TemporaryDirectory() as d:
        out = Path(d)
        record = {
            "params": {**params, "n_train": cfg.n_train, "seed": cfg.seed, "model": config["model"]},
            "phase": ctx["phase"],
            "history": result.history,
            "best_epoch": result.best_epoch,
            "best_val_miou": result.best_val_miou,
            "steps": result.steps,
            "samples_seen": result.samples_seen,
            "health": result.health_tag,
            "stopped_early": result.stopped_early,
            "trial_seconds": seconds,
            "retention_miou": retention,
            "extra_miou": extra,
            "node_id": ray.get_runtime_context().get_node_id(),
            "test": {
                s: {
                    "per_image_iou": sc.per_image_iou.tolist(),
                    "keys": sc.keys,
                    "means": sc.means,
                    "per_category": sc.per_category,
                    "skipped_empty": sc.skipped_empty,
                }
                for s, sc in scores.items()
            },
        }
        (out / "result.json").write_text(json.dumps(record))
        torch.save(decoder_state(sam), out / "decoder.pt")
        plot_training_curves(
            result.history,
            out / "curves.png",
            title=f"{config['model']} n={cfg.n_train}",
            health=result.health_tag,
        )
        if shown:
            spec_thumbs = predict_thumbs()
            overlay_grid(
                [thumbs[i][0] for i in shown],
                [thumbs[i][1] for i in shown],
                base_thumbs,
                spec_thumbs,
                out / "overlay.png",
                titles=[test.keys[i] for i in shown],
            )
        final = {
            "val_miou": result.best_val_miou,
            "final": 1,
            "trial_seconds": seconds,
            **{f"test_miou.{s}": sc.miou for s, sc in scores.items()},
        }
        tune.report(final, checkpoint=tune.Checkpoint.from_directory(d))


def _resize_mask(mask: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    import cv2

    return cv2.resize(mask.astype(np.uint8), (hw[1], hw[0]), interpolation=cv2.INTER_NEAREST) > 0


def _fault_matches(spec: dict | None, config: dict) -> bool:
    return bool(spec) and all(str(config.get(k)) == str(v) for k, v in spec.get("match", {}).items())


def _maybe_inject_fault(fault: dict, config: dict, step: int) -> None:
    """Test hooks: kill this trial's process once at a given step (a marker file makes it once);
    or make it linger (``seconds`` at most, until ``until_file`` exists), so that tests can act
    while several trials run at once."""
    linger = fault.get("sleep")
    if _fault_matches(linger, config) and step == linger.get("at_step", 1):
        release = Path(linger["until_file"]) if linger.get("until_file") else None
        end = time.time() + float(linger["seconds"])  # at most this long; less once released
        while time.time() < end and not (release and release.exists()):
            time.sleep(0.2)
    spec = fault.get("kill")
    if not _fault_matches(spec, config) or step != spec.get("at_step", 1):
        return
    marker = Path(spec["marker_dir"]) / f"killed-{config['model']}-{config['n_train']}-{config['seed']}"
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(str(os.getpid()))
    os._exit(1)


# ---------------------------------------------------------------------------------------------
# in the driver
# ---------------------------------------------------------------------------------------------
@dataclass
class TrialRecord:
    """A finished trial as the driver sees it (from its Tune checkpoint)."""

    key: str
    phase: str
    params: dict[str, Any]
    record: dict[str, Any] | None  # None: stopped early by ASHA or failed
    checkpoint_dir: Path | None
    failed: str | None = None
    run_id: str | None = None


@dataclass
class SweepLogging:
    tracker: Tracker
    parent_run: str
    common_tags: dict[str, str]
    baseline_primary: dict[str, float]  # model -> baseline mIoU on the primary strategy
    base_retention: dict[str, float | None]
    primary: str
    run_ids: dict[str, str] = field(default_factory=dict)
    base_extra: dict[str, dict[str, float]] = field(default_factory=dict)  # model -> extra set -> mIoU


class MlflowLogger(tune.Callback):
    """Creates, fills and closes trial child runs from the driver; reuses them on resume."""

    def __init__(self, log: SweepLogging, phase: str, experiment: str) -> None:
        self.log, self.phase, self.experiment = log, phase, experiment
        self.existing = log.tracker.trial_runs(log.parent_run)

    def __getstate__(self) -> dict:
        # Tune pickles its run config (callbacks included) into the experiment state; the live
        # MLflow client stays out of it. A resumed sweep attaches a fresh logger.
        return {"phase": self.phase, "experiment": self.experiment, "log": None, "existing": {}}

    def _key(self, trial) -> str:
        return f"{self.experiment}/{trial.trial_id}"

    def _run(self, trial) -> str:
        key = self._key(trial)
        if key in self.log.run_ids:
            return self.log.run_ids[key]
        if key in self.existing:
            run_id = self.existing[key].info.run_id
            self.log.tracker.client.update_run(run_id, status="RUNNING")
        else:
            cfg = trial.config
            best = cfg.get("_ctx", {}).get("best", {}).get(cfg["model"], {})
            params = {**best, **{k: cfg[k] for k in TRIAL_PARAMS if k in cfg}}
            tags = {
                **self.log.common_tags,
                ROLE: "trial",
                TRIAL_ID: key,
                "specialsam.phase": self.phase,
                "specialsam.model": cfg["model"],
            }
            run_id = self.log.tracker.create_run(
                f"{self.phase}-{cfg['model']}-n{cfg['n_train']}-s{cfg['seed']}-{trial.trial_id}",
                tags,
                parent=self.log.parent_run,
            )
            self.log.tracker.log_params(run_id, params)
        self.log.run_ids[key] = run_id
        return run_id

    def on_trial_start(self, iteration, trials, trial, **info):
        if self.log is None:
            return
        self._run(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if self.log is None:
            return
        if "epoch" in result and "final" not in result:
            self.log.tracker.log_metrics(
                self._run(trial),
                {"train_loss": result["train_loss"], "val_miou": result["val_miou"]},
                step=int(result["epoch"]),
            )

    def on_trial_recover(self, iteration, trials, trial, **info):
        if self.log is None:
            return
        self.log.tracker.set_tags(self._run(trial), {"specialsam.retried": trial.num_failures})

    def on_trial_error(self, iteration, trials, trial, **info):
        if self.log is None:
            return
        run = self._run(trial)
        reason = str(getattr(trial, "error_msg", "") or "trial process failed")[:500]
        self.log.tracker.set_tags(run, {"specialsam.failure": reason, "specialsam.health": "failed"})
        self.log.tracker.finish(run, "FAILED")

    def on_trial_complete(self, iteration, trials, trial, **info):
        if self.log is None:
            return
        run = self._run(trial)
        last = trial.last_result or {}
        if "failed" in last:
            self.log.tracker.set_tags(
                run, {"specialsam.failure": last["failed"], "specialsam.health": "failed"}
            )
            self.log.tracker.finish(run, "FAILED")
            return
        ckpt = trial.checkpoint
        if "final" not in last or ckpt is None:
            self.log.tracker.set_tags(run, {"specialsam.stopped_early": "asha"})
            self.log.tracker.finish(run, "FINISHED")
            return
        with ckpt.as_directory() as d:
            log_trial_record(self.log, run, Path(d))
        self.log.tracker.finish(run, "FINISHED")


def log_trial_record(log: SweepLogging, run: str, folder: Path) -> None:
    rec = json.loads((folder / "result.json").read_text())
    t = log.tracker
    model = rec["params"]["model"]
    metrics: dict[str, float] = {
        f"test_miou.{s}": float(np.mean(v["per_image_iou"]))
        for s, v in rec["test"].items()
        if v["per_image_iou"]
    }
    for s, v in rec["test"].items():
        for m, x in v["means"].items():
            if m != "iou":
                metrics[f"test_{m}.{s}"] = x
    base = log.baseline_primary.get(model)
    if base is not None and f"test_miou.{log.primary}" in metrics:
        metrics["baseline_miou"] = base
        metrics["gain"] = metrics[f"test_miou.{log.primary}"] - base
    metrics["trial_seconds"] = rec["trial_seconds"]
    metrics["best_val_miou"] = rec["best_val_miou"]
    metrics["steps"] = rec["steps"]
    if rec.get("retention_miou") is not None:
        metrics["retention_miou"] = rec["retention_miou"]
        if log.base_retention.get(model) is not None:
            metrics["base_retention_miou"] = log.base_retention[model]
            metrics["retention_change"] = rec["retention_miou"] - log.base_retention[model]
    for name, v in (rec.get("extra_miou") or {}).items():
        metrics[f"extra_miou.{name}"] = v
        base_v = log.base_extra.get(model, {}).get(name)
        if base_v is not None:
            metrics[f"base_extra_miou.{name}"] = base_v
            metrics[f"extra_change.{name}"] = v - base_v
    primary = rec["test"].get(log.primary, {})
    for c, v in (primary.get("per_category") or {}).items():
        metrics[f"test_miou.cat.{c}"] = v
    t.log_metrics(run, metrics)
    t.set_tags(
        run,
        {
            "specialsam.health": rec["health"],
            "specialsam.stopped_early": str(rec["stopped_early"]).lower(),
            "specialsam.node_id": rec.get("node_id", ""),
        },
    )
    for name in ("result.json", "curves.png", "overlay.png"):
        if (folder / name).exists():
            t.log_artifact(run, folder / name)


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


def quiet_tune() -> None:
    """Tune's console tables repeat what our own progress lines and MLflow show."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")


def init_ray(address: str | None, num_cpus: int | None = None) -> None:
    """Local Ray on 127.0.0.1 without dashboard, or connect to a cluster (checked first)."""
    from specialsam.errors import UserError

    quiet_tune()
    address = address or os.environ.get("RAY_ADDRESS")
    if address and address not in ("local", "auto"):  # "auto": Ray finds the local cluster itself
        _check_reachable(address)
    if ray.is_initialized():
        return
    if address and address != "local":
        try:
            ray.init(address=address, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise UserError(f"cannot connect to the Ray cluster at {address}: {exc}") from None
        return
    with loopback_only():
        ray.init(
            address="local",  # always a new local instance, never one a test suite or other sweep runs
            num_cpus=num_cpus or os.cpu_count(),
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            object_store_memory=200 * 1024**2,
            log_to_driver=False,
            configure_logging=False,
        )
    _check_loopback()


# Ray's switch for its local-only mode (the default on macOS and Windows); "0" turns it on.
RAY_LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextmanager
def loopback_only() -> Iterator[None]:
    """Ray started inside keeps 127.0.0.1 as its node address, so every Ray server binds loopback.

    Ray's servers (GCS, raylet, object manager, workers, the driver, its agents, metrics export)
    bind loopback only when the node address is a loopback one and every interface otherwise, but
    ray.init rewrites _node_ip_address="127.0.0.1" to the machine's network address
    (ray/_private/worker.py: services.resolve_ip_for_localhost) unless Ray runs in its local-only
    mode. Ray reads that switch once at import (ray_constants.ENABLE_RAY_CLUSTER), so the flag is set
    here too; the processes Ray starts meanwhile inherit the environment variable. Both are restored.
    """
    from ray._private import ray_constants

    saved_env = os.environ.get(RAY_LOCAL_ONLY_ENV)
    saved_flag = ray_constants.ENABLE_RAY_CLUSTER
    os.environ[RAY_LOCAL_ONLY_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(RAY_LOCAL_ONLY_ENV, None)
        else:
            os.environ[RAY_LOCAL_ONLY_ENV] = saved_env


def _check_loopback() -> None:
    """Refuse a local Ray that took a network address (a Ray upgrade changed the switch above)."""
    import ipaddress

    node_ip = ray.util.get_node_ip_address()
    if not ipaddress.ip_address(node_ip).is_loopback:
        ray.shutdown()
        raise RuntimeError(
            f"local Ray took the node address {node_ip}, not 127.0.0.1, so its servers would listen "
            f"on every interface; this Ray version ignores {RAY_LOCAL_ONLY_ENV}=0 (see sweep.loopback_only)"
        )


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    import socket

    from specialsam.errors import UserError

    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(
            f"--address {address!r} must look like HOST:PORT (e.g. 10.0.0.5:6379) or ray://HOST:10001"
        )
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise UserError(
            f"Ray cluster at {address} is unreachable ({exc.strerror or exc}); check --address "
            "/ RAY_ADDRESS and that `ray start --head` runs there"
        ) from None


def check_gpus(gpus_per_trial: float) -> None:
    from specialsam.errors import UserError

    if gpus_per_trial > 0 and ray.cluster_resources().get("GPU", 0) <= 0:
        raise UserError(
            f"--gpus-per-trial {gpus_per_trial:g} requested but the Ray cluster has no GPUs; "
            "drop it (CPU trials) or add GPU workers"
        )


class PhaseInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a Tune phase after Tune saved its experiment state (the trials it stopped
    are unfinished there, so ``--resume`` reruns them)."""


def ray_running() -> bool:
    """Whether this process has started or joined a Ray instance."""
    return ray.is_initialized()


def stop_ray() -> None:
    """End this process's Ray: a local instance it started is shut down with its processes; a
    cluster it joined is only disconnected from (it keeps running for other drivers)."""
    if ray.is_initialized():
        ray.shutdown()


# Tune reads this at every fit; "1" leaves SIGINT to the driver (the SIGUSR1 stop stays Tune's).
TUNE_SIGINT_ENV = "TUNE_DISABLE_SIGINT_HANDLER"


# What Tune logs once stopped: its own resume hint (Tuner.restore, not our --resume) and the
# interrupted trials as failures; the driver prints the one line that applies instead.
_TUNE_STOP_NOISE = ("Experiment has been interrupted", "Trials did not complete", "Failed to fetch metrics")
_TUNE_STOP_LOGGERS = ("ray.tune.tune", "ray.tune.analysis.experiment_analysis")


class _AfterStop(logging.Filter):
    def __init__(self, stopped: threading.Event) -> None:
        super().__init__()
        self.stopped = stopped

    def filter(self, record: logging.LogRecord) -> bool:
        return not (self.stopped.is_set() and str(record.msg).startswith(_TUNE_STOP_NOISE))


@contextmanager
def sigint_stops_tune() -> Iterator[Callable[[], bool]]:
    """Own SIGINT around ``Tuner.fit`` and yield a function telling whether Ctrl-C came.

    Tune's own SIGINT handler stops an experiment gracefully (state saved with the running trials
    unfinished, trial actors stopped) but then ``fit`` returns as if the phase had completed, and
    the handler stays installed after ``fit`` (a later Ctrl-C would be swallowed). Here the
    driver's handler records the Ctrl-C and asks Tune for the same graceful stop through the
    handler Tune registers for SIGUSR1; before Tune's loop has started, or at a second Ctrl-C
    (skip the final save, as in Tune), it raises KeyboardInterrupt. Handlers and the environment
    variable are restored on exit."""
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield lambda: False
        return
    hit = threading.Event()
    usr1 = getattr(signal, "SIGUSR1", None)
    saved_int = signal.getsignal(signal.SIGINT)
    saved_usr1 = signal.getsignal(usr1) if usr1 is not None else None
    saved_env = os.environ.get(TUNE_SIGINT_ENV)

    def on_sigint(signum: int, frame: Any) -> None:
        first = not hit.is_set()
        hit.set()
        tune_stop = signal.getsignal(usr1) if usr1 is not None else None
        if first and callable(tune_stop) and tune_stop is not saved_usr1:
            tune_stop(signum, frame)  # Tune's handler: end the loop, save, stop the trials
            signal.signal(signal.SIGINT, on_sigint)  # it put back what it found (this); keep it so
            return
        raise KeyboardInterrupt

    quiet = _AfterStop(hit)
    for name in _TUNE_STOP_LOGGERS:
        logging.getLogger(name).addFilter(quiet)
    os.environ[TUNE_SIGINT_ENV] = "1"
    signal.signal(signal.SIGINT, on_sigint)
    try:
        yield hit.is_set
    finally:
        for name in _TUNE_STOP_LOGGERS:
            logging.getLogger(name).removeFilter(quiet)
        signal.signal(signal.SIGINT, saved_int)
        if usr1 is not None and saved_usr1 is not None:
            signal.signal(usr1, saved_usr1)
        if saved_env is None:
            os.environ.pop(TUNE_SIGINT_ENV, None)
        else:
            os.environ[TUNE_SIGINT_ENV] = saved_env


def run_phase(
    *,
    name: str,
    param_space: dict[str, Any],
    ctx: dict[str, Any],
    log: SweepLogging,
    storage: Path | str,
    resources: dict[str, float],
    num_samples: int = 1,
    searcher: str | None = None,
    searcher_seed: int = 0,
    asha: dict | None = None,
    max_concurrent: int | None = None,
    max_failures: int = 2,
) -> list[TrialRecord]:
    """Run (or resume) one Tune experiment and return its trials' records."""
    from ray.tune.schedulers import ASHAScheduler

    path = f"{str(storage).rstrip('/')}/{name}"
    trainable_r = tune.with_resources(tune.with_parameters(trainable), resources)
    space = {**param_space, "_ctx": ctx}
    callbacks = [MlflowLogger(log, ctx["phase"], name)]
    restored = tune.Tuner.can_restore(path)
    if restored:
        tuner = tune.Tuner.restore(path, trainable_r, resume_errored=True, param_space=space)
        # The restored run config carries detached loggers; Ray has no public way to pass new
        # callbacks to a restored Tuner, so attach ours to its run config directly.
        tuner._local_tuner.get_run_config().callbacks = callbacks
    else:
        search_alg = None
        if searcher == "optuna":
            from ray.tune.search.optuna import OptunaSearch

            search_alg = OptunaSearch(metric="val_miou", mode="max", seed=searcher_seed)
        elif searcher == "random":
            from ray.tune.search import BasicVariantGenerator

            search_alg = BasicVariantGenerator(random_state=searcher_seed)
        scheduler = None
        if asha:
            scheduler = ASHAScheduler(
                time_attr="training_iteration",
                metric="val_miou",
                mode="max",
                max_t=int(ctx["train"]["epochs"]) + 1,
                grace_period=int(asha["grace_period"]),
                reduction_factor=float(asha["reduction_factor"]),
            )
        tuner = tune.Tuner(
            trainable_r,
            param_space=space,
            tune_config=tune.TuneConfig(
                num_samples=num_samples,
                search_alg=search_alg,
                scheduler=scheduler,
                max_concurrent_trials=max_concurrent,
                # a finished trial's worker process runs the next one: no new process, no second
                # import of torch/segment_anything per trial (benchmarks/overhead.py measures it)
                reuse_actors=True,
                trial_name_creator=lambda t: f"{name}-{t.trial_id}",
                trial_dirname_creator=lambda t: f"{name}-{t.trial_id}",
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=str(storage),
                callbacks=callbacks,
                verbose=0,
                failure_config=tune.FailureConfig(max_failures=max_failures),
                # each trial checkpoints once (its final record); keeping all avoids forced snapshots
                checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
            ),
        )
    with sigint_stops_tune() as interrupted:
        grid = tuner.fit()
    if interrupted():
        raise PhaseInterrupted(f"{name}: interrupted; Tune saved its state for --resume")
    dropped = drop_orphan_trial_runs(log, name, [Path(r.path).name for r in grid]) if restored else 0
    if dropped:
        print(
            f"{name}: deleted {dropped} MLflow run(s) of trials the interrupted driver had started after "
            "Tune's last experiment checkpoint (they are not part of the resumed experiment)",
            file=sys.stderr,
        )
    records = []
    for res in grid:
        cfg = res.config or {}
        key = f"{name}/{res.metrics.get('trial_id', '')}" if res.metrics else name
        params = {k: cfg[k] for k in TRIAL_PARAMS if k in cfg}
        m = res.metrics or {}
        failed = m.get("failed") or (str(res.error)[:300] if res.error else None)
        rec, folder = None, None
        if res.checkpoint is not None and "final" in m and "failed" not in m:
            folder = Path(res.checkpoint.to_directory(tempfile.mkdtemp(prefix="specialsam-trial-")))
            rec = json.loads((folder / "result.json").read_text())
        records.append(TrialRecord(key, ctx["phase"], params, rec, folder, failed, log.run_ids.get(key)))
    return records


def drop_orphan_trial_runs(log: SweepLogging, name: str, trial_dirs: list[str]) -> int:
    """Delete this experiment's trial runs whose trial Tune does not know (returns how many).

    A driver killed mid-sweep may have started a trial (and its MLflow run) after Tune last saved
    the experiment state; the restored experiment never sees that trial again and its searcher
    proposes a replacement. Its run would stay behind as a duplicate, so it goes (soft delete: it
    can be restored from MLflow's trash). Trial folders are named ``<name>-<trial_id>``."""
    known = {f"{name}/{d.removeprefix(name + '-')}" for d in trial_dirs}
    orphans = [
        run
        for key, run in log.tracker.trial_runs(log.parent_run).items()
        if key.startswith(f"{name}/") and key not in known
    ]
    for run in orphans:
        log.tracker.client.delete_run(run.info.run_id)
    return len(orphans)


def best_params(records: list[TrialRecord]) -> dict[str, Any] | None:
    """Phase A's winner by *validation* mIoU (never test: no selection on the test set)."""
    done = [r for r in records if r.record is not None and not math.isnan(r.record["best_val_miou"])]
    if not done:
        return None
    best = max(done, key=lambda r: r.record["best_val_miou"])  # type: ignore[index]
    return {k: v for k, v in best.params.items() if k in SEARCHABLE}
