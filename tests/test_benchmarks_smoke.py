"""The decoder-step benchmark runs and reports what it should. Speed is never asserted here: the
test machines are shared, so the figures are only checked to be positive numbers."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "decoder_step.py"


def _run(tmp_path: Path, *extra: str) -> tuple[str, dict]:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--json", str(out), *extra],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, json.loads(out.read_text())


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def _check(stdout: str, result: dict, device: str) -> None:
    assert "| model | variant | batch | loss px |" in stdout
    assert "Targets (from the issue):" in stdout
    assert result["mode"] == "smoke"
    assert result["machine"]["device"].startswith(device)
    assert result["machine"]["torch_threads"] == 1
    assert all(_positive(v) for v in result["matmul_peak_flops"].values())

    rows = result["rows"]
    assert {r["model"] for r in rows} == {"tiny-s"}
    timed = [r for r in rows if r["samples_per_s"] is not None]
    study = [r for r in timed if r["variant"] == "study loop"]
    assert len(study) == 1 and study[0]["batch"] == 1 and study[0]["loss_px"] == 256
    ours = {(r["batch"], r["loss_px"], r["precision"]) for r in timed if r["variant"] == "ours"}
    assert {(1, 256, "fp32"), (2, 256, "fp32")} <= ours
    assert any(r["variant"].startswith("naive") for r in timed)
    for r in timed:
        for key in ("samples_per_s", "vs_study", "flop_per_sample", "gflops", "pct_peak"):
            assert _positive(r[key]), (r["variant"], key, r[key])
        assert len(r["samples_per_s_repeats"]) == result["settings"]["repeats"]
    # the decoder does the same work per sample however it is batched; ours also counts the
    # upsampling matmuls (F.interpolate in the study and naive loops is not counted)
    flops = {r["flop_per_sample"] for r in timed if r["variant"] == "ours"}
    assert max(flops) / min(flops) < 1.01
    assert all(r["flop_per_sample"] < min(flops) for r in timed if r["variant"] != "ours")

    names = {t["target"] for t in result["targets"]}
    assert names == {
        "ours >= 1.5x study loop",
        ">= 50% of matmul peak",
        ">= 100 samples/s on tiny embeddings",
    }
    assert all(isinstance(t["met"], bool) for t in result["targets"])


def test_decoder_step_smoke_cpu(tmp_path):
    from specialsam.device import cpu_has_amx_bf16

    stdout, result = _run(tmp_path, "--device", "cpu")
    _check(stdout, result, "cpu")
    bf16 = [r for r in result["rows"] if r["precision"] == "bf16"]
    if cpu_has_amx_bf16():  # native bf16 (AMX): measured like fp32
        assert bf16 and all(_positive(r["samples_per_s"]) for r in bf16)
    else:
        assert len(bf16) == 1 and bf16[0]["note"] == "n/a on CPU" and bf16[0]["samples_per_s"] is None
        assert "n/a on CPU" in stdout


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_decoder_step_smoke_cuda(tmp_path):
    stdout, result = _run(tmp_path, "--device", "cuda")
    _check(stdout, result, "cuda")
