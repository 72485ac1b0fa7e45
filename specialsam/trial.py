"""One fine-tuning trial end to end, without Ray: for debugging and quick answers.

    python -m specialsam.trial --task carpet --model tiny-m --n-train 500 --epochs 5

Loads the task (procedural stand-in when no --data-root), fills the embedding cache, scores the
pretrained decoder (baseline), fine-tunes the decoder, scores it again, and prints baseline and
specialised mIoU per prompt strategy with a bootstrap 95% CI of the gain over test images.
``--baseline-only`` encodes the test sets alone and prints the zero-shot mIoU the baseline rule
reads (e.g. to check a task, or new tiny weights, against the 75% threshold in about a minute).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from specialsam.config import RuleSettings, parse_override
from specialsam.device import DeviceChoice, select_device
from specialsam.embeddings import EmbeddingCache, default_cache_dir
from specialsam.errors import UserError, cli_errors
from specialsam.evaluate import Scores, bootstrap_ci, score_split
from specialsam.models import MODEL_NAMES, load_model
from specialsam.pack import EXTRA_PREFIX, Pack, PackSettings, build_pack, model_identity
from specialsam.prompts import STRATEGIES
from specialsam.rules import predicted_outcome
from specialsam.scenes import retention_samples
from specialsam.tasks import TASKS, load_task
from specialsam.train import TrainConfig, TrainResult, train_decoder


@dataclass
class TrialOutcome:
    baseline: dict[str, Scores]
    specialised: dict[str, Scores]
    train: TrainResult
    retention: tuple[float, float] | None  # (base, specialised) mIoU on the general-purpose set


def prepare_pack(
    task_name: str,
    model_name: str,
    data_root: Path | None = None,
    data_options: dict | None = None,
    seed: int = 0,
    settings: PackSettings | None = None,
    cache_dir: Path | None = None,
    checkpoint_dir: Path | None = None,
    checkpoint: Path | None = None,
    allow_unverified: bool = False,
    retention: int = 200,
    random_init: bool = False,
    test_only: bool = False,
):
    """Driver-side preparation: task samples + model -> encoded cache + pack folder.

    ``test_only`` encodes the test sets alone (no train/val): all a zero-shot baseline needs."""
    task = load_task(task_name, data_root, data_options, seed)
    if test_only:
        task.train, task.val = [], []
    for line in task.notes:
        print(f"note: {line}", file=sys.stderr)
    sam, info = load_model(
        model_name,
        checkpoint_dir=checkpoint_dir,
        checkpoint=checkpoint,
        allow_unverified=allow_unverified,
        random_init=random_init,
    )
    cache = EmbeddingCache(cache_dir or default_cache_dir())
    folder = build_pack(
        task,
        sam,
        model_identity(sam, model_name, info.sha256),
        cache,
        settings or PackSettings(),
        retention=retention_samples(retention) if retention else (),
    )
    return task, sam, info, Pack(folder, cache)


def run_trial(
    sam,
    pack: Pack,
    cfg: TrainConfig,
    strategies,
    dev: DeviceChoice | None = None,
    mask_selection: str = "single",
    extra_metrics: bool = False,
) -> TrialOutcome:
    dev = dev or select_device()
    test = pack.split("test")
    baseline = score_split(sam, test, strategies, mask_selection, extra_metrics, dev)
    base_ret = None
    if pack.has("retention"):
        base_ret = score_split(sam, pack.split("retention"), [pack.manifest["primary"]], dev=dev)
    result = train_decoder(sam, pack, cfg, dev)
    specialised = score_split(sam, test, strategies, mask_selection, extra_metrics, dev)
    retention = None
    if base_ret is not None:
        spec_ret = score_split(sam, pack.split("retention"), [pack.manifest["primary"]], dev=dev)
        p = pack.manifest["primary"]
        retention = (base_ret[p].miou, spec_ret[p].miou)
    return TrialOutcome(baseline, specialised, result, retention)


def format_table(outcome: TrialOutcome) -> str:
    rows = [
        f"{'prompt':<10} {'baseline':>9} {'specialised':>12} {'gain':>8}   95% CI (bootstrap over images)"
    ]
    for strat, b in outcome.baseline.items():
        s = outcome.specialised[strat]
        mean, lo, hi = bootstrap_ci(s.per_image_iou - b.per_image_iou)
        rows.append(f"{strat:<10} {b.miou:>9.4f} {s.miou:>12.4f} {mean:>+8.4f}   [{lo:+.4f}, {hi:+.4f}]")
    return "\n".join(rows)


def baseline_scores(
    sam, pack: Pack, strategies, dev: DeviceChoice, mask_selection: str = "single"
) -> dict[str, dict[str, Scores]]:
    """Zero-shot scores of the pretrained decoder per test set: the figure the baseline rule reads,
    without training anything. Test gets every strategy; the extra test sets (the other wood mode,
    camouflage transfer sets) carry the primary strategy's prompts only, as in a sweep."""
    out = {"test": score_split(sam, pack.split("test"), strategies, mask_selection, dev=dev)}
    for name in pack.extra_tests:
        split = pack.split(EXTRA_PREFIX + name)
        out[EXTRA_PREFIX + name] = score_split(
            sam, split, [pack.manifest["primary"]], mask_selection, dev=dev
        )
    return out


def format_baseline(scores: dict[str, dict[str, Scores]], threshold: float) -> str:
    """The baseline table (a column per test set, images scored in brackets) and the rule's reading."""
    heads = [
        f"{n.removeprefix(EXTRA_PREFIX)} ({len(next(iter(s.values())).per_image_iou)})"
        for n, s in scores.items()
    ]
    width = max(12, *(len(h) + 2 for h in heads))
    rows = [f"{'prompt':<10}" + "".join(f"{h:>{width}}" for h in heads)]
    strategies = list(scores["test"])
    for strat in strategies:
        cells = (f"{s[strat].miou:.4f}" if strat in s else "-" for s in scores.values())
        rows.append(f"{strat:<10}" + "".join(f"{c:>{width}}" for c in cells))
    first = scores["test"][strategies[0]].miou
    helps = predicted_outcome(first, threshold) == "gain"
    verdict = "predicts fine-tuning helps" if helps else "predicts fine-tuning does not help"
    rows.append(
        f"\nbaseline rule (fine-tune only below {threshold:.2f} mIoU): test {strategies[0]} {first:.4f} "
        f"-> the rule {verdict}; a sweep tests whether it does"
    )
    return "\n".join(rows)


@cli_errors
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="carpet", help=f"one of {', '.join(TASKS)}")
    ap.add_argument("--model", default="tiny-m", help=f"one of {', '.join(MODEL_NAMES)}")
    ap.add_argument("--data-root", type=Path, help="real dataset root (default: procedural stand-in)")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="task data setting, e.g. --set category=tile --set n_synthetic=300",
    )
    ap.add_argument(
        "--checkpoint-dir",
        type=Path,
        help="folder with official SAM/MobileSAM checkpoints (default: $SPECIALSAM_CHECKPOINTS)",
    )
    ap.add_argument("--checkpoint", type=Path, help="a specific checkpoint file")
    ap.add_argument("--allow-unverified", action="store_true", help="load a checkpoint whose hash is unknown")
    ap.add_argument(
        "--cache-dir", type=Path, help="embedding cache (default: $SPECIALSAM_CACHE or ~/.cache/specialsam)"
    )
    ap.add_argument("--n-train", type=int, default=500)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--max-steps", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=TrainConfig.lr)
    ap.add_argument("--bce-weight", type=float, default=0.5)
    ap.add_argument("--dice-weight", type=float, default=0.5)
    ap.add_argument("--focal-weight", type=float, default=0.0)
    ap.add_argument("--point-fraction", type=float, default=0.5)
    ap.add_argument("--flip", action="store_true", help="add horizontally flipped training samples")
    ap.add_argument(
        "--strategies",
        default="center,box,random3",
        help=f"evaluation prompt strategies, from {', '.join(STRATEGIES)}",
    )
    ap.add_argument("--mask-selection", choices=["single", "best_iou"], default="single")
    ap.add_argument(
        "--loss-res", type=int, default=256, help="loss resolution (0: the model's full input size)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--baseline-only",
        action="store_true",
        help="score the pretrained decoder on the test sets and stop (no training): "
        "what the baseline rule reads, in about a minute",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    strategies = [s for s in args.strategies.split(",") if s]
    bad = [s for s in strategies if s not in STRATEGIES]
    if bad:
        raise UserError(
            f"unknown prompt strategy {bad[0]!r} in --strategies; choose from {', '.join(STRATEGIES)}"
        )
    options: dict = {}
    for kv in args.set:
        k, v = parse_override(kv)
        options[k.removeprefix("data.")] = v
    cfg = TrainConfig(
        lr=args.lr,
        bce_weight=args.bce_weight,
        dice_weight=args.dice_weight,
        focal_weight=args.focal_weight,
        point_fraction=args.point_fraction,
        n_train=args.n_train,
        epochs=args.epochs,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    cfg.validate()
    dev = select_device(args.device)
    settings = PackSettings(
        loss_res=args.loss_res, flip=args.flip, strategies=tuple(strategies), primary=strategies[0]
    )
    task, sam, info, pack = prepare_pack(
        args.task,
        args.model,
        args.data_root,
        options,
        args.seed,
        settings,
        args.cache_dir,
        args.checkpoint_dir,
        args.checkpoint,
        args.allow_unverified,
        retention=0 if args.baseline_only else 200,
        test_only=args.baseline_only,
    )
    if not args.baseline_only and cfg.n_train > pack.n_train_pool:
        raise UserError(
            f"--n-train {cfg.n_train} is larger than the {pack.n_train_pool} training samples "
            f"available for {args.task}"
        )
    dec = dev.for_decoder(sam.mask_decoder.transformer_dim)  # what training will actually use
    print(f"{task.summary()}; model {args.model} ({info.checkpoint}); device {dec.device} {dec.precision}")
    if args.baseline_only:
        print(
            f"\n{args.task} [{task.data}] zero-shot (baseline) mIoU, {args.mask_selection}-mask output, "
            "scored at original resolution; test images in brackets"
        )
        scores = baseline_scores(sam, pack, strategies, dev, args.mask_selection)
        print(format_baseline(scores, RuleSettings().threshold))
        return
    outcome = run_trial(sam, pack, cfg, strategies, dev, args.mask_selection)
    r = outcome.train
    print(
        f"trained {r.steps} steps ({r.samples_seen} samples) in {r.seconds:.1f}s; best epoch {r.best_epoch} "
        f"val mIoU {r.best_val_miou:.4f}; health {r.health_tag}"
    )
    print(
        f"\n{args.task} [{task.data}] test mIoU, {args.mask_selection}-mask output, "
        "scored at original resolution"
    )
    print(format_table(outcome))
    if outcome.retention:
        b, s = outcome.retention
        print(
            f"\nretention (general-purpose scenes, {strategies[0]}): "
            f"base {b:.4f} -> specialised {s:.4f} ({s - b:+.4f})"
        )


if __name__ == "__main__":
    main()
