"""The encoder-cache, early-stopping, overhead and scaling benchmarks run and report what they should.

Each runs in its ``--smoke`` mode in a subprocess. Speed is never asserted: the test machines are
shared, so figures are only checked to be present and positive. The three that start Ray Tune
(tens of seconds each on an idle 2-core machine) are marked ``slow``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _run(tmp_path: Path, script: str, *extra: str) -> tuple[str, dict]:
    out = tmp_path / f"{script}.json"
    env = {**os.environ, "TQDM_DISABLE": "1", "RAY_ADDRESS": "local"}
    proc = subprocess.run(
        [sys.executable, str(BENCH / f"{script}.py"), "--smoke", "--json", str(out), *extra],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
        env=env,
    )
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-4000:])
    return proc.stdout, json.loads(out.read_text())


def _pos(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def _machine(result: dict) -> None:
    assert result["mode"] == "smoke"
    assert result["machine"]["torch_threads"] == 1
    assert "load_avg_1min" in result["machine"]


def test_encoder_cache_smoke(tmp_path):
    stdout, r = _run(tmp_path, "encoder_cache")
    _machine(r)
    assert "| model | unique images | encoder calls, 1st build |" in stdout
    assert "| model | weights | input px |" in stdout
    assert r["ok"] is True
    models = r["settings"]["models"]
    assert len(models) >= 2  # the sweep's model sizes, even in smoke mode
    unique = r["images"]["unique"]
    assert unique > 0 and unique <= r["images"]["total"]
    assert r["images"]["train flips"] == 0
    assert r["total_calls"] == r["expected_total_calls"] == unique * len(models)
    assert [b["model"] for b in r["builds"]] == models
    for b in r["builds"]:
        assert b["first_calls"] == unique
        assert b["second_calls"] == 0 and b["other_settings_calls"] == 0
        assert b["same_pack"] and b["new_pack_other_settings"]
        assert _pos(b["first_s"]) and _pos(b["second_s"])
    assert {s["model"] for s in r["speed"]} == {"tiny-s", "tiny-m"}
    for s in r["speed"]:
        assert _pos(s["images_per_s"]) and s["images"] > 0
        assert s["embedding"] == [64, 16, 16]
    assert r["default_sweep_images"]["total"] > 8000


def test_encoder_cache_counts_flips(tmp_path):
    _, r = _run(tmp_path, "encoder_cache", "--flip", "--models", "tiny-s", "--speed-models", "tiny-s")
    assert r["settings"]["flip"] is True
    assert r["images"]["train flips"] == r["images"]["train"] > 0
    assert r["builds"][0]["first_calls"] == r["images"]["unique"] == r["images"]["total"]
    assert r["ok"] is True


@pytest.mark.slow
def test_early_stopping_smoke(tmp_path):
    stdout, r = _run(tmp_path, "early_stopping")
    _machine(r)
    assert "| arm | repeat | trials | finished | stopped by ASHA | epochs |" in stdout
    assert "Target: within 1 point at <= 50% of the epochs" in stdout
    runs = r["runs"]
    assert {x["arm"] for x in runs} == {"asha+optuna", "random, to the end"}
    n = r["settings"]["trials"]
    for x in runs:
        assert x["trials"] == n
        assert x["finished"] + x["stopped_early"] == n
        assert _pos(x["epochs"]) and _pos(x["wall_s"])
        assert sum(x["epochs_per_trial"].values()) == x["epochs"]
        assert x["epochs_mlflow_mismatch"] == {}
        assert 0 <= x["best_val_miou"] <= 1 and 0 <= x["best_test_miou"] <= 1
    rnd = next(x for x in runs if x["arm"] == "random, to the end")
    assert rnd["stopped_early"] == 0  # no scheduler: every trial runs to its end
    assert _pos(r["epoch_ratio"]) and isinstance(r["target"]["met"], bool)


@pytest.mark.slow
def test_overhead_smoke(tmp_path):
    prof = tmp_path / "profile.txt"
    stdout, r = _run(tmp_path, "overhead", "--profile-out", str(prof))
    _machine(r)
    assert "| per trial | seconds | x reference | overhead share of wall |" in stdout
    assert "## Profile of one trial" in stdout
    per = r["per_trial"]
    for k in ("reference_s", "trial_seconds", "tune_time_total_s", "wall_s"):
        assert _pos(per[k]), k
    assert len(r["reference"]) == len(r["sweep"]["trials"]) == r["settings"]["trials"]
    assert math.isfinite(r["overhead_share"]) and isinstance(r["target"]["met"], bool)
    text = prof.read_text()
    assert "cumulative" in text and "trainable" in text
    parts = {p["part"]: p for p in r["profile"]["parts"]}
    whole = parts["whole trial (trainable + driver-side MLflow logging)"]
    assert _pos(whole["seconds"]) and whole["share"] == 1.0
    for label in (
        "decoder training (train_decoder)",
        "  data loading from the cache (Split.embeddings, all splits)",
        "  decoder forward (batch_logits; training + validation)",
        "  decoder backward (autograd)",
        "test + retention evaluation (score_split)",
        "plotting (curves + overlay grid)",
        "MLflow logging (run creation, per-epoch metrics, final record + artifacts)",
    ):
        assert _pos(parts[label]["seconds"]), label
        assert parts[label]["seconds"] <= whole["seconds"]


@pytest.mark.slow
def test_scaling_smoke(tmp_path):
    stdout, r = _run(tmp_path, "scaling")
    _machine(r)
    for head in ("## 1. Sweep wall time", "## 2. Trial time vs n_train", "## 3. Peak memory per trial"):
        assert head in stdout
    s = r["settings"]
    assert [x["trials"] for x in r["trials"]] == s["trial_counts"]
    for x in r["trials"]:
        assert x["finished"] == x["trials"] and _pos(x["wall_s"]) and _pos(x["mean_trial_s"])
    assert [x["n_train"] for x in r["n_train"]] == s["n_train_sizes"]
    for x in r["n_train"]:
        assert 0 < x["samples"] <= x["n_train"] * s["epochs_part2"]
        assert _pos(x["train_s"]) and _pos(x["time_total_s"]) and _pos(x["trial_seconds"])
    assert [x["n_train"] for x in r["memory"]] == s["rss_n_train"]
    for x in r["memory"]:
        assert x["steps"] == s["rss_steps"]
        assert _pos(x["peak_rss_kb"]) and _pos(x["rss_before_kb"]) and x["peak_rss_kb"] >= x["rss_before_kb"]
        assert _pos(x["train_embeddings_bytes"])
    sizes = [x["train_embeddings_bytes"] for x in r["memory"]]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]


def test_compile_probe_step_trains_the_decoder_eagerly():
    """The probe's step (compiled only by the script itself: 1.5-2.5 min) is training's forward +
    backward: an odd batch mixes points and boxes, and every timed call puts gradients on the decoder."""
    sys.path.insert(0, str(BENCH))
    try:
        import compile_probe
    finally:
        sys.path.remove(str(BENCH))
    dev, sam, loss_fn, inputs = compile_probe.make_step("tiny-s", 3, "fp32")
    labels = inputs[2]
    assert labels.tolist() == [[1, -1], [2, 3], [1, -1]]
    first, later = compile_probe.time_step(loss_fn, inputs, dev.device, repeats=2)
    assert _pos(first) and _pos(later)
    transformer = list(sam.mask_decoder.transformer.parameters())  # on the single-mask path
    assert all(p.grad is not None for p in transformer)
    assert sum(float(p.grad.abs().sum()) for p in transformer) > 0


def test_flop_ceiling_replays_every_flop_carrying_op_of_the_step(tmp_path):
    """The ceiling is only an upper bound if the replay covers all the step's FLOPs, in the
    step's own shapes: the replayed total must equal FlopCounterMode's count of the real step."""
    out = tmp_path / "ceiling.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "flop_ceiling.py"), "--model", "tiny-s", "--batch", "3",
         "--repeats", "2", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(out.read_text())
    assert r["step_gflop"] > 0 and math.isclose(r["replayed_gflop"], r["step_gflop"], rel_tol=1e-9)
    ops = r["ops"]
    assert {"aten.mm.default", "aten.convolution_backward.default"} <= {o["op"] for o in ops}
    assert sum(o["count"] for o in ops) > len(ops)  # repeated shapes are grouped, not lost
    assert all(_pos(o["seconds"]) for o in ops)
    assert 0 < r["flop_ops_s"] < r["step_s"]  # the FLOP-carrying ops alone are part of the step
    assert r["ceiling_peak_share"] > r["step_peak_share"] > 0
    assert "ceiling" in proc.stdout


def test_clicks_cost_smoke(tmp_path):
    stdout, r = _run(tmp_path, "clicks_cost", "--models", "tiny-s")
    _machine(r)
    assert "| model | trial s | scoring s (off) | scoring s (on) | per trial |" in stdout
    (res,) = r["results"]
    assert res["model"] == "tiny-s" and "corrective clicks" in res["protocol"]
    m = res["medians"]
    assert all(_pos(m[k]) for k in ("trial", "trained score off", "trained score on", "base score on"))
    assert math.isfinite(res["sweep_growth"]) and len(res["all"]["trial"]) == r["pairs"] == 1
