"""How a sweep scales: wall time vs trials and vs n_train, peak memory per trial vs n_train.

    .venv/bin/python benchmarks/scaling.py             # default settings, n_train up to 8,000 (long)
    .venv/bin/python benchmarks/scaling.py --quick     # small sizes (~1 min on 2 idle cores)
    .venv/bin/python benchmarks/scaling.py --json out.json --trial-counts 2,4,8 --n-train 125,500,2000

Three measurements, each through the library's own code on the carpet task's packs (built once
into a temporary cache):

1. **Wall time vs number of trials**: phase-A trials at the config's settings (fixed default
   hyperparameters, seeds 0..N-1) through ``specialsam.sweep.phases.run_phase`` (Ray Tune + MLflow), with
   as many trials at once as the CPUs allow (``resources.cpus_per_trial``). Linear fit of the
   driver's wall time against N: seconds per extra trial, R^2.
2. **Wall time vs n_train**: one trial per n_train through ``run_phase`` (one at a time), at a
   fixed number of epochs with no step cap (``train.max_steps=0``, no early stopping), so the
   samples a trial trains on grow with n_train. Linear fit of the trial's time (Tune's
   ``time_total_s``) and of its training time alone against the training samples it processed;
   training seconds per sample should stay flat (time linear in samples).
3. **Peak memory vs n_train at a fixed step budget**: one subprocess per n_train opens the pack,
   trains the decoder for ``--rss-steps`` optimizer steps (batch ``train.batch_size``) and scores
   the test split; it reports its RSS after opening the pack and its peak RSS
   (``VmHWM`` in ``/proc/self/status``). Embeddings are memory-mapped from the cache and read
   per batch, so the peak should stay roughly flat while the training pool (shown: its fp16 size
   on disk) grows. Mask rows are read from the pack's file per batch (``pack.MaskRows``).

Torch runs one thread per trial (``--threads``). Wall times taken while other jobs share the
machine are not valid; memory figures do not depend on the load.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import machine_info, markdown_table

SIZES = {
    # mode: (trial counts, n_train for wall time, epochs for it, n_train for memory, steps for memory)
    "full": ((2, 4, 8), (125, 250, 500, 1000, 2000), 2, (125, 500, 2000, 8000), 50),
    "quick": ((1, 2, 4), (16, 32, 64), 2, (16, 64), 8),
    "smoke": ((1, 2), (8, 16), 1, (8, 16), 2),
}


def _ints(text: str | None) -> tuple[int, ...] | None:
    return tuple(int(x) for x in text.split(",")) if text else None


def linear_fit(x: list[float], y: list[float]) -> dict[str, float]:
    """Least squares y = intercept + slope * x, with R^2 (nan with fewer than 3 points)."""
    xa, ya = np.asarray(x, float), np.asarray(y, float)
    if len(xa) < 2 or np.ptp(xa) == 0:
        return {"slope": float("nan"), "intercept": float("nan"), "r2": float("nan")}
    slope, intercept = np.polyfit(xa, ya, 1)
    resid = ya - (intercept + slope * xa)
    ss = float(((ya - ya.mean()) ** 2).sum())
    r2 = 1 - float((resid**2).sum()) / ss if ss > 0 and len(xa) >= 3 else float("nan")
    return {"slope": float(slope), "intercept": float(intercept), "r2": r2}


def _status_kb(field: str) -> int | None:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return None


def _rss_kb() -> int:
    return _status_kb("VmRSS") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _peak_rss_kb() -> int:
    """This process's own peak RSS. Not ``ru_maxrss``: Linux carries it across ``execve``, so a
    child started by a 4 GB parent reports >= 4 GB whatever it does (measured here: 4,025 MB for a
    trial that peaks at ~0.9 GB). ``VmHWM`` belongs to the process's own address space."""
    return _status_kb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


# ------------------------------------------------------------------------ memory: child process
def rss_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs in its own process: one trial's training at a fixed step budget + test scoring."""
    from specialsam.device import select_device
    from specialsam.finetune.cache import EmbeddingCache
    from specialsam.finetune.evaluate import score_split
    from specialsam.finetune.pack import Pack
    from specialsam.finetune.train import TrainConfig, train_decoder

    torch.set_num_threads(int(spec["threads"]))
    pack = Pack(spec["pack"], EmbeddingCache(spec["cache"]))
    sam = pack.headless_model()
    dev = select_device()
    n, steps, batch = int(spec["n_train"]), int(spec["steps"]), int(spec["batch"])
    epochs = math.ceil(steps * batch / max(1, len(pack.train_indices(n)))) + 1
    cfg = TrainConfig(n_train=n, epochs=epochs, max_steps=steps, batch_size=batch, patience=0, seed=0)
    before = _rss_kb()
    t0 = time.perf_counter()
    result = train_decoder(sam, pack, cfg, dev)
    score_split(sam, pack.split("test"), [pack.manifest["primary"]], dev=dev)
    seconds = time.perf_counter() - t0
    train = pack.split("train")
    idx = pack.train_indices(n)
    return {
        "n_train": n,
        "steps": result.steps,
        "samples_seen": result.samples_seen,
        "seconds": seconds,
        "rss_before_kb": before,
        "peak_rss_kb": _peak_rss_kb(),
        "train_embeddings_bytes": int(sum(train.pack.cache.load(train.emb_keys[i]).nbytes for i in idx)),
    }


def run_rss_child(spec: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--rss-child", json.dumps(spec)],
        capture_output=True,
        text=True,
        env={**os.environ, "TQDM_DISABLE": "1"},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"memory child for n_train={spec['n_train']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rss-child", help=argparse.SUPPRESS)
    from overhead import common_args

    common_args(ap)
    ap.add_argument("--trial-counts", help="numbers of trials for part 1 (full 2,4,8)")
    ap.add_argument("--n-train", help="n_train values for part 2 (full 125,250,500,1000,2000)")
    ap.add_argument("--epochs", type=int, help="epochs per trial in part 2 (full 2)")
    ap.add_argument("--rss-n-train", help="n_train values for part 3 (full 125,500,2000,8000)")
    ap.add_argument("--rss-steps", type=int, help="optimizer steps per trial in part 3 (full 50)")
    args = ap.parse_args(argv)
    if args.rss_child:
        print(json.dumps(rss_child(json.loads(args.rss_child))))
        return 0

    from overhead import bench_config, bench_root, header, mode_of, open_harness, write_json

    mode = mode_of(args)
    d_counts, d_sizes, d_epochs, d_rss, d_steps = SIZES[mode]
    counts = _ints(args.trial_counts) or d_counts
    sizes = _ints(args.n_train) or d_sizes
    epochs = args.epochs or d_epochs
    rss_sizes = _ints(args.rss_n_train) or d_rss
    rss_steps = args.rss_steps or d_steps
    torch.set_num_threads(args.threads)
    pool = max(*sizes, *rss_sizes)
    cfg0 = bench_config(mode, args.models.split(",")[:1], args.set)
    cfg = bench_config(mode, args.models.split(",")[:1], args.set, pool=max(pool, cfg0.search.n_train))
    model = cfg.models[0]
    root = bench_root(args.workdir)
    info = machine_info(torch.device("cpu"))
    print(header("Scaling: wall time vs trials and n_train, memory vs n_train", info, mode), flush=True)
    print(
        f"- {model}; part 1: {','.join(map(str, counts))} trials at n_train {cfg.search.n_train}, epochs "
        f"{cfg.train.epochs}, max_steps {cfg.train.max_steps}; part 2: n_train {','.join(map(str, sizes))} "
        f"x {epochs} epoch(s), no step cap; part 3: n_train {','.join(map(str, rss_sizes))} at "
        f"{rss_steps} steps of {cfg.train.batch_size}\n",
        flush=True,
    )
    from ray import tune

    h = open_harness(cfg, root, args.threads)
    result: dict[str, Any] = {"mode": mode, "machine": info, "model": model, "prepare_s": h.prepare_s}
    try:
        base = cfg.base_params()
        fixed = {k: base[k] for k in ("lr", "bce_weight", "dice_weight", "focal_weight", "point_fraction")}

        # 1. wall time vs number of trials
        part1 = []
        for n in counts:
            space = {
                **fixed,
                "model": model,
                "n_train": cfg.search.n_train,
                "seed": tune.grid_search(list(range(n))),
            }
            run = h.run_phase(
                f"trials-{n}", space, h.ctx("tune"), max_concurrent=cfg.resources.max_concurrent
            )
            per = [t.time_total_s for t in run.trials]
            part1.append(
                {
                    "trials": n,
                    "finished": sum(1 for t in run.trials if t.final is not None),
                    "wall_s": run.wall_s,
                    "mean_trial_s": float(np.mean(per)) if per else float("nan"),
                }
            )
            print(f"  {n} trial(s): {run.wall_s:.1f} s", flush=True)
        fit1 = linear_fit([r["trials"] for r in part1], [r["wall_s"] for r in part1])
        print("\n## 1. Sweep wall time vs number of trials\n")
        print(
            markdown_table(
                ["trials", "finished", "wall s", "wall s / trial", "mean trial s (Tune)"],
                [
                    [
                        r["trials"],
                        r["finished"],
                        f"{r['wall_s']:.1f}",
                        f"{r['wall_s'] / r['trials']:.2f}",
                        f"{r['mean_trial_s']:.2f}",
                    ]
                    for r in part1
                ],
            )
        )
        print(
            f"\nFit: wall = {fit1['intercept']:.1f} s + {fit1['slope']:.2f} s x trials "
            f"(R^2 {fit1['r2']:.3f}); "
            f"{cfg.resources.cpus_per_trial:g} CPU per trial on {os.cpu_count()} CPUs",
            flush=True,
        )

        # 2. wall time vs n_train (fixed epochs, no step cap)
        space = {**fixed, "model": model, "n_train": tune.grid_search(list(sizes)), "seed": 0}
        ctx = h.ctx("tune", epochs=epochs, max_steps=0, patience=0)
        run = h.run_phase("n-train", space, ctx, max_concurrent=1)
        part2 = []
        by_n = {t.config.get("n_train"): t for t in run.trials}
        for r in run.records:
            if r.record is None:
                continue
            n = int(r.params["n_train"])
            hist = r.record.history
            t = by_n.get(n)
            part2.append(
                {
                    "n_train": n,
                    "samples": int(r.record.samples_seen),
                    "steps": int(r.record.steps),
                    "train_s": float(hist[-1]["seconds"]) if hist else float("nan"),
                    "trial_seconds": float(r.record.trial_seconds),
                    "time_total_s": t.time_total_s if t else float("nan"),
                }
            )
        part2.sort(key=lambda r: r["n_train"])
        fit2 = linear_fit([r["samples"] for r in part2], [r["time_total_s"] for r in part2])
        fit2_train = linear_fit([r["samples"] for r in part2], [r["train_s"] for r in part2])
        print(f"\n## 2. Trial time vs n_train ({epochs} epoch(s), no step cap, one trial at a time)\n")
        print(
            markdown_table(
                [
                    "n_train",
                    "samples trained",
                    "steps",
                    "training s",
                    "training ms / sample",
                    "trial s (Tune)",
                ],
                [
                    [
                        r["n_train"],
                        r["samples"],
                        r["steps"],
                        f"{r['train_s']:.2f}",
                        f"{1000 * r['train_s'] / max(1, r['samples']):.2f}",
                        f"{r['time_total_s']:.2f}",
                    ]
                    for r in part2
                ],
            )
        )
        print(
            f"\nFit: trial = {fit2['intercept']:.1f} s + {1000 * fit2['slope']:.2f} ms x samples (R^2 "
            f"{fit2['r2']:.3f}); training alone: {1000 * fit2_train['slope']:.2f} ms x samples (R^2 "
            f"{fit2_train['r2']:.3f})",
            flush=True,
        )

        # 3. peak RSS vs n_train at a fixed step budget (one process each)
        pack = h.packs[model]
        part3 = []
        for n in rss_sizes:
            spec = {
                "pack": str(pack.folder),
                "cache": str(pack.cache.root),
                "n_train": n,
                "steps": rss_steps,
                "batch": cfg.train.batch_size,
                "threads": args.threads,
            }
            part3.append(run_rss_child(spec))
        mb = 1024.0
        print(f"\n## 3. Peak memory per trial vs n_train ({rss_steps} steps of {cfg.train.batch_size})\n")
        print(
            markdown_table(
                [
                    "n_train",
                    "train embeddings on disk (fp16)",
                    "RSS after opening the pack",
                    "peak RSS",
                    "peak - start",
                    "samples trained",
                ],
                [
                    [
                        r["n_train"],
                        f"{r['train_embeddings_bytes'] / 1024**2:.1f} MB",
                        f"{r['rss_before_kb'] / mb:.0f} MB",
                        f"{r['peak_rss_kb'] / mb:.0f} MB",
                        f"{(r['peak_rss_kb'] - r['rss_before_kb']) / mb:.0f} MB",
                        r["samples_seen"],
                    ]
                    for r in part3
                ],
            )
        )
        if len(part3) >= 2:
            lo, hi = part3[0], part3[-1]
            grow = (hi["peak_rss_kb"] - lo["peak_rss_kb"]) / mb
            data = (hi["train_embeddings_bytes"] - lo["train_embeddings_bytes"]) / 1024**2
            print(
                f"\nFrom n_train {lo['n_train']} to {hi['n_train']} the training pool grows by {data:.1f} MB "
                f"(fp16 on disk; {2 * data:.1f} MB as fp32 in memory) and the peak RSS by {grow:.0f} MB.",
                flush=True,
            )
        result.update(
            {
                "settings": {
                    "trial_counts": list(counts),
                    "n_train_sizes": list(sizes),
                    "epochs_part2": epochs,
                    "rss_n_train": list(rss_sizes),
                    "rss_steps": rss_steps,
                    "train": h.ctx("tune").train.model_dump(),
                    "n_train_part1": cfg.search.n_train,
                    "cpus_per_trial": cfg.resources.cpus_per_trial,
                },
                "trials": part1,
                "trials_fit": fit1,
                "n_train": part2,
                "n_train_fit": fit2,
                "n_train_fit_training": fit2_train,
                "memory": part3,
            }
        )
        write_json(args.json, result)
    finally:
        h.cleanup_records()
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
