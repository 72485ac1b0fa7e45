"""One fine-tuning trial end to end, without Ray: for debugging and quick answers.

    python -m specialsam.trial --task carpet --model tiny-m --n-train 500 --epochs 5

Loads the task (procedural stand-in when no --data-root), fills the embedding cache, scores the
pretrained decoder (baseline), fine-tunes the decoder, scores it again, and prints baseline and
specialised mIoU per prompt strategy with a bootstrap 95% CI of the gain over test images.
``--baseline-only`` encodes the test sets alone and prints the zero-shot mIoU the baseline rule
reads (e.g. to check a task, or new tiny weights, against the 75% threshold in about a minute).
``--method lora`` (or ``full``) tunes the image encoder's last blocks too, on activations cached
once per image (as a sweep's lora / full arms do).
``--config sweeps/<task>.yaml`` takes the task, data, training and scoring settings from a sweep
config, so the figures are that sweep's (the CLI's own defaults differ, e.g. image sizes).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from specialsam.analysis.baseline_rule import predicted_outcome
from specialsam.arms import METHODS
from specialsam.config import EvalSettings, RuleSettings, SweepConfig, load_config, parse_override
from specialsam.device import DeviceChoice, select_device
from specialsam.errors import UserError, check_writable_dir, cli_errors
from specialsam.finetune.cache import EmbeddingCache, default_cache_dir
from specialsam.finetune.encoder_train import run_method_trial
from specialsam.finetune.evaluate import Scores, bootstrap_ci
from specialsam.finetune.methods import MethodSettings, check_method, validate_method
from specialsam.finetune.pack import Pack, PackSettings, build_pack, model_identity, pack_splits
from specialsam.finetune.pipeline import DecoderScores, Scoring, TrialRun, run_trial, score_decoder
from specialsam.finetune.train import TrainConfig
from specialsam.models.registry import MODEL_NAMES, load_model
from specialsam.prompts import STRATEGIES
from specialsam.tasks import TASKS, load_task, n_train_remedy
from specialsam.tasks.procedural.scenes import retention_samples


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
    max_train: int | None = None,
):
    """Driver-side preparation: task samples + model -> encoded cache + pack folder.

    ``test_only`` encodes the test sets alone (no train/val): all a zero-shot baseline needs.
    ``max_train`` encodes only the first that many training samples, all a trial of that size
    uses (sample i never depends on the pool size), and fails early if the pool is smaller."""
    task = load_task(task_name, data_root, data_options, seed)
    if test_only:
        task.train, task.val = [], []
    elif max_train is not None:
        task.keep_first_train(
            max_train,
            "--n-train",
            f"lower it or {n_train_remedy(task_name)}",
        )
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


def format_table(run: TrialRun) -> str:
    """Baseline vs specialised per strategy, with the gain's bootstrap CI over test images; then
    each extra test set (primary prompt)."""
    rows = [
        f"{'prompt':<10} {'baseline':>9} {'specialised':>12} {'gain':>8}   95% CI (bootstrap over images)"
    ]
    spec = run.specialised.scores
    for strat, b in run.baseline.test.items():
        s = spec.test[strat]
        mean, lo, hi = bootstrap_ci(s.per_image_iou - b.per_image_iou)
        rows.append(f"{strat:<10} {b.miou:>9.4f} {s.miou:>12.4f} {mean:>+8.4f}   [{lo:+.4f}, {hi:+.4f}]")
    rows += _click_rows(run.baseline.interactive, spec.interactive)
    for name, b in run.baseline.extra.items():
        s = spec.extra[name]
        mean, lo, hi = bootstrap_ci(s.per_image_iou - b.per_image_iou)
        rows.append(
            f"{'extra ' + name:<10} {b.miou:>9.4f} {s.miou:>12.4f} {mean:>+8.4f}   [{lo:+.4f}, {hi:+.4f}]"
        )
    return "\n".join(rows)


def _click_rows(base, spec) -> list[str]:
    """mIoU after k interactions and clicks to each IoU threshold (NoC), base vs specialised,
    with the paired difference's bootstrap CI over objects."""
    if base is None or spec is None:
        return []
    rows = [f"\ninteractive ({base.strategy}, then corrective clicks):"]
    for j, k in enumerate(base.clicks):
        b, s = base.iou[:, j], spec.iou[:, j]
        mean, lo, hi = bootstrap_ci(s - b)
        rows.append(
            f"{f'{k} click(s)':<10} {b.mean():>9.4f} {s.mean():>12.4f} {mean:>+8.4f}   [{lo:+.4f}, {hi:+.4f}]"
        )
    for t, b in base.noc.items():
        s = spec.noc[t]
        mean, lo, hi = bootstrap_ci((s - b).astype(float))
        label = f"NoC@{round(t * 100)}"
        rows.append(
            f"{label:<10} {b.mean():>9.2f} {s.mean():>12.2f} {mean:>+8.2f}   [{lo:+.2f}, {hi:+.2f}] clicks"
        )
    return rows


def baseline_scores(sam, pack: Pack, scoring: Scoring, dev: DeviceChoice) -> dict[str, dict[str, Scores]]:
    """Zero-shot scores of the pretrained decoder per test set: the figure the baseline rule reads,
    without training anything. Test gets every strategy; the extra test sets (the other wood mode,
    camouflage transfer sets) carry the primary strategy's prompts only, as in a sweep."""
    scores: DecoderScores = score_decoder(sam, pack, scoring, dev)
    primary = scoring.primary
    return {"test": scores.test, **{name: {primary: s} for name, s in scores.extra.items()}}


def format_baseline(scores: dict[str, dict[str, Scores]], threshold: float) -> str:
    """The baseline table (a column per test set, images scored in brackets) and the rule's reading."""
    heads = [f"{n} ({len(next(iter(s.values())).per_image_iou)})" for n, s in scores.items()]
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


_TRAIN, _PACK, _EVAL = TrainConfig(), PackSettings(), EvalSettings()
QUICK_EPOCHS = 5
"""The one default of this CLI that differs on purpose from TrainConfig's (10): a quick look."""

# The CLI's own defaults for the flags a sweep config can also set (argparse leaves them None,
# so a flag given on the command line can be told apart from one --config should fill). Every
# training, pack and scoring default is the library's own (TrainConfig, PackSettings, eval:).
DEFAULTS: dict[str, Any] = {
    "task": "carpet",
    **{
        k: getattr(_TRAIN, k)
        for k in ("n_train", "max_steps", "batch_size", "lr", "bce_weight", "dice_weight", "focal_weight")
    },
    "point_fraction": _TRAIN.point_fraction,
    "epochs": QUICK_EPOCHS,
    "flip": _PACK.flip,
    "strategies": ",".join(_EVAL.strategies),
    "mask_selection": _EVAL.mask_selection,
    "loss_res": _PACK.loss_res,
    "seed": _TRAIN.seed,
    "clicks": ",".join(str(k) for k in _EVAL.clicks),
}


FLOAT_FLAGS = ("lr", "bce_weight", "dice_weight", "focal_weight", "point_fraction")


@dataclass
class TrialSetup:
    """Everything one trial runs with, after flags, --config and defaults are merged."""

    task: str
    data_root: Path | None
    data_options: dict[str, Any]
    seed: int
    train: TrainConfig
    pack: PackSettings
    mask_selection: str
    eval: EvalSettings  # interactive clicking (clicks, NoC thresholds, cap, mask prompt)
    retention: int
    threshold: float
    cache_dir: Path | None
    source: str  # the sweep config the settings came from ("" for none)


def config_flags(cfg: SweepConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """What a sweep config says for this CLI: a phase-A trial of that sweep (its search size, its
    shared training settings, its fixed search parameters), scored the way the sweep scores.

    Returns (values for the flags, TrainConfig fields that have no flag)."""
    e = cfg.eval
    flags: dict[str, Any] = {
        "task": cfg.task,
        "data_root": cfg.data_root,
        "seed": cfg.seed,
        "n_train": cfg.search.n_train,
        "epochs": cfg.train.epochs,
        "max_steps": cfg.train.max_steps,
        "batch_size": cfg.train.batch_size,
        "flip": cfg.train.flip,
        "loss_res": cfg.train.loss_res,
        "strategies": ",".join([e.primary, *(s for s in e.strategies if s != e.primary)]),
        "mask_selection": e.mask_selection,
        "cache_dir": cfg.storage.cache_dir,
        "clicks": ",".join(str(k) for k in e.clicks) or "none",
    }
    # the shared training settings without a flag of their own (patience, warmup, ...), picked the
    # way sweep.trainable picks them, so a new TrainSettings field reaches trials here too
    train = {
        k: v
        for k, v in cfg.train.model_dump().items()
        if k in TrainConfig.__dataclass_fields__ and k not in DEFAULTS
    }
    for name, p in cfg.search.space.items():  # searched ones keep the CLI's value
        if p.type == "fixed":
            (flags if name in DEFAULTS else train)[name] = p.value
    return flags, train


def _sweep_config(path: Path, sets: list[str]) -> SweepConfig:
    """The config with ``--set`` applied; a bare key (``category=tile``) means ``data.<key>``."""
    overrides = []
    for text in sets:
        key, _ = parse_override(text)
        overrides.append(text.strip() if "." in key else "data." + text.strip())
    return load_config(path, overrides)


def resolve(args: argparse.Namespace) -> TrialSetup:
    """Merge the command line, the sweep config (if any) and the CLI defaults, in that order."""
    from_config: dict[str, Any] = {}
    train_extra: dict[str, Any] = {}
    threshold, retention, source = RuleSettings().threshold, 200, ""
    evaluation = EvalSettings()
    options: dict[str, Any] = {}
    if args.config is not None:
        sweep = _sweep_config(args.config, args.set)
        if args.task is not None and args.task != sweep.task:
            raise UserError(
                f"--task {args.task} does not match the task of {args.config} ({sweep.task}); "
                "drop --task, the config names it"
            )
        from_config, train_extra = config_flags(sweep)
        options = dict(sweep.data)
        threshold, retention, source = sweep.rules.threshold, sweep.eval.retention_n, str(args.config)
        evaluation = sweep.eval
    else:
        for kv in args.set:
            k, v = parse_override(kv)
            options[k.removeprefix("data.")] = v

    def pick(name: str) -> Any:
        given = getattr(args, name)
        return given if given is not None else from_config.get(name, DEFAULTS.get(name))

    strategies = [s for s in pick("strategies").split(",") if s]
    bad = [s for s in strategies if s not in STRATEGIES]
    if bad or not strategies:
        raise UserError(
            f"unknown prompt strategy {(bad or [''])[0]!r} in --strategies; "
            f"choose from {', '.join(STRATEGIES)}"
        )
    for name in FLOAT_FLAGS:  # argparse's float() takes "inf" and "nan"
        value = pick(name)
        if not math.isfinite(value):
            raise UserError(f"--{name.replace('_', '-')} must be a finite number (got {value})")
    seed = pick("seed")
    train = TrainConfig(
        **train_extra,
        **{k: pick(k) for k in FLOAT_FLAGS},
        **{k: pick(k) for k in ("n_train", "epochs", "max_steps", "batch_size")},
        seed=seed,
    )
    train.validate()
    data_root, cache_dir = pick("data_root"), pick("cache_dir")
    return TrialSetup(
        task=pick("task"),
        data_root=Path(data_root) if data_root else None,
        data_options=options,
        seed=seed,
        train=train,
        pack=PackSettings(
            loss_res=pick("loss_res"),
            flip=bool(pick("flip")),
            strategies=tuple(strategies),
            primary=strategies[0],
        ),
        mask_selection=pick("mask_selection"),
        eval=_click_settings(pick("clicks"), evaluation),
        retention=0 if args.baseline_only else retention,
        threshold=threshold,
        cache_dir=Path(cache_dir) if cache_dir else None,
        source=source,
    )


def _click_settings(text: str, evaluation: EvalSettings) -> EvalSettings:
    """``--clicks 1,3,5`` (``none``: no interactive evaluation) over the config's ``eval:``."""
    if text.strip().lower() in ("none", "0", ""):
        return evaluation.model_copy(update={"clicks": [], "noc_thresholds": []})
    try:
        clicks = sorted({int(k) for k in text.split(",") if k.strip()})
    except ValueError:
        clicks = []
    if not clicks or clicks[0] < 1:
        raise UserError(
            f"--clicks {text!r}: give click counts >= 1 separated by commas (e.g. 1,3,5), or none"
        )
    return evaluation.model_copy(update={"clicks": clicks})


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = DEFAULTS

    def flag(name: str, **kw: Any) -> None:
        dest = name.removeprefix("--").replace("-", "_")
        kw["help"] = (kw.get("help", "") + f" (default: {d[dest]})").strip()
        ap.add_argument(name, default=None, **kw)

    ap.add_argument(
        "--config",
        type=Path,
        help="take task, data, training and scoring settings from a sweep config (e.g. "
        "sweeps/carpet.yaml), so the figures are that sweep's; flags given here still win, "
        "and --set takes any config key (a bare key means data.<key>)",
    )
    flag("--task", help=f"one of {', '.join(TASKS)}")
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
    flag("--n-train", type=int)
    flag("--epochs", type=int)
    flag("--max-steps", type=int)
    flag("--batch-size", type=int)
    flag("--lr", type=float)
    flag("--bce-weight", type=float)
    flag("--dice-weight", type=float)
    flag("--focal-weight", type=float)
    flag("--point-fraction", type=float)
    flag("--flip", action="store_true", help="add horizontally flipped training samples")
    flag("--strategies", help=f"evaluation prompt strategies, from {', '.join(STRATEGIES)}")
    flag("--mask-selection", choices=["single", "best_iou"])
    flag("--loss-res", type=int, help="loss resolution (0: the model's full input size)")
    flag("--seed", type=int)
    flag(
        "--clicks",
        help="interactive evaluation of the primary prompt: mIoU after these many interactions "
        "(then simulated corrective clicks) and clicks to 85/90%% IoU; none turns it off",
    )
    ap.add_argument("--method", default="decoder", choices=METHODS, help="what trains (default: decoder)")
    ap.add_argument("--blocks", type=int, help="lora / full: the last L encoder blocks tuned (default: all)")
    ap.add_argument("--rank", type=int, default=4, help="lora: adapter rank (default: 4)")
    ap.add_argument("--targets", default="q,v", help="lora: comma list of q k v proj mlp conv (default: q,v)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--baseline-only",
        action="store_true",
        help="score the pretrained decoder on the test sets and stop (no training): "
        "what the baseline rule reads, in about a minute",
    )
    return ap.parse_args(argv)


@cli_errors
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    setup = resolve(args)
    check_writable_dir(
        setup.cache_dir or default_cache_dir(), "--cache-dir" if args.cache_dir else "the embedding cache"
    )
    cfg, strategies = setup.train, list(setup.pack.strategies)
    ev = setup.eval
    scoring = Scoring(
        tuple(strategies),
        strategies[0],
        setup.mask_selection,
        clicks=tuple(ev.clicks),
        noc_thresholds=tuple(ev.noc_thresholds),
        max_clicks=ev.max_clicks,
        feed_logits=ev.feeds_logits(args.model),
    )
    dev = select_device(args.device)
    method = MethodSettings(
        args.method, args.blocks, args.rank, targets=tuple(t for t in args.targets.split(",") if t)
    )
    validate_method(args.model, method)  # before any encoding
    task, sam, info, pack = prepare_pack(
        setup.task,
        args.model,
        setup.data_root,
        setup.data_options,
        setup.seed,
        setup.pack,
        setup.cache_dir,
        args.checkpoint_dir,
        args.checkpoint,
        args.allow_unverified,
        retention=setup.retention,
        test_only=args.baseline_only,
        max_train=cfg.n_train,
    )
    dec = dev.for_decoder(sam.mask_decoder.transformer_dim)  # what training will actually use
    print(f"{task.summary()}; model {args.model} ({info.checkpoint}); device {dec.device} {dec.precision}")
    if args.config is not None:
        print(f"settings from {setup.source} (a phase-A trial of that sweep); flags given here override")
    if args.baseline_only:
        print(
            f"\n{setup.task} [{task.data}] zero-shot (baseline) mIoU, {setup.mask_selection}-mask output, "
            "scored at original resolution; test images in brackets"
        )
        plain = dataclasses.replace(scoring, clicks=(), noc_thresholds=())  # the rule reads one prompt
        print(format_baseline(baseline_scores(sam, pack, plain, dev), setup.threshold))
        return
    if method.tunes_encoder:
        check_method(sam, args.model, method)
        splits = pack_splits(task, setup.pack, retention_samples(setup.retention) if setup.retention else ())
        ident = model_identity(sam, args.model, info.sha256)
        run = run_method_trial(sam, args.model, ident, splits, pack, method, cfg, scoring, dev)
    else:
        run = run_trial(sam, pack, cfg, scoring, dev)
    r = run.specialised.train
    print(
        f"trained {r.steps} steps ({r.samples_seen} samples; method {args.method}) in {r.seconds:.1f}s; "
        f"best epoch {r.best_epoch} "
        f"val mIoU {r.best_val_miou:.4f}; health {r.health_tag}"
    )
    print(
        f"\n{setup.task} [{task.data}] test mIoU, {setup.mask_selection}-mask output, "
        "scored at original resolution"
    )
    print(format_table(run))
    base, spec = run.baseline.retention_miou, run.specialised.scores.retention_miou
    if base is not None and spec is not None:
        print(
            f"\nretention (general-purpose scenes, {strategies[0]}): "
            f"base {base:.4f} -> specialised {spec:.4f} ({spec - base:+.4f})"
        )


if __name__ == "__main__":
    main()
