"""First look at the method axis before the sweep has it: decoder vs lora vs full on a stand-in.

    .venv/bin/python benchmarks/methods_standin.py --task carpet --models tiny-s,tiny-m
    .venv/bin/python benchmarks/methods_standin.py --task camouflage --n-train 250 --seeds 0,1

Per (model, method, seed): the shipped tiny generalist fine-tuned on the task's stand-in
(``finetune.pipeline.specialise`` for decoder, ``encoder_train.specialise_with_method`` on cached
activations for lora / full, same ``TrainConfig``), scored on the test split (centre point). Prints
the gain over the zero-shot baseline with a bootstrap 95% CI over test images and seeds (per-image
IoU differences pooled over seeds), retention on general-purpose scenes, trainable parameters and
trial seconds. Not a sweep: one fixed lr per method, no search; the sweep's phase A tunes them.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _common import machine_info, markdown_table, run_and_save

from specialsam.device import select_device
from specialsam.finetune.activations import ActivationCache, CachedActivations, precompute_activations
from specialsam.finetune.encoder_train import specialise_with_method
from specialsam.finetune.evaluate import bootstrap_ci
from specialsam.finetune.methods import MethodSettings, prepare_method
from specialsam.finetune.pack import PackSettings, model_identity
from specialsam.finetune.pipeline import Scoring, score_decoder, specialise
from specialsam.finetune.train import TrainConfig
from specialsam.models.registry import load_model
from specialsam.tasks.procedural.scenes import retention_samples
from specialsam.trial import prepare_pack

OPTIONS = {
    "carpet": {"standin_size": 256, "n_val": 50},
    "camouflage": {},
}


def _trial(model: str, method: str, lr: float, seed: int, pack, samples, info, args, scoring, dev):
    sam, _ = load_model(model)
    cfg = TrainConfig(
        lr=lr, n_train=args.n_train, epochs=args.epochs, max_steps=args.max_steps, batch_size=16, seed=seed
    )
    plan = prepare_method(sam, model, MethodSettings(method))
    if method == "decoder":
        t0 = time.time()
        return specialise(sam, pack, cfg, scoring, dev), plan, time.time() - t0
    cache = ActivationCache(pack.cache.root)
    identity = model_identity(sam, model, info.sha256)
    precompute_activations(
        cache, sam, plan, identity, [s.image for s in samples], [s.image_hash() for s in samples]
    )
    source = CachedActivations(cache, plan.start_name)
    t0 = time.time()  # the activation precompute is the driver's, once per image: not a trial's
    return specialise_with_method(sam, plan, pack, source, cfg, scoring, dev), plan, time.time() - t0


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    dev = select_device("cpu", "fp32")
    scoring = Scoring(strategies=("center",), primary="center")
    rows, out = [], []
    lrs = {"decoder": args.lr, "lora": args.lr_lora, "full": args.lr_full}
    for model in args.models.split(","):
        options = dict(OPTIONS.get(args.task, {}), n_synthetic=args.n_train) if args.task == "carpet" else {}
        task, sam, info, pack = prepare_pack(
            args.task,
            model,
            data_options=options,
            settings=PackSettings(strategies=("center",)),
            retention=args.retention,
            max_train=args.n_train,
        )
        samples = [*task.train, *task.val, *task.test, *retention_samples(args.retention)]
        samples += [s for v in getattr(task, "extra_tests", {}).values() for s in v]
        base = score_decoder(sam, pack, scoring, dev)
        b_iou = base.test["center"].per_image_iou
        for method in args.methods.split(","):
            diffs, secs, rets, mious = [], [], [], []
            for seed in [int(s) for s in args.seeds.split(",")]:
                res, plan, s = _trial(
                    model, method, lrs[method], seed, pack, samples, info, args, scoring, dev
                )
                secs.append(s)
                diffs.append(res.scores.test["center"].per_image_iou - b_iou)
                mious.append(res.scores.test["center"].miou)
                rets.append(res.scores.retention_miou)
            mean, lo, hi = bootstrap_ci(np.concatenate(diffs))
            r = {
                "task": args.task,
                "model": model,
                "method": method,
                "baseline": base.test["center"].miou,
                "specialised": float(np.mean(mious)),
                "gain": mean,
                "ci": [lo, hi],
                "retention_change": float(np.mean(rets)) - base.retention_miou
                if rets[0] is not None
                else None,
                "trainable": sum(p.numel() for p in plan.params),
                "trial_s": float(np.mean(secs)),
            }
            out.append(r)
            rows.append(
                [
                    model,
                    method,
                    f"{r['baseline']:.3f}",
                    f"{r['specialised']:.3f}",
                    f"{mean:+.3f}",
                    f"[{lo:+.3f}, {hi:+.3f}]",
                    "" if r["retention_change"] is None else f"{r['retention_change']:+.3f}",
                    f"{r['trainable']:,}",
                    f"{r['trial_s']:.0f}",
                ]
            )
            print(f"  {model} {method}: gain {mean:+.3f} [{lo:+.3f}, {hi:+.3f}]", flush=True)
    header = [
        "model",
        "method",
        "baseline",
        "specialised",
        "gain",
        "95% CI",
        "retention change",
        "trainable",
        "trial s",
    ]
    print(markdown_table(header, rows))
    settings = {
        k: v if isinstance(v, (int, float, str)) or v is None else str(v) for k, v in vars(args).items()
    }
    return {"machine": machine_info(dev.device), "settings": settings, "rows": out}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="carpet", choices=sorted(OPTIONS))
    ap.add_argument("--models", default="tiny-s,tiny-m")
    ap.add_argument("--methods", default="decoder,lora,full")
    ap.add_argument("--n-train", type=int, default=250)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--max-steps", type=int, default=100)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--lr", type=float, default=3e-4, help="decoder (TrainConfig's default)")
    ap.add_argument("--lr-lora", type=float, default=1e-3)
    ap.add_argument("--lr-full", type=float, default=1e-4)
    ap.add_argument("--retention", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path)
    return run_and_save(ap.parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())
