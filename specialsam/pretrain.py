"""Pretrain a tiny generalist from scratch on procedural scenes.

    python -m specialsam.pretrain --size s             # the shipped tiny-s (resumes if interrupted)
    python -m specialsam.pretrain --size s --steps 50  # smoke run
    python -m specialsam.pretrain --size m --eval-only # re-measure the shipped weights
    python -m specialsam.pretrain --size s --eval-only --weights checkpoints/tiny-s-8000.pt
    python -m specialsam.pretrain --ceiling            # what 64x64 low-res logits can draw at best

SAM-style training: every target of a scene is prompted by a point and by a jittered box from one
encoder pass; the single-mask output learns every prompt, the three multimask outputs learn
single points with SAM's min-over-outputs loss, the IoU head regresses the IoU it achieves.
The data stream is a pure function of (seed, step), and the learning rate of the step, so a
checkpoint (weights + optimizer + step) resumes the very same run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from specialsam.errors import UserError, cli_errors
from specialsam.finetune.metrics import iou as mask_iou
from specialsam.models.batched import decode_batched
from specialsam.models.inference import encode, predict_masks
from specialsam.models.registry import WEIGHTS_DIR, load_model
from specialsam.models.tiny import build_tiny_sam, count_parameters
from specialsam.prompts import Prompt, make_prompt, training_prompt
from specialsam.tasks.procedural.scenes import STUFF_P, Scene, heldout_scenes, make_scene

LOSS_RES = 128


@dataclass
class PretrainConfig:
    size: str = "s"
    steps: int = 3000
    batch: int = 16
    targets_per_image: int = 4
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup: int = 150
    seed: int = 0
    stuff_from: int = 0
    """First step whose scenes include stuff regions (stage 2); earlier steps use stage-1 scenes."""

    @property
    def name(self) -> str:
        return f"tiny-{self.size}"


def lr_at(cfg: PretrainConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


def batch_scenes(cfg: PretrainConfig, step: int) -> list[Scene]:
    stuff_p = STUFF_P if step >= cfg.stuff_from else 0.0
    return [make_scene((cfg.seed, step, i), stuff_p=stuff_p) for i in range(cfg.batch)]


def _prompts_for(scenes: list[Scene], cfg: PretrainConfig, step: int):
    """(image index, prompt, target, is_single_point) for every training prompt of the batch."""
    rng = np.random.default_rng((cfg.seed, step, 10**6))
    items = []
    for b, sc in enumerate(scenes):
        order = rng.permutation(len(sc.targets))[: cfg.targets_per_image]
        for t in order:
            m = sc.targets[t]
            box = training_prompt(m, rng, point_fraction=0.0)
            items.append((b, box, m, False))
            if sc.box_only[t]:
                continue
            u = rng.random()
            if u < 0.4:
                pt = make_prompt(m, "center", rng)
            elif u < 0.85:
                pt = training_prompt(m, rng, point_fraction=1.0)
            else:
                pt = make_prompt(m, "random3", rng)
            items.append((b, pt, m, pt is not None and len(pt.labels) == 2))
    return [it for it in items if it[1] is not None]


def _seg_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-prompt BCE + Dice; logits/target (..., H, W)."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean((-2, -1))
    p = logits.sigmoid()
    inter = (p * target).sum((-2, -1))
    dice = 1 - (2 * inter + 1) / (p.sum((-2, -1)) + target.sum((-2, -1)) + 1)
    return bce + dice


def _soft_iou(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    pred = (logits > 0).float()
    inter = (pred * (target > 0.5)).sum((-2, -1))
    union = ((pred + (target > 0.5).float()) > 0).float().sum((-2, -1))
    return inter / union.clamp(min=1)


def train_step(sam, opt, cfg: PretrainConfig, step: int) -> float:
    scenes = batch_scenes(cfg, step)
    x = torch.from_numpy(np.stack([s.image for s in scenes])).permute(0, 3, 1, 2).float()
    emb = sam.image_encoder(sam.preprocess(x))
    items = _prompts_for(scenes, cfg, step)
    total = torch.zeros(())
    n = 0
    # Group by token count (single point/box: 2 tokens; three points: 4) for one decoder call each.
    for k in sorted({len(it[1].labels) for it in items}):
        group = [it for it in items if len(it[1].labels) == k]
        idx = torch.tensor([it[0] for it in group])
        coords = torch.from_numpy(np.stack([it[1].coords for it in group]))
        labels = torch.from_numpy(np.stack([it[1].labels for it in group]))
        masks, iou_pred = decode_batched(sam.mask_decoder, sam.prompt_encoder, emb[idx], coords, labels)
        tgt = torch.from_numpy(np.stack([it[2] for it in group])).float()[:, None]
        tgt = F.adaptive_avg_pool2d(tgt, LOSS_RES)[:, 0]
        logits = F.interpolate(masks, size=(LOSS_RES, LOSS_RES), mode="bilinear", align_corners=False)
        losses = _seg_loss(logits, tgt[:, None].expand_as(logits))  # (P, 4)
        single_pt = torch.tensor([it[3] for it in group])
        seg = losses[:, 0] + torch.where(single_pt, losses[:, 1:].min(1).values, torch.zeros(()))
        with torch.no_grad():
            actual = _soft_iou(logits, tgt[:, None].expand_as(logits))
        iou_err = (iou_pred - actual) ** 2
        iou_loss = iou_err[:, 0] + torch.where(single_pt, iou_err[:, 1:].mean(1), torch.zeros(()))
        total = total + (seg + iou_loss).sum()
        n += len(group)
    loss = total / max(n, 1)
    for g in opt.param_groups:
        g["lr"] = lr_at(cfg, step)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(sam.parameters(), 1.0)
    opt.step()
    return float(loss.detach())


def evaluate_generalist(
    sam,
    n_scenes: int = 1000,
    strategies: tuple[str, ...] = ("center", "box", "random3"),
    stage1: bool = True,
    stuff_p: float = STUFF_P,
) -> dict[str, float]:
    """Zero-shot mIoU on held-out scenes per prompt strategy (single-mask output, 256 px)."""
    sam.eval()
    scenes = heldout_scenes(n_scenes, stuff_p=stuff_p)
    emb = encode(sam, [s.image for s in scenes], batch_size=32)
    out: dict[str, float] = {}
    for strat in strategies:
        rng = np.random.default_rng(1)
        rows, prompts, gts = [], [], []
        for i, m in _scored_targets(scenes, with_box_only=strat == "box"):
            p: Prompt | None = make_prompt(m, strat, rng)
            if p is None:
                continue
            rows.append(i)
            prompts.append(p)
            gts.append(m)
        preds = predict_masks(sam, emb[torch.tensor(rows)], prompts, [m.shape for m in gts])
        ious = np.array([mask_iou(p, g) for p, g in zip(preds, gts)])
        out[strat] = float(ious.mean())
        if strat == "center":  # where the misses are: small targets vs the rest
            out["center_small"], out["center_rest"] = _small_and_rest(ious, gts)
    out["n_targets"] = len(gts)  # of the last strategy
    if stage1:  # the stage-1 held-out scenes (no stuff regions): comparable with earlier cards
        old = evaluate_generalist(sam, n_scenes, ("center",), stage1=False, stuff_p=0.0)
        out["center_stage1_scenes"] = old["center"]
    return out


def _scored_targets(scenes: list[Scene], with_box_only: bool):
    """(scene index, mask) of each held-out target that is scored: the whole of a nested object
    only by box prompts (a point on it would be ambiguous), empty masks never."""
    for i, sc in enumerate(scenes):
        for m, box_only in zip(sc.targets, sc.box_only):
            if m.any() and (with_box_only or not box_only):
                yield i, m


def _small_and_rest(ious: np.ndarray, masks: list[np.ndarray]) -> tuple[float, float]:
    """Mean IoU on targets under ``SMALL_AREA`` pixels, and on the others."""
    small = np.array([m.sum() < SMALL_AREA for m in masks])
    return float(ious[small].mean()), float(ious[~small].mean())


def lowres_oracle(mask: np.ndarray) -> np.ndarray:
    """The best a decoder could draw of ``mask`` (256 px) through SAM's 4x-coarser logits.

    The mask is averaged over 4x4 blocks (its 64x64 low-res image), centred on 0.5 so that the
    sign is the decision, and post-processed as predictions are (bilinear to 256 px, threshold 0).
    Thin lines (under 2 px) and small specks vanish; large regions come back almost exactly."""
    x = torch.from_numpy(mask.astype(np.float32))[None, None]
    low = F.avg_pool2d(x, LOWRES_FACTOR) - 0.5
    return (F.interpolate(low, size=mask.shape, mode="bilinear", align_corners=False)[0, 0] > 0).numpy()


def lowres_ceiling(n_scenes: int = 1000, stuff_p: float = STUFF_P) -> dict[str, float]:
    """mIoU of ``lowres_oracle`` on the point-prompted held-out targets: the output resolution's
    ceiling for ``evaluate_generalist``'s point figures (all, small targets, the rest)."""
    masks = [m for _, m in _scored_targets(heldout_scenes(n_scenes, stuff_p=stuff_p), with_box_only=False)]
    ious = np.array([mask_iou(lowres_oracle(m), m) for m in masks])
    small, rest = _small_and_rest(ious, masks)
    return {"all": float(ious.mean()), "small": small, "rest": rest, "n": len(ious)}


def _resume_changes(old: dict, new: dict, step: int, ckpt_path: Path) -> list[str]:
    """What a resume may change without rewriting the past, as notes for the card.

    The budget (``steps``; the cosine follows the new total from here on) and the start of
    stage 2 (``stuff_from``, as long as both old and new lie at or after the resumed step, so
    the data already trained on stays what it was). Anything else is a different run."""
    fixed = {k: v for k, v in new.items() if k not in ("steps", "stuff_from")}
    if (
        {k: old.get(k) for k in fixed} != fixed
        or min(old["stuff_from"], new["stuff_from"]) < step
        and (old["stuff_from"] != new["stuff_from"])
    ):
        raise UserError(
            f"checkpoint {ckpt_path} was written with different settings {old}; "
            "pass the same settings to resume, or delete it to start over"
        )
    notes = []
    if old["steps"] != new["steps"]:
        notes.append(f"steps changed from {old['steps']} to {new['steps']} at step {step}")
    if old["stuff_from"] != new["stuff_from"]:
        notes.append(f"stage 2 (stuff-region scenes) starts at step {new['stuff_from']}, set at step {step}")
    return notes


def _save_atomic(obj: object, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _resume(
    cfg: PretrainConfig, ckpt_path: Path, sam: torch.nn.Module, opt: torch.optim.Optimizer
) -> tuple[int, float, list[str], list[int]]:
    """Load the checkpoint into ``sam`` and ``opt`` when there is one, noting what changed since;
    returns (step, elapsed seconds, notes, torch thread counts of the run's segments)."""
    step, elapsed = 0, 0.0
    notes: list[str] = []
    threads: list[int] = []  # torch thread counts of the run's segments, so the card can say
    now = torch.get_num_threads()
    if ckpt_path.exists():
        state = torch.load(ckpt_path, weights_only=True)
        old, notes = state["config"], list(state.get("notes", []))
        # Runs from before stage 2 existed never saw stuff scenes: as if it started after their end.
        old = {"stuff_from": max(old["steps"], int(state["step"])), **old}
        for note in _resume_changes(old, asdict(cfg), int(state["step"]), ckpt_path):
            print(f"resuming with {note}", flush=True)
            notes.append(note)
        threads = list(state.get("threads", []))
        if threads and threads[-1] != now:
            note = f"torch threads changed from {threads[-1]} to {now} at step {state['step']}"
            print(f"resuming with {note}", flush=True)
            notes.append(note)
        sam.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step, elapsed = int(state["step"]), float(state["elapsed"])
        print(f"resuming {cfg.name} at step {step}/{cfg.steps} from {ckpt_path}", flush=True)
    if not threads or threads[-1] != now:
        threads.append(now)
    return step, elapsed, notes, threads


def pretrain(
    cfg: PretrainConfig,
    ckpt_path: Path,
    out_path: Path | None,
    ckpt_minutes: float = 3.0,
    stop_after: int | None = None,
    log_every: int = 25,
) -> dict:
    """Train (resuming from ``ckpt_path`` when it exists); returns the run's summary."""
    torch.manual_seed(cfg.seed)
    sam = build_tiny_sam(cfg.name)
    opt = torch.optim.AdamW(sam.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    step, elapsed, notes, threads = _resume(cfg, ckpt_path, sam, opt)
    sam.train()
    t0, last_ckpt, ema = time.time() - elapsed, time.time(), None
    end = cfg.steps if stop_after is None else min(cfg.steps, step + stop_after)

    def checkpoint() -> None:
        _save_atomic(
            {
                "model": sam.state_dict(),
                "optimizer": opt.state_dict(),
                "step": step,
                "elapsed": time.time() - t0,
                "config": asdict(cfg),
                "notes": notes,
                "threads": threads,
            },
            ckpt_path,
        )

    while step < end:
        loss = train_step(sam, opt, cfg, step)
        ema = loss if ema is None else 0.98 * ema + 0.02 * loss
        step += 1
        if step % log_every == 0 or step == end:
            rate = step / max(time.time() - t0, 1e-9)
            print(
                f"{cfg.name} step {step}/{cfg.steps} loss {ema:.4f} lr {lr_at(cfg, step - 1):.2e} "
                f"({rate:.2f} steps/s)",
                flush=True,
            )
        if time.time() - last_ckpt > ckpt_minutes * 60:
            checkpoint()
            last_ckpt = time.time()
    checkpoint()
    summary = {
        "name": cfg.name,
        "config": asdict(cfg),
        "step": step,
        "params": count_parameters(sam),
        "train_seconds": round(time.time() - t0, 1),
        "notes": notes,
        "threads": threads,
    }
    if step >= cfg.steps and out_path is not None:
        _save_atomic({k: v.clone() for k, v in sam.state_dict().items()}, out_path)
        print(f"wrote {out_path}", flush=True)
    return summary


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=["s", "m"], default="s")
    ap.add_argument("--steps", type=int, help="total optimizer steps (default: the shipped run's)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--stuff-from",
        type=int,
        help="first step with stage-2 (stuff-region) scenes (default: 80%% of the steps)",
    )
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 per job on small CPUs)")
    ap.add_argument("--checkpoint", type=Path, help="resume file (default checkpoints/pretrain-<name>.pt)")
    ap.add_argument(
        "--out",
        type=Path,
        help="final weights (default: the package's weights/<name>.pt "
        "for the shipped settings, else next to the checkpoint)",
    )
    ap.add_argument("--checkpoint-minutes", type=float, default=3.0)
    ap.add_argument("--stop-after", type=int, help="stop after this many steps (resume later)")
    ap.add_argument("--eval-only", action="store_true", help="measure the shipped weights and exit")
    ap.add_argument(
        "--weights", type=Path, help="with --eval-only: measure this weights file instead of the shipped one"
    )
    ap.add_argument("--eval-scenes", type=int, default=1000)
    ap.add_argument(
        "--ceiling",
        action="store_true",
        help="print the mIoU a perfect decoder could reach through 64x64 low-res logits and exit",
    )
    return ap


def _run_settings(args: argparse.Namespace) -> tuple[PretrainConfig, Path, Path, bool]:
    """The run the flags ask for: (config, checkpoint, weights file, whether it is the shipped run).
    A resumed run keeps its stage-2 start when only the budget changed."""
    shipped, name = SHIPPED[args.size], f"tiny-{args.size}"
    steps = args.steps or shipped.steps
    cfg = PretrainConfig(
        size=args.size,
        steps=steps,
        batch=args.batch,
        lr=args.lr or shipped.lr,
        seed=args.seed,
        stuff_from=(
            args.stuff_from
            if args.stuff_from is not None
            else shipped.stuff_from
            if args.steps is None
            else int(STUFF_SHARE * steps)
        ),
    )
    is_shipped = asdict(cfg) == asdict(shipped)
    ckpt = args.checkpoint or Path("checkpoints") / f"pretrain-{name}{'' if is_shipped else '-custom'}.pt"
    if args.stuff_from is None and ckpt.exists():  # a budget change keeps the run's stage-2 start
        saved = torch.load(ckpt, weights_only=True)["config"]
        cfg.stuff_from = int(saved.get("stuff_from", cfg.stuff_from))
    out = args.out or (WEIGHTS_DIR / f"{name}.pt" if is_shipped else ckpt.with_name(f"{name}-weights.pt"))
    return cfg, ckpt, out, is_shipped


def _write_card(summary: dict, out: Path, name: str, is_shipped: bool, eval_scenes: int) -> None:
    """The model card next to the weights: the run's summary, its zero-shot mIoU, the machine."""
    if is_shipped or eval_scenes:
        sam = build_tiny_sam(name)
        sam.load_state_dict(torch.load(out, weights_only=True))
        n_eval = eval_scenes if is_shipped else min(eval_scenes, 100)
        summary["zero_shot_miou"] = evaluate_generalist(sam, n_eval)
        summary["eval_scenes"] = n_eval
    counts = " then ".join(str(n) for n in summary.pop("threads"))  # e.g. "1 then 2" after a resume
    summary["machine"] = f"{platform.processor() or platform.machine()}, {counts} torch thread(s)"
    summary["python"] = sys.version.split()[0]
    summary["torch"] = torch.__version__
    card = out.with_suffix(".json")
    card.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2), flush=True)


@cli_errors
def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    name = f"tiny-{args.size}"
    if args.ceiling:
        print(json.dumps({"lowres_ceiling": lowres_ceiling(args.eval_scenes)}, indent=2))
        return
    if args.weights and not args.eval_only:
        raise UserError("--weights only works with --eval-only; to resume training, use --checkpoint")
    if args.eval_only:
        # the registry's loader: the shipped weights, or any file checked key by key (no record kept)
        sam, _ = load_model(name, checkpoint=args.weights, allow_unverified=args.weights is not None)
        res = evaluate_generalist(sam, args.eval_scenes)
        print(json.dumps({name: res}, indent=2))
        return
    cfg, ckpt, out, is_shipped = _run_settings(args)
    summary = pretrain(cfg, ckpt, out, args.checkpoint_minutes, args.stop_after)
    if summary["step"] < cfg.steps:
        print(f"stopped at step {summary['step']}; rerun the same command to resume", flush=True)
        return
    _write_card(summary, out, name, is_shipped, args.eval_scenes)


SMALL_AREA = 300
"""Targets under this many pixels (of 256 x 256) count as small in the per-size figures."""
LOWRES_FACTOR = 4
"""SAM's decoder draws masks at a quarter of the input side (64 x 64 for the 256-px tiny models)."""
STUFF_SHARE = 0.8
"""Default start of stage 2, as a share of the steps: the last fifth also sees stuff regions."""
SHIPPED = {  # the shipped weights' final settings; they were trained as a chain of resumes (card)
    "s": PretrainConfig(size="s", steps=12000, lr=2e-3, stuff_from=2400),
    "m": PretrainConfig(size="m", steps=16000, lr=1.5e-3, stuff_from=3200),
}

if __name__ == "__main__":
    main()
