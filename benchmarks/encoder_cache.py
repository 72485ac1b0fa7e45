"""Encoder work of a whole sweep: one pass per unique image and model, none on a rerun; images/s.

    .venv/bin/python benchmarks/encoder_cache.py             # the default carpet sweep (minutes on CPU)
    .venv/bin/python benchmarks/encoder_cache.py --quick     # the config's smoke sizes; 2 images for vit_*
    .venv/bin/python benchmarks/encoder_cache.py --json out.json --flip --models tiny-s,tiny-m

Part 1, **encoder calls**. The task of ``sweeps/carpet.yaml`` (procedural stand-in unless
``--set data_root=...``) is built as the sweep driver builds it (training pool cut to the largest
n_train the sweep asks for, the retention set added), then ``build_pack`` runs for each model of
the config into a fresh cache, counting ``EmbeddingCache.encoder_calls``. Checks:

- first build: calls == unique images (train + val + test + retention, + flipped train copies
  when ``train.flip``) for every model, so a sweep costs unique images x models encoder passes;
- second identical build (a new cache object on the same folder, as a rerun or ``--resume``
  makes): 0 calls, same pack;
- a build with other pack settings (loss resolution 128 instead of the config's): 0 calls, a new
  pack: the embeddings are reused, only masks and prompts are rewritten.

The script exits 1 if a check fails.

Part 2, **images/s** of the encoder (``specialsam.models.inference.encode``, what the cache's precompute
runs) for tiny-s and tiny-m (shipped weights) and vit_t and vit_b (random init: speed does not
depend on the weights; no checkpoint needed), on the task's images, after one warm-up batch, and
what that means for the default sweep's encoder time per model. The ``plan`` column is the
throughput ``sweeps/run.py --plan`` assumes (``specialsam.sweep.plan.ENCODE_IMAGES_PER_S``).

Torch runs ``--threads`` threads (default 1, as trials do; the sweep driver's precompute uses all
cores). Timings taken while other jobs share the machine are not valid; the header flags it.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from typing import Any

import torch
from _common import machine_info, markdown_table
from overhead import SMOKE_SETS, bench_root, header, mode_of, write_json

from specialsam.config import default_config_path, load_config

SPEED_MODELS = ("tiny-s", "tiny-m", "vit_t", "vit_b")


def speed_plan(mode: str, name: str) -> tuple[int, int, int]:
    """(images per repeat, batch size, repeats) for a model in a mode."""
    sam_family = not name.startswith("tiny")
    if mode == "smoke":
        return 4, 4, 1
    if mode == "quick":
        return (2, 1, 1) if sam_family else (16, 8, 1)
    return (4, 1, 2) if name == "vit_b" else (8, 1, 2) if sam_family else (64, 8, 3)


def default_sweep_images() -> tuple[int, dict[str, int]]:
    """Images the shipped carpet sweep encodes per model (procedural stand-in; MVTec carpet also
    has 89 test images), without building the task."""
    cfg = load_config(default_config_path("carpet"))
    o = cfg.task_options()
    parts = {
        "train": cfg.max_n_train(),
        "train flips": cfg.max_n_train() if cfg.train.flip else 0,
        "val": o.n_val,
        "test": o.standin_test,
        "retention": cfg.eval.retention_n,
    }
    return sum(parts.values()), parts


def encoder_speed(
    name: str, images: list, mode: str, threads: int, precision: str = "fp32"
) -> dict[str, Any]:
    from specialsam.finetune.cache import encoder_precision
    from specialsam.models.inference import encode
    from specialsam.models.registry import load_model
    from specialsam.sweep.plan import ENCODE_IMAGES_PER_S

    n, batch, repeats = speed_plan(mode, name)
    torch.set_num_threads(threads)
    sam, info = load_model(name, random_init=not name.startswith("tiny"))
    sam.eval()
    imgs = [images[i % len(images)] for i in range(n)]
    with torch.inference_mode():
        encode(sam, imgs[:batch], batch_size=batch, precision=precision)  # warm-up
        rates = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = encode(sam, imgs, batch_size=batch, precision=precision)
            float(out.flatten()[0])
            rates.append(n / (time.perf_counter() - t0))
    return {
        "model": name,
        "precision": precision,
        "auto_picks": encoder_precision(sam) == precision,
        "weights": info.verified,
        "input_px": int(sam.image_encoder.img_size),
        "embedding": list(out.shape[1:]),
        "images": n,
        "batch": batch,
        "repeats": repeats,
        "images_per_s": statistics.median(rates),
        "images_per_s_repeats": rates,
        "plan_images_per_s": ENCODE_IMAGES_PER_S.get(name, {}).get("cpu"),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the config's smoke sizes; 2 images for vit_t/vit_b")
    ap.add_argument(
        "--smoke", action="store_true", help="smallest settings, tiny models only (for the tests)"
    )
    ap.add_argument("--json", metavar="PATH", help="also write every figure as JSON")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument(
        "--models", help="models whose encoder calls are counted (default: the config's, tiny-s,tiny-m)"
    )
    ap.add_argument(
        "--speed-models",
        help=f"models timed for images/s (default {','.join(SPEED_MODELS)}; --smoke: tiny-s,tiny-m)",
    )
    ap.add_argument(
        "--speed-only", action="store_true", help="only the images/s part (skip the encoder-call count)"
    )
    ap.add_argument("--flip", action="store_true", help="train.flip=true: flipped training copies too")
    ap.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="sweep config override (repeatable)"
    )
    ap.add_argument("--workdir", help="keep the embedding cache here (default: a temp dir)")
    args = ap.parse_args(argv)
    mode = mode_of(args)
    torch.set_num_threads(args.threads)
    sets = (SMOKE_SETS if mode == "smoke" else []) + (["train.flip=true"] if args.flip else [])
    models = args.models or ",".join(load_config(default_config_path("carpet")).models)
    sets.append(f"models=[{models}]")  # also in --quick/--smoke, whose smoke section has one model
    cfg = load_config(default_config_path("carpet"), [*sets, *args.set], smoke=mode != "full")
    speed_models = (
        args.speed_models or ("tiny-s,tiny-m" if mode == "smoke" else ",".join(SPEED_MODELS))
    ).split(",")
    info = machine_info(torch.device("cpu"))
    print(header("Embedding cache: encoder calls per sweep, encoder images/s", info, mode), flush=True)

    from specialsam.finetune.cache import EmbeddingCache
    from specialsam.finetune.pack import PackSettings, build_pack, flipped, model_identity
    from specialsam.models.registry import load_model
    from specialsam.tasks import load_task
    from specialsam.tasks.procedural.scenes import retention_samples

    root = bench_root(args.workdir)
    ok = True
    try:
        t0 = time.perf_counter()
        task = load_task(cfg.task, cfg.data_root, cfg.data, cfg.seed)
        task.train = task.train[: cfg.max_n_train()]
        retention = retention_samples(cfg.eval.retention_n) if cfg.eval.retention_n else []
        task_s = time.perf_counter() - t0
        groups = {
            "train": [s.image_hash() for s in task.train],
            "train flips": [flipped(s).image_hash() for s in task.train] if cfg.train.flip else [],
            "val": [s.image_hash() for s in task.val],
            "test": [s.image_hash() for s in task.test],
            "retention": [s.image_hash() for s in retention],
        }
        unique = len({h for hs in groups.values() for h in hs})
        counts = {k: len(v) for k, v in groups.items()}
        print(
            f"- task {cfg.task} ({task.data}), built in {task_s:.1f} s: "
            + " + ".join(f"{v} {k}" for k, v in counts.items())
            + f" = {sum(counts.values())} images, {unique} unique; models {', '.join(cfg.models)}\n",
            flush=True,
        )
        settings = PackSettings(
            loss_res=cfg.train.loss_res,
            flip=cfg.train.flip,
            strategies=tuple(cfg.eval.strategies),
            primary=cfg.eval.primary,
        )
        other = PackSettings(128, settings.flip, settings.strategies, settings.primary)
        builds = []
        for name in [] if args.speed_only else cfg.models:
            sam, minfo = load_model(name, random_init=not name.startswith("tiny"))
            ident = model_identity(sam, name, minfo.sha256)
            row: dict[str, Any] = {"model": name, "expected_calls": unique}
            for label, setting in (("first", settings), ("second", settings), ("other_settings", other)):
                cache = EmbeddingCache(root / "cache")  # a fresh object each time: a rerun's view
                t0 = time.perf_counter()
                folder = build_pack(task, sam, ident, cache, setting, retention, progress=False)
                row[f"{label}_s"] = time.perf_counter() - t0
                row[f"{label}_calls"] = cache.encoder_calls
                row[f"{label}_pack"] = folder.name
            row["same_pack"] = row["second_pack"] == row["first_pack"]
            row["new_pack_other_settings"] = row["other_settings_pack"] != row["first_pack"]
            row["ok"] = (
                row["first_calls"] == unique
                and row["second_calls"] == 0
                and row["other_settings_calls"] == 0
                and row["same_pack"]
                and row["new_pack_other_settings"]
            )
            ok &= row["ok"]
            builds.append(row)
        total_calls = sum(r["first_calls"] for r in builds)
        if builds:
            print_builds(builds, unique, total_calls, len(cfg.models), cfg.train.flip)
        from specialsam.device import cpu_has_amx_bf16

        precisions = ["fp32", "bf16"] if cpu_has_amx_bf16() else ["fp32"]
        default_n, default_parts = default_sweep_images()
        images = [s.image for s in task.test] or [s.image for s in task.train]
        speed = [
            encoder_speed(name, images, mode, args.threads, p) for name in speed_models for p in precisions
        ]
        print_speed(speed, default_n, default_parts, args.threads)
        if not ok:
            print("\nFAILED: an encoder-call check did not hold (see the table)")
        write_json(
            args.json,
            {
                "mode": mode,
                "machine": info,
                "settings": {
                    "task": cfg.task,
                    "data": task.data,
                    "models": list(cfg.models),
                    "flip": cfg.train.flip,
                    "loss_res": cfg.train.loss_res,
                    "threads": args.threads,
                },
                "images": {**counts, "total": sum(counts.values()), "unique": unique},
                "task_build_s": task_s,
                "builds": builds,
                "total_calls": total_calls,
                "expected_total_calls": unique * len(cfg.models),
                "default_sweep_images": {"total": default_n, **default_parts},
                "speed": speed,
                "ok": ok,
            },
        )
    finally:
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)
    return 0 if ok else 1


def print_builds(builds: list[dict], unique: int, total_calls: int, n_models: int, flip: bool) -> None:
    header_row = [
        "model",
        "unique images",
        "encoder calls, 1st build",
        "2nd identical build",
        "other pack settings",
        "1st build s",
        "2nd build s",
        "check",
    ]
    rows = [
        [
            r["model"],
            r["expected_calls"],
            r["first_calls"],
            r["second_calls"],
            r["other_settings_calls"],
            f"{r['first_s']:.1f}",
            f"{r['second_s']:.2f}",
            "ok" if r["ok"] else "FAILED",
        ]
        for r in builds
    ]
    print(markdown_table(header_row, rows))
    print(
        f"\nEncoder calls for the whole sweep: {total_calls} = {unique} unique images x "
        f"{n_models} model(s) (flips {'included' if flip else 'off'}): "
        f"{'ok' if total_calls == unique * n_models else 'MISMATCH'}; a second identical "
        f"build made {sum(r['second_calls'] for r in builds)} calls.",
        flush=True,
    )


def print_speed(speed: list[dict], default_n: int, default_parts: dict[str, int], threads: int) -> None:
    print(
        f"\n## Encoder images/s ({threads} thread(s)); the default carpet sweep encodes "
        f"{default_n} images per model ("
        + " + ".join(f"{v} {k}" for k, v in default_parts.items() if v)
        + ")\n"
    )
    header_row = [
        "model",
        "weights",
        "input px",
        "embedding",
        "images x repeats",
        "batch",
        "precision",
        "images/s",
        "plan assumes",
        "default sweep encode time",
    ]
    rows = [
        [
            s["model"],
            s["weights"],
            s["input_px"],
            "x".join(map(str, s["embedding"])),
            f"{s['images']} x {s['repeats']}",
            s["batch"],
            s["precision"] + (" (auto)" if s["auto_picks"] else ""),
            f"{s['images_per_s']:.2f}",
            "-" if s["plan_images_per_s"] is None else f"{s['plan_images_per_s']:g}",
            f"{default_n / s['images_per_s'] / 60:.1f} min",
        ]
        for s in speed
    ]
    print(markdown_table(header_row, rows), flush=True)


if __name__ == "__main__":
    sys.exit(main())
