"""What the interactive evaluation (corrective clicks, NoC) costs a sweep, as a ratio.

    .venv/bin/python benchmarks/clicks_cost.py                 # default carpet sweep settings, 3 pairs
    .venv/bin/python benchmarks/clicks_cost.py --smoke --json out.json   # seconds (the tests)

A sweep's wall time is its trials' (phase A + phase B) plus the baselines. One trial is timed in
this process as a sweep's trial runs it (``finetune.pipeline.specialise``: train at
``search.n_train`` with the sweep's budget, then score test + retention + extra sets) with the
clicks off. The clicks' cost is the difference of scoring the same decoder with the interactive
evaluation on and off (alternating), set against that trial time; baselines (the base decoder)
are timed the same way. The sweep's growth follows from the default sweep's trial count, as if
every trial scored its test set: an upper bound, since ASHA-stopped phase-A trials score nothing.
Ratios hold on a shared machine better than seconds; the header still flags a contended run.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch
from _common import machine_info, markdown_table
from overhead import bench_root, header, mode_of, write_json

from specialsam.config import default_config_path, load_config
from specialsam.device import select_device
from specialsam.finetune.cache import EmbeddingCache
from specialsam.finetune.pack import Pack, build_pack, model_identity
from specialsam.finetune.pipeline import score_decoder, specialise
from specialsam.models.registry import load_model
from specialsam.sweep.driver import pack_settings, retention_set
from specialsam.tasks import load_task


def _pack(cfg, model: str, cache: EmbeddingCache) -> Pack:
    task = load_task(cfg.task, cfg.data_root, cfg.data, cfg.seed)
    task.keep_first_train(cfg.search.n_train, "search.n_train", "unused")
    sam, info = load_model(model)
    ident = model_identity(sam, model, info.sha256)
    return Pack(
        build_pack(task, sam, ident, cache, pack_settings(cfg), retention_set(cfg), progress=False), cache
    )


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(cfg, model: str, cache: EmbeddingCache, pairs: int) -> dict:
    """Median seconds of one trial (training + scoring, clicks off) and of scoring a decoder with the
    interactive evaluation off and on (the same decoder, alternating): the clicks' cost is the
    scoring difference, measured apart from the training's run-to-run noise."""
    pack = _pack(cfg, model, cache)
    dev = select_device()
    on = cfg.scoring(model)
    off = dataclasses.replace(on, clicks=(), noc_thresholds=())
    train = cfg.train_config(cfg.base_params(), cfg.search.n_train, 0)
    times: dict[str, list[float]] = {"trial": [], "base score off": [], "base score on": []}
    times |= {"trained score off": [], "trained score on": []}
    sam = pack.headless_model()
    trained = pack.headless_model()
    for _ in range(pairs):
        times["trial"].append(_time(lambda: specialise(trained, pack, train, off, dev)))  # noqa: B023
        for side, how in (("off", off), ("on", on)):
            times[f"base score {side}"].append(_time(lambda: score_decoder(sam, pack, how, dev)))  # noqa: B023
            times[f"trained score {side}"].append(_time(lambda: score_decoder(trained, pack, how, dev)))  # noqa: B023
    med = {k: statistics.median(v) for k, v in times.items()}
    med["clicks per trial"] = med["trained score on"] - med["trained score off"]
    med["clicks per baseline"] = med["base score on"] - med["base score off"]
    return {"model": model, "protocol": on.protocol(), "medians": med, "all": times}


def sweep_growth(cfg, r: dict) -> float:
    """The default sweep's wall-time growth, assuming every trial scores its test set (an upper
    bound: ASHA-stopped phase-A trials score nothing)."""
    m = r["medians"]
    trials = cfg.search.num_samples + len(cfg.curve.n_train) * len(cfg.curve.seeds)
    off = trials * m["trial"] + m["base score off"]
    return (trials * m["clicks per trial"] + m["clicks per baseline"]) / off


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="the --smoke sweep's settings, 1 pair")
    ap.add_argument("--quick", action="store_true", help="default settings, 1 pair")
    ap.add_argument("--pairs", type=int, help="off/on pairs (default 3; quick and smoke 1)")
    ap.add_argument("--models", default="tiny-s,tiny-m")
    ap.add_argument("--task", default="carpet")
    ap.add_argument("--cache-dir", help="embedding cache (default: a temp dir; pass the sweep's to reuse it)")
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args(argv)
    mode = mode_of(args)
    torch.set_num_threads(1)
    cfg = load_config(default_config_path(args.task), smoke=args.smoke)
    pairs = args.pairs or (3 if mode == "full" else 1)
    cache = EmbeddingCache(args.cache_dir or bench_root(None) / "cache")
    info = machine_info(torch.device("cpu"))
    print(header("Interactive evaluation: what corrective clicks cost a sweep", info, mode), flush=True)
    print(
        f"- task {cfg.task}, clicks {cfg.eval.clicks}, NoC {cfg.eval.noc_thresholds} "
        f"(cap {cfg.eval.max_clicks})"
    )
    rows, results = [], []
    for model in args.models.split(","):
        r = measure(cfg, model, cache, pairs)
        r["sweep_growth"] = sweep_growth(cfg, r)
        results.append(r)
        m = r["medians"]
        rows.append(
            [
                model,
                f"{m['trial']:.2f}",
                f"{m['trained score off']:.2f}",
                f"{m['trained score on']:.2f}",
                f"{m['clicks per trial'] / m['trial']:+.1%}",
                f"{m['clicks per baseline']:.2f}",
                f"{r['sweep_growth']:+.1%}",
            ]
        )
    head = ["model", "trial s", "scoring s (off)", "scoring s (on)", "per trial", "baseline +s", "sweep"]
    print("\n" + markdown_table(head, rows))
    write_json(args.json, {"machine": info, "mode": mode, "pairs": pairs, "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
