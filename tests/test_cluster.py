"""Multi-node runs and faults: the session's real Ray cluster (head + worker on 127.0.0.1) and a
real MLflow server; the sweep's driver runs as a separate process, as on a cluster."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from specialsam.finetune.cache import EmbeddingCache, ModelIdentity, preprocessing_id
from specialsam.models.tiny import build_tiny_sam
from specialsam.sweep.tracking import ROLE, TRIAL_ID
from tests.conftest import REPO, running_trials

SMOKE = ["--task", "carpet", "--smoke", "--set", "search.num_samples=4"]


def _images(n: int, seed: int = 0):
    import hashlib

    rng = np.random.default_rng(seed)
    imgs = [rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for _ in range(n)]
    return imgs, [hashlib.sha256(i.tobytes()).hexdigest() for i in imgs]


def test_interrupted_precompute_resumes_without_recomputing(tmp_path, monkeypatch):
    import specialsam.finetune.cache as emb

    torch.manual_seed(0)
    sam = build_tiny_sam("tiny-s").eval()
    ident = ModelIdentity("tiny-s", "sha", preprocessing_id(sam))
    imgs, hashes = _images(20)
    real_encode, calls = emb.encode, {"n": 0}

    def dying_encode(model, images, batch_size=8, precision="fp32"):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # the machine goes away mid-precompute
        return real_encode(model, images, batch_size, precision)

    monkeypatch.setattr(emb, "encode", dying_encode)
    cache = EmbeddingCache(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        cache.precompute(sam, ident, imgs, hashes, batch_size=8, progress=False)
    assert cache.encoder_calls == 8
    assert not list(tmp_path.rglob("*.tmp")), "a torn write was left behind"
    monkeypatch.setattr(emb, "encode", real_encode)
    rerun = EmbeddingCache(tmp_path)
    rerun.precompute(sam, ident, imgs, hashes, batch_size=8, verify=True, progress=False)
    assert rerun.encoder_calls == 12  # only the rest; none of the finished 8 again
    assert all(rerun.has(ident.key(h), verify=True) for h in hashes)


@pytest.mark.usefixtures("ray_cluster")
def test_cluster_precompute_fills_the_shared_cache_once(tmp_path):
    from specialsam.models.registry import load_model
    from specialsam.sweep.precompute import cluster_precompute, use_cluster_precompute

    assert use_cluster_precompute()  # two nodes
    sam, info = load_model("tiny-s")
    ident = ModelIdentity("tiny-s", info.sha256, preprocessing_id(sam))
    cache = EmbeddingCache(tmp_path)
    imgs, hashes = _images(24, seed=1)
    calls = cluster_precompute("tiny-s", ident, cache, imgs, hashes, shard=6)
    assert sum(calls.values()) == 24
    assert all(cache.has(ident.key(h), verify=True) for h in hashes)
    assert cluster_precompute("tiny-s", ident, cache, imgs, hashes, shard=6) == {}  # all cached: no pass
    direct = cache.load(ident.key(hashes[3])).astype(np.float32)
    from specialsam.models.inference import encode

    np.testing.assert_allclose(direct, encode(sam, [imgs[3]])[0].numpy(), atol=2e-3, rtol=2e-3)


def _driver(args: list[str], cwd, env_extra=None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    return subprocess.Popen(
        [sys.executable, str(REPO / "sweeps" / "run.py"), *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _trial_runs(client: MlflowClient) -> list:
    exp = client.get_experiment_by_name("specialsam-carpet")
    if exp is None:
        return []
    return [
        r
        for r in client.search_runs([exp.experiment_id], max_results=1000)
        if r.data.tags.get(ROLE) == "trial"
    ]


def test_resume_after_killed_driver_through_address_and_tracking_server(ray_cluster, mlflow_server, tmp_path):
    """Kill the driver after some trials; --resume gives exactly the full set of trials, once each,
    every trial's run on the tracking server, trials on more than one node."""
    args = [
        *SMOKE,
        "--address",
        ray_cluster.address,
        "--tracking-uri",
        mlflow_server,
        "--cache-dir",
        str(tmp_path / "cache"),
        "--storage",
        str(tmp_path / "tune"),
    ]
    client = MlflowClient(mlflow_server)
    proc = _driver(args, tmp_path)
    deadline = time.time() + 240
    while time.time() < deadline:
        # Kill once Tune's saved experiment state records two finished trials: a trial that
        # finished after Tune's last save (auto period >= 10 s) is legitimately rerun on resume.
        done = {r.data.tags[TRIAL_ID] for r in _trial_runs(client) if r.info.status == "FINISHED"}
        if len(done & _tune_finished(tmp_path / "tune")) >= 2 or proc.poll() is not None:
            break
        time.sleep(0.5)
    assert proc.poll() is None, f"driver ended early: {proc.stdout.read().decode()[-3000:]}"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    saved = _tune_finished(tmp_path / "tune")
    before = {
        r.data.tags[TRIAL_ID]: r.info.run_id
        for r in _trial_runs(client)
        if r.info.status == "FINISHED" and r.data.tags[TRIAL_ID] in saved
    }
    assert len(before) >= 2

    resumed = _driver([*args, "--resume"], tmp_path)
    out, _ = resumed.communicate(timeout=400)
    assert resumed.returncode == 0, out.decode()[-3000:]
    assert "resuming sweep" in out.decode()

    runs = _trial_runs(client)
    keys = [r.data.tags[TRIAL_ID] for r in runs]
    assert len(keys) == len(set(keys)) == 4 + 4  # every trial exactly once
    assert all(r.info.status in ("FINISHED", "FAILED") for r in runs)
    for key, run_id in before.items():  # trials Tune saved as finished were not rerun
        assert {r.info.run_id for r in runs if r.data.tags[TRIAL_ID] == key} == {run_id}
    assert (
        len({r.data.tags.get("specialsam.node_id") for r in runs if r.data.tags.get("specialsam.node_id")})
        >= 2
    )
    parents = [
        r
        for r in client.search_runs([client.get_experiment_by_name("specialsam-carpet").experiment_id])
        if r.data.tags.get(ROLE) == "sweep"
    ]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"


def _tune_finished(storage) -> set[str]:
    """Trials that Tune's latest saved experiment state (per experiment) records as finished, as
    our trial keys ``<experiment>/<trial_id>``."""
    keys = set()
    for exp in storage.glob("*/*/"):
        states = sorted(exp.glob("experiment_state-*.json"))  # timestamped names: the last is newest
        if not states:
            continue
        try:
            trials = json.loads(states[-1].read_text())["trial_data"]
        except (OSError, ValueError, KeyError):  # being written
            continue
        for trial_json, _ in trials:
            t = json.loads(trial_json)
            if t["status"] == "TERMINATED":
                keys.add(f"{exp.name}/{t['trial_id']}")
    return keys


def test_worker_node_removed_mid_sweep(ray_cluster, tmp_path):
    """A node dies while its trials run: they are rescheduled elsewhere and the sweep completes."""
    extra = ray_cluster.add_node(num_cpus=1, object_store_memory=80 * 1024**2, node_ip_address="127.0.0.1")
    ray_cluster.wait_for_nodes()
    args = [
        "--task",
        "carpet",
        "--smoke",
        "--set",
        "search.num_samples=3",
        "--set",
        "curve.n_train=[32]",
        "--set",
        "curve.seeds=[0]",
        "--address",
        ray_cluster.address,
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    # Phase A trials linger at step 1 until released (at most 90 s), so all three run at once
    # however slowly their workers start.
    release = tmp_path / "release"
    linger = {"sleep": {"match": {"n_train": 64}, "at_step": 1, "seconds": 90, "until_file": str(release)}}
    proc = _driver(args, tmp_path, {"SPECIALSAM_TEST_FAULTS": json.dumps(linger)})
    db = tmp_path / "mlflow.db"
    deadline = time.time() + 240
    removed = False
    try:
        while time.time() < deadline and proc.poll() is None:
            if running_trials(db) >= 3:  # one per node: one of them is on the node we remove
                ray_cluster.remove_node(extra)
                removed = True
                break
            time.sleep(0.5)
    finally:
        release.touch()
    out, _ = proc.communicate(timeout=400)
    assert removed, "never saw three trials running at once"
    assert proc.returncode == 0, out.decode()[-3000:]
    runs = _trial_runs(MlflowClient(f"sqlite:///{db}"))
    assert len(runs) == 3 + 1 and all(r.info.status == "FINISHED" for r in runs)
    assert any(r.data.tags.get("specialsam.retried") for r in runs)
