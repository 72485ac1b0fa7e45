"""The Tune trainable: one trial of a sweep, inside a Ray worker process.

Tune's ``config`` holds only what the trial varies: the searched values (phase A) and its axes
``model``, ``n_train``, ``seed``. Everything shared arrives once per phase as a
:class:`SweepContext` through ``tune.with_parameters``. A trial reads its model's pack and the
embedding cache (the encoder never runs here), runs ``finetune.pipeline.specialise``, reports each
epoch's validation mIoU to Tune (ASHA and the searcher read it) and leaves its record, decoder
weights and pictures in its Tune checkpoint for the driver to log.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from ray import tune

from specialsam.arms import arm_method, arm_model
from specialsam.config import TrainSettings, train_config
from specialsam.finetune.activations import ImageLookup
from specialsam.finetune.cache import EmbeddingCache, embedding_bytes
from specialsam.finetune.methods import METHOD_SEARCHABLE, MethodSettings
from specialsam.finetune.pack import Pack
from specialsam.finetune.pipeline import Scoring
from specialsam.finetune.records import TrialRecord
from specialsam.finetune.train import SEARCHABLE
from specialsam.sweep import mlflow_runs as names

AXES = ("model", "n_train", "seed")
"""The trial's own axes in Tune's ``config`` (beside the searched values); ``model`` is the arm's
label (``specialsam.arms``: a model and its fine-tuning method)."""
SWEEP_SEARCHABLE = (*SEARCHABLE, *METHOD_SEARCHABLE)
"""What phase A may search: training hyperparameters and the method's own (LoRA rank)."""


@dataclass
class EncoderTuning:
    """What a lora / full arm's trials need beyond the pack: the full model (its encoder) and how
    the tail's input arrives (``cache``: activations cached by the driver; ``frozen``: the frozen
    blocks run in the trial, from the images that ``images`` looks up)."""

    settings: MethodSettings
    feed: str
    cache_bytes_per_image: int
    checkpoint_dir: str | None = None
    allow_unverified: bool = False
    images: ImageLookup | None = None


@dataclass
class SweepContext:
    """What every trial of one phase shares (sent once to the object store, not per trial).
    Everything is keyed by arm (``config["model"]``)."""

    phase: str  # "tune" (phase A) or "curve" (phase B)
    packs: dict[str, str]  # arm -> its model's pack folder
    cache_dir: str
    scoring: dict[str, Scoring]  # arm -> how its trials are scored
    train: TrainSettings  # the shared training settings of this phase
    threads: int = 1
    best: dict[str, dict[str, Any]] = field(default_factory=dict)  # arm -> phase A's best values
    precision: str = "auto"
    fault: dict | None = None  # test hooks (see ``_maybe_inject_fault``)
    encoder: dict[str, EncoderTuning] = field(default_factory=dict)  # lora / full arms

    def params(self, config: dict[str, Any]) -> dict[str, Any]:
        """The trial's hyperparameters: its arm's best values, overridden by searched ones."""
        searched = {k: config[k] for k in SWEEP_SEARCHABLE if k in config}
        return {**self.best.get(config["model"], {}), **searched}


@dataclass
class _Trial:
    """One trial's inputs, resolved from its Tune config and the context."""

    arm: str
    pack: Pack
    sam: Any
    cfg: Any  # TrainConfig
    scoring: Scoring
    dev: Any
    params: dict[str, Any]
    plan: Any = None  # MethodPlan (lora / full)
    tuning: EncoderTuning | None = None


def trainable(config: dict[str, Any], ctx: SweepContext) -> None:
    """One trial: fine-tune ``config['model']``'s arm from its pack, report to Tune."""
    from specialsam.finetune.train import TrainingFailed

    torch.set_num_threads(max(1, int(ctx.threads)))
    t = _resolve(config, ctx)
    fault = ctx.fault or {}
    if _fault_matches(fault.get("nan"), config):  # test hook: a learning rate that must blow up
        t.cfg.lr, t.cfg.grad_clip = 1e30, 0.0
    thumbs = OverlayThumbs(t.sam, t.pack, t.scoring)
    base_thumbs = thumbs.predict()
    hook = lambda step: _maybe_inject_fault(fault, config, step)  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="specialsam-tuned-") as tuned_dir:
        try:
            out = _specialise(t, hook, Path(tuned_dir))
        except TrainingFailed as exc:
            tune.report({names.VAL_MIOU: 0.0, "failed": str(exc), "final": 1})
            return
        record = _record(t, out, ctx.phase)
        if t.plan is not None:  # after-overlays from the tuned encoder's embeddings
            thumbs = OverlayThumbs(t.sam, Pack(t.pack.folder, EmbeddingCache(tuned_dir)), t.scoring)
        with tempfile.TemporaryDirectory() as d:
            write_checkpoint(Path(d), record, t.sam, thumbs, base_thumbs)
            if t.plan is not None:
                torch.save(out.train.tuned, Path(d) / names.TUNED_FILE)
            tune.report(names.final_report(record), checkpoint=tune.Checkpoint.from_directory(d))


def _resolve(config: dict[str, Any], ctx: SweepContext) -> _Trial:
    from specialsam.device import select_device

    arm = config["model"]
    pack = Pack(ctx.packs[arm], EmbeddingCache(ctx.cache_dir))
    params = ctx.params(config)
    train_params = {k: v for k, v in params.items() if k in SEARCHABLE}
    cfg = train_config(ctx.train, train_params, config["n_train"], config["seed"])
    tuning = ctx.encoder.get(arm)
    plan = None
    if tuning is None:
        sam = pack.headless_model()
    else:
        from specialsam.finetune.methods import prepare_method
        from specialsam.models.registry import load_model

        sam, _ = load_model(
            arm_model(arm), checkpoint_dir=tuning.checkpoint_dir, allow_unverified=tuning.allow_unverified
        )
        settings = replace(tuning.settings, rank=int(params.get("rank", tuning.settings.rank)), seed=cfg.seed)
        plan = prepare_method(sam, arm_model(arm), settings)
    dev = select_device(precision=ctx.precision).for_decoder(sam.mask_decoder.transformer_dim)
    return _Trial(arm, pack, sam, cfg, ctx.scoring[arm], dev, params, plan, tuning)


def _specialise(t: _Trial, hook, tuned_dir: Path):
    """Decoder-only from cached embeddings, or the encoder's tail too (``encoder_train``)."""
    from specialsam.finetune.pipeline import specialise

    if t.plan is None:
        return specialise(t.sam, t.pack, t.cfg, t.scoring, t.dev, on_epoch=report_epoch, fault_hook=hook)
    from specialsam.finetune.activations import ActivationCache, CachedActivations, FrozenHead
    from specialsam.finetune.encoder_train import specialise_with_method

    t.sam.to(t.dev.device)
    if t.tuning.feed == "cache":
        source = CachedActivations(ActivationCache(t.pack.cache.root), t.plan.start_name)
    else:
        source = FrozenHead(t.sam, t.plan, t.tuning.images, t.dev.precision)
    return specialise_with_method(
        t.sam, t.plan, t.pack, source, t.cfg, t.scoring, t.dev, report_epoch, hook, keep=tuned_dir
    )


def _record(t: _Trial, out, phase: str) -> TrialRecord:
    """The trial's record, with its method and what it cost (trainable parameters, cache bytes)."""
    from specialsam.finetune.methods import count_params, settings_record
    from specialsam.finetune.pipeline import trial_record

    record = trial_record(out, t.params, phase, t.cfg, t.arm, ray.get_runtime_context().get_node_id())
    record.params["method"] = arm_method(t.arm)
    if t.plan is None:
        record.trainable_params = int(sum(p.numel() for p in t.sam.mask_decoder.parameters()))
        record.cache_bytes_per_image = embedding_bytes(t.sam)
    else:
        record.method = settings_record(t.plan.settings)
        record.trainable_params = count_params(t.plan)
        record.cache_bytes_per_image = t.tuning.cache_bytes_per_image if t.tuning.feed == "cache" else 0
    return record


def report_epoch(epoch: int, m: dict[str, float]) -> None:
    tune.report(
        {
            names.VAL_MIOU: m["val_miou"],
            names.TRAIN_LOSS: m["train_loss"],
            "epoch": epoch,
            "steps": m["steps"],
        }
    )


def write_checkpoint(out: Path, record: TrialRecord, sam, thumbs: OverlayThumbs, base_thumbs) -> None:
    """The trial's record, decoder weights, training curves and before/after overlays."""
    from specialsam.models.headless import decoder_state
    from specialsam.report.figures import overlay_grid, plot_training_curves

    record.write(out)
    torch.save(decoder_state(sam), out / names.DECODER_FILE)
    n = record.params["n_train"]
    plot_training_curves(
        record.history, out / "curves.png", title=f"{record.model} n={n}", health=record.health
    )
    if thumbs.shown:
        overlay_grid(
            [thumbs.images[i][0] for i in thumbs.shown],
            [thumbs.images[i][1] for i in thumbs.shown],
            base_thumbs,
            thumbs.predict(),
            out / "overlay.png",
            titles=[thumbs.test.keys[i] for i in thumbs.shown],
        )


class OverlayThumbs:
    """The pack's test thumbnails and the decoder's masks on them (primary prompt), for overlays."""

    def __init__(self, sam, pack: Pack, scoring: Scoring) -> None:
        self.sam, self.scoring = sam, scoring
        self.images = pack.thumbnails()
        self.test = pack.split("test")
        self.coords, self.labels, ok = self.test.prompts(scoring.primary)
        self.shown = [i for i in range(len(self.images)) if ok[i]]

    def predict(self) -> list[np.ndarray]:
        from specialsam.models.inference import predict_masks
        from specialsam.prompts import Prompt

        if not self.shown:
            return []
        preds = predict_masks(
            self.sam,
            torch.from_numpy(self.test.embeddings(self.shown)),
            [Prompt(self.coords[i], self.labels[i]) for i in self.shown],
            [self.test.original_hw[i] for i in self.shown],
            self.scoring.mask_selection,
            prompts_in_model_frame=True,
        )
        return [_resize_mask(p, self.images[i][1].shape) for p, i in zip(preds, self.shown)]


def _resize_mask(mask: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    import cv2

    return cv2.resize(mask.astype(np.uint8), (hw[1], hw[0]), interpolation=cv2.INTER_NEAREST) > 0


# ------------------------------------------------------------------------------ test hooks
def _fault_matches(spec: dict | None, config: dict) -> bool:
    return bool(spec) and all(str(config.get(k)) == str(v) for k, v in spec.get("match", {}).items())


def _maybe_inject_fault(fault: dict, config: dict, step: int) -> None:
    """Test hooks: kill this trial's process once at a given step (a marker file makes it once);
    make it linger (``seconds`` at most, until ``until_file`` exists), so that tests can act
    while several trials run at once; or make it raise at every attempt (an error retries cannot
    cure)."""
    broken = fault.get("raise")
    if _fault_matches(broken, config) and step == broken.get("at_step", 1):
        raise RuntimeError(broken.get("message", "injected trial error"))
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
