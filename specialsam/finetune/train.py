"""Fine-tune SAM's mask decoder on cached embeddings.

Only the mask decoder learns (the study's setting); the image encoder never runs here and the
prompt encoder stays frozen. A batch is a true batch of different images, one prompt each, in one
decoder forward pass (``decode_batched``). The loss is computed on the decoder's single-mask
logits upsampled to the pack's loss resolution (256 px by default, so 2-5 px defects stay
visible), only inside the image (not the padding). The budget is both epochs and optimizer steps,
so trials of different training-set sizes have predictable cost; warmup + cosine follow the
budget. Validation mIoU each epoch drives early stopping and the kept (best) decoder.

:class:`TrainConfig` is the one owner of the training defaults (the sweep config's ``train:`` takes
its defaults from it) and :data:`SEARCHABLE` names the fields a sweep may search.

Training never hands back the untrained decoder silently: an empty validation split (nothing to
pick the kept decoder by) is an error before the first step, a non-finite validation mIoU fails
the trial, and a returned decoder equal to the starting one carries the health flag
``unchanged``, which the report shows.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from segment_anything.modeling import Sam

from specialsam.device import DeviceChoice, select_device
from specialsam.finetune.click_training import Chunk, ClickDraws, click_rounds_loss
from specialsam.finetune.losses import binary_target, segmentation_loss
from specialsam.finetune.pack import Pack, Split
from specialsam.models.batched import decode_batched
from specialsam.models.upsample import upsample_logits
from specialsam.prompts import stack_prompts, training_prompt

MAX_CLICK_ROUNDS = 16
"""Upper bound of ``click_rounds`` (micro-sam trains with 8; each round is one more decoder pass)."""


class TrainingFailed(RuntimeError):
    """The trial cannot go on (e.g. the loss became NaN): the sweep marks it failed, with this reason."""


SEARCHABLE: tuple[str, ...] = (
    "lr",
    "bce_weight",
    "dice_weight",
    "focal_weight",
    "point_fraction",
    "weight_decay",
    "click_rounds",
    "extreme_fraction",
)
"""The TrainConfig fields a sweep may search (``search.space`` keys); the rest are shared settings."""


@dataclass
class TrainConfig:
    lr: float = 3e-4
    weight_decay: float = 1e-4
    bce_weight: float = 0.5
    dice_weight: float = 0.5
    focal_weight: float = 0.0
    point_fraction: float = 0.5
    n_train: int = 500
    epochs: int = 10
    max_steps: int = 0
    """Optimizer-step budget (0: epochs alone decide)."""
    batch_size: int = 16
    warmup_fraction: float = 0.05
    patience: int = 3
    """Epochs without validation improvement before stopping (0: never stop early)."""
    grad_clip: float = 1.0
    micro_batch: int = 0
    """Samples per forward/backward chunk, gradients accumulated (0: auto, see ``micro_batch_size``)."""
    seed: int = 0
    click_rounds: int = 0
    extreme_fraction: float = 0.0
    """Share of training prompts that are the four jittered extreme points (``extreme4``'s training
    form); the rest are points or boxes by ``point_fraction``."""
    """Corrective-click rounds after the first prompt (0: off): each adds a point sampled from the
    current prediction's error region, the previous logits as mask prompt half of the time, and
    the loss is averaged over all rounds (the SAM paper's and micro-sam's iterative training)."""

    def validate(self) -> None:
        from specialsam.errors import UserError

        floats = (self.lr, self.weight_decay, self.bce_weight, self.dice_weight, self.focal_weight)
        if not all(math.isfinite(v) for v in floats):
            raise UserError("lr, weight_decay and loss weights must be finite numbers (not inf or nan)")
        if not self.lr > 0:
            raise UserError(f"lr must be > 0, got {self.lr}")
        if min(self.bce_weight, self.dice_weight, self.focal_weight) < 0:
            raise UserError("loss weights must be >= 0")
        if self.bce_weight + self.dice_weight + self.focal_weight <= 0:
            raise UserError("bce_weight, dice_weight and focal_weight are all 0: the loss would be empty")
        if not 0 <= self.point_fraction <= 1:
            raise UserError(f"point_fraction must be in [0, 1], got {self.point_fraction}")
        if not 0 <= self.extreme_fraction <= 1:
            raise UserError(f"extreme_fraction must be in [0, 1], got {self.extreme_fraction}")
        if self.n_train < 1 or self.epochs < 1 or self.batch_size < 1:
            raise UserError("n_train, epochs and batch_size must be >= 1")
        rounds = self.click_rounds
        if isinstance(rounds, bool) or not float(rounds).is_integer() or not 0 <= rounds <= MAX_CLICK_ROUNDS:
            raise UserError(f"click_rounds must be a whole number in [0, {MAX_CLICK_ROUNDS}], got {rounds}")
        self.click_rounds = int(rounds)  # searched values arrive as floats


@dataclass
class TrainResult:
    decoder_state: dict[str, torch.Tensor]
    history: list[dict[str, float]]
    best_epoch: int
    best_val_miou: float
    steps: int
    seconds: float
    health: list[str] = field(default_factory=list)
    stopped_early: bool = False
    samples_seen: int = 0

    @property
    def health_tag(self) -> str:
        return ",".join(self.health) if self.health else "ok"


def _valid_masks(split: Split, idx: list[int], res: int) -> torch.Tensor:
    v = torch.zeros(len(idx), res, res)
    for j, i in enumerate(idx):
        h, w = split.valid_hw[i]
        v[j, :h, :w] = 1
    return v


def batch_logits(sam: Sam, emb: torch.Tensor, coords: torch.Tensor, labels: torch.Tensor, res: int):
    """Single-mask logits at ``res`` px, float32 (B, res, res)."""
    masks, _ = decode_batched(sam.mask_decoder, sam.prompt_encoder, emb, coords, labels)
    return upsample_logits(masks[:, 0], res)


def micro_batch_size(requested: int, embedding_side: int, dev: DeviceChoice) -> int:
    """Samples per forward/backward chunk (0: the whole batch at once).

    On CPU, SAM-sized embeddings (64x64x256) make every activation of a 16-image batch hundreds
    of MB, and the step becomes memory-bound: chunks of 4 images with accumulated gradients run
    ~1.4x faster per sample (benchmarks/README.md) with the same optimizer step. GPUs and the tiny
    models' 16x16 embeddings want the whole batch."""
    if requested:
        return requested
    return 4 if dev.device.type == "cpu" and embedding_side >= 64 else 0


def accumulate_gradients(
    sam: Sam,
    emb: torch.Tensor,
    coords: torch.Tensor,
    labels: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor,
    cfg: TrainConfig,
    dev: DeviceChoice,
    res: int,
    micro: int = 0,
    clicks: ClickDraws | None = None,
) -> torch.Tensor:
    """Forward + backward of one batch (in chunks of ``micro``); returns the batch's mean loss.

    Gradients are those of the batch mean, whatever the chunking. With ``clicks`` (click_rounds >
    0) each chunk runs its corrective-click rounds (:func:`_click_rounds_loss`). The caller checks
    the loss, clips and steps the optimizer."""
    n, d = emb.shape[0], dev.device
    chunk = micro or n
    total = torch.zeros((), device=d)
    for s in range(0, n, chunk):
        sl = slice(s, s + chunk)
        if clicks is not None and clicks.rounds:
            part = Chunk(*(t[sl].to(d) for t in (emb, coords, labels, target, valid)))
            total += click_rounds_loss(sam, part, clicks.slice(sl, d), cfg, dev, res, n)
            continue
        with dev.autocast():
            logits = batch_logits(sam, emb[sl].to(d), coords[sl].to(d), labels[sl].to(d), res)
        loss = segmentation_loss(logits.float(), target[sl].to(d), valid[sl].to(d), cfg).sum() / n
        loss.backward()
        total += loss.detach()
    return total


def trainable_decoder(sam: Sam) -> list[torch.nn.Parameter]:
    """Freeze the whole model but its mask decoder; returns the decoder's parameters.

    Only the decoder is fine-tuned (image encoder frozen, embeddings cached), as in the study."""
    for p in sam.parameters():
        p.requires_grad_(False)
    params = list(sam.mask_decoder.parameters())
    for p in params:
        p.requires_grad_(True)
    return params


def decoder_optimizer(params: list[torch.nn.Parameter], cfg: TrainConfig, device: torch.device):
    """AdamW, fused where PyTorch has a fused kernel (CPU, CUDA).

    The decoder has ~120 small parameter tensors; the per-tensor loop of the default
    implementation cost ~6% of a tiny model's step on CPU (benchmarks/README.md)."""
    fused = device.type in ("cpu", "cuda")
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))


@torch.no_grad()
def validation_miou(sam: Sam, split: Split, primary: str, dev: DeviceChoice, batch: int = 64) -> float:
    """mIoU of the single-mask output at the loss resolution in the model frame (fast, per epoch)."""
    coords, labels, ok = split.prompts(primary)
    res = split.pack.loss_res
    idx_all = [i for i in range(len(split)) if ok[i]]
    ious = []
    for s in range(0, len(idx_all), batch):
        idx = idx_all[s : s + batch]
        emb = torch.from_numpy(split.embeddings(idx)).to(dev.device)
        with dev.autocast():
            logits = batch_logits(
                sam,
                emb,
                torch.from_numpy(coords[idx]).to(dev.device),
                torch.from_numpy(labels[idx]).to(dev.device),
                res,
            )
        pred = (logits.float() > 0).cpu().numpy()
        for j, i in enumerate(idx):
            h, w = split.valid_hw[i]
            gt = binary_target(np.asarray(split.masks[i]))[:h, :w]
            p = pred[j, :h, :w]
            union = np.logical_or(p, gt).sum()
            ious.append(1.0 if union == 0 else np.logical_and(p, gt).sum() / union)
    return float(np.mean(ious)) if ious else float("nan")


def unchanged(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> bool:
    """Whether training left the decoder exactly as it started (every tensor equal)."""
    return before.keys() == after.keys() and all(torch.equal(before[k].cpu(), after[k].cpu()) for k in before)


def check_validation(val: Split, primary: str) -> None:
    """Refuse to train without validation samples: the kept decoder is chosen by validation mIoU,
    and with none it would stay the untrained one (the loaders make sure a val split exists)."""
    from specialsam.errors import UserError

    if len(val) == 0:
        raise UserError(
            "the validation split is empty, so fine-tuning could not choose a decoder and would return "
            "the untrained one; give the task validation samples (e.g. data.val_fraction)"
        )
    if not np.asarray(val.prompts(primary)[2]).any():
        raise UserError(
            f"none of the {len(val)} validation samples has a usable '{primary}' prompt (empty masks?); "
            "check the validation masks"
        )


def _health(history: list[dict[str, float]], step_losses: list[float]) -> list[str]:
    flags = []
    if any(h["train_loss"] < 0.01 for h in history):
        flags.append("collapse")
    arr = np.asarray(step_losses)
    if len(arr) > 25:
        for k in range(20, len(arr)):
            med = np.median(arr[k - 20 : k])
            if arr[k] > 3 * med and arr[k] - med > 0.2:
                flags.append("spike")
                break
    vals = [h["val_miou"] for h in history]
    trains = [h["train_loss"] for h in history]
    if len(vals) >= 3:
        best = int(np.argmax(vals))
        if vals[-1] < vals[best] - 0.05 and trains[-1] < trains[best]:
            flags.append("divergence")
    return flags


@dataclass
class _Batch:
    """One training batch: the images' pack indices, their prompts (model frame), targets and
    embeddings, and where each image lies inside its padded frame."""

    idx: list[int]
    coords: torch.Tensor
    labels: torch.Tensor
    target: torch.Tensor
    emb: torch.Tensor
    valid: torch.Tensor
    clicks: ClickDraws | None = None


def _make_batch(
    train: Split, idx: list[int], rng: np.random.Generator, cfg: TrainConfig, side: int, res: int
) -> _Batch | None:
    """Draw one training prompt per image (``rng``); images without a usable prompt are dropped,
    and a batch left empty is None."""
    soft = np.stack([np.asarray(train.masks[i]) for i in idx])
    prompts = [
        training_prompt(binary_target(m), rng, cfg.point_fraction, extreme_fraction=cfg.extreme_fraction)
        for m in soft
    ]
    keep = [j for j, p in enumerate(prompts) if p is not None]
    if not keep:
        return None
    idx = [idx[j] for j in keep]
    clicks = None
    if cfg.click_rounds:  # drawn only then: click_rounds=0 consumes the generator as before
        clicks = ClickDraws(
            hard=torch.from_numpy(np.stack([binary_target(soft[j]) for j in keep])),
            u=torch.from_numpy(rng.random((cfg.click_rounds, len(keep)))),
            use_mask=torch.from_numpy(rng.random((cfg.click_rounds, len(keep))) < 0.5),
            scale=side / res,
        )
    coords, labels = stack_prompts([prompts[j] for j in keep])
    return _Batch(
        idx=idx,
        coords=torch.from_numpy(coords * (side / res)),
        labels=torch.from_numpy(labels),
        target=torch.from_numpy(soft[keep].astype(np.float32) / 255.0),
        emb=torch.from_numpy(train.embeddings(idx)),
        valid=_valid_masks(train, idx, res),
        clicks=clicks,
    )


@dataclass
class _Run:
    """One training run's fixed parts (model, optimizer, step budget) and its running counts."""

    sam: Sam
    cfg: TrainConfig
    dev: DeviceChoice
    params: list[torch.nn.Parameter]
    opt: torch.optim.Optimizer
    total: int
    """Optimizer steps in all: epochs x steps per epoch, capped by ``max_steps``."""
    warmup: int
    micro: int
    side: int
    res: int
    step: int = 0
    seen: int = 0
    step_losses: list[float] = field(default_factory=list)
    gradients: Callable[[_Run, _Batch], torch.Tensor] | None = None
    """Forward + backward of one batch, returning its loss; None: the decoder on cached embeddings
    (``accumulate_gradients``). ``encoder_train`` sets the encoder-tail version."""


def _start_run(
    sam: Sam,
    pack: Pack,
    cfg: TrainConfig,
    dev: DeviceChoice,
    n_indices: int,
    params: list[torch.nn.Parameter] | None = None,
    gradients: Callable[[_Run, _Batch], torch.Tensor] | None = None,
) -> _Run:
    """The optimizer over ``params`` (default: the decoder's) and the step budget (warmup + cosine
    follow it)."""
    params = trainable_decoder(sam) if params is None else params
    opt = decoder_optimizer(params, cfg, dev.device)
    steps_per_epoch = math.ceil(n_indices / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    return _Run(
        sam=sam,
        cfg=cfg,
        dev=dev,
        params=params,
        opt=opt,
        total=total,
        warmup=max(1, int(cfg.warmup_fraction * total)),
        micro=micro_batch_size(cfg.micro_batch, sam.prompt_encoder.image_embedding_size[0], dev),
        side=pack.side,
        res=pack.loss_res,
        gradients=gradients,
    )


def _decoder_gradients(run: _Run, batch: _Batch) -> torch.Tensor:
    return accumulate_gradients(
        run.sam,
        batch.emb,
        batch.coords,
        batch.labels,
        batch.target,
        batch.valid,
        run.cfg,
        run.dev,
        run.res,
        run.micro,
        batch.clicks,
    )


def _optimizer_step(run: _Run, batch: _Batch, epoch: int) -> float:
    """One step on ``batch`` at the schedule's learning rate; a non-finite loss fails the trial."""
    cfg = run.cfg
    for g in run.opt.param_groups:
        g["lr"] = cfg.lr * _lr_factor(run.step, run.total, run.warmup)
    run.opt.zero_grad(set_to_none=True)
    loss = (run.gradients or _decoder_gradients)(run, batch)
    if not torch.isfinite(loss):
        raise TrainingFailed(
            f"loss became {float(loss)} at step {run.step} (epoch {epoch}); lr {cfg.lr:g} is likely too high"
        )
    if cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_(run.params, cfg.grad_clip)
    run.opt.step()
    run.step += 1
    run.seen += len(batch.idx)
    run.step_losses.append(float(loss))
    return run.step_losses[-1]


def _train_epoch(
    run: _Run,
    train: Split,
    indices: np.ndarray,
    rng: np.random.Generator,
    epoch: int,
    fault_hook: Callable[[int], None] | None,
) -> list[float]:
    """One pass over the training indices in a fresh random order (until the step budget ends);
    returns the epoch's step losses."""
    order = rng.permutation(indices)
    epoch_losses = []
    for b in range(0, len(order), run.cfg.batch_size):
        if run.step >= run.total:
            break
        idx = [int(i) for i in order[b : b + run.cfg.batch_size]]
        batch = _make_batch(train, idx, rng, run.cfg, run.side, run.res)
        if batch is None:
            continue
        epoch_losses.append(_optimizer_step(run, batch, epoch))
        if fault_hook is not None:
            fault_hook(run.step)
    return epoch_losses


def _epoch_metrics(
    run: _Run, val: Split, primary: str, epoch: int, losses: list[float], t0: float
) -> dict[str, float]:
    """Validate after an epoch; a non-finite validation mIoU fails the trial (NaN > best is False:
    it would keep the untrained decoder)."""
    val_miou = validation_miou(run.sam, val, primary, run.dev)
    if not math.isfinite(val_miou):
        raise TrainingFailed(f"validation mIoU became {val_miou} at epoch {epoch}")
    return {
        "epoch": epoch,
        "train_loss": float(np.mean(losses)) if losses else float("nan"),
        "val_miou": val_miou,
        "steps": run.step,
        "seconds": time.time() - t0,
    }


@dataclass
class Kept:
    """What the epoch loop keeps: each epoch's metrics and the best epoch's state (validation mIoU)."""

    state: Any
    history: list[dict[str, float]] = field(default_factory=list)
    best_val: float = -1.0
    best_epoch: int = -1
    stopped_early: bool = False


def run_epochs(
    run: _Run,
    train: Split,
    indices: Sequence[int],
    rng: np.random.Generator,
    validate: Callable[[int, list[float]], dict[str, float]],
    snapshot: Callable[[], Any],
    initial: Any,
    on_epoch: Callable[[int, dict[str, float]], bool | None] | None,
    fault_hook: Callable[[int], None] | None,
) -> Kept:
    """Epochs until the step budget, ``patience`` or ``on_epoch`` ends them, each validated
    (``validate(epoch, losses)`` -> ``_epoch_metrics``); keeps ``snapshot()`` of the best epoch
    (``initial`` until one beats -1). Decoder-only and encoder-tail training share it."""
    kept, since_best, cfg = Kept(initial), 0, run.cfg
    for epoch in range(cfg.epochs):
        if run.step >= run.total:
            break
        losses = _train_epoch(run, train, indices, rng, epoch, fault_hook)
        metrics = validate(epoch, losses)
        kept.history.append(metrics)
        if metrics["val_miou"] > kept.best_val:
            kept.best_val, kept.best_epoch, since_best = metrics["val_miou"], epoch, 0
            kept.state = snapshot()
        else:
            since_best += 1
        if (on_epoch is not None and on_epoch(epoch, metrics)) or (
            cfg.patience and since_best >= cfg.patience
        ):
            kept.stopped_early = True
            break
    return kept


def train_decoder(
    sam: Sam,
    pack: Pack,
    cfg: TrainConfig,
    dev: DeviceChoice | None = None,
    on_epoch: Callable[[int, dict[str, float]], bool | None] | None = None,
    fault_hook: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train ``sam.mask_decoder`` in place (then restore the best epoch's weights into it).

    ``on_epoch(epoch, metrics)`` is called after each epoch's validation; returning True stops
    training (the sweep's scheduler uses it). ``fault_hook(step)`` lets tests inject failures.
    """
    cfg.validate()
    dev = (dev or select_device()).for_decoder(sam.mask_decoder.transformer_dim)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    sam.to(dev.device)
    sam.eval()  # encoder-side norms frozen; the decoder has no dropout/batchnorm
    train, val = pack.split("train"), pack.split("val")
    indices = pack.train_indices(cfg.n_train)
    primary = pack.manifest["primary"]
    run = _start_run(sam, pack, cfg, dev, len(indices))
    check_validation(val, primary)

    initial = copy.deepcopy(sam.mask_decoder.state_dict())
    start_state = {k: v.detach().cpu().clone() for k, v in initial.items()}
    t0 = time.time()
    kept = run_epochs(
        run,
        train,
        indices,
        rng,
        lambda epoch, losses: _epoch_metrics(run, val, primary, epoch, losses, t0),
        lambda: copy.deepcopy(sam.mask_decoder.state_dict()),
        initial,
        on_epoch,
        fault_hook,
    )
    sam.mask_decoder.load_state_dict(kept.state)
    for p in sam.parameters():
        p.requires_grad_(False)
    final_state = {k: v.detach().cpu().clone() for k, v in kept.state.items()}
    health = _health(kept.history, run.step_losses)
    if unchanged(start_state, final_state):
        health.append("unchanged")
    return TrainResult(
        decoder_state=final_state,
        history=kept.history,
        best_epoch=kept.best_epoch,
        best_val_miou=kept.best_val,
        steps=run.step,
        seconds=time.time() - t0,
        health=health,
        stopped_early=kept.stopped_early,
        samples_seen=run.seen,
    )


def config_dict(cfg: TrainConfig) -> dict:
    return asdict(cfg)
