"""Fine-tune with the encoder's tail: methods ``lora`` and ``full`` (``train.py`` keeps ``decoder``).

A step reads the batch's cached activations (or has the frozen head compute them, see
``finetune/activations.py``), runs the tuned tail to embeddings, and from there does exactly what
decoder-only training does: the same batches and prompt draws (``train._make_batch``), the same
decoder pass and loss (``batch_logits``, ``segmentation_loss``, ``click_rounds_loss``), the same
warmup + cosine schedule, validation mIoU, early stopping and health flags. The decoder's losses
are backpropagated into a detached copy of the embeddings first and from there through the tail,
so corrective-click rounds (separate decoder graphs over one embedding) and micro-batches both
reach the encoder with the gradient of the batch mean. The encoder stays in eval mode: BatchNorm
statistics stay frozen (TinyViT's attention biases stay trainable, ``tail_train_mode``).

After training, the kept (best-validation) weights embed every evaluation split once into a
trial-local cache under the pack's own embedding keys, so ``pipeline.score_decoder`` scores the
tuned model unchanged (:func:`tuned_pack`).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from segment_anything.modeling import Sam

from specialsam.device import DeviceChoice, select_device
from specialsam.finetune.cache import EmbeddingCache
from specialsam.finetune.click_training import click_rounds_loss
from specialsam.finetune.losses import segmentation_loss
from specialsam.finetune.methods import MethodPlan, load_tuned_state, tuned_state
from specialsam.finetune.pack import Pack, Split
from specialsam.finetune.train import (
    TrainConfig,
    TrainResult,
    _Batch,
    _epoch_metrics,
    _health,
    _Run,
    _start_run,
    batch_logits,
    check_validation,
    run_epochs,
    unchanged,
)
from specialsam.models.encoder_steps import tail_train_mode
from specialsam.models.headless import decoder_state

ActivationSource = Callable[[Sequence[str]], torch.Tensor]
"""Embedding keys of a split's samples -> their activations entering the tail (float32, CPU)."""
TAIL_CHUNK = 8
"""Images per no-grad tail pass when embedding evaluation splits."""


@dataclass
class MethodTrainResult(TrainResult):
    """``TrainResult`` plus the kept weights of everything the method trained (by parameter name)."""

    tuned: dict[str, torch.Tensor] = field(default_factory=dict)
    method: str = ""


def _chunk_loss(sam: Sam, emb: torch.Tensor, b: _Batch, sl: slice, cfg: TrainConfig, dev, res: int, n: int):
    """Decoder forward + backward of one chunk from its embeddings (as ``accumulate_gradients``)."""
    d = dev.device
    if b.clicks is not None and b.clicks.rounds:
        return click_rounds_loss(
            sam, emb, b.coords[sl].to(d), b.labels[sl].to(d), b.target[sl].to(d), b.valid[sl].to(d),
            b.clicks.slice(sl, d), cfg, dev, res, n,
        )  # fmt: skip
    with dev.autocast():
        logits = batch_logits(sam, emb, b.coords[sl].to(d), b.labels[sl].to(d), res)
    loss = segmentation_loss(logits.float(), b.target[sl].to(d), b.valid[sl].to(d), cfg).sum() / n
    loss.backward()
    return loss.detach()


def encoder_step_gradients(
    sam: Sam,
    plan: MethodPlan,
    acts: torch.Tensor,
    batch: _Batch,
    cfg: TrainConfig,
    dev: DeviceChoice,
    res: int,
    micro: int = 0,
) -> torch.Tensor:
    """Forward + backward of one batch, activations -> tail -> decoder -> loss; returns the mean
    loss. Gradients are the batch mean's, whatever ``micro`` (images per chunk, 0: all)."""
    n, d = acts.shape[0], dev.device
    total = torch.zeros((), device=d)
    for s in range(0, n, micro or n):
        sl = slice(s, s + (micro or n))
        with dev.autocast():
            emb = plan.tail(acts[sl].to(d))
        leaf = emb.detach().float().requires_grad_(True)
        total += _chunk_loss(sam, leaf, batch, sl, cfg, dev, res, n)
        if leaf.grad is not None:
            emb.backward(leaf.grad.to(emb.dtype))
    return total


class _ActivationSplit:
    """A pack split whose ``embeddings(idx)`` are the tail's *inputs* (what ``_make_batch`` loads)."""

    def __init__(self, split: Split, source: ActivationSource) -> None:
        self._split, self._source = split, source

    def __getattr__(self, name: str):
        return getattr(self._split, name)

    def __len__(self) -> int:
        return len(self._split)

    def embeddings(self, idx: Sequence[int]) -> np.ndarray:
        return self._source([self._split.emb_keys[i] for i in idx]).numpy()


@torch.no_grad()
def tuned_embeddings(
    plan: MethodPlan,
    source: ActivationSource,
    emb_keys: Sequence[str],
    dev: DeviceChoice,
    chunk: int = TAIL_CHUNK,
) -> np.ndarray:
    """Embeddings of the tuned encoder (float16-rounded like cached ones, returned as float32)."""
    out = []
    for s in range(0, len(emb_keys), chunk):
        with dev.autocast():
            e = plan.tail(source(emb_keys[s : s + chunk]).to(dev.device))
        out.append(e.float().half().float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0,), np.float32)


class _TunedSplit(_ActivationSplit):
    """A pack split whose embeddings come from the encoder as it is now (validation per epoch)."""

    def __init__(self, split: Split, source: ActivationSource, plan: MethodPlan, dev: DeviceChoice) -> None:
        super().__init__(split, source)
        self._plan, self._dev = plan, dev

    def embeddings(self, idx: Sequence[int]) -> np.ndarray:
        return tuned_embeddings(self._plan, self._source, [self._split.emb_keys[i] for i in idx], self._dev)


def _tail_metrics(run: _Run, plan: MethodPlan, val: Split, source: ActivationSource, primary: str, t0: float):
    """``run_epochs``' validation: the encoder in eval mode (TinyViT's attention-bias copy refreshed)
    embeds the validation split, then back to train mode."""

    def validate(epoch: int, losses: list[float]) -> dict[str, float]:
        tail_train_mode(run.sam.image_encoder, False)
        try:
            split = _TunedSplit(val, source, plan, run.dev)
            return _epoch_metrics(run, split, primary, epoch, losses, t0)  # type: ignore[arg-type]
        finally:
            tail_train_mode(run.sam.image_encoder, True)

    return validate


def _tail_gradients(plan: MethodPlan, run: _Run, batch: _Batch) -> torch.Tensor:
    """``train._Run.gradients`` of lora / full: the batch's activations through the tail, then the decoder."""
    return encoder_step_gradients(run.sam, plan, batch.emb, batch, run.cfg, run.dev, run.res, run.micro)


def train_with_method(
    sam: Sam,
    plan: MethodPlan,
    pack: Pack,
    source: ActivationSource,
    cfg: TrainConfig,
    dev: DeviceChoice | None = None,
    on_epoch: Callable[[int, dict[str, float]], bool | None] | None = None,
    fault_hook: Callable[[int], None] | None = None,
) -> MethodTrainResult:
    """Train what ``plan`` names in place (then restore the best epoch's weights), as
    ``train.train_decoder`` does for the decoder: same budget, schedule, early stop and callbacks."""
    cfg.validate()
    dev = (dev or select_device()).for_decoder(sam.mask_decoder.transformer_dim)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    sam.to(dev.device).eval()
    train, val = _ActivationSplit(pack.split("train"), source), pack.split("val")
    indices = pack.train_indices(cfg.n_train)
    primary = pack.manifest["primary"]
    check_validation(val, primary)
    loop = _start_run(sam, pack, cfg, dev, len(indices), plan.params, partial(_tail_gradients, plan))
    tail_train_mode(sam.image_encoder, True)
    start_state = tuned_state(sam, plan)
    t0 = time.time()
    try:
        kept = run_epochs(
            loop,
            train,
            indices,
            rng,
            _tail_metrics(loop, plan, val, source, primary, t0),
            lambda: tuned_state(sam, plan),
            start_state,
            on_epoch,
            fault_hook,
        )
    finally:
        tail_train_mode(sam.image_encoder, False)
    load_tuned_state(sam, kept.state)
    tail_train_mode(sam.image_encoder, False)  # TinyViT: attention-bias copies from the kept weights
    for p in sam.parameters():
        p.requires_grad_(False)
    health = _health(kept.history, loop.step_losses)
    if unchanged(start_state, kept.state):
        health.append("unchanged")
    return MethodTrainResult(
        decoder_state=decoder_state(sam), history=kept.history, best_epoch=kept.best_epoch,
        best_val_miou=kept.best_val, steps=loop.step, seconds=time.time() - t0, health=health,
        stopped_early=kept.stopped_early, samples_seen=loop.seen, tuned=copy.copy(kept.state),
        method=plan.settings.method,
    )  # fmt: skip


def tuned_pack(
    pack: Pack, plan: MethodPlan, source: ActivationSource, dev: DeviceChoice, folder: Path
) -> Pack:
    """The pack again, its evaluation splits' embeddings recomputed by the tuned encoder into a
    trial-local cache in ``folder`` (same keys), so ``score_decoder`` scores the tuned model as is."""
    cache = EmbeddingCache(folder)
    for name in pack.manifest["splits"]:
        if name == "train":
            continue
        keys = list(dict.fromkeys(pack.split(name).emb_keys))
        for s in range(0, len(keys), TAIL_CHUNK):
            part = keys[s : s + TAIL_CHUNK]
            for k, e in zip(part, tuned_embeddings(plan, source, part, dev)):
                cache.put(k, e, {"tuned": plan.settings.method})
    return Pack(pack.folder, cache)


def specialise_with_method(
    sam: Sam,
    plan: MethodPlan,
    pack: Pack,
    source: ActivationSource,
    cfg: TrainConfig,
    scoring,
    dev: DeviceChoice,
    on_epoch: Callable[[int, dict[str, float]], bool | None] | None = None,
    fault_hook: Callable[[int], None] | None = None,
    keep: Path | None = None,
):
    """``pipeline.specialise`` for lora / full: train, embed the evaluation splits with the kept
    encoder, score the decoder on them. Returns ``pipeline.Specialised`` (its ``train`` a
    :class:`MethodTrainResult`). ``keep``: a folder for the tuned embeddings, left for the caller
    (``Pack(pack.folder, EmbeddingCache(keep))`` draws overlays from them); default a temp folder."""
    import tempfile

    from specialsam.finetune.pipeline import Specialised, score_decoder

    t0 = time.time()
    result = train_with_method(sam, plan, pack, source, cfg, dev, on_epoch=on_epoch, fault_hook=fault_hook)
    with tempfile.TemporaryDirectory(prefix="specialsam-tuned-") as d:
        tuned = tuned_pack(pack, plan, source, dev, Path(keep or d))
        scores = score_decoder(sam, tuned, scoring, dev)
    return Specialised(result, scores, time.time() - t0)


def run_method_trial(
    sam: Sam,
    model: str,
    identity,
    splits: dict,
    pack: Pack,
    settings,
    cfg: TrainConfig,
    scoring,
    dev: DeviceChoice,
):
    """``pipeline.run_trial`` for lora / full (the trial CLI): baseline, then the method on
    activations cached for every image of the pack's ``splits`` (``identity``: the pack's model)."""
    from specialsam.finetune.activations import ActivationCache, CachedActivations, fill_activations
    from specialsam.finetune.methods import prepare_method
    from specialsam.finetune.pipeline import TrialRun, score_decoder

    baseline = score_decoder(sam, pack, scoring, dev)
    plan = prepare_method(sam, model, settings)
    cache = ActivationCache(pack.cache.root)
    fill_activations(cache, sam, plan, identity, splits)
    source = CachedActivations(cache, plan.start_name)
    return TrialRun(baseline, specialise_with_method(sam, plan, pack, source, cfg, scoring, dev))
