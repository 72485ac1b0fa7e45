"""What the embedding-cache and pack integrity checks cost: a sweep's driver, a trial, a sweep.

    .venv/bin/python benchmarks/cache_integrity.py             # carpet --smoke sweep settings, 2 sweeps A/B
    .venv/bin/python benchmarks/cache_integrity.py --sweeps 0  # without the sweep A/B (about a minute)
    .venv/bin/python benchmarks/cache_integrity.py --smoke --json out.json   # seconds (the tests)

Every measurement runs the same code with the checks on and off (``specialsam.finetune.cache.VERIFY``,
which only this script sets; no user setting turns the checks off), alternating on/off, the
median of the repeats:

1. **Driver**: the carpet ``--smoke`` sweep's packs (``sweeps/carpet.yaml``, its ``smoke:``
   section, ``--set`` applied) are built once into a fresh cache; then ``build_pack`` as a rerun's
   driver calls it (a new ``EmbeddingCache`` object, pack present): with the checks it hashes
   every embedding entry and pack file the sweep uses (once per sweep), without it only looks.
2. **One trial**, in this process as a trial runs it: open the pack with a fresh cache object,
   headless model, ``train_decoder`` at ``search.n_train``, test (+ retention) scoring. With the
   checks each entry is hashed on its first read, every file as it is read, every mask row's CRC
   on every read. Also the reads alone (every entry and mask row a trial touches, once), where the
   check's share is not drowned by the training's run-to-run noise.
3. **Per-entry cost by embedding size**: synthetic entries of the tiny models (64x16x16 fp16,
   32 KB) and of SAM's vit_b (256x64x64 fp16, 2 MB): the driver's check and a first read per
   entry, and what that means for the default carpet sweep's 8,389 images per model.
4. **Sweep A/B** (``--sweeps N`` pairs; full mode 1, else 0): the whole smoke sweep
   (``specialsam.sweep.driver.run_sweep``) on the warm cache, alternately without and with the checks
   (a fresh local Ray per sweep; the trial workers get the switch through Ray's
   ``worker_process_setup_hook``); driver wall time.

Timings taken while other jobs share the machine are not valid; the header prints the load
average and flags it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import machine_info, markdown_table
from overhead import SMOKE_SETS, bench_root, header, mode_of, reference_trial, write_json

from specialsam.config import SweepConfig, default_config_path, load_config
from specialsam.finetune import cache as embeddings

DEFAULT_SWEEP_IMAGES = 8389
"""Images the shipped carpet sweep encodes per model (benchmarks/encoder_cache.py)."""
SIZES = {"tiny (64x16x16)": (64, 16, 16), "vit_b (256x64x64)": (256, 64, 64)}


def checks_off() -> None:
    """The "without" side of the A/B (also run in Ray workers, see ``sweep_ab``)."""
    import specialsam.finetune.cache

    specialsam.finetune.cache.VERIFY = False


def set_checks(on: bool) -> None:
    embeddings.VERIFY = on


def alternate(fn, repeats: int) -> dict[str, list[float]]:
    """``fn(on)`` timed ``repeats`` times per side, sides alternating (off first), after one warm-up each."""
    times: dict[str, list[float]] = {"off": [], "on": []}
    try:
        for r in range(repeats + 1):
            for side in ("off", "on"):
                set_checks(side == "on")
                t0 = time.perf_counter()
                fn(side == "on")
                if r:  # round 0 is the warm-up
                    times[side].append(time.perf_counter() - t0)
    finally:
        set_checks(True)
    return times


def summary(times: dict[str, list[float]]) -> dict[str, float]:
    off, on = statistics.median(times["off"]), statistics.median(times["on"])
    return {"off_s": off, "on_s": on, "check_s": on - off, "ratio": on / off if off else float("nan")}


def row(label: str, s: dict[str, float], ref: float | None = None) -> list[str]:
    share = f"{s['check_s'] / ref:.2%}" if ref else "-"
    return [
        label,
        f"{s['off_s']:.4f}",
        f"{s['on_s']:.4f}",
        f"{s['check_s']:+.4f}",
        f"{s['ratio']:.3f}",
        share,
    ]


HEAD = ["measurement", "without checks s", "with checks s", "difference s", "with / without", "share"]


# ------------------------------------------------------------------------------------- parts
def build_packs(cfg: SweepConfig, root: Path) -> tuple[Any, dict[str, tuple[Any, Any]], float]:
    """The sweep driver's task and models, packs built once (cold) into ``root/cache``."""
    from specialsam.finetune.cache import EmbeddingCache
    from specialsam.finetune.pack import build_pack, model_identity
    from specialsam.sweep.driver import RunOptions, pack_settings, prepare, retention_set

    cfg, task, models = prepare(cfg, RunOptions(cwd=root))
    t0 = time.perf_counter()
    for name, (sam, info) in models.items():
        build_pack(
            task,
            sam,
            model_identity(sam, name, info.sha256),
            EmbeddingCache(root / "cache"),
            pack_settings(cfg),
            retention_set(cfg),
            progress=False,
        )
    return task, models, time.perf_counter() - t0


def driver_part(cfg: SweepConfig, root: Path, task, models, repeats: int) -> tuple[dict, dict, Any]:
    """``build_pack`` as a rerun's driver runs it, per model; returns timings, sizes, the first pack."""
    from specialsam.finetune.cache import EmbeddingCache
    from specialsam.finetune.pack import Pack, build_pack, model_identity
    from specialsam.sweep.driver import pack_settings, retention_set

    folders = {}

    def reopen(_on: bool) -> None:
        for name, (sam, info) in models.items():
            cache = EmbeddingCache(root / "cache")  # a fresh object: a rerun's view
            ident = model_identity(sam, name, info.sha256)
            folders[name] = build_pack(
                task, sam, ident, cache, pack_settings(cfg), retention_set(cfg), progress=False
            )
            if cache.encoder_calls:
                raise RuntimeError("a rerun's build_pack encoded images: the cache was not warm")

    times = alternate(reopen, repeats)
    first = Pack(next(iter(folders.values())), EmbeddingCache(root / "cache"))
    entries = {k for f in folders.values() for s in Pack(f).manifest["splits"].values() for k in s["emb"]}
    emb_bytes = sum(first.cache.entry_path(k).stat().st_size for k in entries)
    pack_bytes = sum(p.stat().st_size for f in folders.values() for p in f.iterdir())
    sizes = {"entries": len(entries), "entry_mb": emb_bytes / 1e6, "pack_mb": pack_bytes / 1e6}
    return summary(times), sizes, first


def trial_part(cfg: SweepConfig, pack_folder: Path, cache_root: Path, repeats: int, threads: int) -> dict:
    """One trial's work with a freshly opened pack (what a Tune trial does), and its reads alone."""
    from specialsam.finetune.cache import EmbeddingCache
    from specialsam.finetune.pack import Pack

    train = {
        k: getattr(cfg.train, k)
        for k in ("epochs", "max_steps", "batch_size", "micro_batch", "patience", "warmup_fraction")
    }
    base = cfg.base_params()
    train.update({k: base[k] for k in ("lr", "bce_weight", "dice_weight", "focal_weight", "point_fraction")})

    def trial(_on: bool) -> None:
        pack = Pack(pack_folder, EmbeddingCache(cache_root))
        pack.thumbnails()
        reference_trial(pack, cfg, train, 0, threads)

    def reads(_on: bool) -> None:
        pack = Pack(pack_folder, EmbeddingCache(cache_root))
        for name, n in (("train", cfg.search.n_train), ("val", None), ("test", None), ("retention", None)):
            if not pack.has(name):
                continue
            split = pack.split(name)
            idx = list(range(len(split) if n is None else min(n, len(split))))
            split.embeddings(idx)
            for i in idx:
                split.masks[i]
        pack.headless_model()
        pack.thumbnails()
        test = pack.split("test")
        test.prompts(cfg.eval.primary)
        test.gt(0)

    t = summary(alternate(trial, repeats))
    r = summary(alternate(reads, max(repeats, 5)))
    return {"trial": t, "reads": r}


def size_part(root: Path, n: dict[str, int], repeats: int) -> list[dict]:
    """Per-entry driver check and first read, by embedding size, on synthetic entries."""
    from specialsam.finetune.cache import EmbeddingCache

    rng = np.random.default_rng(0)
    out = []
    for label, shape in SIZES.items():
        folder = root / f"synthetic-{shape[0]}"
        keys = [f"{label[:4]}{i:036d}" for i in range(n[label])]
        writer = EmbeddingCache(folder)
        for k in keys:
            writer.put(k, rng.standard_normal(shape).astype(np.float16), {"synthetic": True})

        def verify(_on: bool, folder: Path = folder, keys: list[str] = keys) -> None:
            cache = EmbeddingCache(folder)
            if embeddings.VERIFY:
                cache.verify_entries(keys)
            else:
                [cache.has(k) for k in keys]

        def first_read(_on: bool, folder: Path = folder, keys: list[str] = keys) -> None:
            cache = EmbeddingCache(folder)
            for k in keys:
                np.asarray(cache.load(k), dtype=np.float32)

        v, r = summary(alternate(verify, repeats)), summary(alternate(first_read, repeats))
        out.append(
            {
                "size": label,
                "entries": len(keys),
                "entry_kb": writer.entry_path(keys[0]).stat().st_size / 1024,
                "driver_check_ms_per_entry": 1e3 * v["check_s"] / len(keys),
                "first_read_ms_per_entry": {
                    "off": 1e3 * r["off_s"] / len(keys),
                    "on": 1e3 * r["on_s"] / len(keys),
                },
                "default_sweep_driver_check_s": v["check_s"] / len(keys) * DEFAULT_SWEEP_IMAGES,
            }
        )
    return out


def sha256_mb_s(repeats: int = 3) -> float:
    """SHA-256 throughput of this machine (64 MB buffer, best of ``repeats``): what every check runs."""
    import hashlib

    buf = np.random.default_rng(0).integers(0, 256, 64 << 20, dtype=np.uint8).tobytes()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        hashlib.sha256(buf).digest()
        best = min(best, time.perf_counter() - t0)
    return 64 * (1 << 20) / 1e6 / best


def default_sweep_estimate(mb_s: float) -> dict[str, float]:
    """The driver's check of one tiny model's default carpet pack at ``mb_s``: every entry (32 KB)
    and every 256x256 mask row (64 KB) of its 8,389 images hashed once."""
    entries_mb = DEFAULT_SWEEP_IMAGES * (64 * 16 * 16 * 2 + 128) / 1e6
    masks_mb = DEFAULT_SWEEP_IMAGES * 256 * 256 / 1e6
    return {"entries_mb": entries_mb, "masks_mb": masks_mb, "seconds": (entries_mb + masks_mb) / mb_s}


def sweep_ab(cfg: SweepConfig, root: Path, pairs: int) -> dict[str, list[float]]:
    """The whole smoke sweep on the warm cache, without / with the checks, alternating."""
    import ray
    from ray import cloudpickle

    from specialsam.sweep import ray_runtime
    from specialsam.sweep.driver import RunOptions, run_sweep

    if __name__ != "__main__":  # imported (not run as a script): send the hook by value, not by name
        cloudpickle.register_pickle_by_value(sys.modules[__name__])
    times: dict[str, list[float]] = {"off": [], "on": []}
    try:
        for i in range(pairs):
            for side in ("off", "on"):
                set_checks(side == "on")
                ray_runtime.quiet_tune()
                ray.init(
                    address="local",
                    num_cpus=os.cpu_count(),
                    include_dashboard=False,
                    _node_ip_address="127.0.0.1",
                    object_store_memory=200 * 1024**2,
                    log_to_driver=False,
                    configure_logging=False,
                    runtime_env={"worker_process_setup_hook": checks_off} if side == "off" else None,
                )
                opts = RunOptions(
                    cache_dir=str(root / "cache"),
                    storage=str(root / "ray_results"),
                    tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
                    experiment="cache-integrity",
                    export_dir=str(root / "exports"),
                    cwd=root,
                    quiet=True,
                )
                t0 = time.perf_counter()
                out = run_sweep(cfg, opts)
                times[side].append(time.perf_counter() - t0)
                ray.shutdown()
                done = sum(1 for t in out.trials)
                print(
                    f"  sweep {i + 1} {side}: {times[side][-1]:.1f} s, {done} trials with records", flush=True
                )
                time.sleep(2)  # let the Ray processes go before the next instance starts
    finally:
        set_checks(True)
        if ray.is_initialized():
            ray.shutdown()
    return times


# -------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repeats, no sweep A/B")
    ap.add_argument("--smoke", action="store_true", help="smallest settings (seconds; used by the tests)")
    ap.add_argument("--sweeps", type=int, help="pairs of whole smoke sweeps, without/with (full 1, else 0)")
    ap.add_argument("--repeats", type=int, help="repeats per side (full 5, quick 3, smoke 1)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the trial (default 1)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="sweep config override")
    ap.add_argument("--workdir", help="keep the cache here (default: a temp dir)")
    ap.add_argument("--json", metavar="PATH", help="also write every figure as JSON")
    args = ap.parse_args(argv)
    mode = mode_of(args)
    repeats = args.repeats or {"full": 5, "quick": 3, "smoke": 1}[mode]
    pairs = args.sweeps if args.sweeps is not None else (1 if mode == "full" else 0)
    sets = [*(SMOKE_SETS if mode == "smoke" else []), "models=[tiny-s]", *args.set]
    cfg = load_config(default_config_path("carpet"), sets, smoke=True)
    torch.set_num_threads(args.threads)
    info = machine_info(torch.device("cpu"))
    print(header("Integrity checks of the embedding cache and packs: their cost", info, mode), flush=True)
    cmd = "benchmarks/cache_integrity.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"- command: .venv/bin/python {cmd.strip()}", flush=True)
    root = bench_root(args.workdir)
    try:
        task, models, cold_s = build_packs(cfg, root)
        print(
            f"- carpet --smoke settings, {', '.join(cfg.models)}: {len(task.train)} train + "
            f"{len(task.val)} val + "
            f"{len(task.test)} test + {cfg.eval.retention_n} retention; n_train {cfg.search.n_train}, "
            f"epochs {cfg.train.epochs}, max_steps {cfg.train.max_steps}; "
            f"first build (encoding) {cold_s:.1f} s; "
            f"{repeats} repeat(s) per side\n",
            flush=True,
        )
        driver, sizes, pack = driver_part(cfg, root, task, models, repeats)
        trial = trial_part(cfg, pack.folder, root / "cache", repeats, args.threads)
        n_size = {
            "tiny (64x16x16)": 64 if mode == "smoke" else 512,
            "vit_b (256x64x64)": 4 if mode == "smoke" else 32,
        }
        per_size = size_part(root, n_size, repeats)
        mb_s = sha256_mb_s()
        default = default_sweep_estimate(mb_s)
        sweeps = sweep_ab(cfg, root, pairs) if pairs else None

        print(
            f"## 1-2. Driver and trial (the smoke sweep's pack: {sizes['entries']} entries, "
            f"{sizes['entry_mb']:.1f} MB; pack files {sizes['pack_mb']:.1f} MB)\n"
        )
        t_on = trial["trial"]["on_s"]
        rows = [
            row("driver: build_pack on a rerun (pack present), per sweep", driver),
            row("one trial: open pack + train + score (share: of the trial)", trial["trial"], t_on),
            row(
                "one trial's reads alone: entries, mask rows, files (share: of the trial)",
                trial["reads"],
                t_on,
            ),
        ]
        result: dict[str, Any] = {
            "mode": mode,
            "machine": info,
            "settings": {"repeats": repeats, "sets": sets, "cold_build_s": cold_s, **sizes},
            "driver": driver,
            "trial": trial,
            "per_size": per_size,
            "sha256_mb_s": mb_s,
            "default_sweep_driver_estimate": default,
        }
        if sweeps:
            s = summary(sweeps)
            result["sweep"] = {**s, "runs": sweeps}
            rows.append(row(f"whole smoke sweep, warm cache (median of {pairs})", s, s["on_s"]))
            rows.append(row("driver check as a share of the sweep (from row 1)", driver, s["on_s"]))
        print(markdown_table(HEAD, rows))
        print("\n## 3. Per entry, by embedding size (synthetic entries)\n")
        print(
            markdown_table(
                [
                    "embedding",
                    "entries",
                    "KB each",
                    "driver check ms/entry",
                    "first read ms/entry, without / with",
                    f"driver check, default sweep ({DEFAULT_SWEEP_IMAGES} images)",
                ],
                [
                    [
                        p["size"],
                        p["entries"],
                        f"{p['entry_kb']:.0f}",
                        f"{p['driver_check_ms_per_entry']:.3f}",
                        "{off:.3f} / {on:.3f}".format(**p["first_read_ms_per_entry"]),
                        f"{p['default_sweep_driver_check_s']:.1f} s",
                    ]
                    for p in per_size
                ],
            )
        )
        print(
            f"\nSHA-256 on this machine: {mb_s:.0f} MB/s. The default carpet sweep's driver check per tiny "
            f"model ({DEFAULT_SWEEP_IMAGES} images: {default['entries_mb']:.0f} MB of entries + "
            f"{default['masks_mb']:.0f} MB of mask rows) at that rate: about "
            f"{default['seconds']:.1f} s per sweep."
        )
        write_json(args.json, result)
    finally:
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
