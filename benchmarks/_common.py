"""Helpers shared by the benchmarks: machine description, timing, matmul peak, markdown tables.

Timing rules used by every benchmark here: warm up first, time with ``time.perf_counter``, let each
timed function end in a host synchronisation (reading a loss value does that), repeat and report
the median. A figure taken while other jobs share the CPU is not a valid figure; ``machine_info``
records the load average so a contended run can be recognised afterwards.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
BUSY_LOAD = 1.0
"""1-minute load average above which timings are flagged as contended."""


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_info(device: torch.device) -> dict:
    """What the figures were measured on (goes into the JSON and the printed header)."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    info = {
        "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": git_commit(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "load_avg_1min": round(load, 2),
    }
    info["contended"] = bool(load > BUSY_LOAD)
    return info


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_repeats(
    fn: Callable[[], int],
    device: torch.device,
    warmup: int,
    repeats: int,
    min_seconds: float,
    min_calls: int = 1,
) -> list[float]:
    """Items/s of ``fn`` (which returns how many items it processed), one figure per repeat.

    Each repeat calls ``fn`` until at least ``min_seconds`` have passed and ``min_calls`` calls
    were made.
    """
    for _ in range(warmup):
        fn()
    sync(device)
    rates = []
    for _ in range(repeats):
        n, calls = 0, 0
        t0 = time.perf_counter()
        while True:
            n += fn()
            calls += 1
            if calls >= min_calls and time.perf_counter() - t0 >= min_seconds:
                break
        sync(device)
        rates.append(n / (time.perf_counter() - t0))
    return rates


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, repeats: int = 3) -> float:
    """Measured FLOP/s of one ``torch.mm`` of two n x n matrices in ``dtype``: the best of ``repeats``.

    The best (not the median) is taken so that "% of peak" is, if anything, an underestimate.
    """
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    torch.mm(a, b)  # warmup
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def cell(v: object) -> str:
        return v if isinstance(v, str) else format(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def run_and_save(args, run) -> int:
    """A benchmark's main tail: ``run(args)``, its result written to ``--json`` when given."""
    import json

    result = run(args)
    if getattr(args, "json", None):
        args.json.write_text(json.dumps(result, indent=1))
    return 0
