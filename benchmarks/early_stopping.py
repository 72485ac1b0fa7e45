"""What ASHA + Optuna save: epochs spent and best validation mIoU, against random search to the end.

    .venv/bin/python benchmarks/early_stopping.py            # default phase A, 3 repeats (long on CPU)
    .venv/bin/python benchmarks/early_stopping.py --quick    # 1 repeat, 4 trials, tiny settings
    .venv/bin/python benchmarks/early_stopping.py --json out.json --repeats 5 --trials 8

Two arms, each a phase-A search (``specialsam.sweep.phases.run_phase``, the sweep's own code) with the
same number of trials over the same ``search.space`` at ``search.n_train``:

- **asha+optuna**: the shipped default: Optuna (TPE) proposes, ASHA stops weak trials early on
  validation mIoU (``search.scheduler``'s grace period and reduction factor).
- **random, to the end**: random search, no scheduler: every trial runs to its end.

Both arms keep the trials' own ``train.patience`` (a trial still stops itself after that many
epochs without validation improvement; ``--no-patience`` turns it off in both arms), so the
comparison isolates what the scheduler and the searcher change. Each repeat uses searcher seed =
repeat index in both arms.

Per arm and repeat: **epochs** = the sum over trials of the epochs each trained (its per-epoch Tune
reports, read from Tune's result files, cross-checked with the MLflow ``val_miou`` history);
**best val mIoU** = the best validation mIoU of a trial that finished (what phase A selects on);
the chosen trial's test mIoU on the primary prompt; wall time. Target (from the issue): ASHA's best
val mIoU within 1 mIoU point of random search's, at <= 50% of its epochs (means over repeats).

Torch runs one thread per trial (``--threads``). Wall times taken while other jobs share the
machine are not valid; epochs and mIoU do not depend on the load.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
from typing import Any

import numpy as np
import torch
from _common import machine_info, markdown_table
from overhead import (
    bench_config,
    bench_root,
    common_args,
    header,
    mode_of,
    open_harness,
    write_json,
)

TARGET_POINTS = 1.0  # mIoU points
TARGET_EPOCH_RATIO = 0.5

ARMS = {
    "asha+optuna": ("optuna", True),
    "random, to the end": ("random", False),
}


def mlflow_epochs(h, run) -> dict[str, int]:
    """Trial id -> length of its MLflow ``val_miou`` history (what the MLflow logger recorded)."""
    out = {}
    for t in run.trials:
        rid = h.log.run_ids.get(f"{run.name}/{t.trial_id}")
        if rid:
            out[t.trial_id] = len(h.log.tracker.client.get_metric_history(rid, "val_miou"))
    return out


def arm_result(h, run, primary: str) -> dict[str, Any]:
    done = [r for r in run.records if r.record is not None and not np.isnan(r.record.best_val_miou)]
    best = max(done, key=lambda r: r.record.best_val_miou) if done else None
    epochs = {t.trial_id: t.epochs for t in run.trials}
    from_mlflow = mlflow_epochs(h, run)
    mismatch = {k: (v, from_mlflow.get(k)) for k, v in epochs.items() if from_mlflow.get(k) != v}
    stopped = sum(1 for t in run.trials if t.final is None)
    return {
        "trials": len(run.trials),
        "finished": len(done),
        "stopped_early": stopped,
        "epochs": int(sum(epochs.values())),
        "epochs_per_trial": epochs,
        "epochs_mlflow_mismatch": mismatch,
        "best_val_miou": best.record.best_val_miou if best else float("nan"),
        "best_params": {k: v for k, v in best.params.items()} if best else None,
        "best_test_miou": float(np.mean(best.record.test[primary].per_image_iou)) if best else float("nan"),
        "wall_s": run.wall_s,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common_args(ap)
    ap.add_argument("--repeats", type=int, help="repeats per arm (full 3, quick/smoke 1)")
    ap.add_argument(
        "--trials", type=int, help="trials per arm (full: search.num_samples = 8; quick 4; smoke 2)"
    )
    ap.add_argument("--no-patience", action="store_true", help="train.patience=0 in both arms")
    args = ap.parse_args(argv)
    mode = mode_of(args)
    repeats = args.repeats or {"full": 3, "quick": 1, "smoke": 1}[mode]
    torch.set_num_threads(args.threads)
    sets = list(args.set) + (["train.patience=0"] if args.no_patience else [])
    cfg = bench_config(mode, args.models.split(",")[:1], sets)
    n_trials = args.trials or {"full": cfg.search.num_samples, "quick": 4, "smoke": 2}[mode]
    model = cfg.models[0]
    sched = cfg.search.scheduler
    root = bench_root(args.workdir)
    info = machine_info(torch.device("cpu"))
    print(header("Early stopping: ASHA + Optuna vs random search to the end", info, mode), flush=True)
    print(
        f"- {model}, {n_trials} trials per arm, {repeats} repeat(s); n_train {cfg.search.n_train}, epochs "
        f"{cfg.train.epochs}, max_steps {cfg.train.max_steps}, patience {cfg.train.patience}; ASHA grace "
        f"{sched.grace_period}, reduction factor {sched.reduction_factor:g}; space: "
        f"{', '.join(cfg.search.space)}\n",
        flush=True,
    )
    from specialsam.sweep.phases import tune_param_space

    h = open_harness(cfg, root, args.threads)
    results: list[dict[str, Any]] = []
    try:
        space = {
            **tune_param_space(cfg.search.space),
            "model": model,
            "n_train": cfg.search.n_train,
            "seed": 0,
        }
        for rep in range(repeats):
            for arm, (searcher, use_asha) in ARMS.items():
                asha = sched.model_dump() if use_asha else None
                name = f"{'asha' if use_asha else 'random'}-r{rep}"
                startup = max(1, n_trials // 2)  # as a sweep sets it (SweepConfig.startup_trials)
                run = h.run_phase(name, space, h.ctx("tune"), n_trials, searcher, rep, asha, None, startup)
                results.append({"arm": arm, "repeat": rep, **arm_result(h, run, cfg.eval.primary)})
                r = results[-1]
                print(
                    f"  {arm} repeat {rep}: {r['epochs']} epochs, best val mIoU {r['best_val_miou']:.4f}, "
                    f"{r['wall_s']:.1f} s",
                    flush=True,
                )
    finally:
        h.cleanup_records()
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)

    rows = [
        [
            r["arm"],
            r["repeat"],
            r["trials"],
            r["finished"],
            r["stopped_early"],
            r["epochs"],
            f"{r['best_val_miou']:.4f}",
            f"{r['best_test_miou']:.4f}",
            f"{r['wall_s']:.1f}",
        ]
        for r in results
    ]
    print()
    print(
        markdown_table(
            [
                "arm",
                "repeat",
                "trials",
                "finished",
                "stopped by ASHA",
                "epochs",
                "best val mIoU",
                "its test mIoU",
                "wall s",
            ],
            rows,
        )
    )
    by_arm = {a: [r for r in results if r["arm"] == a] for a in ARMS}
    mean = {
        a: {
            k: statistics.mean(r[k] for r in rs)
            for k in ("epochs", "best_val_miou", "best_test_miou", "wall_s")
        }
        for a, rs in by_arm.items()
    }
    asha, rnd = mean["asha+optuna"], mean["random, to the end"]
    ratio = asha["epochs"] / rnd["epochs"]
    points = 100 * (asha["best_val_miou"] - rnd["best_val_miou"])
    met = points >= -TARGET_POINTS and ratio <= TARGET_EPOCH_RATIO
    summary = [
        [
            a,
            f"{m['epochs']:.1f}",
            f"{m['best_val_miou']:.4f}",
            f"{m['best_test_miou']:.4f}",
            f"{m['wall_s']:.1f}",
        ]
        for a, m in mean.items()
    ]
    print(f"\nMeans over {repeats} repeat(s):\n")
    print(markdown_table(["arm", "epochs", "best val mIoU", "its test mIoU", "wall s"], summary))
    print(
        f"\nASHA + Optuna: {ratio:.0%} of the epochs (wall {asha['wall_s'] / rnd['wall_s']:.0%}), "
        "best val mIoU "
        f"{points:+.2f} points vs random search to the end. Target: within {TARGET_POINTS:g} point at <= "
        f"{TARGET_EPOCH_RATIO:.0%} of the epochs: {'met' if met else 'NOT met'}"
        + ("" if mode == "full" else f" (judged at default settings only; this is --{mode})")
    )
    if any(r["epochs_mlflow_mismatch"] for r in results):
        print(
            "warning: Tune and MLflow disagree on some trials' epoch counts: "
            + str(
                {
                    f"{r['arm']}/{r['repeat']}": r["epochs_mlflow_mismatch"]
                    for r in results
                    if r["epochs_mlflow_mismatch"]
                }
            )
        )
    write_json(
        args.json,
        {
            "mode": mode,
            "machine": info,
            "settings": {
                "model": model,
                "trials": n_trials,
                "repeats": repeats,
                "n_train": cfg.search.n_train,
                "train": h.ctx("tune").train.model_dump(),
                "scheduler": sched.model_dump(),
                "space": {k: v.model_dump() for k, v in cfg.search.space.items()},
            },
            "prepare_s": h.prepare_s,
            "runs": results,
            "means": mean,
            "epoch_ratio": ratio,
            "best_val_points": points,
            "target": {
                "target": f"best val mIoU within {TARGET_POINTS:g} point "
                f"at <= {TARGET_EPOCH_RATIO:.0%} of the epochs",
                "epoch_ratio": ratio,
                "points": points,
                "met": met,
            },
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
